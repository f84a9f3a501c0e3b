"""Sections 4-6 of ``python -m sr_ablate.bench``: fixed costs, evaluation, the live model.

Each function measures and returns a Markdown table (or a line saying why it was skipped).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import torch

# The bare script: import torch and the model, one Adam step, print the wall clock.
BARE = """
import time, torch
from sr_ablate.models import ESPCN
m = ESPCN(scale=2)
opt = torch.optim.Adam(m.parameters(), lr=1e-4)
x, y = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 32, 32)
loss = torch.nn.functional.mse_loss(m(x), y)
opt.zero_grad(); loss.backward(); opt.step()
print(time.time())
"""


def _best(fn, repeats: int = 3) -> float:
    """Least wall-clock seconds of ``repeats`` calls (the least disturbed)."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def sweep_cmd(n: int, uri: str) -> list[str]:
    """An n-job grid sweep of 4-step ESPCN runs, one evaluation each (at the end)."""
    return [sys.executable, "-m", "sr_ablate", "-m", "model=espcn", "trainer=smoke",
            "trainer.eval_every=4", "trainer.progress=false", f"tracking.uri={uri}",
            "seed=" + ",".join(str(i) for i in range(n))]


def report(tmp: str, jobs: int, device: torch.device) -> str:
    """Process start -> first step (bare script, one run, a sweep's first job) and the
    extra wall time of each further job of a sweep, in separate processes."""
    from sr_ablate import tracking
    t0 = time.time()
    done = subprocess.run([sys.executable, "-c", BARE], capture_output=True, text=True,
                          check=True)
    bare = float(done.stdout.split()[-1]) - t0
    walls, firsts = {}, {}
    for n in dict.fromkeys((1, jobs)):
        cwd = Path(tmp) / f"sweep{n}"
        cwd.mkdir()
        uri = f"sqlite:///{cwd}/mlflow.db"
        t0 = time.time()
        done = subprocess.run(sweep_cmd(n, uri), cwd=cwd, capture_output=True, text=True)
        walls[n] = time.time() - t0
        if done.returncode:
            return f"sweep failed (exit {done.returncode}): {done.stderr.strip()[-500:]}"
        runs = tracking.runs_frame(uri).sort_values("start_time")
        firsts[n] = list(runs["time/to_first_step_s"])
    first = firsts[1][0]
    rows = [["bare script: import torch + model, one Adam step", f"{bare:.2f}", "", ""],
            ["`python -m sr_ablate` (one job): process start -> first step",
             f"{first:.2f}", f"**{first - bare:+.2f}**", "≤ 2 s"]]
    if jobs > 1:
        later = firsts[jobs][1:]
        per_job = (walls[jobs] - walls[1]) / (jobs - 1)
        rows += [[f"sweep of {jobs}: each further job, start -> first step (median)",
                  f"{sorted(later)[len(later) // 2]:.2f}", "", ""],
                 [f"sweep of {jobs}: wall time per further job "
                  f"(({walls[jobs]:.1f} - {walls[1]:.1f}) / {jobs - 1}), 4 steps + 1 evaluation",
                  f"{per_job:.2f}", f"**{per_job:.2f}**", "≤ 1 s"]]
    return table(["what", "seconds", "sr_ablate's extra", "goal"], rows)


def table(header, rows) -> str:
    from sr_ablate.bench import table as t
    return t(header, rows)


def data_folder(given: str | None) -> Path:
    if given or os.environ.get("SR_ABLATE_DATA"):
        return Path(given or os.environ["SR_ABLATE_DATA"]).expanduser()
    return Path(__file__).resolve().parents[2] / "shared" / "data"


def evaluation(given: str | None) -> str:
    """PSNR+SSIM of Set14 x4 and MATLAB-bicubic downscaling of BSD100 (best of 3)."""
    from PIL import Image

    from sr_ablate import data
    from sr_ablate.degrade import bicubic_up, downscale
    from sr_ablate.evaluate import Evaluator, Protocol, model_input, reference, score, to_metric
    root = data_folder(given)
    if not (root / "Set14").is_dir() or not (root / "BSD100").is_dir():
        return f"skipped: Set14 and BSD100 not found under {root} (pass --data <folder>)"
    s14 = data.load_eval_images(data.list_images(root / "Set14"), 4)
    b100 = data.load_eval_images(data.list_images(root / "BSD100"), 4)
    p = Protocol()
    outs = [(bicubic_up(model_input(hr, 4, p, 3), 4), hr) for _, hr in s14]
    metrics = _best(lambda: [score(to_metric(o, hr, p), reference(hr, p), 4) for o, hr in outs])
    whole = _best(lambda: Evaluator(s14, 4, p).bicubic_only())
    down = _best(lambda: [downscale(hr, 4) for _, hr in b100])
    pils = [Image.fromarray(hr.permute(1, 2, 0).numpy()) for _, hr in b100]
    pil = _best(lambda: [im.resize((im.width // 4, im.height // 4), Image.BICUBIC)
                         for im in pils])
    return table(["what (CPU, float64)", "seconds", "goal"], [
        ["Set14 x4: PSNR + SSIM of 14 SR outputs (Y, shave 4)", f"**{metrics:.3f}**", "< 1 s"],
        ["Set14 x4: whole bicubic baseline (downscale, upscale, PSNR + SSIM)", f"{whole:.3f}",
         ""],
        ["BSD100 x4: MATLAB-bicubic downscale of 100 images", f"**{down:.3f}**", "< 2 s"],
        ["BSD100 x4: PIL bicubic (not MATLAB's filter; for scale)", f"{pil:.3f}", ""]])


@torch.inference_mode()
def live(frames: int, device: torch.device) -> str:
    """ESPCN x1.5 at the live sweep's widths: ms per 720p -> 1080p frame, then ``frames``
    frames, against bicubic upscaling (torch's, and MATLAB's in float32) of the same frames."""
    import torch.nn.functional as F

    from sr_ablate import preflight
    from sr_ablate.complexity import count_params
    from sr_ablate.degrade import imresize
    from sr_ablate.run import build_model
    x = torch.rand(1, 3, 720, 1280, generator=torch.Generator().manual_seed(0)).to(device)

    def timed(fn) -> float:
        fn()  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        for _ in range(frames):
            y = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        assert y.shape[-2:] == (1080, 1920), y.shape
        return time.perf_counter() - t

    rows = []
    for ch in (16, 32, 64):
        cfg = preflight.compose(["model=espcn", "scale=1.5", f"model.channels={ch}"])
        model = build_model(cfg.model).to(device).eval()
        s = timed(lambda: model(x))
        rows.append([f"ESPCN model.channels={ch} ({count_params(model):,} params)",
                     f"{1000 * s / frames:.1f}", f"{30 * s / frames:.2f}"])
    s = timed(lambda: F.interpolate(x, size=(1080, 1920), mode="bicubic", align_corners=False))
    rows.append(["bicubic, torch `interpolate`", f"{1000 * s / frames:.1f}",
                 f"{30 * s / frames:.2f}"])
    s = timed(lambda: imresize(x, size=(1080, 1920)))
    rows.append(["bicubic, MATLAB `imresize` (sr_ablate.degrade, float32)",
                 f"{1000 * s / frames:.1f}", f"{30 * s / frames:.2f}"])
    return table(["model", "ms / frame", f"s / 30 frames ({frames} timed)"], rows)
