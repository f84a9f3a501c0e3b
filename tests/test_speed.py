"""Speed knobs and fixed-cost timing: trainer.precision / channels_last / compile keep the
results, the first-step time is logged, and the benchmark command runs end to end."""
from __future__ import annotations

import time

import pytest
import torch

from sr_ablate import UserError, data, launch, tracking
from sr_ablate.config import check
from sr_ablate.models import ESPCN
from sr_ablate.run import run
from sr_ablate.train import fit

from conftest import SHARED_DATA, TINY, cli

QUIET = TINY + ["tracking.checkpoint=false"]


def patches(seed=0):
    g = torch.Generator().manual_seed(seed)
    while True:
        gt = torch.rand(2, 3, 16, 16, generator=g)
        yield {"lq": gt[..., ::2, ::2], "gt": gt}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fit_autocasts_forward_and_still_learns(dtype):
    torch.manual_seed(0)
    model = ESPCN(scale=2, channels=8, mid_channels=4)
    seen = []
    model.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    out = fit(model, patches(), opt, steps=4, loss_fn=torch.nn.MSELoss(), log_every=2,
              progress=False, autocast=dtype)
    assert seen == [dtype] * 4  # every training forward ran in the reduced precision
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights fp32
    assert torch.isfinite(torch.tensor(out["train/loss"]))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_first_log_holds_time_to_first_step(store, compose, tmp_path):
    started = time.time() - 30  # as if the job had started 30 s ago
    run(compose(QUIET), cwd=str(tmp_path), started_at=started)
    (r,) = tracking.runs_frame(store).itertuples()
    hist = tracking.metric_history(store, r.run_id, "time/to_first_step_s")
    assert len(hist) == 1 and hist[0][0] == 2  # logged once, with the first log (step 2)
    assert 30 < hist[0][1] < 30 + (time.time() - started - 30)


def test_job_clock_counts_from_process_start_then_from_each_job():
    age = time.time() - launch.process_start()
    assert 0 < age < time.monotonic() + 1  # started before now, not before the machine booted
    launch._jobs_in_process = 0
    assert launch.job_clock() == pytest.approx(launch.process_start(), abs=0.05)
    assert launch.job_clock() == pytest.approx(time.time(), abs=0.05)


@pytest.mark.parametrize("knob,tol", [("trainer.channels_last=true", 0.02),
                                      ("trainer.precision=bf16", 0.5)])
def test_knobs_keep_the_result(store, compose, tmp_path, knob, tol):
    base = run(compose(QUIET), cwd=str(tmp_path))
    other = run(compose(QUIET + [knob]), cwd=str(tmp_path))
    assert other["val/psnr"] == pytest.approx(base["val/psnr"], abs=tol)
    frame = tracking.runs_frame(store)  # two real runs, the knob recorded as a param
    key, value = knob.split("=")
    assert sorted(frame[key]) == sorted({"channels_last": ["False", "True"],
                                         "precision": ["bf16", "fp32"]}[key.split(".")[1]])


@pytest.mark.slow
def test_compile_keeps_the_result(store, compose, tmp_path):
    base = run(compose(QUIET), cwd=str(tmp_path))
    compiled = run(compose(QUIET + ["trainer.compile=true"]), cwd=str(tmp_path))
    assert compiled["val/psnr"] == pytest.approx(base["val/psnr"], abs=0.02)


def test_unknown_precision_is_refused_in_one_line(compose):
    with pytest.raises(UserError, match=r"trainer.precision='fp8' is not valid; use one of: "
                                        r"fp32, bf16, fp16"):
        check(compose(QUIET + ["trainer.precision=fp8"]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_pairs_degraded_on_the_gpu_match_the_cpu():
    images = data.load_images([data.builtin_dir() / "chelsea.png"], 2, "rgb")
    cpu = data.make_pairs(images, 2)
    gpu = data.make_pairs(images, 2, device="cuda")
    assert gpu[0].lq.device.type == "cpu"
    assert (cpu[0].lq.int() - gpu[0].lq.int()).abs().max() <= 1


@pytest.mark.slow
def test_bench_command_prints_every_section_and_writes_markdown(tmp_path):
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# notes kept\n<!-- bench:start -->\nold\n<!-- bench:end -->\ntail kept\n")
    out = cli(["--models", "ESPCN", "--rounds", "1", "--steps", "2", "--no-knobs",
               "--frames", "1", "--only", "train", "eval", "live", "--md", str(md)],
              cwd=tmp_path, module="sr_ablate.bench", timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    assert "| ESPCN | 64 x 32² | 2 |" in text and "GFLOP/s" in text
    if (SHARED_DATA / "Set14").is_dir():
        assert "Set14 x4: PSNR + SSIM" in text
    assert "bicubic, torch `interpolate`" in text
    saved = md.read_text()
    assert saved.startswith("# notes kept\n") and saved.endswith("tail kept\n")
    assert "old" not in saved and "| ESPCN | 64 x 32² | 2 |" in saved


@pytest.mark.slow
def test_bench_fixed_cost_section(tmp_path):
    out = cli(["--only", "startup", "--jobs", "2", "--repeats", "1"], cwd=tmp_path, module="sr_ablate.bench",
              timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "process start -> first step" in out.stdout and "one job to the next" in out.stdout
    assert "sweep failed" not in out.stdout
