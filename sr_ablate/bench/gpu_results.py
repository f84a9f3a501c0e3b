"""What the GPU check (``bench.gpu_check``) writes: the machine's description, and its
training runs read back from MLflow as small Markdown files."""
from __future__ import annotations

import platform
import statistics
import sys


def environment(device: str) -> int:
    """Print torch, CUDA, cuDNN and the GPU (or the CPU) to stdout; 1 when ``device`` is CUDA
    and torch sees none (every later step would fail for that one reason)."""
    from importlib.metadata import version

    import torch

    from sr_ablate.core.fp32 import describe
    from sr_ablate.training import speed
    print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA build "
          f"{torch.version.cuda}), cuDNN {torch.backends.cudnn.version()}, mlflow "
          f"{version('mlflow')}, numpy {version('numpy')}")
    print(f"CPU: {speed.cpu_name()}, {torch.get_num_threads()} torch threads")
    print(f"float32 precision (training's; evaluation runs IEEE): {describe()}")
    if not torch.cuda.is_available():
        print("CUDA: torch sees no GPU")
        return 1 if device.startswith("cuda") else 0
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        print(f"GPU {i}: {p.name}, compute capability {p.major}.{p.minor}, "
              f"{p.total_memory / 2**30:.1f} GiB, {p.multi_processor_count} SMs, bf16 "
              f"{'yes' if torch.cuda.is_bf16_supported() else 'no'}")
    return 0


def _only_run(uri: str, experiment: str):
    from sr_ablate import tracking
    runs = tracking.runs_frame(uri, experiment)
    if runs.empty:
        raise RuntimeError(f"no run in experiment {experiment} of {uri}")
    return runs.sort_values("start_time").iloc[-1]


def steps_per_s(uri: str, experiment: str) -> float:
    """Median ``train/it_per_s`` of the newest run of ``experiment``, its first log left out
    (kernel selection and warm-up) when there are others."""
    from sr_ablate import tracking
    values = [v for _, v in tracking.metric_history(
        uri, _only_run(uri, experiment)["run_id"], "train/it_per_s")]
    return statistics.median(values[1:] or values)


def sampling_md(rates: dict[str, float], device: str) -> str:
    """Steps/s per ``data.on_device`` value."""
    lines = [f"# Patch sampling on the host or on the device ({device})", "",
             "Short sr_ablate training runs (the training step's model, batch and patch), "
             "median `train/it_per_s` after the first log.", "",
             "| data.on_device | steps/s |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in rates.items()]
    if "true" in rates and "false" in rates:
        lines += ["", f"Device-side over host-side: {rates['true'] / rates['false']:.2f}x."]
    if not rates:
        lines.append("| (no run finished: see sampling-*.log) | |")
    return "\n".join(lines) + "\n"


def results_md(uri: str, experiment: str, why: str, wall: float, args: list[str]) -> str:
    """The training run: PSNR/SSIM per set against bicubic, steps/s, what it ran with."""
    from sr_ablate import tracking
    r = _only_run(uri, experiment)
    rates = [v for _, v in tracking.metric_history(uri, r["run_id"], "train/it_per_s")]
    rows = ["| set | PSNR dB | bicubic dB | Δ dB | SSIM | bicubic SSIM |",
            "|---|---|---|---|---|---|"]
    for s in ("set5", "set14", "val"):
        if f"{s}/psnr" in r and r[f"{s}/psnr"] == r[f"{s}/psnr"]:  # not NaN
            rows.append(f"| {s} | {r[f'{s}/psnr']:.2f} | {r[f'{s}/bicubic_psnr']:.2f} | "
                        f"{r[f'{s}/psnr'] - r[f'{s}/bicubic_psnr']:+.2f} | "
                        f"{r[f'{s}/ssim']:.4f} | {r[f'{s}/bicubic_ssim']:.4f} |")
    tag = lambda k: r.get(f"tag:{k}", "?")  # noqa: E731
    first = r.get("time/to_first_step_s", float("nan"))
    return "\n".join([
        "# GPU check: training run", "",
        f"Run `{r['run_id']}` ({r['status']}), experiment `{experiment}` in `{uri}`; "
        f"device {tag('device')}, precision {tag('sr_ablate.precision')}, float32 "
        f"{tag('sr_ablate.tf32')}, channels_last {tag('sr_ablate.channels_last')}, "
        f"data.on_device {tag('sr_ablate.on_device')}; {why}; {wall:.0f} s wall for the whole "
        "run.", "",
        *rows, "",
        "`val`: the last 2 T91 images, held out. Steps/s (`train/it_per_s`, evaluation and "
        f"logging left out): median {statistics.median(rates[1:] or rates):.2f}, last "
        f"{rates[-1]:.2f}; time to the first step {first:.1f} s.",
        "", "Command: `python -m sr_ablate " + " ".join(args) + "`", ""])


if __name__ == "__main__":
    raise SystemExit(environment(sys.argv[1] if len(sys.argv) > 1 else "cuda"))
