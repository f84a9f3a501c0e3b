"""Sections 4-6 of ``python -m sr_ablate bench``: fixed costs, evaluation, the live model.

Each function measures and returns a Markdown table (or a line saying why it was skipped).
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from sr_ablate import UserError, data, tracking
from sr_ablate.config import validation
from sr_ablate.core.complexity import count_params
from sr_ablate.core.degrade import bicubic_up, downscale, imresize
from sr_ablate.core.evaluate import Evaluator, Protocol, model_input, reference, score, to_metric
from sr_ablate.training import speed
from sr_ablate.training.job import instantiate_node

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


# The same with a Lightning Trainer logging to MLflow (a lightning-hydra-template user).
LIGHTNING = """
import sys, time, torch
import lightning as L
from lightning.pytorch.loggers import MLFlowLogger
from sr_ablate.models import ESPCN

class Module(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.model = ESPCN(scale=2)
    def training_step(self, batch, _):
        loss = torch.nn.functional.mse_loss(self.model(batch[0]), batch[1])
        self.log("train/loss", loss)
        return loss
    def configure_optimizers(self):
        return torch.optim.Adam(self.model.parameters(), lr=1e-4)
    def on_train_batch_end(self, *args):
        print(time.time(), flush=True)

data = torch.utils.data.TensorDataset(torch.rand(2, 3, 16, 16), torch.rand(2, 3, 32, 32))
L.Trainer(max_steps=1, logger=MLFlowLogger("start", tracking_uri=sys.argv[1]),
          enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False
          ).fit(Module(), torch.utils.data.DataLoader(data, batch_size=2))
"""
# The bare script that also imports MLflow and opens a sqlite store before its step.
BARE_MLFLOW = "import sys\nfrom mlflow import MlflowClient\n" \
    "MlflowClient(sys.argv[1]).search_experiments()\n" + BARE


def first_line_time(args: list[str], **kw) -> float:
    """Seconds from starting ``python args`` to the first number it prints."""
    t0 = time.time()
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, check=True,
                          **kw)
    return float(done.stdout.split()[0]) - t0


def _best(fn, repeats: int = 3) -> float:
    """Least wall-clock seconds of ``repeats`` calls (the least disturbed)."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def sweep_cmd(n: int, uri: str) -> list[str]:
    """One run (n = 1) or an n-job grid sweep of 4-step ESPCN runs, each evaluated once."""
    seeds = ["-m", "seed=" + ",".join(str(i) for i in range(n))] if n > 1 else []
    return [sys.executable, "-m", "sr_ablate", *seeds, "model=espcn", "trainer=smoke",
            "trainer.eval_every=4", "trainer.progress=false", f"tracking.uri={uri}"]


def report(tmp: str, jobs: int, device: torch.device, repeats: int = 3) -> str:
    """Process start -> first step (bare script, the same with MLflow, Lightning, one
    sr_ablate run; least of ``repeats``) and the cost of each further job of a sweep. The
    speed probe (``trainer.*=auto``) is measured first: a fixed cost paid once per machine,
    not per process, so it is not timed here."""
    speed.measured(device)

    def sr_ablate_runs(n: int, name: str):
        cwd = Path(tmp) / name
        cwd.mkdir(exist_ok=True)
        uri = f"sqlite:///{cwd}/mlflow.db"
        done = subprocess.run(sweep_cmd(n, uri), cwd=cwd, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"exit {done.returncode}: {done.stderr.strip()[-500:]}")
        runs = tracking.runs_frame(uri).sort_values("start_time")
        return (list(runs.get("time/to_first_step_s", [float("nan")] * len(runs))),
                [t / 1000 for t in runs["start_time"]])  # ms -> s

    # each process timed `repeats` times, interleaved, least disturbed kept
    times: dict[str, list[float]] = {"bare": [], "mlflow": [], "light": [], "sr_ablate": []}
    try:
        for _ in range(repeats):
            times["bare"].append(first_line_time(["-c", BARE]))
            times["mlflow"].append(first_line_time(["-c", BARE_MLFLOW, f"sqlite:///{tmp}/b.db"]))
            try:
                times["light"].append(
                    first_line_time(["-c", LIGHTNING, f"sqlite:///{tmp}/lightning.db"]))
            except subprocess.CalledProcessError:
                pass
            times["sr_ablate"].append(sr_ablate_runs(1, "single")[0][-1])
        firsts, starts = sr_ablate_runs(jobs, "sweep") if jobs > 1 else ([], [])
    except RuntimeError as e:
        return f"sr_ablate failed: {e}"
    bare, mlflow, first = min(times["bare"]), min(times["mlflow"]), min(times["sr_ablate"])
    light = min(times["light"]) if times["light"] else None
    rows = [["bare script: import torch + model, one Adam step", f"{bare:.2f}", "", ""],
            ["the same importing MLflow and opening a sqlite store first", f"{mlflow:.2f}",
             "", ""],
            ["Lightning Trainer + MLFlowLogger: process start -> first step",
             f"{light:.2f}" if light else "lightning not installed", "", ""],
            ["`python -m sr_ablate` (one job): process start -> first step", f"{first:.2f}",
             f"{first - bare:+.2f}; **{first - mlflow:+.2f}** over bare + MLflow", "≤ 2 s"]]
    if jobs > 1:
        later = firsts[1:]
        cycle = sorted(b - a for a, b in zip(starts, starts[1:]))
        rows += [[f"sweep of {jobs}: each further job, start -> first step (median)",
                  f"{sorted(later)[len(later) // 2]:.2f}", "", ""],
                 [f"sweep of {jobs}: one job to the next (median of run start times; "
                  "4 steps + 1 evaluation + logging)",
                  f"{cycle[len(cycle) // 2]:.2f}", f"**{cycle[len(cycle) // 2]:.2f}**",
                  "≤ 1 s"]]
    return table(["what", "seconds", "sr_ablate's extra", "goal"], rows)


def table(header: list[str], rows: list[list]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def data_folder(given: str | None) -> Path:
    if given or os.environ.get("SR_ABLATE_DATA"):
        return Path(given or os.environ["SR_ABLATE_DATA"]).expanduser()
    return Path(__file__).resolve().parents[3] / "shared" / "data"  # <repo>/../shared/data


def evaluation(given: str | None) -> str:
    """PSNR+SSIM of Set14 x4 and MATLAB-bicubic downscaling of BSD100 (best of 3)."""

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


def onnxruntime_times(model: torch.nn.Module, x: torch.Tensor, timed, frames: int) -> list[str]:
    """[ms / frame, s / 30 frames] of ESPCN x1.5 ``model`` exported to ONNX (``inference.onnx``)
    and run by onnxruntime on the CPU with torch's thread count, on ``x`` (1, 3, 720, 1280);
    "not installed" without the export extra."""
    from sr_ablate.inference import onnx
    from sr_ablate.inference.trained import Trained
    try:
        onnx.require()
    except UserError:
        return ["not installed", "not installed"]
    with tempfile.TemporaryDirectory() as tmp:
        trained = Trained.of(model, 1.5, "bench")
        session = onnx.ort_session(onnx.export_onnx(trained, Path(tmp) / "live.onnx"),
                                   threads=torch.get_num_threads())
    lr = x.cpu().numpy()
    s = timed(lambda: onnx.run_onnx(session, lr))
    return [f"{1000 * s / frames:.1f}", f"{30 * s / frames:.2f}"]


@torch.inference_mode()
def live(frames: int, device: torch.device) -> str:
    """ESPCN x1.5 at the live sweep's widths: ms per 720p -> 1080p frame, then ``frames``
    frames, against bicubic upscaling (torch's, and MATLAB's in float32) of the same frames."""

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
        cfg = validation.compose(["model=espcn", "scale=1.5", f"model.channels={ch}"])
        model = instantiate_node(cfg.model).to(device).eval()
        s = timed(lambda model=model: model(x))
        rows.append([f"ESPCN model.channels={ch} ({count_params(model):,} params), torch",
                     f"{1000 * s / frames:.1f}", f"{30 * s / frames:.2f}"])
        rows.append([f"the same exported to ONNX, onnxruntime (CPU, "
                     f"{torch.get_num_threads()} threads)", *onnxruntime_times(model, x, timed,
                                                                               frames)])
    s = timed(lambda: F.interpolate(x, size=(1080, 1920), mode="bicubic", align_corners=False))
    rows.append(["bicubic, torch `interpolate`", f"{1000 * s / frames:.1f}",
                 f"{30 * s / frames:.2f}"])
    s = timed(lambda: imresize(x, size=(1080, 1920)))
    rows.append(["bicubic, MATLAB `imresize` (sr_ablate.degrade, float32)",
                 f"{1000 * s / frames:.1f}", f"{30 * s / frames:.2f}"])
    return table(["model", "ms / frame", f"s / 30 frames ({frames} timed)"], rows)
