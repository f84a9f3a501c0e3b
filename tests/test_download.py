"""``sr_ablate download`` against a real HTTP server on 127.0.0.1 serving archives of photos."""
from __future__ import annotations

import functools
import hashlib
import io
import os
import re
import socket
import subprocess
import sys
import tarfile
import threading
import zipfile
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from sr_ablate import UserError
from sr_ablate.cli.download import main
from sr_ablate.data.download import REGISTRY, fetch


@dataclass
class Server:
    dir: Path        # files served at url + "/" + name; "/nolength/" + name omits Content-Length,
                     # "/truncated/" + name sends half the file and then closes
    url: str
    requests: list   # request paths, in order


@pytest.fixture
def server(tmp_path, request):
    served = tmp_path / "srv"
    served.mkdir()
    seen: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(served), **kwargs)

        def do_GET(self):
            seen.append(self.path)
            route, _, name = self.path[1:].partition("/")
            if route in ("nolength", "truncated"):
                body = (served / name).read_bytes()
                self.send_response(200)
                if route == "truncated":
                    self.send_header("Content-Length", str(len(body)))
                    body = body[:len(body) // 2]
                self.end_headers()
                self.wfile.write(body)
                return
            super().do_GET()

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()

    def stop():
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)

    request.addfinalizer(stop)
    return Server(served, f"http://127.0.0.1:{httpd.server_address[1]}", seen)


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """Every registry URL points at a closed local port: nothing can reach the internet."""
    for name in REGISTRY:
        monkeypatch.setenv(f"SR_ABLATE_URL_{name.upper()}", f"http://127.0.0.1:{closed_port()}/")
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")
    monkeypatch.setenv("SR_ABLATE_DATA", str(tmp_path / "data"))


@functools.cache
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@functools.cache
def photo(src: str, box: tuple = (100, 100, 148, 140)) -> bytes:
    """A small PNG cut from one of the real photographs in skimage's data folder."""
    from sr_ablate.data import builtin_dir
    with Image.open(builtin_dir() / src) as im:
        buf = io.BytesIO()
        im.convert("RGB").crop(box).save(buf, "PNG")
    return buf.getvalue()


SET5 = {"baby.png": photo("astronaut.png"), "bird.png": photo("chelsea.png"),
        "head.png": photo("coffee.png")}


def make_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return path


def make_tar(path: Path, files: dict[str, bytes], mode: str = "w:gz",
             links: tuple = ()) -> Path:
    """``links``: (name, linkname, tarfile.SYMTYPE or LNKTYPE) entries added after the files."""
    with tarfile.open(path, mode) as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
        for name, target, kind in links:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            t.addfile(info)
    return path


def serve_set5(server: Server, monkeypatch, files: dict[str, bytes] = SET5) -> Path:
    archive = make_tar(server.dir / "set5.tar.gz",
                       {f"Set5_HR/{n}": b for n, b in files.items()} | {"README.txt": b"hi"})
    monkeypatch.setenv("SR_ABLATE_URL_SET5", f"{server.url}/set5.tar.gz")
    return archive


def files_in(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def snapshot(top: Path) -> set[Path]:
    return {p for p in top.rglob("*") if "srv" not in p.relative_to(top).parts}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_zip_download_extracts_exactly_the_hr_images(server, monkeypatch, tmp_path, capsys):
    hr = {"0801.png": photo("astronaut.png"), "0802.png": photo("rocket.jpg")}
    others = {"DIV2K_valid_HR/notes.txt": b"x", "DIV2K_valid_HR/._0801.png": b"mac",
              "DIV2K_valid_LR/0803.png": hr["0801.png"]}
    archive = make_zip(server.dir / "valid.zip",
                       {f"DIV2K_valid_HR/{n}": b for n, b in hr.items()} | others)
    monkeypatch.setenv("SR_ABLATE_URL_DIV2K_VALID", f"{server.url}/valid.zip")
    root = tmp_path / "data"  # from $SR_ABLATE_DATA

    dest = fetch("div2k_valid")

    assert dest == root / "DIV2K_valid_HR"
    assert files_in(dest) == hr
    assert sorted(p.name for p in root.iterdir()) == ["DIV2K_valid_HR", "div2k_valid.sha256"]
    assert (root / "div2k_valid.sha256").read_text().split()[0] == sha256(archive)
    out, err = capsys.readouterr()
    assert "div2k_valid" in err  # the tqdm bar went to stderr, the messages to stdout
    assert sha256(archive) in out and "recorded" in out


def test_tar_gz_download_through_main(server, monkeypatch, tmp_path, capsys):
    serve_set5(server, monkeypatch)
    root = tmp_path / "elsewhere"
    assert main(["set5", "--root", str(root)]) == 0
    assert files_in(root / "Set5") == SET5
    assert f"data.root={root / 'Set5'}" in capsys.readouterr().out


def test_plain_tar_without_content_length(server, monkeypatch, tmp_path):
    monkeypatch.setitem(REGISTRY, "set14", dict(REGISTRY["set14"], format="tar"))
    make_tar(server.dir / "set14.tar", {f"Set14_HR/{n}": b for n, b in SET5.items()}, mode="w")
    monkeypatch.setenv("SR_ABLATE_URL_SET14", f"{server.url}/nolength/set14.tar")
    assert files_in(fetch("set14")) == SET5


@pytest.mark.parametrize("where", ["registry", "--sha256"])
def test_wrong_checksum_leaves_nothing(where, server, monkeypatch, tmp_path, capsys):
    serve_set5(server, monkeypatch)
    root = tmp_path / "data"
    if where == "registry":
        monkeypatch.setitem(REGISTRY, "set5", dict(REGISTRY["set5"], sha256="0" * 64))
        with pytest.raises(UserError) as e:
            fetch("set5")
        message = str(e.value)
    else:
        assert main(["set5", "--sha256", "ab" * 32]) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
        assert len(errors) == 1 and errors[0].startswith("error: ")
        message = errors[0]
    assert "\n" not in message and "sha256" in message and where in message
    assert list(root.iterdir()) == []  # no archive, no temporary file, no extracted folder


def test_truncated_download_leaves_nothing(server, monkeypatch, tmp_path):
    serve_set5(server, monkeypatch)
    url = f"{server.url}/truncated/set5.tar.gz"
    monkeypatch.setenv("SR_ABLATE_URL_SET5", url)
    pattern = rf"{re.escape(url)} \(got \d+ of \d+ bytes\).*SR_ABLATE_URL_SET5"
    with pytest.raises(UserError, match=pattern) as e:
        fetch("set5")
    assert "\n" not in str(e.value)
    assert list((tmp_path / "data").iterdir()) == []


def test_right_sha256_is_accepted(server, monkeypatch):
    archive = serve_set5(server, monkeypatch)
    assert main(["set5", "--sha256", sha256(archive).upper()]) == 0


def test_trust_on_first_use(server, monkeypatch, tmp_path):
    archive = serve_set5(server, monkeypatch)
    root = tmp_path / "data"
    fetch("set5")
    assert (root / "set5.sha256").read_text().split()[0] == sha256(archive)

    changed = serve_set5(server, monkeypatch, {"baby.png": photo("coffee.png")})
    with pytest.raises(UserError, match="recorded in .*set5.sha256") as e:
        fetch("set5", force=True)
    assert "\n" not in str(e.value)
    assert files_in(root / "Set5") == SET5  # the first download is untouched
    assert sorted(p.name for p in root.iterdir()) == ["Set5", "set5.sha256"]

    fetch("set5", force=True, sha256=sha256(changed))  # a legitimate change, stated by the user
    assert (root / "set5.sha256").read_text().split()[0] == sha256(changed)


UNSAFE = [
    ("zip", "../evil.png", ()),
    ("zip", "DIV2K_valid_HR/../../evil.png", ()),
    ("zip", "{outside}/evil.png", ()),
    ("tar.gz", "../evil.png", ()),
    ("tar.gz", "{outside}/evil.png", ()),
    ("tar.gz", "Set5_HR/evil.png", ("{outside}/evil.png", tarfile.SYMTYPE)),
    ("tar.gz", "Set5_HR/evil.png", ("../../outside/evil.png", tarfile.SYMTYPE)),
    ("tar.gz", "Set5_HR/evil.png", ("../outside/evil.png", tarfile.LNKTYPE)),
]


@pytest.mark.parametrize("fmt,member,link", UNSAFE, ids=[
    "zip-dotdot", "zip-inner-dotdot", "zip-absolute", "tar-dotdot", "tar-absolute",
    "tar-symlink-absolute", "tar-symlink-dotdot", "tar-hardlink-dotdot"])
def test_unsafe_archive_is_refused(fmt, member, link, server, monkeypatch, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "data").mkdir()
    member = member.format(outside=outside)
    if fmt == "zip":
        name, target = "div2k_valid", "DIV2K_valid_HR"
        make_zip(server.dir / "a.zip", {"DIV2K_valid_HR/0801.png": SET5["baby.png"],
                                        member: SET5["bird.png"]})
    else:
        name, target = "set5", "Set5"
        links = ((member, link[0].format(outside=outside), link[1]),) if link else ()
        files = {"Set5_HR/baby.png": SET5["baby.png"]} | ({} if link else {member: b"x"})
        make_tar(server.dir / "a.zip", files, links=links)
    monkeypatch.setenv(f"SR_ABLATE_URL_{name.upper()}", f"{server.url}/a.zip")
    before = snapshot(tmp_path)

    with pytest.raises(UserError) as e:
        fetch(name)

    assert repr(member) in str(e.value) and "\n" not in str(e.value)
    assert snapshot(tmp_path) == before  # no archive, no target folder, nothing outside
    assert not (tmp_path / "data" / target).exists()


def test_404_through_the_command(server, tmp_path):
    url = f"{server.url}/missing.tar.gz"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SR_ABLATE_")}
    env |= {"SR_ABLATE_URL_SET5": url, "SR_ABLATE_DATA": str(tmp_path / "data")}
    r = subprocess.run([sys.executable, "-m", "sr_ablate", "download", "set5"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert url in lines[0] and "404" in lines[0] and "SR_ABLATE_URL_SET5" in lines[0]
    assert list((tmp_path / "data").iterdir()) == []


def test_unreachable_server_names_the_url():
    with pytest.raises(UserError, match=rf"127\.0\.0\.1:{closed_port()}/ .*SR_ABLATE_URL_B100"):
        fetch("b100")


def test_second_call_skips_without_downloading(server, monkeypatch, capsys):
    serve_set5(server, monkeypatch)
    first = fetch("set5")
    assert fetch("set5") == first
    assert server.requests == ["/set5.tar.gz"]
    assert "skipping" in capsys.readouterr().out
    fetch("set5", force=True)
    assert server.requests == ["/set5.tar.gz"] * 2


def test_list_and_unknown_name(capsys):
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in REGISTRY)
    assert main(["set6"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: unknown dataset 'set6'")
