"""Bad input through the real command line: one line naming problem and fix, non-zero exit,
no MLflow run left RUNNING."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from conftest import TINY, builtin_images, cli


def good_folder(path: Path, n: int = 3) -> Path:
    path.mkdir()
    for src in builtin_images()[:n]:
        shutil.copy(src, path / src.name)
    return path


def assert_clean_failure(out, cwd: Path, expected: str):
    assert out.returncode != 0
    errors = [l for l in out.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1, out.stderr[-2000:]
    assert expected in errors[0], errors[0]
    assert "Traceback" not in out.stderr
    db = cwd / "mlflow.db"
    if db.exists():
        client = MlflowClient(f"sqlite:///{db}")
        for exp in client.search_experiments():
            for r in client.search_runs([exp.experiment_id]):
                assert r.info.status != "RUNNING", r.data.tags


def setup_folder(tmp_path: Path, kind: str) -> list[str]:
    root = tmp_path / "hr"
    if kind == "empty":
        root.mkdir()
    elif kind == "not_image":
        good_folder(root)
        (root / "notes.png").write_text("this is not a PNG")
    elif kind == "truncated":
        good_folder(root)
        data = (root / builtin_images()[0].name).read_bytes()
        (root / "cut.png").write_bytes(data[: len(data) // 3])
    elif kind == "too_small":
        good_folder(root)
        with Image.open(builtin_images()[0]) as im:
            im.crop((0, 0, 20, 20)).save(root / "a_tiny.png")  # sorts first: a training image
    return ["data=folder", f"data.root={root}"]


CASES = {
    "unknown key": (["model.blokcs=3"], "unknown setting 'model.blokcs'; valid keys in model:"),
    "wrong type": (["model.blocks=eight"], "model.blocks='eight' has the wrong type"),
    "missing data.root": (["data=folder"], "data=folder needs data.root"),
    "data.root not a folder": (["data=folder", "data.root=/no/such/dir"], "is not a folder"),
    "empty data.root": ("empty", "holds no image files"),
    "non-image file": ("not_image", "notes.png is not a readable image"),
    "truncated PNG": ("truncated", "cut.png is not a readable image"),
    "image smaller than a patch": ("too_small", "a_tiny.png is 20x20 after modcrop, smaller than the 32x32 needed"),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("multirun", [False, True], ids=["run", "sweep"])
def test_bad_input(tmp_path, case, multirun):
    args, expected = CASES[case]
    if isinstance(args, str):
        args = setup_folder(tmp_path, args)
    sweep = ["-m", "seed=0,1"] if multirun else []
    out = cli([*sweep, *TINY, *args], tmp_path, timeout=180)
    assert_clean_failure(out, tmp_path, expected)
