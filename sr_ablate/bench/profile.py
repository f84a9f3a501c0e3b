"""Where a training step's time goes: ``torch.profiler`` over the bare loop of one model, in
fp32 and in bf16 autocast, summed into a few groups of operators (``sr-ablate bench --only
profile``). The groups are what a change of layout or precision can act on: convolutions,
the casts autocast adds, layout copies, normalisation and activations, the optimiser."""
from __future__ import annotations

import torch
from torch.profiler import ProfilerActivity, profile

from sr_ablate.bench import training as bt
from sr_ablate.bench.costs import table

# operator name (aten::...) -> group; the first group whose words occur in the name wins
GROUPS = [
    ("convolution backward", ("convolution_backward", "mkldnn_convolution_backward")),
    ("convolution forward", ("convolution", "conv2d", "mkldnn_convolution")),
    ("autocast casts (to bf16 and back)", ("_to_copy", "to_dtype")),
    ("layout copies", ("copy_", "contiguous", "clone")),
    ("batch norm", ("batch_norm",)),
    ("PReLU / ReLU", ("prelu", "relu", "_prelu_kernel")),
    ("pixel shuffle", ("pixel_shuffle",)),
    ("optimiser (Adam)", ("_foreach", "adam", "lerp", "addcmul", "addcdiv", "sqrt")),
    ("loss", ("mse_loss",)),
    ("adds, muls (residuals, gradients)", ("add", "mul", "sub", "div")),
]


def _group(name: str) -> str:
    low = name.lower()
    for group, words in GROUPS:
        if any(w in low for w in words):
            return group
    return "other"


def step_profile(s: bt.Setup, steps: int, autocast: torch.dtype | None = None
                 ) -> tuple[dict[str, float], float]:
    """({group: share of the operators' self time}, ms per step) over ``steps`` bare steps."""
    bt.bare_its(s, 2, autocast=autocast)  # warm: kernels chosen before the profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if s.device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        bt.bare_its(s, steps, autocast=autocast)  # the benchmark's own bare loop, profiled
    device_time = s.device.type == "cuda"
    shares: dict[str, float] = {}
    for ev in prof.key_averages():
        t = ev.self_device_time_total if device_time else ev.self_cpu_time_total
        group = _group(ev.key)
        shares[group] = shares.get(group, 0.0) + t
    total = sum(shares.values()) or 1.0
    ms = total / 1e3 / steps
    return {k: v / total for k, v in sorted(shares.items(), key=lambda kv: -kv[1])}, ms


def report(name: str, device: torch.device, steps: int = 5) -> str:
    """A Markdown table: each group's share of a step, fp32 (NCHW and channels-last) and
    bf16 (both layouts), for model ``name`` of ``bench.training.MODELS``."""
    overrides, batch, patch = bt.MODELS[name]
    cols, shares, ms = [], [], []
    for label, cl, dtype in [("fp32", False, None), ("fp32 channels-last", True, None),
                             ("bf16", False, torch.bfloat16),
                             ("bf16 channels-last", True, torch.bfloat16)]:
        s = bt.setup(name, overrides, batch, patch, device=str(device), channels_last=cl)
        share, per_step = step_profile(s, steps, dtype)
        cols.append(label)
        shares.append(share)
        ms.append(per_step)
    groups = list(dict.fromkeys(g for sh in shares for g in sh))
    rows = [[g, *[f"{sh.get(g, 0.0):.1%}" for sh in shares]] for g in groups]
    rows.append(["**operator time per step (ms)**", *[f"**{m:.0f}**" for m in ms]])
    return table(["group of operators (self time)", *cols], rows)
