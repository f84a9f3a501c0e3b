"""Bad input through the real command line: one line naming problem and fix, non-zero exit,
no MLflow run left RUNNING."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import TINY, builtin_images, cli
from mlflow.tracking import MlflowClient
from PIL import Image


def good_folder(path: Path, n: int = 3) -> Path:
    path.mkdir()
    for src in builtin_images()[:n]:
        shutil.copy(src, path / src.name)
    return path


def assert_clean_failure(out, cwd: Path, expected: str):
    assert out.returncode != 0
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
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
    "image smaller than a patch": ("too_small", "a_tiny.png is 20x20 after modcrop, smaller "
                                   "than the 32x32 needed"),
}


# Every case as a single run; as a sweep job too ("unknown key", checked before Hydra starts,
# in the default run; the cases found inside a job in CI's slow pass).
SWEEP_FAST = ("unknown key",)


@pytest.mark.parametrize("case,multirun", [
    *[(c, False) for c in CASES],
    *[pytest.param(c, True, marks=() if c in SWEEP_FAST else pytest.mark.slow) for c in CASES]],
    ids=[*[f"run-{c}" for c in CASES], *[f"sweep-{c}" for c in CASES]])
def test_bad_input(tmp_path, case, multirun):
    args, expected = CASES[case]
    if isinstance(args, str):
        args = setup_folder(tmp_path, args)
    sweep = ["-m", "seed=0,1"] if multirun else []
    out = cli([*sweep, *TINY, *args], tmp_path, timeout=180)
    assert_clean_failure(out, tmp_path, expected)


@pytest.mark.parametrize("args,expected", [
    (["trainer.scales=[2,3]"], "multi-scale training needs a pre-upsampling model"),
    (["model=espcn", "scale=1.5", "trainer.patch_size=15"],
     "trainer.patch_size=15 x scale=1.5 is not a whole"),
    ("one image", "has one image: need at least 2"),
], ids=["multi-scale post-upsampling", "patch not whole at x1.5", "one image"])
def test_bad_input_found_before_the_run_opens(store, compose, tmp_path, args, expected):
    """Found while building the job (after the config checks): still one line, no run."""
    from sr_ablate import UserError
    from sr_ablate.training.job import run_job
    if args == "one image":
        args = ["data=folder", f"data.root={good_folder(tmp_path / 'hr', n=1)}"]
    base = [a for a in TINY if not a.startswith("model.")] if "model=espcn" in args else TINY
    with pytest.raises(UserError) as e:
        run_job(compose([*base, *args]), cwd=str(tmp_path))
    assert expected in str(e.value) and "\n" not in str(e.value)
    db = tmp_path / "mlflow.db"
    assert not db.exists() or not MlflowClient(store).search_runs(
        [x.experiment_id for x in MlflowClient(store).search_experiments()])
