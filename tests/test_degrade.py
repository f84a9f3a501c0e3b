"""MATLAB-compatible bicubic imresize, contributions, cubic, modcrop, bicubic_down/up.

The reference implementation below is written independently of ``sr_ablate.degrade``: it builds
a dense (out, in) resampling matrix one output pixel at a time in plain Python/NumPy, following
MATLAB's ``imresize`` description (Keys cubic a = -0.5, antialiased when shrinking, symmetric
borders, separable), and applies it as ``M_h @ X @ M_w.T``.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import sr_ablate
from sr_ablate.core.degrade import (
    bicubic_down,
    bicubic_up,
    contributions,
    cubic,
    downscale,
    imresize,
    modcrop,
    round_half_away,
    to_uint8,
)
from sr_ablate.core.evaluate import Protocol, model_input, reference
from sr_ablate.core.metrics import rgb_to_y
from sr_ablate.data import builtin_dir, make_pairs, read_image

# --------------------------------------------------------------------------------------------
# Independent reference (plain Python / NumPy, float64)
# --------------------------------------------------------------------------------------------

def keys_w(x: float) -> float:
    """W(x) of the design doc, scalar, by the formula."""
    a = abs(x)
    if a <= 1:
        return 1.5 * a ** 3 - 2.5 * a ** 2 + 1
    if a <= 2:
        return -0.5 * a ** 3 + 2.5 * a ** 2 - 4 * a + 2
    return 0.0


def mirror(j: int, n: int) -> int:
    """1-based index j reflected into 1..n with symmetric padding (0 -> 1, n+1 -> n)."""
    while j < 1 or j > n:
        j = 1 - j if j < 1 else 2 * n + 1 - j
    return j


def ref_row_weights(x: int, in_len: int, s: float, antialias: bool = True) -> dict[int, float]:
    """{0-based input index: weight} for 1-based output pixel x, normalised to sum 1."""
    shrink = s < 1 and antialias
    half = 2.0 / s if shrink else 2.0
    u = x / s + 0.5 * (1 - 1 / s)
    raw = {}
    for j in range(math.floor(u - half) - 1, math.ceil(u + half) + 2):
        d = u - j
        wgt = s * keys_w(s * d) if shrink else keys_w(d)
        if wgt != 0.0:
            raw[j] = wgt
    total = sum(raw.values())
    out: dict[int, float] = {}
    for j, wgt in raw.items():
        k = mirror(j, in_len) - 1
        out[k] = out.get(k, 0.0) + wgt / total
    return out


def ref_matrix(in_len: int, out_len: int, s: float, antialias: bool = True) -> np.ndarray:
    m = np.zeros((out_len, in_len), dtype=np.float64)
    for x in range(1, out_len + 1):
        for k, wgt in ref_row_weights(x, in_len, s, antialias).items():
            m[x - 1, k] += wgt
    return m


def ref_imresize(img: np.ndarray, scale: float | None = None, size=None) -> np.ndarray:
    """MATLAB imresize(img, scale, 'bicubic') of a (..., H, W) float64 array."""
    h, w = img.shape[-2:]
    if size is None:
        oh, ow = math.ceil(h * scale), math.ceil(w * scale)
        sh = sw = scale
    else:
        oh, ow = size
        sh, sw = oh / h, ow / w
    mh = ref_matrix(h, oh, sh)
    mw = ref_matrix(w, ow, sw)
    return mh @ img @ mw.T


def rows_as_dicts(w: torch.Tensor, idx: torch.Tensor) -> list[dict[int, float]]:
    """contributions() output as {input index: summed weight} per output row."""
    rows = []
    for wr, ir in zip(w.tolist(), idx.tolist()):
        d: dict[int, float] = {}
        for wgt, k in zip(wr, ir):
            if wgt != 0.0:
                d[int(k)] = d.get(int(k), 0.0) + wgt
        rows.append(d)
    return rows


def assert_rows_equal(got: dict[int, float], want: dict[int, float], tol: float = 1e-12):
    assert set(got) == set(want), (sorted(got), sorted(want))
    for k in want:
        assert got[k] == pytest.approx(want[k], abs=tol), k


# --------------------------------------------------------------------------------------------
# cubic
# --------------------------------------------------------------------------------------------

def test_cubic_kernel_values_by_hand():
    # |x| <= 1: 1.5|x|^3 - 2.5|x|^2 + 1 ; 1 < |x| <= 2: -0.5|x|^3 + 2.5|x|^2 - 4|x| + 2
    expected = {
        0.0: 1.0,
        0.5: 1.5 * 0.125 - 2.5 * 0.25 + 1,           # 0.5625
        1.0: 1.5 - 2.5 + 1,                          # 0
        1.5: -0.5 * 3.375 + 2.5 * 2.25 - 4 * 1.5 + 2,  # -0.0625
        2.0: -0.5 * 8 + 2.5 * 4 - 8 + 2,             # 0
        2.5: 0.0,
    }
    xs = torch.tensor(list(expected), dtype=torch.float64)
    got = cubic(xs)
    got_neg = cubic(-xs)
    for x, g, gn in zip(expected, got.tolist(), got_neg.tolist()):
        assert g == pytest.approx(expected[x], abs=1e-15), x
        assert gn == pytest.approx(expected[x], abs=1e-15), -x  # even function
    assert expected[0.5] == pytest.approx(0.5625) and expected[1.5] == pytest.approx(-0.0625)


def test_cubic_matches_formula_on_dense_grid_and_partition_of_unity():
    xs = np.linspace(-3, 3, 601)
    got = cubic(torch.from_numpy(xs)).numpy()
    want = np.array([keys_w(x) for x in xs])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-14)
    # Keys' kernel: integer shifts sum to 1 for any fractional offset.
    for t in np.linspace(0, 1, 11):
        shifts = torch.tensor([t - k for k in range(-3, 4)], dtype=torch.float64)
        assert cubic(shifts).sum().item() == pytest.approx(1.0, abs=1e-14)


# --------------------------------------------------------------------------------------------
# contributions
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("in_len,out_len,scale,aa", [
    (16, 8, 0.5, True), (18, 6, 1 / 3, True), (20, 5, 0.25, True), (15, 10, 10 / 15, True),
    (16, 8, 0.5, False), (8, 16, 2.0, True), (7, 21, 3.0, True), (5, 20, 4.0, True),
    (9, 9, 1.0, True),
])
def test_contributions_rows_sum_to_one_and_indices_in_range(in_len, out_len, scale, aa):
    w, idx = contributions(in_len, out_len, scale, aa)
    assert w.dtype == torch.float64
    assert w.shape == idx.shape and w.shape[0] == out_len
    torch.testing.assert_close(w.sum(1), torch.ones(out_len, dtype=torch.float64),
                               rtol=0, atol=1e-12)
    assert int(idx.min()) >= 0 and int(idx.max()) <= in_len - 1


def test_contributions_downscale_by_two_interior_weights_by_hand():
    s = 0.5
    in_len, out_len = 16, 8
    w, idx = contributions(in_len, out_len, s, True)
    x = 4  # 1-based interior output pixel
    u = x / s + 0.5 * (1 - 1 / s)  # 7.5
    assert u == 7.5
    # antialiased kernel 0.5 * W(0.5 * d), support |d| < 4, normalised
    raw = {j: 0.5 * keys_w(0.5 * (u - j)) for j in range(1, in_len + 1)}
    raw = {j: v for j, v in raw.items() if v != 0.0}
    assert sorted(raw) == list(range(4, 12))  # 8 taps, 1-based inputs 4..11
    total = sum(raw.values())
    want = {j - 1: v / total for j, v in raw.items()}  # 0-based indices
    # values by hand: W(0.25)=0.8671875, W(0.75)=0.2265625, W(1.25)=-0.0703125, W(1.75)=-0.0234375
    assert want[6] == pytest.approx(0.5 * 0.8671875) and want[3] == pytest.approx(0.5 * -0.0234375)
    got = rows_as_dicts(w, idx)[x - 1]
    assert_rows_equal(got, want)


def test_contributions_mirror_indices_at_borders():
    s = 0.5
    in_len, out_len = 16, 8
    w, idx = contributions(in_len, out_len, s, True)
    rows = rows_as_dicts(w, idx)
    # first output pixel: u = 1.5, taps at 1-based j = -2..5; j <= 0 reflect to 1 - j
    u = 1 / s + 0.5 * (1 - 1 / s)
    want: dict[int, float] = {}
    raw = {j: 0.5 * keys_w(0.5 * (u - j)) for j in range(-4, 8)}
    total = sum(raw.values())
    for j, v in raw.items():
        if v == 0.0:
            continue
        jj = 1 - j if j < 1 else j  # [.., -1, 0, 1, 2 ..] -> [.., 2, 1, 1, 2, ..]
        want[jj - 1] = want.get(jj - 1, 0.0) + v / total
    assert_rows_equal(rows[0], want)
    # symmetric padding repeats the edge pixel: 1-based j=0 and j=1 both map to index 0,
    # so row 0 must reference index 0 (at least) twice in the raw index table
    assert int((idx[0] == 0).sum()) >= 2
    # last output pixel mirrors on the right: j > n reflects to 2n + 1 - j
    x = out_len
    u = x / s + 0.5 * (1 - 1 / s)
    raw = {j: 0.5 * keys_w(0.5 * (u - j)) for j in range(in_len - 8, in_len + 8)}
    total = sum(raw.values())
    want = {}
    for j, v in raw.items():
        if v == 0.0:
            continue
        jj = 2 * in_len + 1 - j if j > in_len else j
        want[jj - 1] = want.get(jj - 1, 0.0) + v / total
    assert_rows_equal(rows[-1], want)
    assert int((idx[-1] == in_len - 1).sum()) >= 2


@pytest.mark.parametrize("in_len,out_len,scale,aa", [
    (16, 8, 0.5, True), (17, 6, 1 / 3, True), (21, 6, 0.25, True), (15, 10, 10 / 15, True),
    (16, 8, 0.5, False), (5, 10, 2.0, True), (4, 12, 3.0, True), (3, 12, 4.0, True),
    (10, 15, 1.5, True), (2, 8, 4.0, True),
])
def test_contributions_match_reference_every_row(in_len, out_len, scale, aa):
    w, idx = contributions(in_len, out_len, scale, aa)
    got = rows_as_dicts(w, idx)
    for x in range(1, out_len + 1):
        assert_rows_equal(got[x - 1], ref_row_weights(x, in_len, scale, aa))


def test_contributions_without_antialias_use_plain_kernel():
    w, idx = contributions(16, 8, 0.5, False)
    row = rows_as_dicts(w, idx)[3]  # x = 4 -> u = 7.5, plain W(d), 4 taps
    want = {j - 1: keys_w(7.5 - j) for j in range(6, 10)}
    total = sum(want.values())
    assert_rows_equal(row, {k: v / total for k, v in want.items()})
    assert len(row) == 4


# --------------------------------------------------------------------------------------------
# imresize
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scale", [1 / 2, 1 / 3, 1 / 4, 2, 3, 4])
def test_imresize_matches_independent_reference(scale):
    rng = np.random.default_rng(int(round(scale * 100)))
    shapes = [(24, 36), (13, 17)] if scale < 1 else [(9, 11), (5, 4)]
    for h, w in shapes:
        img = rng.uniform(0, 255, size=(3, h, w))
        got = imresize(torch.from_numpy(img), scale=scale)
        want = ref_imresize(img, scale=scale)
        assert got.dtype == torch.float64
        assert tuple(got.shape) == want.shape == (3, math.ceil(h * scale), math.ceil(w * scale))
        np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-9)


@pytest.mark.parametrize("src,dst", [((15, 12), (10, 8)), ((10, 8), (15, 12)), ((11, 20), (7, 31))])
def test_imresize_size_argument_matches_reference(src, dst):
    rng = np.random.default_rng(7)
    img = rng.uniform(0, 255, size=(2, *src))
    got = imresize(torch.from_numpy(img), size=dst)
    want = ref_imresize(img, size=dst)
    assert tuple(got.shape) == (2, *dst)
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-9)


@pytest.mark.parametrize("kw", [dict(scale=1 / 2), dict(scale=1 / 3), dict(scale=1 / 4),
                                dict(scale=2), dict(scale=3), dict(scale=4),
                                dict(size=(10, 14)), dict(size=(23, 32))])
def test_constant_image_stays_constant(kw):
    # 15 x 21: odd sizes, and 1/1.5 (15 -> 10) / 1.5 (15 -> 23 rounded) via size=
    img = torch.full((3, 15, 21), 137.25, dtype=torch.float64)
    out = imresize(img, **kw)
    if "scale" in kw:
        assert tuple(out.shape[-2:]) == (math.ceil(15 * kw["scale"]), math.ceil(21 * kw["scale"]))
    else:
        assert tuple(out.shape[-2:]) == kw["size"]
    torch.testing.assert_close(out, torch.full_like(out, 137.25), rtol=0, atol=1e-10)


@pytest.mark.parametrize("h,w,scale", [(17, 13, 1 / 2), (17, 13, 1 / 3), (17, 13, 1 / 4),
                                       (31, 8, 1 / 3), (7, 5, 2), (7, 5, 3), (3, 6, 4),
                                       (20, 30, 1 / 1.5), (20, 30, 1.5)])
def test_output_shape_is_ceil(h, w, scale):
    out = imresize(torch.rand(1, h, w, dtype=torch.float64), scale=scale)
    assert tuple(out.shape) == (1, math.ceil(h * scale), math.ceil(w * scale))


def test_imresize_integer_input_becomes_float64_and_float32_kept():
    img8 = torch.randint(0, 256, (3, 12, 12), dtype=torch.uint8)
    out = imresize(img8, scale=0.5)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, imresize(img8.to(torch.float64), scale=0.5), rtol=0, atol=0)
    out32 = imresize(img8.to(torch.float32), scale=0.5)
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), out, rtol=0, atol=1e-3)


def test_imresize_needs_scale_or_size():
    with pytest.raises(ValueError):
        imresize(torch.zeros(1, 4, 4))


def test_down_then_up_of_horizontal_ramp_recovers_ramp_in_interior():
    h, w, s = 24, 64, 2
    ramp = (torch.arange(w, dtype=torch.float64) * 3.0 + 10.0).expand(1, h, w).contiguous()
    lr = bicubic_down(ramp, s, quantize=False)
    assert tuple(lr.shape) == (1, h // s, w // s)
    sr = bicubic_up(lr, s)
    assert tuple(sr.shape) == (1, h, w)
    # the cubic reproduces linear functions and antialias weights are symmetric: away from the
    # mirrored borders the round trip is exact up to rounding
    b = 8
    torch.testing.assert_close(sr[..., b:-b], ramp[..., b:-b], rtol=0, atol=1e-9)
    # constant along the rows everywhere (each row is the same ramp)
    torch.testing.assert_close(sr, sr[:, :1].expand_as(sr), rtol=0, atol=1e-9)
    # a smooth non-linear ramp stays close too
    xs = torch.arange(w, dtype=torch.float64)
    smooth = (128 + 100 * torch.sin(xs * 2 * math.pi / w)).expand(1, h, w).contiguous()
    sr2 = bicubic_up(bicubic_down(smooth, s, quantize=False), s)
    assert (sr2[..., b:-b] - smooth[..., b:-b]).abs().max().item() < 1.0


def test_batched_input_equals_per_image_calls():
    torch.manual_seed(0)
    batch = torch.rand(3, 2, 18, 14, dtype=torch.float64) * 255
    for kw in (dict(scale=1 / 2), dict(scale=1 / 3), dict(scale=3), dict(size=(11, 9))):
        out = imresize(batch, **kw)
        for i in range(batch.shape[0]):
            torch.testing.assert_close(out[i], imresize(batch[i], **kw), rtol=0, atol=1e-12)
            for c in range(batch.shape[1]):  # and 2-D (H, W) calls
                torch.testing.assert_close(out[i, c], imresize(batch[i, c], **kw),
                                           rtol=0, atol=1e-12)


# --------------------------------------------------------------------------------------------
# modcrop, bicubic_down, bicubic_up
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape,scale", [((3, 17, 23), 2), ((3, 17, 23), 3), ((1, 20, 20), 4),
                                         ((19, 8), 4), ((2, 3, 10, 11), 3)])
def test_modcrop(shape, scale):
    img = torch.arange(math.prod(shape), dtype=torch.float64).reshape(shape)
    out = modcrop(img, scale)
    h, w = shape[-2:]
    hh, ww = (h // scale) * scale, (w // scale) * scale
    assert tuple(out.shape) == (*shape[:-2], hh, ww)
    assert out.shape[-2] % scale == 0 and out.shape[-1] % scale == 0
    torch.testing.assert_close(out, img[..., :hh, :ww], rtol=0, atol=0)  # top-left kept


def test_modcrop_is_identity_on_multiples():
    img = torch.rand(3, 12, 24)
    assert modcrop(img, 4).shape == img.shape and torch.equal(modcrop(img, 4), img)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_bicubic_down_quantize(scale):
    # a 0/255 checkerboard overshoots both ends under the cubic, so the clamp matters
    h = w = 12 * scale
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    block = 2 * scale  # structure large enough to survive the antialias filter
    checker = (((yy // block) + (xx // block)) % 2).to(torch.float64) * 255
    rng = torch.Generator().manual_seed(scale)
    noisy = torch.rand(3, h, w, generator=rng, dtype=torch.float64) * 255
    for hr in (checker.expand(3, h, w).contiguous(), noisy):
        raw = bicubic_down(hr, scale, quantize=False)
        q = bicubic_down(hr, scale, quantize=True)
        assert q.dtype == torch.float64
        assert tuple(q.shape) == (3, h // scale, w // scale)
        assert torch.equal(q, q.round())
        assert q.min().item() >= 0 and q.max().item() <= 255
        torch.testing.assert_close(q, torch.floor(raw + 0.5).clamp(0, 255), rtol=0, atol=0)
        # non-quantised output is exactly imresize(hr, 1/s)
        torch.testing.assert_close(raw, imresize(hr, scale=1 / scale), rtol=0, atol=0)
    raw = bicubic_down(checker.expand(3, h, w).contiguous(), scale, quantize=False)
    assert raw.min().item() < 0 and raw.max().item() > 255  # clamp was exercised


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_bicubic_down_and_up_match_reference(scale):
    rng = np.random.default_rng(100 + scale)
    hr = rng.uniform(0, 255, size=(3, 6 * scale, 5 * scale))
    lr = bicubic_down(torch.from_numpy(hr), scale, quantize=False)
    np.testing.assert_allclose(lr.numpy(), ref_imresize(hr, scale=1 / scale), rtol=0, atol=1e-9)
    up = bicubic_up(lr, scale)
    assert tuple(up.shape) == hr.shape
    np.testing.assert_allclose(up.numpy(), ref_imresize(lr.numpy(), scale=scale),
                               rtol=0, atol=1e-9)
    # same as imresize with the scale given directly
    torch.testing.assert_close(up, imresize(lr, scale=scale), rtol=0, atol=1e-12)
    # not rounded or clamped
    assert not torch.equal(up, up.round())


# --------------------------------------------------------------------------------------------
# Rounding to uint8: MATLAB's, halves away from zero, in one helper
# --------------------------------------------------------------------------------------------

def test_to_uint8_rounds_halves_away_from_zero_like_matlab():
    x = torch.tensor([0.5, 1.5, 2.5, 3.5, 126.5, 254.5, 255.5, -0.5, 2.4999999999999996,
                      0.49999999999999994, 7.0, 300.0, -3.0], dtype=torch.float64)
    assert to_uint8(x).tolist() == [1, 2, 3, 4, 127, 255, 255, 0, 2, 0, 7, 255, 0]
    assert to_uint8(x).dtype == torch.float64
    assert round_half_away(torch.tensor([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5])).tolist() == [
        -3, -2, -1, 1, 2, 3]
    assert torch.round(x[:4]).tolist() == [0, 2, 2, 4]  # what torch.round does instead


def test_area_x2_lr_of_a_real_image_is_rounded_like_matlab():
    """An area x2 LR pixel is the mean of 4 integers: a quarter of them end in .5, which MATLAB
    rounds up (floor(x + 0.5)); half-to-even rounding put ~11% of these pixels one level
    lower. Training pairs get the same LR."""
    hr = modcrop(read_image(builtin_dir() / "astronaut.png"), 2)
    means = F.avg_pool2d(hr.double()[None], 2)[0]
    assert (means.frac() == 0.5).double().mean() > 0.2
    lq = downscale(hr, 2, "area")
    assert torch.equal(lq, torch.floor(means + 0.5))
    (pair,) = make_pairs([("astronaut", hr)], 2, "area")
    assert torch.equal(pair.lq.double(), lq)


def test_luma_rounding_is_matlabs_wherever_it_happens(tmp_path):
    """RGB (2, 44, 141) has BT.601 luma 52.5 exactly: MATLAB's rgb2ycbcr on uint8 gives 53
    (torch.round: 52) when reading Y training images, in the classic reference and in the
    input of Y models."""
    rgb = torch.tensor([2, 44, 141], dtype=torch.uint8).view(3, 1, 1).expand(3, 30, 30)
    assert rgb_to_y(rgb)[0, 0, 0].item() == 52.5
    Image.fromarray(rgb.permute(1, 2, 0).contiguous().numpy()).save(tmp_path / "half.png")
    assert read_image(tmp_path / "half.png", "y").unique().tolist() == [53]
    assert reference(rgb, Protocol("classic")).unique().tolist() == [53.0]
    lq = model_input(rgb, 2, Protocol("classic"), 1)  # float LR of a constant 53 image
    torch.testing.assert_close(lq, torch.full_like(lq, 53.0), rtol=0, atol=1e-9)


def test_no_other_rounding_in_the_image_pipeline():
    """Every rounding of pixel values calls ``to_uint8``; a stray ``.round()`` (half to even)
    would bring the MATLAB mismatch back."""
    root = Path(sr_ablate.__file__).parent
    stray = [f"{p.relative_to(root)}:{i}" for folder in ("core", "data", "training")
             for p in sorted((root / folder).rglob("*.py")) if p.name != "degrade.py"
             for i, line in enumerate(p.read_text().splitlines(), 1)
             if re.search(r"\.round\(\)|torch\.round\(|np\.round\(", line)]
    assert stray == []


def test_to_uint8_clamps_then_rounds_to_the_values_of_rounding_then_clamping():
    # the four-pass to_uint8 (clamp, floor, fraction >= 0.5) against the reference rounding
    from sr_ablate.core.degrade import round_half_away, to_uint8
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(200_000, generator=gen, dtype=torch.float64) * 300 - 20
    edges = torch.tensor([0.5, 1.5, 2.5, 254.5, 255.5, -0.5, -0.49, 0.49999999999999994,
                          1e-300, -1e-300, 255.49999999999997, 1e9, -1e9, float("nan")],
                         dtype=torch.float64)
    x = torch.cat([x, edges, torch.arange(0, 256, dtype=torch.float64) + 0.5])
    got, want = to_uint8(x), round_half_away(x).clamp(0, 255)
    assert torch.equal(got.isnan(), want.isnan())
    assert torch.equal(got[~got.isnan()], want[~want.isnan()])
    halves = torch.tensor([0.5, 2.5, 0.49999999999999994], dtype=torch.float64)
    assert to_uint8(halves).tolist() == [1, 3, 0]
