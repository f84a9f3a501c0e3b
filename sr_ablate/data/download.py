"""Download the standard SR sets (``sr-ablate download set5 div2k_valid [--root DIR]``).

Each archive is streamed to a temporary file, checked against a sha256 (the registry's,
``--sha256``, or the one recorded on first download), moved to ``<root>/<name>.<format>``,
refused whole if a member would escape the target, and its HR images are extracted flat into
``<root>/<target>/``; then the archive is deleted. ``SR_ABLATE_URL_<NAME>`` overrides an
entry's URL (a mirror, or a local server in tests).
"""
from __future__ import annotations

import fnmatch
import http.client
import os
import posixpath
import re
import shutil
import stat
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from tqdm import tqdm

from sr_ablate import UserError, __version__
from sr_ablate.core.digest import sha256_file

_HF = "https://huggingface.co/datasets/eugenesiow/{0}/resolve/main/data/{0}_HR.tar.gz"
_DIV2K = "https://data.vision.ee.ethz.ch/cvl/DIV2K/{}.zip"

# hr: glob over member paths inside the archive (fnmatch: `*` also matches `/`).
# sha256: None where no checksum is known for certain; trust on first use then applies.
REGISTRY: dict[str, dict] = {
    "set5": dict(url=_HF.format("Set5"), format="tar.gz", hr="*.png", sha256=None,
                 target="Set5"),
    "set14": dict(url=_HF.format("Set14"), format="tar.gz", hr="*.png", sha256=None,
                  target="Set14"),
    "b100": dict(url=_HF.format("BSD100"), format="tar.gz", hr="*.png", sha256=None,
                 target="B100"),
    "urban100": dict(url=_HF.format("Urban100"), format="tar.gz", hr="*.png", sha256=None,
                     target="Urban100"),
    "div2k_valid": dict(url=_DIV2K.format("DIV2K_valid_HR"), format="zip",
                        hr="DIV2K_valid_HR/*.png", sha256=None, target="DIV2K_valid_HR"),
    "div2k_train": dict(url=_DIV2K.format("DIV2K_train_HR"), format="zip",
                        hr="DIV2K_train_HR/*.png", sha256=None, target="DIV2K_train_HR"),
}
CHUNK = 1 << 20


def data_root(root: str | Path | None = None) -> Path:
    """Where named datasets live: ``root``, else $SR_ABLATE_DATA, else
    ~/.cache/sr_ablate/datasets."""
    given = root or os.environ.get("SR_ABLATE_DATA") or "~/.cache/sr_ablate/datasets"
    return Path(given).expanduser()


def url_of(name: str) -> str:
    return os.environ.get(f"SR_ABLATE_URL_{name.upper()}") or registry_entry(name)["url"]


def registry_entry(name: str) -> dict:
    if name not in REGISTRY:
        raise UserError(f"unknown dataset '{name}'; choose from: {', '.join(REGISTRY)} "
                        "(python -m sr_ablate download --list)")
    return REGISTRY[name]


def _images_in(folder: Path, pattern: str) -> list[Path]:
    if not folder.is_dir():
        return []
    base = posixpath.basename(pattern).lower()
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and fnmatch.fnmatch(p.name.lower(), base))


def fetch(name: str, root: Path | None = None, force: bool = False, *,
          sha256: str | None = None) -> Path:
    """Download and extract dataset ``name``; returns the folder of its HR images.

    Skips the download when ``<root>/<target>/`` already holds images, unless ``force``.
    ``sha256``: the expected archive checksum (overrides the registry and the recorded one).
    """
    entry = registry_entry(name)
    root = Path(root).expanduser() if root is not None else data_root()
    dest = root / entry["target"]
    have = _images_in(dest, entry["hr"])
    if have and not force:
        print(f"{name}: {dest} already holds {len(have)} images; skipping (--force to redo)")
        return dest
    if sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
        raise UserError(f"--sha256 {sha256!r} is not a sha256 (64 hex digits); pass the "
                        "archive's sha256sum, or leave --sha256 out")
    root.mkdir(parents=True, exist_ok=True)
    url, archive, record = url_of(name), root / f"{name}.{entry['format']}", root / f"{name}.sha256"
    want, source = _expected(entry, sha256, record)
    print(f"{name}: downloading {url}")
    tmp, got = _download(url, root, name)
    if want and got != want.lower():
        tmp.unlink()
        fix = {"--sha256": "check the --sha256 value",
               "registry": "pass --sha256 <hex> if the archive changed legitimately"}.get(
            source, f"delete {record} if the archive changed legitimately")
        raise UserError(f"{name}: sha256 of {url} is {got}, expected {want} ({source}); the "
                        f"download was deleted; check the URL/mirror, or {fix}")
    os.replace(tmp, archive)  # only a complete, verified archive gets the final name
    print(f"{name}: sha256 {got}")
    try:
        n = _extract(archive, entry, dest, name)
    finally:
        archive.unlink()
    if not entry["sha256"]:  # trust on first use: later downloads must match this one
        if not record.is_file():
            print(f"{name}: no known checksum; recorded the sha256 in {record}")
        record.write_text(f"{got}  {archive.name}\n")
    print(f"{name}: {n} images in {dest}")
    return dest


def _expected(entry: dict, sha256: str | None, record: Path) -> tuple[str | None, str]:
    if sha256:
        return sha256.lower(), "--sha256"
    if entry["sha256"]:
        return entry["sha256"], "registry"
    if record.is_file():
        return record.read_text().split()[0], f"recorded in {record} on first download"
    return None, "none"


def _download(url: str, root: Path, name: str) -> tuple[Path, str]:
    """Stream ``url`` into a temporary file in ``root``; returns (path, sha256 hex)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=root)
    tmp = Path(tmp)
    fix = f"check the network, or set SR_ABLATE_URL_{name.upper()} to a working mirror"
    req = urllib.request.Request(url, headers={"User-Agent": f"sr_ablate/{__version__}"})
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(req, timeout=60) as r:
            length = r.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=name,
                      leave=False, file=sys.stderr) as bar:
                while chunk := r.read(CHUNK):
                    f.write(chunk)
                    bar.update(len(chunk))
                done = bar.n
        if total is not None and done != total:
            raise UserError(f"cannot download {name} from {url} (got {done} of {total} "
                            f"bytes); {fix}")
        return tmp, sha256_file(tmp)  # the bytes on disk, as any later check reads them
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as e:
        tmp.unlink(missing_ok=True)
        why = (f"HTTP {e.code} {e.reason}" if isinstance(e, urllib.error.HTTPError)
               else getattr(e, "reason", None) or e.__class__.__name__)
        raise UserError(f"cannot download {name} from {url} ({why}); {fix}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _unsafe(archive: Path, member: str, why: str) -> UserError:
    return UserError(f"{archive} has an unsafe member {member!r} ({why}); refused the whole "
                     "archive and deleted it; check the URL/mirror")


def _check_path(archive: Path, member: str, stage: Path) -> None:
    p = member.replace("\\", "/")
    if p.startswith("/") or (len(p) > 1 and p[1] == ":"):
        raise _unsafe(archive, member, "absolute path")
    if ".." in p.split("/"):
        raise _unsafe(archive, member, "'..' in its path")
    if not (stage / p).resolve().is_relative_to(stage.resolve()):
        raise _unsafe(archive, member, "resolves outside the target folder")


def _members(archive: Path, fmt: str, stage: Path):
    """Check every member, then yield (name, open-file) for each regular file."""
    if fmt == "zip":
        if not zipfile.is_zipfile(archive):
            raise UserError(f"{archive} is not a zip archive; check the URL/mirror")
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            for i in infos:
                _check_path(archive, i.filename, stage)
            for i in infos:
                if not i.is_dir() and not stat.S_ISLNK(i.external_attr >> 16):
                    with zf.open(i) as f:
                        yield i.filename, f
        return
    try:
        tf = tarfile.open(archive, "r:*")
    except tarfile.TarError:
        raise UserError(f"{archive} is not a {fmt} archive; check the URL/mirror") from None
    with tf:
        members = tf.getmembers()
        for m in members:
            _check_path(archive, m.name, stage)
            if m.issym() or m.islnk():
                link = m.linkname
                base = posixpath.dirname(m.name) if m.issym() else ""
                target = posixpath.normpath(posixpath.join(base, link))
                if link.startswith("/") or target == ".." or target.startswith("../"):
                    raise _unsafe(archive, m.name, f"link to {link!r} outside the target folder")
        for m in members:
            if m.isfile():
                with tf.extractfile(m) as f:
                    yield m.name, f


def _extract(archive: Path, entry: dict, dest: Path, name: str) -> int:
    """Extract the HR images of ``archive`` flat into ``dest``; returns their count."""
    stage = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        pattern, n = entry["hr"].lower(), 0
        for member, f in _members(archive, entry["format"], stage):
            out = stage / posixpath.basename(member)
            if out.name.startswith(".") or not fnmatch.fnmatch(member.lower(), pattern):
                continue  # also skips macOS "._*" resource forks
            try:
                with open(out, "xb") as o:
                    shutil.copyfileobj(f, o, CHUNK)
            except FileExistsError:
                raise UserError(f"{archive} holds two HR images named {out.name}; they cannot be "
                                "extracted flat; check the URL/mirror") from None
            n += 1
        if n == 0:
            raise UserError(f"{archive} holds no files matching {entry['hr']!r}; the mirror's "
                            f"layout differs; set SR_ABLATE_URL_{name.upper()} to a mirror")
        if not dest.exists():
            os.replace(stage, dest)
        else:
            for p in stage.iterdir():
                os.replace(p, dest / p.name)
        return n
    finally:
        shutil.rmtree(stage, ignore_errors=True)
