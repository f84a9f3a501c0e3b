"""Speed settings chosen per device: ``trainer.precision=auto``, ``trainer.channels_last=auto``.

A reduced precision is chosen only where two things hold:
  * the device runs it natively: a CPU with ``avx512_bf16`` or ``amx_bf16`` (without them
    oneDNN emulates bf16, several times slower than fp32), a CUDA GPU of compute capability
    8.0 or more (bf16 tensor cores); fp16 is never chosen (it needs loss scaling and its
    quality has not been measured here);
  * bf16 training was measured to give the results fp32 gives for this kind of run:
    ``BF16_PROVEN`` (docs/precision.md holds the measurement). Other models, and losses that
    run a network (VGG54), train in fp32 until they are measured too.
Whether the knob is faster is then measured, not assumed: a short probe (a 2-block
SRResNet's training step, fp32 and bf16, NCHW and channels-last, in alternating rounds) runs
once per machine, thread count and torch version and is cached in
``$SR_ABLATE_CACHE/speed.json`` (default ``~/.cache/sr_ablate``), so the jobs of a sweep
read it instead of measuring again. An explicit value (``trainer.precision=fp32``) is used as
given. The choice and its reason go on every run as tags (``Choice.tags``).
"""
from __future__ import annotations

import datetime
import fcntl
import json
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

CACHE_ENV = "SR_ABLATE_CACHE"
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
# Model classes whose bf16-autocast training (fp32 master weights) was measured against fp32
# at trainer=cpu: final PSNR on Set5 and Set14 within 0.05 dB, mean of 2 seeds
# (docs/precision.md), and the device kinds the measurement ran on. Autocast is another code
# path on another kind (CUDA's bf16 kernels and reductions are not oneDNN's): there `auto`
# stays fp32 until it is measured there too. A class or kind is added only with a measurement.
BF16_PROVEN = {"SRResNet": ("cpu",)}
# A knob is taken when its measured step is at least this much faster: the probe's rounds
# vary by a few per cent on a shared machine, so a smaller gain may be noise.
FASTER = {"precision": 1.10, "channels_last": 1.03}
PROBE = ("a 2-block SRResNet x2 training step (Adam), batch 16 x 24² LR patches (CPU) or "
         "16 x 64² (CUDA)")
# Raised whenever the probe or the figures a decision reads change: a cached entry of
# another version is measured again, never read as if it held today's figures.
PROBE_VERSION = 2


@dataclass(frozen=True)
class Choice:
    """The precision (fp32 | bf16 | fp16) and memory layout a run trains with, and why."""
    precision: str
    channels_last: bool
    why_precision: str
    why_channels_last: str

    def tags(self) -> dict[str, str]:
        return {"sr_ablate.precision": self.precision,
                "sr_ablate.precision_reason": self.why_precision,
                "sr_ablate.channels_last": str(self.channels_last).lower(),
                "sr_ablate.channels_last_reason": self.why_channels_last}

    def line(self) -> str:
        return (f"sr_ablate: training in {self.precision} ({self.why_precision}); channels_last="
                f"{str(self.channels_last).lower()} ({self.why_channels_last})")


def pick_device(name: str) -> torch.device:
    """``trainer.device``: ``auto`` is CUDA when there is a GPU, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def prepare(precision: str, channels_last, device: str, threads: int | None = None) -> None:
    """Measure now what ``auto`` will need, with the threads each job will have: a sweep's
    launching process calls it once, before parallel jobs start (they then read the cache
    instead of measuring at once on a shared machine)."""
    if "auto" not in (precision, channels_last):
        return
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        measured(pick_device(device))
    finally:
        torch.set_num_threads(before)


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's feature flags (``/proc/cpuinfo``; empty where there is none)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine()


def machine_key(device: torch.device) -> str:
    """What the measurement depends on: the device, its threads, the torch build."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        what = (f"{torch.cuda.get_device_name(device)} (capability {major}.{minor}), "
                f"CUDA {torch.version.cuda}")
    else:
        flags = sorted(cpu_flags() & {*BF16_CPU_FLAGS, "avx512f", "avx2", "amx_tile"})
        what = (f"{cpu_name()} [{' '.join(flags)}], {os.cpu_count()} cores, "
                f"{torch.get_num_threads()} threads")
    return f"{device.type}: {what}; torch {torch.__version__}"


def native_bf16(device: torch.device) -> str | None:
    """Why this device runs bf16 natively, or None when it does not."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"compute capability {major}.{minor} has bf16 tensor cores" if major >= 8 \
            else None
    if device.type == "cpu":
        have = [f for f in BF16_CPU_FLAGS if f in cpu_flags()]
        return f"this CPU has {' and '.join(have)}" if have else None
    return None


def _probe_step(device: torch.device, precision: str, channels_last: bool):
    from sr_ablate.models import SRResNet

    torch.manual_seed(0)
    model = SRResNet(blocks=2).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    side = 64 if device.type == "cuda" else 24
    g = torch.Generator().manual_seed(0)
    lq = torch.rand(16, 3, side, side, generator=g).to(device)
    gt = torch.rand(16, 3, 2 * side, 2 * side, generator=g).to(device)
    amp = torch.autocast(device.type, torch.bfloat16) if precision == "bf16" else nullcontext()

    def step():
        with amp:
            loss = torch.nn.functional.mse_loss(model(lq), gt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def _its(step, n: int, device: torch.device) -> float:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t = time.perf_counter()
    for _ in range(n):
        step()
    sync()
    return n / (time.perf_counter() - t)


def _variants(device: torch.device) -> list[tuple[str, bool]]:
    """(precision, channels_last) pairs the probe measures on ``device``."""
    variants = [("fp32", False), ("fp32", True)]
    if native_bf16(device):
        variants += [("bf16", False), ("bf16", True)]
    return variants


def _name(precision: str, channels_last: bool) -> str:
    return precision + ("+channels_last" if channels_last else "")


def usable(entry, device: torch.device) -> bool:
    """A cached entry is used only when the same probe version measured every figure a
    decision on ``device`` reads (an older entry with fp32 figures only once made ``auto``
    say "a bf16 step measured only 0.00x fp32")."""
    if not isinstance(entry, dict) or entry.get("probe_version") != PROBE_VERSION:
        return False
    its = entry.get("it_per_s")
    return isinstance(its, dict) and all(
        isinstance(its.get(_name(*v)), (int, float)) and its[_name(*v)] > 0
        for v in _variants(device))


def measure(device: torch.device, rounds: int = 3, seconds: float = 0.3) -> dict[str, float]:
    """Steps per second of the probe (``PROBE``) for fp32 and channels-last, and bf16 (both
    layouts) where the device runs it natively; best of ``rounds`` alternating rounds of
    about ``seconds`` each, so that drift of the machine hits every variant alike."""
    variants = _variants(device)
    steps = {v: _probe_step(device, *v) for v in variants}
    for step in steps.values():
        step()  # kernel selection, allocator
    n = max(2, round(seconds * _its(steps[variants[0]], 2, device)))
    best = {v: 0.0 for v in variants}
    for _ in range(rounds):
        for v, step in steps.items():
            best[v] = max(best[v], _its(step, n, device))
    return {_name(p, cl): round(r, 3) for (p, cl), r in best.items()}


def cache_path() -> Path:
    root = os.environ.get(CACHE_ENV) or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sr_ablate"
    return Path(root) / "speed.json"


_measured: dict[str, dict] = {}  # this process's: a sweep's jobs in one process read it once


def measured(device: torch.device) -> dict:
    """This machine's probe figures: ``{"it_per_s": {...}, "measured": date, "cache": path}``,
    from the cache, or measured now (and cached). Processes that start together wait for the
    one measuring (a lock file) instead of measuring at once and slowing each other."""
    key = machine_key(device)
    if key in _measured:
        return _measured[key]
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(path.with_suffix(".lock"), "w")
    except OSError as e:  # read-only home: measure for this process only
        entry = _new_entry(device, f"not cached: {path.parent}: {e.strerror}")
        _measured[key] = entry
        return entry
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        cache = _read(path)
        entry = cache.get(key)
        if not usable(entry, device):  # none, damaged, another probe version, or incomplete
            entry = _new_entry(device, f"kept in {path}")
            cache[key] = entry
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(cache, indent=1, sort_keys=True) + "\n")
            os.replace(tmp, path)  # readers never see half a file
    entry = {**entry, "cache": str(path)}
    _measured[key] = entry
    return entry


def _new_entry(device: torch.device, where: str) -> dict:
    print(f"sr_ablate: measuring the speed settings on this machine (about 10 s, once; "
          f"{where})", file=sys.stderr, flush=True)
    return {"it_per_s": measure(device), "probe": PROBE, "probe_version": PROBE_VERSION,
            "measured": datetime.datetime.now().isoformat(timespec="seconds")}


def _read(path: Path) -> dict:
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):  # none yet, or damaged: measured again and rewritten
        return {}
    return cache if isinstance(cache, dict) else {}


def not_proven(model: torch.nn.Module, loss_fn: torch.nn.Module | None,
               device: torch.device | None = None) -> str | None:
    """Why bf16 training is not known to keep this run's results on ``device`` (default: the
    CPU), or None when it is."""
    name, kind = type(model).__name__, (device or torch.device("cpu")).type
    if name not in BF16_PROVEN:
        return f"bf16 training of {name} has not been measured against fp32"
    if loss_fn is not None and any(True for _ in loss_fn.parameters()):
        return "bf16 training with a network in the loss (VGG) has not been measured " \
               "against fp32"
    if kind not in BF16_PROVEN[name]:
        kinds = " and ".join(k.upper() if k == "cpu" else k for k in BF16_PROVEN[name])
        return (f"bf16 quality of {name} was measured with {kinds} autocast, not on {kind}: "
                "fp32 until it is measured there (trainer.precision=bf16 uses it anyway)")
    return None


def choose(precision: str, channels_last, device: torch.device, model: torch.nn.Module,
           loss_fn: torch.nn.Module | None = None) -> Choice:
    """Resolve ``trainer.precision`` / ``trainer.channels_last`` (either may be ``auto``)."""
    why_p = f"trainer.precision={precision}"

    def its() -> dict[str, float]:  # measured only when a choice needs it
        return measured(device)["it_per_s"]
    if precision == "auto":
        precision, why_p = _auto_precision(device, model, loss_fn, its)
    elif precision in ("bf16", "fp16") and device.type == "cpu" and (
            precision == "fp16" or native_bf16(device) is None):
        why_p += (f"; this CPU has no native {precision}: it is emulated, expect it several "
                  "times slower than fp32 (trainer.precision=auto chooses per machine)")
    if channels_last != "auto":
        return Choice(precision, bool(channels_last), why_p,
                      f"trainer.channels_last={str(channels_last).lower()}")
    measured_its = its()
    base, cl = measured_its.get(precision), measured_its.get(f"{precision}+channels_last")
    if not base or not cl:
        return Choice(precision, False, why_p, f"auto: not measured for {precision}")
    ratio = cl / base
    return Choice(precision, ratio >= FASTER["channels_last"], why_p,
                  f"auto: channels-last measured {ratio:.2f}x the NCHW {precision} step here "
                  f"(taken from {FASTER['channels_last']:.2f}x)")


def _auto_precision(device, model, loss_fn, rates) -> tuple[str, str]:
    """(precision, why) for ``auto``; ``rates()`` gives the probe's it/s (measured on first
    use)."""
    native = native_bf16(device)
    if native is None:
        return "fp32", f"auto: no native bf16 on this {device.type} device"
    unproven = not_proven(model, loss_fn, device)
    if unproven:
        return "fp32", f"auto: {unproven} (docs/precision.md)"
    its = rates()
    fp32 = max(its.get("fp32", 0.0), its.get("fp32+channels_last", 0.0))
    bf16 = max(its.get("bf16", 0.0), its.get("bf16+channels_last", 0.0))
    ratio = bf16 / fp32 if fp32 else 0.0
    if ratio < FASTER["precision"]:
        return "fp32", f"auto: {native}, but a bf16 step measured only {ratio:.2f}x fp32 here"
    return "bf16", (f"auto: {native}; a bf16 step measured {ratio:.2f}x as fast as fp32 here, "
                    f"and bf16 training measured equal to fp32 in quality on {device.type} "
                    "(docs/precision.md)")


_said: set[str] = set()


def say_once(choice: Choice) -> None:
    """Print the choice on stderr, once per process and choice (a sweep's jobs say it once)."""
    line = choice.line()
    if line not in _said:
        _said.add(line)
        print(line, file=sys.stderr, flush=True)
