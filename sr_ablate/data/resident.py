"""Training pairs kept on the training device (``data.on_device``): patches are cut there.

Each scale's images are packed once into one flat buffer per side (gt, lq) on the device,
every image's pixels (C, H, W) one after another. A batch is then one ``take`` per side with
an index built on the device: the crop, the flips and the transpose are all folded into that
index. The random draws stay the sampler's (one CPU generator, same order), and the patches
come out in the host path's order, so a seed gives the host-side sampler's batches bit for bit.
Per batch only the draws cross to the device: 13 integers a patch.

``data.on_device=auto`` packs on a CUDA device when the pairs take at most ``SHARE`` of its
free memory; on the CPU the pairs already are in the training device's memory, so the host
path (nothing to pack) is kept.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import reduce

import torch

from sr_ablate import UserError
from sr_ablate.data.pairs import Pair

# The pairs may take at most this share of the device's free memory (``auto``). They stay for
# the whole run, and what training needs beside them is not known before its first step:
# activations, optimiser state, cuDNN workspaces and evaluation on whole images (an EDSR x4
# pass over a 2K image alone takes GBs). 3/4 of the free memory is left to those. DIV2K's 800
# HR images with their x2 LR take about 8 GiB: kept on a 40 or 80 GB card, not a 24 GB one.
SHARE = 0.25
GIB = 2**30


@dataclass(frozen=True)
class Placement:
    """Whether the training pairs are kept on the training device, and why."""
    on: bool
    why: str

    def tags(self) -> dict[str, str]:
        return {"sr_ablate.on_device": str(self.on).lower(), "sr_ablate.on_device_reason": self.why}

    def line(self, device: torch.device) -> str:
        where = (f"on {device}: patches cut there" if self.on
                 else f"on the host: each batch copied to {device}")
        return f"sr_ablate: training pairs {where} ({self.why})"


def decide(setting, kind: str, needed: int, free: int | None, share: float = SHARE
           ) -> Placement:
    """``data.on_device`` (``auto`` | True | False) for a device of type ``kind`` (cpu, cuda,
    mps), pairs of ``needed`` bytes and ``free`` bytes free on the device (CUDA only).
    ``auto`` is on for CUDA when ``needed <= share * free``. An explicit ``true`` on CUDA is
    refused (UserError) when the pairs exceed even all of the free memory."""
    if setting != "auto":
        if setting and kind == "cuda" and free is not None and needed > free:
            raise UserError(f"data.on_device=true, but the training pairs take "
                            f"{needed / GIB:.2f} GiB and the GPU has {free / GIB:.2f} GiB free; "
                            "use data.on_device=auto (kept on the host when they do not fit) "
                            "or fewer training images")
        return Placement(bool(setting), f"data.on_device={str(bool(setting)).lower()}")
    if kind == "cpu":
        return Placement(False, "auto: the CPU trains, the pairs are in its memory already")
    if kind != "cuda" or free is None:
        return Placement(False, f"auto: no free-memory count on {kind}")
    size = f"the pairs take {needed / GIB:.2f} GiB"
    limit = f"{share:.0%} of the {free / GIB:.2f} GiB free"
    if needed <= share * free:
        return Placement(True, f"auto: {size}, within {limit}")
    return Placement(False, f"auto: {size}, more than {limit}")


def nbytes(pairs: dict[float, list[Pair]]) -> int:
    """Bytes the pairs take packed on the device: every scale's gt and lq."""
    return sum(t.nbytes for group in pairs.values() for p in group for t in (p.gt, p.lq))


def free_bytes(device: torch.device) -> int:
    """Bytes a CUDA device can still give: its free memory plus what PyTorch's allocator holds
    unused (a sweep's earlier job in this process leaves its cache reserved)."""
    free = torch.cuda.mem_get_info(device)[0]
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def place(setting, device: torch.device, pairs: dict[float, list[Pair]]) -> Placement:
    """``data.on_device`` resolved for this run's device and pairs (``decide``)."""
    free = free_bytes(device) if device.type == "cuda" else None
    return decide(setting, device.type, nbytes(pairs), free)


_said: set[str] = set()


def say_once(placement: Placement, device: torch.device) -> None:
    """One stderr line, once per process and choice; none for the CPU's host path, where no
    copy happens either way."""
    line = placement.line(device)
    if (placement.on or device.type != "cpu") and line not in _said:
        _said.add(line)
        print(line, file=sys.stderr, flush=True)


@dataclass
class _Flat:
    """Images (C, H, W) packed one after another in ``data`` (on the device); per image, where
    it starts and its height and width (int64, on the CPU, where the draws are)."""
    data: torch.Tensor
    start: torch.Tensor
    h: torch.Tensor
    w: torch.Tensor
    channels: int


def _pack(images: list[torch.Tensor], device: torch.device) -> _Flat:
    if len({t.shape[0] for t in images}) > 1:
        raise ValueError("training pairs with different channel counts cannot share a batch")
    dtype = reduce(torch.promote_types, (t.dtype for t in images))
    sizes = [t.numel() for t in images]
    data = torch.empty(sum(sizes), dtype=dtype, device=device)
    start = 0
    for t, n in zip(images, sizes):  # one image at a time: no packed copy on the host
        data[start:start + n].copy_(t.reshape(-1))
        start += n
    starts = torch.tensor([0, *sizes[:-1]]).cumsum(0)
    hw = torch.tensor([t.shape[-2:] for t in images])
    return _Flat(data, starts, hw[:, 0], hw[:, 1], images[0].shape[0])


class Resident:
    """The pairs {scale: [Pair]} packed on ``device``; ``cut`` gives a batch's patches."""

    def __init__(self, pairs: dict[float, list[Pair]], device: torch.device):
        self.device = device
        self.gt = {s: _pack([p.gt for p in group], device) for s, group in pairs.items()}
        self.lq = {s: _pack([p.lq for p in group], device) for s, group in pairs.items()}
        # pre-upsampled input (SRCNN, VDSR): the lq window is the gt window
        self.upsampled = {s: group[0].lq.shape[-1] == group[0].gt.shape[-1]
                          for s, group in pairs.items()}

    def cut(self, scale: float, which: torch.Tensor, corners: torch.Tensor,
            flips: torch.Tensor, *, patch_size: int, step: int, hr_step: int
            ) -> tuple[torch.Tensor, torch.Tensor]:
        """(lq, gt) uint8 (or lq's dtype) patches on the device, (B, C, p, p) and
        (B, C, p*s, p*s), in the host path's order, from the sampler's draws: ``which`` (B,)
        image indices, ``corners`` (B, 2) float64 in [0, 1), ``flips`` (B, 3) 0/1 (hflip,
        vflip, transpose); LR corners on multiples of ``step``, HR on ``hr_step``."""
        order = host_order(flips)
        which, corners, flips = which[order], corners[order], flips[order]
        gt, lq = self.gt[scale], self.lq[scale]
        ps = int(patch_size * scale)
        # the host path's int(u * n), in float64 as Python computes it
        y = (corners[:, 0] * ((gt.h[which] - ps) // hr_step + 1)).long()
        x = (corners[:, 1] * ((gt.w[which] - ps) // hr_step + 1)).long()
        lq_y, lq_x, lq_side = (y * hr_step, x * hr_step, ps) if self.upsampled[scale] \
            else (y * step, x * step, patch_size)
        h, w = lq.h[which], lq.w[which]
        table = torch.stack([  # (B, 13): everything the device needs, one copy
            gt.start[which], gt.w[which], gt.h[which] * gt.w[which], y * hr_step, x * hr_step,
            lq.start[which], w, h * w, lq_y, lq_x, *flips.unbind(1)], 1)
        if self.device.type == "cuda":  # page-locked: the copy does not wait for the host
            table = table.pin_memory()
        table = table.to(self.device, non_blocking=True)
        hvt = table[:, 10:]
        gt_idx = _index(table[:, :5], hvt, ps, gt.channels)
        lq_idx = _index(table[:, 5:10], hvt, lq_side, lq.channels)
        return lq.data.take(lq_idx), gt.data.take(gt_idx)


def host_order(flips: torch.Tensor) -> torch.Tensor:
    """The order the host path leaves patches in: grouped by (hflip, vflip), each group in
    draw order, groups in the order of their first patch. ``flips``: (B, 3) -> (B,) int64."""
    key = flips[:, 0] * 2 + flips[:, 1]
    n = len(key)
    first = torch.full((4,), n, dtype=torch.long).scatter_reduce_(
        0, key, torch.arange(n), "amin")  # each group's first patch
    return torch.sort(first[key], stable=True).indices


def _index(window: torch.Tensor, hvt: torch.Tensor, side: int, channels: int) -> torch.Tensor:
    """Flat positions (B, C, side, side) of each patch in its packed buffer. ``window``:
    (B, 5) start, width, plane size (H*W), top, left; ``hvt``: (B, 3) hflip, vflip,
    transpose. The host path transposes, then flips: output (r, c) reads the crop at
    (r', c') or, transposed, (c', r'), where r' = side-1-r under a vflip, c' likewise."""
    start, w, plane, top, left = (v.view(-1, 1, 1) for v in window.unbind(1))
    hflip, vflip, rot = (v.view(-1, 1, 1).bool() for v in hvt.unbind(1))
    i = torch.arange(side, device=window.device)
    r = torch.where(vflip, side - 1 - i.view(1, side, 1), i.view(1, side, 1))  # (B, side, 1)
    c = torch.where(hflip, side - 1 - i.view(1, 1, side), i.view(1, 1, side))  # (B, 1, side)
    row, col = torch.where(rot, c, r), torch.where(rot, r, c)  # (B, side, side)
    pix = start + (top + row) * w + left + col
    ch = torch.arange(channels, device=window.device).view(1, -1, 1, 1)
    return pix.unsqueeze(1) + ch * plane.unsqueeze(1)  # (B, C, side, side)
