"""``python -m sr_ablate evaluate``, evaluation sets inside runs, and fingerprints in reports."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import TINY, builtin_images, cli
from mlflow.tracking import MlflowClient

from sr_ablate import tracking
from sr_ablate.core.degrade import downscale
from sr_ablate.report.build import write
from sr_ablate.training.job import instantiate_node, run_job


@pytest.fixture(scope="module")
def hr_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("hr")
    for src in builtin_images():  # chelsea, coffee: real colour photographs
        if src.stem in ("chelsea", "coffee"):
            shutil.copy(src, root / src.name)
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory, hr_folder):
    """A tiny finished run that also evaluates on a folder set."""
    from sr_ablate.config.validation import compose
    cwd = tmp_path_factory.mktemp("store")
    cfg = compose(TINY + [f"eval.sets=[val,{hr_folder}]"])
    result = run_job(cfg, cwd=str(cwd))
    client = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
    (r,) = client.search_runs([client.get_experiment_by_name("sr_ablate").experiment_id])
    return cwd, r, result


def test_bicubic_at_x1_5(hr_folder, tmp_path):
    out = cli(["model=bicubic", f"eval.data={hr_folder}", "scale=1.5", "eval.format=json"],
              tmp_path, command="evaluate")
    assert out.returncode == 0, out.stderr
    assert 25 < json.loads(out.stdout.strip().splitlines()[-1])["psnr"] < 50


def test_bicubic_json_last_line(hr_folder, tmp_path):
    out = cli(["model=bicubic", f"eval.data={hr_folder}", "scale=3", "eval.format=json"],
              tmp_path, command="evaluate")
    assert out.returncode == 0, out.stderr
    obj = json.loads(out.stdout.strip().splitlines()[-1])
    assert [i["name"] for i in obj["images"]] == ["chelsea", "coffee"]
    assert obj["psnr"] == pytest.approx(sum(i["psnr"] for i in obj["images"]) / 2)
    assert 20 < obj["psnr"] < 40 and 0 < obj["ssim"] < 1
    assert "chelsea" in out.stdout and "mean" in out.stdout  # the table precedes the JSON


def test_run_logs_every_set_and_fingerprint(trained, hr_folder):
    cwd, r, result = trained
    m, t = r.data.metrics, r.data.tags
    for prefix in ("val", hr_folder.name):
        for k in ("psnr", "ssim", "bicubic_psnr", "bicubic_ssim"):
            assert f"{prefix}/{k}" in m
    assert {"model/params", "model/gflops", "model/ms_per_frame"} <= set(m)
    assert t["model.frame_hw"] == "256x256" and t["model.input_shape"] == "1x3x128x128"
    # TINY's SRResNet at LR 128x128, by hand: 2 FLOPs per multiply-add of each conv; head,
    # two block convs, body tail and the x2 sub-pixel conv on the LR grid, the tail on HR
    lr, hr = 128 * 128, 256 * 256
    macs = lr * 9 * (3 * 8 + 2 * 8 * 8 + 8 * 8 + 8 * 32) + hr * 9 * 8 * 3
    assert m["model/gflops"] == pytest.approx(2 * macs / 1e9, rel=1e-12)
    assert len(t["eval.fingerprint"]) == 16 and f"eval.{hr_folder.name}.sha256" in t


@pytest.mark.slow  # default run under 10 min on 2 cores; CI's slow pass runs it
def test_evaluate_a_run_by_id_equals_its_logged_metrics(trained, hr_folder):
    cwd, r, result = trained
    out = cli([f"model={r.info.run_id}", f"eval.data={hr_folder}", "scale=2",
               "eval.format=json"], cwd, command="evaluate")
    assert out.returncode == 0, out.stderr
    obj = json.loads(out.stdout.strip().splitlines()[-1])
    assert obj["psnr"] == pytest.approx(r.data.metrics[f"{hr_folder.name}/psnr"], abs=1e-9)


@pytest.mark.parametrize("args,expected", [
    (["model=0123456789abcdef"], "does not exist"),
    (["model=bicubic"], "no evaluation set"),
    (["eval.data=/tmp"], "say what to evaluate"),
    (["model=bicubic", "eval.sets=[set5]", "eval.root=/nonexistent"],
     "python -m sr_ablate download set5"),
    (["model=bicubic", "eval.sets=[nosuchset]"], "neither a known set"),
])
def test_evaluate_bad_input(trained, hr_folder, args, expected):
    cwd, r, result = trained
    if "does not exist" in expected:
        args = args + [f"eval.data={hr_folder}"]
    out = cli(args, cwd, command="evaluate")
    assert out.returncode == 2
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], out.stderr


def test_evaluate_refuses_other_scale(trained, hr_folder):
    cwd, r, _ = trained
    out = cli([f"model={r.info.run_id}", f"eval.data={hr_folder}", "scale=4"], cwd,
              command="evaluate")
    assert out.returncode == 2 and "was trained for scale=2, not 4; pass scale=2" in out.stderr


def test_report_never_mixes_fingerprints(store, compose, tmp_path):
    run_job(compose(TINY + ["tracking.checkpoint=false"]), cwd=str(tmp_path))
    run_job(compose(TINY + ["tracking.checkpoint=false", "eval.protocol=classic"]),
            cwd=str(tmp_path))
    runs = tracking.runs_frame(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert runs["tag:eval.fingerprint"].nunique() == 2
    write(runs, tmp_path / "rep", "sr_ablate")
    md = (tmp_path / "rep" / "results.md").read_text()
    assert "These runs fall into 2 tables: runs evaluated under different protocols" in md
    assert md.count("## Fingerprint") == 2
    csvs = sorted(p.name for p in (tmp_path / "rep").glob("*.csv"))
    assert len(csvs) == 2 and "results.csv" in csvs


@pytest.mark.parametrize("kernel", ["area", "nearest", "bilinear", "bicubic"])
def test_training_degradations(kernel):
    g = torch.Generator().manual_seed(0)
    hr = torch.randint(0, 256, (3, 12, 18), generator=g).double()
    lq = downscale(hr, 3, kernel, quantize=False)
    assert lq.shape == (3, 4, 6)
    if kernel == "area":  # mean of each 3x3 block
        assert torch.allclose(lq, hr.unfold(1, 3, 3).unfold(2, 3, 3).mean((-1, -2)))
    if kernel == "nearest":  # top-left pixel of each block
        assert torch.equal(lq, hr[:, ::3, ::3])
    flat = torch.full((1, 12, 18), 77.0)
    assert torch.allclose(downscale(flat, 3, kernel, quantize=False), torch.tensor(77.0).double())


def test_run_with_area_degradation(store, compose, tmp_path, monkeypatch):
    """degradation=area reaches the training pairs (and only them: validation keeps the
    protocol's bicubic LR, so the bicubic baseline is the same as a default run's)."""
    from sr_ablate.data import pairs
    kernels = []
    real = pairs.training_pairs

    def spy(*args, **kwargs):
        kernels.append(kwargs["kernel"])
        return real(*args, **kwargs)
    monkeypatch.setattr(pairs, "training_pairs", spy)
    ids = []
    out = run_job(compose(TINY + ["degradation=area", "tracking.checkpoint=false"]),
                  cwd=str(tmp_path), on_start=ids.append)
    assert kernels == ["area"]
    r = MlflowClient(store).get_run(ids[0])
    assert r.info.status == "FINISHED" and r.data.params["degradation.name"] == "area"
    base = run_job(compose(TINY + ["tracking.checkpoint=false"]), cwd=str(tmp_path))
    assert kernels == ["area", "bicubic"]
    assert out["val/bicubic_psnr"] == base["val/bicubic_psnr"]
    assert out["train/loss"] != base["train/loss"]  # other training LR, same seed


def test_tiled_evaluation_scores_like_whole_images(compose):
    from sr_ablate.core.evaluate import Evaluator
    from sr_ablate.data import BUILTIN_VAL, builtin_dir, load_eval_images
    torch.manual_seed(0)
    model = instantiate_node(compose(["model.blocks=2", "model.channels=8"]).model).eval()
    images = [(n, img[:, :70, :90]) for n, img in
              load_eval_images([builtin_dir() / BUILTIN_VAL[0]], 2)]
    whole = Evaluator(images, 2)(model)
    tiled = Evaluator(images, 2, tile=16)(model)
    # the float outputs agree to ~3e-7 of 1; after the 8-bit rounding the protocol scores,
    # about 1 value in 100,000 lands one level apart, which moves PSNR by ~1e-5 dB
    assert tiled["val/psnr"] == pytest.approx(whole["val/psnr"], abs=1e-3)


def test_720p_to_1080p_degradation_x1_5():
    from sr_ablate.core.degrade import bicubic_up, crop_multiple, modcrop
    assert crop_multiple(1.5) == 3 and crop_multiple(4) == 4
    hr = modcrop(torch.full((3, 1081, 1921), 40.0), 1.5)
    assert hr.shape[-2:] == (1080, 1920)
    lq = downscale(hr, 1.5, "bicubic")
    assert lq.shape[-2:] == (720, 1280) and torch.all(lq == 40)
    assert bicubic_up(lq, 1.5).shape[-2:] == (1080, 1920)
