"""``python -m sr_ablate bench`` (``make bench``): what sr_ablate costs over the bare model.

Measured in one process run and printed side by side (Markdown tables), figures never
asserted:
1. training it/s: sr_ablate's path (patch sampling + ``fit`` + logging) against a bare loop
   with the batch in memory, and a PyTorch Lightning ``Trainer``, per model;
2. achieved GFLOP/s against the measured matmul peak of the device;
3. the knobs ``trainer.channels_last``, ``trainer.compile``, ``trainer.precision``, and what
   ``auto`` chooses on this machine (``training.speed``);
4. fixed cost: process start to first step, and the extra cost of each further job of a sweep;
5. evaluation: PSNR+SSIM over Set14 x4, MATLAB-bicubic downscaling of BSD100;
6. the live model: ms per 1280x720 -> 1920x1080 frame and 30 frames, against bicubic;
7. where a training step's time goes (``torch.profiler``), fp32 and bf16 (``bench.profile``).
``--md BENCHMARKS.md`` also writes the tables into that file, in the section of this kind of
machine (CPU model and flags, or GPU name): other machines' sections are kept.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

import torch

from sr_ablate import tracking
from sr_ablate.bench import costs
from sr_ablate.bench import profile as bp
from sr_ablate.bench import training as bt
from sr_ablate.bench.costs import table
from sr_ablate.cli.args import plain
from sr_ablate.models import SRResNet
from sr_ablate.training import speed
from sr_ablate.training.speed import pick_device

FLAGS = ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2")  # what decides the knobs


def machine_kind(device: torch.device) -> str:
    """The kind of machine a section of BENCHMARKS.md is about: GPU name, or CPU model,
    cores and the flags that decide the speed knobs."""
    if device.type == "cuda":
        return f"GPU: {torch.cuda.get_device_name(device)}"
    flags = [f for f in FLAGS if f in speed.cpu_flags()]
    return f"CPU: {speed.cpu_name()}, {os.cpu_count()} cores, {' '.join(flags) or 'no AVX2'}"


def machine(device: torch.device) -> str:
    from importlib.metadata import version  # versions without importing MLflow here
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none"
    flags = " ".join(f for f in FLAGS if f in speed.cpu_flags()) or "none of " + ", ".join(FLAGS)
    return (f"{datetime.date.today()}, {speed.cpu_name()} (flags: {flags}), {os.cpu_count()} "
            f"cores ({torch.get_num_threads()} torch threads), GPU: {gpu}; Python "
            f"{platform.python_version()}, torch {torch.__version__}, mlflow {version('mlflow')}, "
            f"hydra {version('hydra-core')}, optuna {version('optuna')}")


def steps_for(s: bt.Setup, seconds: float, log_every: int) -> int:
    """Steps that take about ``seconds``, a multiple of ``log_every`` (logging is counted)."""
    its = bt.bare_its(s, 2)
    return max(log_every, round(seconds * its / log_every) * log_every)


def training(args, device, uri: str, peaks: dict[str, float]) -> tuple[str, str]:
    """Sections 1-3: (throughput table, knobs table). ``peaks``: the matmul peak each
    precision's GFLOP/s is set against."""
    rows, knob_rows = [], []
    for name in args.models:
        overrides, batch, patch = bt.MODELS[name]
        batch, patch = args.batch or batch, args.patch or patch
        s = bt.setup(name, overrides, batch, patch, device=str(device))
        gflop = bt.step_gflop(s)
        steps_of = {}
        for precision in args.precisions:
            # bf16: both loops under the autocast trainer.precision=bf16 uses (fit's Step
            # adds none of its own for fp32, so the outer region is the one it runs in)
            amp = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16"
                   else nullcontext())
            with amp:
                bt.bare_its(s, 2)  # warm-up: kernel selection, allocator
                steps = steps_of[precision] = args.steps or steps_for(s, args.seconds, 10)
            bare, full, light = [], [], []
            with tracking.run(uri, "bench", params={"model": name, "precision": precision},
                              tags={}) as log:
                for _ in range(args.rounds):  # alternating: machine drift hits all alike
                    with amp:
                        bare.append(bt.bare_its(s, steps))
                        with bt.GpuUtilisation(device) as util:
                            full.append(bt.full_its(s, steps, log.log_metrics))
                    if not args.no_lightning and precision == "fp32":
                        light.append(bt.lightning_its(s, steps, uri))
            b, f = max(bare), max(full)  # best round of each: the least disturbed
            # ratios of the paths' rounds run back to back, then their median: drift that
            # spans rounds cancels out, a disturbed round does not decide
            ratio = statistics.median(x / y for x, y in zip(full, bare))
            li = (f"{max(light):.3f} ({statistics.median(x / y for x, y in zip(full, light)):.2f}x)"
                  if light else "not run")
            rows.append([name, precision, f"{batch} x {patch}²", steps, f"{b:.3f}", f"{f:.3f}",
                         f"**{ratio:.3f}**", li, f"{gflop:.1f}", f"{gflop * b:.0f}",
                         f"{gflop * b / peaks[precision]:.0%}"]
                        + ([util.mean()] if device.type == "cuda" else []))
            print(f"  {name} {precision}: bare {bare}, sr_ablate {full}, Lightning {light} it/s",
                  file=sys.stderr)
        if not args.no_knobs:
            steps = steps_of.get("fp32") or args.steps or steps_for(s, args.seconds, 10)
            knob_rows.append([name, *knobs(s, name, overrides, batch, patch, device, steps,
                                           args.rounds, gflop, peaks["bf16"])])
    train = table(["model", "precision", "batch x LR patch", "steps/round", "bare it/s",
                   "sr_ablate it/s", "ratio (median of rounds)",
                   "Lightning it/s (sr_ablate ×, median)",
                   "GFLOP/step", "GFLOP/s (bare)", "of peak"]
                  + (["GPU utilisation (sr_ablate)"] if device.type == "cuda" else []), rows)
    knob = table(["model", "fp32 it/s", "channels_last", "compile (compile s)",
                  "bf16 autocast", "bf16 + channels_last", "bf16 GFLOP/s (of bf16 peak)",
                  "fp16 autocast"], knob_rows)
    return train, knob


def peaks(device: torch.device) -> tuple[dict[str, float], str]:
    """The matmul peaks fp32 and bf16 rows are set against, and the words that say so. On
    CUDA the matrices are 8192² (2048² is over in microseconds there: launch and sync would
    be timed), and fp32 convolutions run as TF32 where cuDNN's ``fp32_precision`` says
    ``tf32`` (torch's default): fp32 rows are then set against a TF32 matmul's peak."""
    n = 8192 if device.type == "cuda" else 2048
    fp32 = bt.matmul_peak(device, n)
    bf16 = bt.matmul_peak(device, n, dtype=torch.bfloat16)
    words = f"fp32 **{fp32:.0f} GFLOP/s**, bf16 **{bf16:.0f} GFLOP/s**"
    tf32 = (tf32_peak(device, n) if device.type == "cuda"
            and torch.backends.cudnn.conv.fp32_precision == "tf32" else None)
    if tf32:
        words += (f", TF32 **{tf32:.0f} GFLOP/s** (cuDNN runs fp32 convolutions as TF32 here: "
                  "the fp32 rows' share is of the TF32 peak)")
        fp32 = tf32
    return {"fp32": fp32, "bf16": bf16}, words


def tf32_peak(device: torch.device, n: int) -> float | None:
    """The matmul peak with TF32 allowed, through torch's legacy switch, which sets its two
    APIs alike (cuBLAS refuses to run while they disagree); None where torch refuses to read
    the switch (the APIs were set apart)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Please use the new API settings")
        try:
            before = torch.get_float32_matmul_precision()
        except RuntimeError:
            return None
        torch.set_float32_matmul_precision("high")
        try:
            return bt.matmul_peak(device, n)
        finally:
            torch.set_float32_matmul_precision(before)


def knobs(s: bt.Setup, name, overrides, batch, patch, device, steps, rounds, gflop: float,
          bf16_peak: float) -> list[str]:
    """Bare-loop it/s with each knob as a multiple of fp32, in alternating rounds (best of
    each); the reduced precisions in one short round when they are far slower (CPU)."""
    cl = bt.setup(name, overrides, batch, patch, device=str(device), channels_last=True)
    bt.bare_its(cl, 2)
    t = time.perf_counter()
    compiled = torch.compile(s.model)
    bt.bare_its(s, 2, model=compiled)  # compiles forward and backward
    took = time.perf_counter() - t
    runs = {"base": lambda n: bt.bare_its(s, n), "cl": lambda n: bt.bare_its(cl, n),
            "compile": lambda n: bt.bare_its(s, n, model=compiled),
            "bf16": lambda n: bt.bare_its(s, n, autocast=torch.bfloat16),
            "bf16cl": lambda n: bt.bare_its(cl, n, autocast=torch.bfloat16),
            "fp16": lambda n: bt.bare_its(s, n, autocast=torch.float16)}
    reduced = ("bf16", "bf16cl", "fp16")
    best = {k: 0.0 for k in runs}
    for _i in range(rounds):
        for k, f in runs.items():
            slow = k in reduced and best[k] and best[k] < 0.5 * best["base"]
            if not slow:  # one round says enough of a 2x (or worse) slowdown
                # fewer steps for the reduced precisions: where the CPU emulates them a
                # step takes several times as long
                best[k] = max(best[k], f(steps if k not in reduced else max(2, steps // 5)))
    b, bf16 = best["base"], max(best["bf16"], best["bf16cl"])
    return [f"{b:.3f}", f"{best['cl'] / b:.2f}x", f"{best['compile'] / b:.2f}x ({took:.0f} s)",
            f"{best['bf16'] / b:.2f}x", f"{best['bf16cl'] / b:.2f}x",
            f"{gflop * bf16:.0f} ({gflop * bf16 / bf16_peak:.0%})", f"{best['fp16'] / b:.2f}x"]


def auto_line(device: torch.device) -> str:
    """What ``trainer.precision=auto`` / ``channels_last=auto`` choose here for SRResNet (and
    for a model whose bf16 quality is not proven), from the probe measured (or cached)."""
    entry = speed.measured(device)
    c = speed.choose("auto", "auto", device, SRResNet())
    probe = ", ".join(f"{k} {v:.2f}" for k, v in entry["it_per_s"].items())
    return (f"`auto` here (probe: {entry['probe']}; it/s {probe}; measured "
            f"{entry['measured']}): SRResNet trains in **{c.precision}**, channels_last="
            f"**{str(c.channels_last).lower()}** — {c.why_precision}; {c.why_channels_last}. "
            "Models whose bf16 quality is not measured train in fp32.")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="sr-ablate bench", description=plain(__doc__),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(bt.MODELS), choices=list(bt.MODELS))
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds; best kept")
    ap.add_argument("--seconds", type=float, default=3.0, help="length of one round")
    ap.add_argument("--steps", type=int, default=0, help="steps per round (0: from --seconds)")
    ap.add_argument("--batch", type=int, default=0, help="batch size for every model "
                    "(default: each model's; the paper recipe: 8)")
    ap.add_argument("--patch", type=int, default=0, help="LR patch side for every model "
                    "(default: each model's; the paper recipe: 64)")
    ap.add_argument("--jobs", type=int, default=4, help="jobs in the sweep timed for section 4")
    ap.add_argument("--repeats", type=int, default=3,
                    help="fixed cost: times each process is started (least kept)")
    ap.add_argument("--frames", type=int, default=30, help="live model: frames timed")
    ap.add_argument("--data", default=None, help="folder holding Set14 and BSD100 "
                    "(default: $SR_ABLATE_DATA, else ../shared/data)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--no-lightning", action="store_true")
    ap.add_argument("--no-knobs", action="store_true")
    ap.add_argument("--precisions", nargs="+", default=["fp32"], choices=["fp32", "bf16"],
                    help="training table: one row per model and precision (bf16: both loops "
                    "under bf16 autocast, as trainer.precision=bf16)")
    ap.add_argument("--only", nargs="+", default=["train", "startup", "eval", "live", "profile"],
                    choices=["train", "startup", "eval", "live", "profile"])
    ap.add_argument("--profile-steps", type=int, default=5, help="steps profiled per setting")
    ap.add_argument("--md", type=Path, help="also write the tables into this Markdown file")
    args = ap.parse_args(argv)
    if not args.no_lightning and "train" in args.only:
        try:
            import lightning  # noqa: F401
        except ImportError:
            ap.error("the Lightning comparison needs lightning: pip install -e '.[bench]', "
                     "or pass --no-lightning")
    device = pick_device(args.device)
    kind = machine_kind(device)
    out = [f"## {kind}\n", f"Machine: {machine(device)}."]
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{tmp}/bench.db"
        if "train" in args.only:
            peak, words = peaks(device)
            out.append(f"\n### Training (device {device}; matmul peak measured: {words})\n")
            train, knob = training(args, device, uri, peak)
            out.append(train)
            if not args.no_knobs:
                out += ["\nKnobs, bare loop it/s relative to fp32 (trainer.channels_last, "
                        "trainer.compile, trainer.precision):\n", knob, "\n" + auto_line(device)]
        if "startup" in args.only:
            out += ["\n### Fixed cost\n", costs.report(tmp, args.jobs, device,
                                                                  args.repeats)]
        if "eval" in args.only:
            out += ["\n### Evaluation\n", costs.evaluation(args.data)]
        if "live" in args.only:
            out += ["\n### Live model (ESPCN x1.5, 1280x720 -> 1920x1080)\n",
                    costs.live(args.frames, device)]
        if "profile" in args.only:
            out += ["\n### Where a SRResNet-16 training step's time goes (torch.profiler, "
                    f"{args.profile_steps} bare steps each; share of the operators' self time)\n",
                    bp.report("SRResNet-16", device, args.profile_steps)]
    text = "\n".join(out)
    print(text)
    if args.md:
        write_md(args.md, text, kind)
    return 0


def markers(kind: str) -> tuple[str, str]:
    return f"<!-- bench:start {kind} -->", f"<!-- bench:end {kind} -->"


def write_md(path: Path, text: str, kind: str) -> None:
    """Put ``text`` between the bench markers of ``kind`` in ``path``: the section of this
    kind of machine is replaced, the other machines' are kept; a new kind is appended."""
    start, end = markers(kind)
    old = path.read_text() if path.exists() else ""
    block = f"{start}\n{text}\n{end}"
    if start in old and end in old:
        new = old[:old.index(start)] + block + old[old.index(end) + len(end):]
    else:
        new = old + ("\n" if old and not old.endswith("\n") else "") + ("\n" if old else "") \
            + block + "\n"
    path.write_text(new)


if __name__ == "__main__":
    raise SystemExit(main())
