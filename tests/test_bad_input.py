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


# --- found before anything opens: keys the run would not read, sets that are not here -------

UNREAD = {
    "data.root without data=folder": (["data.root=/my/photos"],
                                      "data.root='/my/photos' is not read with data=builtin"),
    "data.val_count without data=folder": (["data.val_count=4"],
                                           "data.val_count=4 is not read with data=builtin"),
    "clip_mode without grad_clip": (["trainer.clip_mode=value"],
                                    "trainer.clip_mode='value' is not read with "
                                    "trainer.grad_clip=null"),
    "ema_start without ema": (["trainer.ema_start=100"],
                              "trainer.ema_start=100 is not read with trainer.ema=0.0"),
    "eval.data in a training run": (["eval.data=/my/photos"],
                                    "eval.data='/my/photos' is read by the evaluate command"),
}


@pytest.mark.parametrize("multirun", [False, True], ids=["run", "sweep"])
@pytest.mark.parametrize("case", UNREAD)
def test_a_key_the_chosen_option_does_not_read_is_refused(tmp_path, case, multirun):
    """`data.root=/my/photos` beside data=builtin trained on the built-in photographs and
    recorded data.root=/my/photos: the run looked as if it had used the folder."""
    args, expected = UNREAD[case]
    sweep = ["-m", "seed=0,1"] if multirun else []
    out = cli([*sweep, *TINY, *args], tmp_path, timeout=180)
    assert_clean_failure(out, tmp_path, expected)
    assert out.returncode == 2 and not (tmp_path / "mlflow.db").exists()


def test_the_same_keys_are_taken_where_they_are_read(compose):
    from sr_ablate.config.checks import check
    check(compose(["data=folder", "data.root=/my/photos", "data.val_count=4"]), here=False)
    check(compose(["trainer.grad_clip=0.4", "trainer.clip_mode=value"]), here=False)
    check(compose(["eval.data=/my/photos"]), targets=(), here=False)  # the evaluate command


def test_a_sweep_whose_evaluation_sets_are_missing_fails_once_before_it_opens(tmp_path):
    """sweep=srresnet_blocks evaluates Set5/Set14/B100 at the end: on a machine without them
    it opened the sweep's parent run and failed every job with the same line."""
    empty = tmp_path / "no-sets"
    empty.mkdir()
    out = cli(["sweep=srresnet_blocks", "trainer=smoke", f"eval.root={empty}"], tmp_path,
              timeout=180)
    assert_clean_failure(out, tmp_path, "eval set 'set5' not found in")
    assert "download set5" in out.stderr
    assert out.returncode == 2 and not (tmp_path / "mlflow.db").exists()
    assert not (tmp_path / "multirun").exists()


def test_several_values_without_m_say_add_m(tmp_path):
    out = cli(["model.blocks=8,12,16,24"], tmp_path, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: model.blocks=8,12,16,24 gives several values, which makes a sweep; add -m "
        "(python -m sr_ablate -m model.blocks=8,12,16,24 ...), or for one list value write "
        "model.blocks=[...]"]
    assert not any(tmp_path.iterdir())
