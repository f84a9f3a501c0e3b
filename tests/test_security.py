"""Security guards (docs/security.md): no code runs from a checkpoint or weights file,
downloaded archives stay inside their folder, Pillow's decompression-bomb limit is kept, and
``make ui`` listens on localhost only."""
from __future__ import annotations

import ast
import importlib
import io
import os
import pkgutil
import shlex
import stat
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import test_download as td
import torch
from conftest import REPO
from PIL import Image

from sr_ablate import UserError
from sr_ablate.data.download import fetch

server = td.server  # the local HTTP server fixture (127.0.0.1) of test_download


class Payload:
    """Unpickling this runs ``touch <marker>``: what a malicious .pt file would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def malicious_file(path: Path, marker: Path, wrap=lambda p: {"model": p}) -> Path:
    """A real torch.save file whose unpickling creates ``marker``; checked to be live."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(wrap(Payload(marker)), path)
    torch.load(path, weights_only=False)  # proof the payload works when pickle is trusted
    assert marker.exists()
    marker.unlink()
    return path


def assert_one_line(e: pytest.ExceptionInfo, *parts: str) -> None:
    message = str(e.value)
    assert "\n" not in message, message
    for part in parts:
        assert part in message, message


def test_checkpoint_load_runs_no_code(tmp_path):
    from sr_ablate.training import checkpoint
    marker = tmp_path / "pwned"
    path = malicious_file(tmp_path / ".sr_ablate" / "checkpoints" / "abc.pt", marker)
    with pytest.raises(UserError) as e:
        checkpoint.load(path)
    assert_one_line(e, f"checkpoint {path} cannot be read (UnpicklingError)", "delete it")
    assert not marker.exists()


def test_evaluate_checkpoint_runs_no_code(tmp_path):
    from sr_ablate.cli.evaluate import load_model
    marker = tmp_path / "pwned"
    path = malicious_file(tmp_path / "final.pt", marker,
                          lambda p: {"config": {"model": {}, "scale": 2}, "model": p})
    with pytest.raises(UserError) as e:
        load_model(str(path), f"sqlite:///{tmp_path / 'mlflow.db'}", 2, "cpu")
    assert_one_line(e, f"{path} is not an sr_ablate checkpoint (UnpicklingError)")
    assert not marker.exists()


@pytest.mark.parametrize("where", ["torch hub cache", "loss.weights"])
def test_vgg_weights_run_no_code(tmp_path, monkeypatch, where):
    from sr_ablate.training.losses import VGG19_FILE, VGGLoss
    marker = tmp_path / "pwned"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")  # no download, ever
    if where == "torch hub cache":  # where conftest.save_fake_vgg19 puts real-format weights
        path = tmp_path / "torch" / "hub" / "checkpoints" / VGG19_FILE
        weights = None
    else:
        path = tmp_path / "elsewhere.pth"
        weights = str(path)
    malicious_file(path, marker, lambda p: {"features.0.weight": p})
    with pytest.raises(UserError) as e:
        VGGLoss(weights=weights)
    assert_one_line(e, f"{path} cannot be read as a state dict (UnpicklingError)")
    assert not marker.exists()


def load_calls(tree: ast.AST):
    """(function name, call) for every call of ``*.load``/``*.load_state_dict_from_url`` on
    torch, ``pickle``-family loads and ``torch.hub.load``, with the enclosing function."""
    def walk(node, where):
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) \
                else where
            if isinstance(child, ast.Call):
                text = ast.unparse(child.func)
                if text in ("torch.load", "torch.hub.load", "torch.hub.load_state_dict_from_url",
                            "pickle.load", "pickle.loads", "dill.load", "joblib.load"):
                    yield inner, text, child
            yield from walk(child, inner)
    yield from walk(tree, "<module>")


def test_every_torch_load_in_the_package_is_weights_only():
    sites = []
    for path in sorted((REPO / "sr_ablate").rglob("*.py")):
        source = path.read_text()
        tree = ast.parse(source)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module in ("torch", "torch.hub"):
                names = {a.name for a in node.names}
                assert not names & {"load", "load_state_dict_from_url"}, \
                    f"{path.name}: call torch.load by its module name, so this test sees it"
        for func, text, call in load_calls(tree):
            where = f"{path.relative_to(REPO)}:{func}"
            assert text not in ("torch.hub.load", "pickle.load", "pickle.loads", "dill.load",
                                "joblib.load"), f"{where} unpickles: {text}"
            flags = {k.arg: k.value for k in call.keywords}
            safe = flags.get("weights_only")
            assert isinstance(safe, ast.Constant) and safe.value is True, \
                f"{where}: {text} without weights_only=True"
            sites.append(where)
    files = {s.split(":")[0] for s in sites}
    assert {"sr_ablate/training/checkpoint.py", "sr_ablate/inference/trained.py",
            "sr_ablate/training/losses.py"} <= files


def test_pillow_bomb_limit_is_pillows_default():
    default = subprocess.run([sys.executable, "-c",
                              "from PIL import Image; print(Image.MAX_IMAGE_PIXELS)"],
                             capture_output=True, text=True, timeout=60, check=True).stdout
    import sr_ablate
    for module in pkgutil.walk_packages(sr_ablate.__path__, "sr_ablate."):
        importlib.import_module(module.name)
    assert Image.MAX_IMAGE_PIXELS == int(default) > 0
    from PIL import ImageFile
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # a cut file is refused, not half-read
    for path in (REPO / "sr_ablate").rglob("*.py"):  # nor set later, e.g. inside a function
        for node in ast.walk(ast.parse(path.read_text())):
            assert not (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
                        and node.attr in ("MAX_IMAGE_PIXELS", "LOAD_TRUNCATED_IMAGES")), path


@pytest.mark.parametrize("host", [None, "0.0.0.0"])
def test_make_ui_binds_localhost_unless_told(host):
    env = {k: v for k, v in os.environ.items() if k not in ("HOST", "PORT", "MAKEFLAGS")}
    out = subprocess.run(["make", "-n", "ui", *([f"HOST={host}"] if host else [])], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=30, check=True).stdout
    assert "mlflow ui" in out and f"--host {host or '127.0.0.1'} " in out, out
    assert out.count("--host") == 1


# Archive members that must not land outside the target folder, beyond test_download's
# UNSAFE cases (.., absolute, symlinks and a '..' hard link): Windows spellings, an absolute
# hard link, and a zip symlink entry.
UNSAFE = [
    ("zip", "..\\evil.png", None),
    ("zip", "DIV2K_valid_HR\\..\\..\\evil.png", None),
    ("zip", "C:/evil.png", None),
    ("zip", "\\evil.png", None),
    ("tar.gz", "Set5_HR\\..\\..\\evil.png", None),
    ("tar.gz", "Set5_HR/evil.png", ("{outside}/evil.png", tarfile.LNKTYPE)),
    ("tar.gz", "Set5_HR/evil.png", ("Set5_HR/../../outside/evil.png", tarfile.LNKTYPE)),
    ("tar.gz", "evil", ("..", tarfile.SYMTYPE)),
]


@pytest.mark.parametrize("fmt,member,link", UNSAFE, ids=[
    "zip-backslash-dotdot", "zip-inner-backslash-dotdot", "zip-drive-letter",
    "zip-backslash-root", "tar-backslash-dotdot", "tar-hardlink-absolute",
    "tar-hardlink-inner-dotdot", "tar-symlink-to-parent"])
def test_more_unsafe_archives_are_refused(fmt, member, link, server, monkeypatch, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "data").mkdir()
    monkeypatch.setenv("SR_ABLATE_DATA", str(tmp_path / "data"))
    if fmt == "zip":
        name, target = "div2k_valid", "DIV2K_valid_HR"
        td.make_zip(server.dir / "a.bin", {"DIV2K_valid_HR/0801.png": td.SET5["baby.png"],
                                           member: td.SET5["bird.png"]})
    else:
        name, target = "set5", "Set5"
        links = ((member, link[0].format(outside=outside), link[1]),) if link else ()
        files = {"Set5_HR/baby.png": td.SET5["baby.png"]} | ({} if link else {member: b"x"})
        td.make_tar(server.dir / "a.bin", files, links=links)
    monkeypatch.setenv(f"SR_ABLATE_URL_{name.upper()}", f"{server.url}/a.bin")
    before = td.snapshot(tmp_path)

    with pytest.raises(UserError) as e:
        fetch(name)

    assert_one_line(e, repr(member), "unsafe member", "refused the whole archive")
    assert td.snapshot(tmp_path) == before  # no archive, no target folder, nothing outside
    assert not (tmp_path / "data" / target).exists()


def test_zip_symlink_entry_is_not_extracted(server, monkeypatch, tmp_path):
    """A zip entry flagged as a symlink (to a file outside) is skipped, never created."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(td.SET5["head.png"])
    monkeypatch.setenv("SR_ABLATE_DATA", str(tmp_path / "data"))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("DIV2K_valid_HR/0801.png", td.SET5["baby.png"])
        link = zipfile.ZipInfo("DIV2K_valid_HR/0802.png")
        link.create_system = 3  # unix: external_attr holds st_mode
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        z.writestr(link, str(outside / "secret.png"))
    (server.dir / "a.zip").write_bytes(buf.getvalue())
    monkeypatch.setenv("SR_ABLATE_URL_DIV2K_VALID", f"{server.url}/a.zip")

    dest = fetch("div2k_valid")

    assert sorted(p.name for p in dest.iterdir()) == ["0801.png"]
    assert not any(p.is_symlink() for p in (tmp_path / "data").rglob("*"))
    assert (outside / "secret.png").read_bytes() == td.SET5["head.png"]


def test_html_report_escapes_run_text(tmp_path):
    import pandas as pd

    from sr_ablate.report.html import page
    evil = "<script>alert(1)</script>"
    table = pd.DataFrame({evil: [evil], "model": ["<img src=x onerror=alert(1)>"]})
    out = page(evil, evil, [{"title": evil, "text": evil, "table": table, "images": []}], tmp_path)
    assert "<script" not in out and "<img src=x" not in out
    # title, h1, intro, h2, text, column header, cell
    assert out.count("&lt;script&gt;alert(1)&lt;/script&gt;") == 7
