"""Tiled inference with the pixels of whole-image inference, to float rounding
(docs/protocol.md#tiling).

Each tile of the *input* is run with ``overlap`` pixels of context on every side and the
context is cropped off its output. The context is clipped at the image edge, where the
whole-image model sees the same zero padding, so nothing is padded here. With
``overlap >= receptive_radius(model)`` every kept output pixel depends only on input pixels the
tile holds, and the stitched image equals the whole-image output up to float rounding. Why
not exactly: a convolution library orders its sums by the input's size (torch's oneDNN does
for 3-input-channel convs on the CPU, cuDNN picks algorithms by size), a few float32 ulps,
<= 3e-7 on [0, 1] as measured; rounded to 8 bits, a value that close to a rounding boundary
lands one level apart, a few values in 100,000. Torch without oneDNN gave bit-equal tiles at
2-3x the CPU time (onnxruntime's CPU kernels gave them as they are), but cuDNN has no such
switch: bit-equality is not promised.

The radius is measured, not hard-coded: backpropagate from one output block and see which input
pixels get a non-zero gradient. That covers every architecture knob, including feature
interpolation (``upsampler=bicubic``), whose border handling (index clamping) differs at a tile
edge unless the context covers its taps. An ``opaque`` model (onnxruntime: no gradients) is
probed by changing one input pixel and seeing which outputs change.
"""
from __future__ import annotations

import contextlib
import math
import weakref
from fractions import Fraction

import torch
from torch import nn

from sr_ablate.core.fp32 import exact_fp32

# model -> {in_channels: radius} / {in_channels: bytes}; weak, so a cached model can still
# be freed.
_radii: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_footprints: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _out_scale(model: nn.Module) -> float:
    """Output pixels per input pixel: 1 for upsampled-input models, else ``model.scale``."""
    return 1 if getattr(model, "upsampled_input", False) else model.scale


def _period(scale: float) -> int:
    """Fewest input pixels that map to a whole number of output pixels (1 for x2, 2 for x1.5)."""
    return Fraction(scale).limit_denominator(1000).denominator


def _device(model: nn.Module, default) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device(default)


def _support(model: nn.Module, x: torch.Tensor, c: int, p: int, s: float,
             gen: torch.Generator) -> tuple[int, int, bool] | None:
    """(lo, hi, clear) of the input pixels that change the outputs of input pixels [c, c + p)
    (non-zero gradient of a random mix of them); clear: the support avoids x's border. None
    when the outputs do not depend on the input."""
    x = x.requires_grad_()
    with torch.enable_grad():
        block = model(x)[..., round(c * s):round((c + p) * s), round(c * s):round((c + p) * s)]
        # Random weights so that no two outputs' gradients can cancel exactly.
        weights = torch.randn(block.shape, generator=gen).to(block.device, block.dtype)
        (grad,) = torch.autograd.grad((block * weights).sum(), x)
    support = grad.abs().sum(dim=(0, 1)) != 0  # (n, n)
    rows = support.any(dim=1).nonzero().flatten().tolist()
    cols = support.any(dim=0).nonzero().flatten().tolist()
    if not rows:
        return None
    lo, hi = min(rows[0], cols[0]), max(rows[-1], cols[-1])
    return lo, hi, lo > 0 and hi < x.shape[-1] - 1


@torch.no_grad()
def _reach(model: nn.Module, x: torch.Tensor, c: int, p: int, s: float) -> \
        tuple[int, int, bool] | None:
    """``_support`` for a model without gradients: each pixel u of [c, c + p) (on the
    diagonal) is set to 0, then to 1, and the output groups (p*s pixels, those of p input
    pixels) that change at all are found; a group g changed by u means the group at c
    depends on input u + c - g*p (the model is equivariant to shifts by p). Exact
    comparison is sound: an output outside the field is computed from the same numbers by
    the same kernels at the same size, so it comes out bit for bit the same."""
    base = model(x)
    step, last = round(p * s), x.shape[-1] // p - 1  # output pixels per group, last group
    deps, clear = [], True
    for u in range(c, c + p):
        for value in (0.0, 1.0):  # two ways, so that no ReLU hides the change
            probe = x.clone()
            probe[..., u, u] = value
            changed = (model(probe) != base).flatten(0, 1).any(dim=0)  # (N, N)
            for line in (changed.any(dim=1), changed.any(dim=0)):  # rows, columns
                groups = line.nonzero().flatten() // step
                if len(groups):
                    g0, g1 = int(groups.min()), int(groups.max())
                    deps += [u + c - g1 * p, u + c - g0 * p]
                    clear = clear and 0 < g0 and g1 < last
    return (min(deps), max(deps), clear) if deps else None


@contextlib.contextmanager
def _without_cudnn():
    """cuDNN off, nothing else changed. Not ``torch.backends.cudnn.flags(enabled=False)``:
    it also sets cuDNN's TF32 flags and on the way out writes conv and rnn through the legacy
    ``allow_tf32``, which undoes ``exact_fp32`` around it; and it raises where the TF32
    settings were made with torch's new API (it reads the legacy flag)."""
    was = torch.backends.cudnn.enabled
    torch.backends.cudnn.enabled = False
    try:
        yield
    finally:
        torch.backends.cudnn.enabled = was


def receptive_radius(model: nn.Module, in_channels: int = 3, start: int = 32,
                     limit: int = 2048) -> int:
    """Receptive-field radius of ``model`` in input pixels, measured by probing.

    In eval mode, on a random (1, in_channels, n, n) input, the gradient of one output block
    (the outputs of one input pixel: s x s pixels for an LR-input model at scale s, one pixel
    for an ``upsampled_input`` model) is taken with respect to the input; the radius is the
    largest distance, along either axis, from that input pixel to one with a non-zero gradient.
    An ``opaque`` model (onnxruntime's ``OrtNet``) has no gradients: the input pixel is
    changed instead and the outputs that change give the same distance (``_reach``).
    ``n`` starts at ``start`` and doubles until the support stays clear of the border (so the
    field is not truncated); a model whose field reaches ``limit`` (e.g. global pooling) has
    no finite radius: ValueError. Assumes the model is shift-equivariant (no striding inside).
    On CUDA the probe runs without cuDNN, whose FFT/Winograd algorithms can turn exact zero
    gradients into rounding noise.

    Cached per model instance and ``in_channels``: after changing the architecture in place,
    measure a new instance.
    """
    cached = _radii.setdefault(model, {})
    if in_channels in cached:
        return cached[in_channels]
    s = _out_scale(model)
    p = _period(s)
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None else torch.float32
    device = _device(model, "cpu")
    gen = torch.Generator().manual_seed(0)
    was_training = model.training
    model.eval()
    n = max(start, 4 * p)
    try:
        while True:
            x = torch.rand(1, in_channels, n, n, generator=gen).to(device, dtype)
            c = n // 2 // p * p  # probed input pixels [c, c + p) on both axes
            with _without_cudnn():
                found = (_reach(model, x, c, p, s) if getattr(model, "opaque", False)
                         else _support(model, x, c, p, s, gen))
            if found is None:
                raise ValueError("the output does not depend on the input; no receptive field")
            lo, hi, clear = found
            if clear:
                break
            if n >= limit:
                raise ValueError(f"the receptive field reaches the border of a {n}x{n} input; "
                                 "the model has no finite receptive radius (global operation?)")
            n *= 2
    finally:
        model.train(was_training)
    cached[in_channels] = radius = max(c - lo, hi - (c + p - 1), 0)
    return radius


def _spans(size: int, tile: int, overlap: int, p: int) -> list[tuple[int, int, int, int]]:
    """(c0, a, b, c1) per tile along one axis: kept input [a, b), run on context [c0, c1)."""
    spans = []
    for a in range(0, size, tile):
        b = min(a + tile, size)
        c0 = max(0, a - overlap) // p * p  # start on the period so outputs stay pixel-aligned
        c1 = min(size, -(-(b + overlap) // p) * p)  # end on the period too (x1.5: even sides)
        spans.append((c0, a, b, c1))
    return spans


def _keep(c0: int, a: int, b: int, size: int, s: float, out_size: int) -> slice:
    """Output pixels of kept input [a, b) in the output of context [c0, c1).

    a, b, c0 are multiples of the period, so these are whole pixels; the last tile keeps the
    rest of its output (the model decides the size of a fractional x1.5 edge).
    """
    start = round((a - c0) * s)
    return slice(start, out_size if b == size else start + round(b * s) - round(a * s))


@torch.no_grad()
@exact_fp32()  # IEEE float32 (no TF32): the tiles' sums may then differ only in their order
def tiled_forward(model: nn.Module, x: torch.Tensor, tile: int,
                  overlap: int | None = None) -> torch.Tensor:
    """Run ``model`` on ``x`` tile by tile; ``model(x)`` to float rounding when overlap is enough.

    Args:
        model: an SR model in eval mode (train-mode batch norm would use each tile's statistics).
        x: (B, C, h, w) input as the model takes it: the LR image, or the bicubic-enlarged
            image for ``upsampled_input`` models. May live on the CPU while the model is on a
            GPU: tiles are moved to the model's device and the output is assembled on x's.
        tile: tile side in input pixels (rounded up to a multiple of the scale's period for
            non-integer scales). A tile larger than the image is a single whole-image pass.
        overlap: context in input pixels on each side of a tile, clipped at the image edge.
            Default: ``receptive_radius(model, C)``, which makes the result equal to whole-image
            inference to float rounding. A smaller overlap still runs, but output pixels near
            tile seams then differ from whole-image inference (the model sees zero padding
            where the whole image has pixels).

    Returns:
        (B, C', h*s, w*s) for LR-input models at scale s, (B, C', h, w) for upsampled-input ones.
    """
    if tile <= 0:
        raise ValueError(f"tile must be a positive number of pixels, got {tile}")
    if overlap is None:
        overlap = receptive_radius(model, x.shape[1])
    if overlap < 0:
        raise ValueError(f"overlap must be >= 0, got {overlap}")
    s = _out_scale(model)
    p = _period(s)
    tile = -(-tile // p) * p
    device = _device(model, x.device)
    h, w = x.shape[-2:]
    out, end_y, end_x = None, 0, 0
    for c0y, ay, by, c1y in _spans(h, tile, overlap, p):
        for c0x, ax, bx, c1x in _spans(w, tile, overlap, p):
            y = model(x[..., c0y:c1y, c0x:c1x].to(device))  # (B, C', (c1-c0)*s, ...)
            y = y[..., _keep(c0y, ay, by, h, s, y.shape[-2]),
                  _keep(c0x, ax, bx, w, s, y.shape[-1])]  # the context cropped off
            if out is None:  # ceil: room for a model that rounds a fractional size up
                out = y.new_empty((*y.shape[:-2], math.ceil(h * s), math.ceil(w * s)),
                                  device=x.device)
            oy, ox = round(ay * s), round(ax * s)
            out[..., oy:oy + y.shape[-2], ox:ox + y.shape[-1]] = y
            end_y, end_x = max(end_y, oy + y.shape[-2]), max(end_x, ox + y.shape[-1])
    return out[..., :end_y, :end_x]


def largest_tile(model: nn.Module, side: int, overlap: int) -> int:
    """The largest tile (input pixels, a multiple of the scale's period) whose pass in
    ``tiled_forward``, context included, is at most ``side`` x ``side`` input pixels: the
    context is ``overlap`` on each side plus up to period - 1 (it starts and ends on the
    period). <= 0 when the context alone fills ``side``."""
    p = _period(_out_scale(model))
    return (side - 2 * (overlap + p - 1)) // p * p


def _module_nbytes(model: nn.Module, x: torch.Tensor) -> list[int]:
    """Bytes of every leaf module's output in one pass over ``x``, the model's output last."""
    sizes = []

    def hook(module, args, out):
        if isinstance(out, torch.Tensor):
            sizes.append(out.numel() * x.element_size())

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        for h in handles:
            h.remove()
    return [*sizes, out.numel() * x.element_size()]


def bytes_per_input_pixel(model: nn.Module, in_channels: int = 3, side: int = 24) -> float:
    """Memory one forward pass (no grad) takes per input pixel, measured on a (1, in_channels,
    side, side) probe: three times the largest tensor the pass makes (a layer's input, its
    output and a skip connection alive at once) plus the model output, in the model's dtype.
    The tensors are the leaf modules' outputs, or for an ``opaque`` model (onnxruntime) what
    its ``tensor_nbytes`` says: every node output of its graph. What ``upscale`` compares
    with the free memory to decide whether and how to tile. Cached per model instance and
    ``in_channels`` (a video asks once per batch of frames)."""
    cached = _footprints.setdefault(model, {})
    if in_channels in cached:
        return cached[in_channels]
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None else torch.float32
    side = side // _period(_out_scale(model)) * _period(_out_scale(model))
    x = torch.zeros(1, in_channels, side, side, dtype=dtype, device=_device(model, "cpu"))
    sizes = (model.tensor_nbytes(x) if getattr(model, "opaque", False)
             else _module_nbytes(model, x))
    cached[in_channels] = per_px = (3 * max(sizes) + sizes[-1]) / side ** 2
    return per_px
