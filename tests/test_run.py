"""A smoke run through run_job(cfg) into a real sqlite MLflow store holds what the issue lists."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from conftest import TINY
from mlflow.tracking import MlflowClient
from PIL import Image

from sr_ablate import tracking
from sr_ablate.data import BUILTIN_TRAIN, BUILTIN_VAL, builtin_dir
from sr_ablate.training.job import run_job
from sr_ablate.training.loop import Every, Hooks, fit


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    import os
    tmp = tmp_path_factory.mktemp("store")
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "SR_ABLATE_PARENT_RUN_ID"):
        os.environ.pop(var, None)
    from sr_ablate.config.validation import compose
    overrides = TINY + ["seed=3"]
    cfg = compose(overrides)
    result = run_job(cfg, cwd=str(tmp), overrides=overrides, choices={"model": "srresnet"})
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("sr_ablate")
    (r,) = client.search_runs([exp.experiment_id])
    return uri, client, r, result, tmp


def test_run_finished_with_flat_params(smoke_run):
    uri, client, r, result, tmp = smoke_run
    assert r.info.status == "FINISHED"
    p = r.data.params
    assert p["model.blocks"] == "1" and p["model.channels"] == "8" and p["seed"] == "3"
    assert p["optim.lr"] == "0.0001" and p["trainer.name"] == "smoke" and p["model"] == "srresnet"
    assert "model._target_" not in p


def test_metrics_with_steps(smoke_run):
    uri, client, r, result, tmp = smoke_run
    for key in ("train/loss", "val/psnr", "val/ssim", "val/bicubic_psnr", "val/bicubic_ssim"):
        hist = tracking.metric_history(uri, r.info.run_id, key)
        assert [s for s, _ in hist] == [2, 4], key  # eval_every=2, steps=4
        assert hist[-1][1] == pytest.approx(result[key])
    m = r.data.metrics
    assert 0 < m["val/ssim"] <= 1 and 20 < m["val/bicubic_psnr"] < 60
    assert m["model/params"] == result["model/params"] == srresnet_tiny_params(3) == 4603


def srresnet_tiny_params(c_in: int) -> int:
    """TINY's SRResNet (8 channels, 1 block, BN, 3x3 head and tail, x2) counted by hand."""
    def conv(a, b, k=3):
        return a * b * k * k + b
    head = conv(c_in, 8) + 8                     # conv + PReLU slopes
    block = 2 * conv(8, 8) + 8 + 2 * 2 * 8       # two convs, PReLU, two BN (scale, shift)
    body_tail = conv(8, 8) + 2 * 8               # conv + BN
    up = conv(8, 8 * 4) + 8                      # x2 sub-pixel conv + PReLU
    return head + block + body_tail + up + conv(8, c_in)


def test_artifacts(smoke_run):
    uri, client, r, result, tmp = smoke_run
    rid = r.info.run_id
    top = {a.path for a in client.list_artifacts(rid)}
    assert {"config.yaml", "per_image.csv", "comparison.png", "checkpoints"} <= top
    local = client.download_artifacts(rid, "", str(tmp / "dl"))
    assert "blocks: 1" in open(f"{local}/config.yaml").read()
    rows = list(csv.DictReader(open(f"{local}/per_image.csv")))
    assert [row["image"] for row in rows] == [Path(n).stem for n in BUILTIN_VAL]
    mean = sum(float(row["psnr"]) for row in rows) / len(rows)
    assert mean == pytest.approx(r.data.metrics["val/psnr"])
    im = Image.open(f"{local}/comparison.png")
    assert im.width == 3 * im.height  # bicubic | SR | HR
    ckpt = torch.load(f"{local}/checkpoints/final.pt", weights_only=True)
    assert "head.0.weight" in ckpt["model"] and ckpt["step"] == 4
    # the artifacts sit next to mlflow.db, not in ./mlruns of whatever the cwd was
    assert (tmp / "mlartifacts").is_dir()


def test_protocol_and_overrides_tags(smoke_run):
    uri, client, r, result, tmp = smoke_run
    t = r.data.tags
    assert t["eval.color_space"] == "y_bt601" and t["eval.crop"] == "scale"
    assert t["eval.lr_source"].startswith("matlab_bicubic") and "gaussian11" in t["eval.ssim"]
    assert "model.blocks=1" in t["overrides"]


def test_failure_after_start_ends_failed(store):
    with pytest.raises(RuntimeError):
        with tracking.run(store, "e", params={"a": 1}, tags={}) as log:
            log.log_metrics(1, {"x": 1.0})
            raise RuntimeError("boom")
    client = MlflowClient(store)
    (r,) = client.search_runs([client.get_experiment_by_name("e").experiment_id])
    assert r.info.status == "FAILED"


def test_fit_takes_plain_callables():
    """fit() knows nothing of MLflow: a list's append is a valid log_fn."""
    torch.manual_seed(0)
    model = torch.nn.Conv2d(1, 1, 3, padding=1)
    data = iter(lambda: {"lq": torch.rand(4, 1, 8, 8), "gt": torch.rand(4, 1, 8, 8)}, None)
    logged = []
    out = fit(model, data, torch.optim.SGD(model.parameters(), lr=0.1), torch.nn.MSELoss(),
              steps=6, every=Every(log=2, eval=3), progress=False,
              hooks=Hooks(evaluate=lambda m: {"val/x": 1.0},
                          log=lambda s, m: logged.append((s, m))))
    assert [s for s, _ in logged] == [2, 3, 4, 6]
    assert [("val/x" in m) for _, m in logged] == [False, True, False, True]
    assert out["train/loss"] == logged[-1][1]["train/loss"]


def test_fit_stops_on_non_finite_loss():
    from sr_ablate.training.loop import NonFiniteLoss
    model = torch.nn.Conv2d(1, 1, 3, padding=1)
    data = iter(lambda: {"lq": torch.full((1, 1, 4, 4), float("nan")),
                         "gt": torch.zeros(1, 1, 4, 4)}, None)
    with pytest.raises(NonFiniteLoss, match="step 1"):
        fit(model, data, torch.optim.SGD(model.parameters(), lr=0.1), torch.nn.MSELoss(),
            steps=3, every=Every(log=1), progress=False)


def test_seeded_runs_repeat_and_y_channel_training(store, compose, tmp_path):
    """Same seed -> same losses; data.color=y trains a 1-channel model."""
    overrides = TINY + ["data.color=y", "model.in_channels=1", "tracking.checkpoint=false"]
    a = run_job(compose(overrides), cwd=str(tmp_path))
    b = run_job(compose(overrides), cwd=str(tmp_path))
    assert a["train/loss"] == b["train/loss"] and a["val/psnr"] == b["val/psnr"]
    assert a["model/params"] == srresnet_tiny_params(1) == 4313  # a 1-channel head and tail
    c = run_job(compose(overrides + ["seed=1"]), cwd=str(tmp_path))
    assert c["train/loss"] != a["train/loss"]


def test_live_model_at_x1_5_with_default_frame(store, compose, tmp_path):
    """ESPCN x1.5 (720p -> 1080p style): training patches and the complexity frame are
    aligned to the scale's period (a 256 frame is measured as 255 -> LR 170)."""
    from sr_ablate.core.complexity import gflops
    from sr_ablate.training.job import instantiate_node
    overrides = ["model=espcn", "scale=1.5", "trainer=smoke", "model.channels=8",
                 "trainer.patch_size=16", "trainer.progress=false", "tracking.checkpoint=false"]
    ids = []
    out = run_job(compose(overrides), cwd=str(tmp_path), on_start=ids.append)
    r = MlflowClient(store).get_run(ids[0])
    assert r.info.status == "FINISHED"
    assert r.data.tags["model.frame_hw"] == "255x255"  # 256 cut to a multiple of 3
    assert r.data.tags["model.input_shape"] == "1x3x170x170"  # 255 / 1.5
    model = instantiate_node(compose(overrides).model)
    assert out["model/gflops"] == pytest.approx(gflops(model, (1, 3, 170, 170)), rel=1e-12)
    # ms per frame is a measured time (no exact value); the 30-frame figure is derived from it
    assert out["model/ms_per_frame"] > 0
    assert out["model/s_per_30_frames"] == pytest.approx(30 * out["model/ms_per_frame"] / 1000)
    psnr = tracking.metric_history(store, ids[0], "val/psnr")
    assert [s for s, _ in psnr] == [2, 4]  # evaluated at x1.5 at both evaluations


def test_default_validation_can_reach_significance():
    """The built-in validation split holds at least 8 natural photographs (an exact paired
    test over n images cannot go below 2/2^n: 8 images reach 0.008 < 0.05), none of them a
    training photograph, all readable."""
    from sr_ablate.data import read_image
    from sr_ablate.report.stats import min_p
    assert len(BUILTIN_VAL) >= 8 and min_p(len(BUILTIN_VAL)) < 0.05
    assert not set(BUILTIN_VAL) & set(BUILTIN_TRAIN)
    for name in BUILTIN_VAL:
        img = read_image(builtin_dir() / name)
        assert img.shape[0] == 3 and min(img.shape[1:]) >= 256, name
