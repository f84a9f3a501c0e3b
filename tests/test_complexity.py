"""Parameter counts, FLOPs against hand counts, timing (and how busy the machine was meanwhile),
and the input size each model takes."""
from __future__ import annotations

import contextlib
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import MODEL_CONFIGS

from sr_ablate.core.complexity import count_params, gflops, model_input_shape, ms_per_frame
from sr_ablate.models import SRResNet
from sr_ablate.report.timings import (
    IDLE,
    LOAD,
    LOAD_COL,
    MS,
    SPREAD,
    SPREAD_COL,
    UNDER_LOAD,
    run_states,
)
from sr_ablate.training.job import instantiate_node


class Stub(torch.nn.Module):
    """A 3x3 conv standing in for a model of either input kind at any scale."""

    def __init__(self, scale: float, upsampled_input: bool):
        super().__init__()
        self.scale, self.upsampled_input = scale, upsampled_input
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


def test_count_params_is_the_sum_of_numels():
    model = SRResNet(channels=8, blocks=2)
    assert count_params(model) == sum(p.numel() for p in model.parameters())
    assert count_params(torch.nn.Conv2d(3, 8, 3)) == 8 * 3 * 9 + 8


def test_gflops_of_one_conv_is_the_hand_count():
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    assert gflops(conv, (1, 3, 10, 10)) == pytest.approx(2 * 8 * 3 * 9 * 10 * 10 / 1e9, rel=1e-12)


def test_gflops_grow_linearly_with_blocks():
    """Each residual block adds two 64->64 3x3 convs on the LR grid."""
    shape = (1, 3, 12, 16)
    g = {b: gflops(SRResNet(blocks=b), shape) for b in (2, 4, 8)}
    per_block = 2 * (2 * 64 * 64 * 9 * 12 * 16) / 1e9
    assert g[4] - g[2] == pytest.approx(2 * per_block, rel=1e-9)
    assert g[8] - g[4] == pytest.approx(4 * per_block, rel=1e-9)


def test_gflops_leave_the_mode_alone():
    model = SRResNet(channels=8, blocks=1).train()
    gflops(model, (1, 3, 8, 8))
    assert model.training


def test_ms_per_frame_is_the_fastest_pass():
    model = SRResNet(channels=8, blocks=1).train()
    t = ms_per_frame(model, (1, 3, 16, 16), warmup=1, repeats=3)
    assert t.ms_per_frame > 0 and math.isfinite(t.ms_per_frame)  # wall clock: no exact value
    assert t.passes == 3 and t.spread >= 0 and t.cores == len(os.sched_getaffinity(0))
    assert model.training
    t = ms_per_frame(model, (1, 3, 16, 16), warmup=0, repeats=2, min_seconds=0.3)
    assert t.passes > 2 and t.passes * t.ms_per_frame <= 300 * (1 + 1e-9)  # fastest <= mean
    with pytest.raises(ValueError):
        ms_per_frame(model, (1, 3, 16, 16), repeats=0)


def cpu_seconds(pids) -> dict[int, float]:
    """CPU seconds (user + system) each of the processes ``pids`` has used, from
    /proc/<pid>/stat: per process, not per CPU as ``core.cpuload`` reads it."""
    out = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        out[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    return out


def used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds used in between by the processes alive at both readings."""
    return sum(after[p] - before[p] for p in before.keys() & after.keys())


@contextlib.contextmanager
def spinners(n: int):
    """``n`` real busy processes (Python spin loops) for as long as the block runs."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        if procs:
            time.sleep(0.3)  # started and spinning
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait()


def timed(pids=()) -> tuple:
    """A 1-second timing, and the share of the usable cores' time that every process but
    this one, and ``pids`` alone, used meanwhile, counted per process (/proc/<pid>/stat): a
    lower bound of the load (processes that start or end within the second are missed)."""
    others = [int(p.name) for p in Path("/proc").iterdir()
              if p.name.isdigit() and int(p.name) != os.getpid()]
    before, t0 = cpu_seconds(others), time.perf_counter()
    t = ms_per_frame(SRResNet(channels=16, blocks=2), (1, 3, 48, 48), warmup=1, repeats=3,
                     min_seconds=1.0)
    capacity = (time.perf_counter() - t0) * t.cores
    after = cpu_seconds(others)
    return t, used(before, after) / capacity, used({p: before[p] for p in pids if p in before},
                                                   after) / capacity


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="the load is read from /proc/stat")
def test_a_timing_on_a_busy_machine_is_recorded_under_load():
    """2 spin loops per usable core while timing: the recorded load holds at least what the
    other processes, spinners included, used (counted independently, per process), and the
    report's rule calls the timing under load."""
    cores = len(os.sched_getaffinity(0))
    with spinners(2 * cores) as pids:
        t, others, spin = timed(pids)
    assert spin > 0.1 and others > LOAD  # the deliberate load was real (and maybe not alone:
    # on a machine shared with others' work, a fair scheduler gives the spinners less)
    assert others - 0.05 <= t.load <= 1  # ticks of 1/100 s over 1 s: +-0.05 at most
    runs = pd.DataFrame([{MS: t.ms_per_frame, LOAD_COL: t.load, SPREAD_COL: t.spread}])
    assert run_states(runs).tolist() == [UNDER_LOAD]


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="the load is read from /proc/stat")
def test_an_idle_timing_records_the_load_there_was():
    """No deliberate load: what the other processes used (this machine may be shared) is in
    the recorded figure, and the timing is marked under load exactly when the rule says so;
    on a machine that was quiet it is not."""
    t, others, _ = timed()
    assert others - 0.05 <= t.load <= 1
    runs = pd.DataFrame([{MS: t.ms_per_frame, LOAD_COL: t.load, SPREAD_COL: t.spread}])
    quiet = t.load <= LOAD and t.spread <= SPREAD
    assert run_states(runs).tolist() == [IDLE if quiet else UNDER_LOAD]
    if others < 0.05:  # nothing else ran: this one must read as idle
        assert t.load <= LOAD


@pytest.mark.cuda  # run by scripts/gpu_check.sh (pytest -m cuda)
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_ms_per_frame_on_cuda_leaves_the_model_on_cpu():
    model = SRResNet(channels=8, blocks=1)
    assert ms_per_frame(model, (1, 3, 32, 32), device="cuda").ms_per_frame > 0
    assert next(model.parameters()).device.type == "cpu"


@pytest.mark.parametrize("scale, upsampled, expected", [
    (2, False, (1, 3, 540, 960)),
    (4, False, (1, 3, 270, 480)),
    (3, False, (1, 3, 360, 640)),
    (1.5, False, (1, 3, 720, 1280)),  # 1280x720 -> 1920x1080
    (2, True, (1, 3, 1080, 1920)),
])
def test_model_input_shape(scale, upsampled, expected):
    assert model_input_shape(Stub(scale, upsampled), (1080, 1920), 3) == expected


def conv_gflops(model, shape) -> float:
    """GFLOPs by hand: every Conv2d call of one forward pass costs 2 x (its output elements) x
    (input channels per group) x (kernel area) - a multiply-add is 2 FLOPs, biases free."""
    total = 0

    def count(m, _, out):
        nonlocal total
        total += 2 * out.numel() * (m.in_channels // m.groups) * math.prod(m.kernel_size)
    hooks = [m.register_forward_hook(count) for m in model.modules()
             if isinstance(m, torch.nn.Conv2d)]
    try:
        with torch.no_grad():
            model(torch.rand(shape))
    finally:
        for h in hooks:
            h.remove()
    return total / 1e9


@pytest.mark.parametrize("name", MODEL_CONFIGS)
def test_every_model_takes_its_input_shape(compose, name):
    """The shape model_input_shape gives makes the model produce the HR frame; its GFLOPs are
    the hand count of its convolutions at that shape (a recurrent conv counted per call)."""
    cfg = compose([f"model={name}", "scale=2"])
    small = [f"model.{k}={v}" for k, v in {"channels": 8, "blocks": 1}.items() if k in cfg.model]
    cfg = compose([f"model={name}", "scale=2", *small])
    model = instantiate_node(cfg.model).eval()
    c = cfg.model.get("in_channels", 3)
    shape = model_input_shape(model, (24, 32), c)
    assert shape == ((1, c, 24, 32) if model.upsampled_input else (1, c, 12, 16))
    with torch.no_grad():
        assert model(torch.rand(shape)).shape == (1, c, 24, 32)
    assert gflops(model, shape) == pytest.approx(conv_gflops(model, shape), rel=1e-12)
