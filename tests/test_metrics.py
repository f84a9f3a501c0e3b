"""PSNR, SSIM, rgb_to_y and shave, checked by hand and against independent float64 NumPy code.

Real-image checks use ``../shared/data/Set5`` (next to the repo); they skip when it is absent.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from sr_ablate.core.metrics import psnr, rgb_to_y, shave, ssim

SET5 = Path(__file__).resolve().parents[2] / "shared" / "data" / "Set5"


# --------------------------------------------------------------------------------------------
# Independent references (NumPy, float64)
# --------------------------------------------------------------------------------------------

def ref_psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    diff = a.astype(np.float64) - b.astype(np.float64)
    mse = float(np.mean(diff * diff))
    return math.inf if mse == 0 else 10.0 * math.log10(peak ** 2 / mse)


def ref_gaussian_2d(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """fspecial('gaussian', 11, 1.5): a full 2-D window normalised to sum 1."""
    r = (size - 1) / 2
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    g = np.exp(-(xx ** 2 + yy ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def ref_filter_valid(img: np.ndarray, win: np.ndarray) -> np.ndarray:
    """filter2(win, img, 'valid'): correlation with no padding, by explicit shifted sums."""
    k = win.shape[0]
    h, w = img.shape
    out = np.zeros((h - k + 1, w - k + 1), dtype=np.float64)
    for i in range(k):
        for j in range(k):
            out += win[i, j] * img[i:i + h - k + 1, j:j + w - k + 1]
    return out


def ref_ssim_2d(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    """Wang et al. 2004 ssim_index: Gaussian 11x11 sigma 1.5, K = (0.01, 0.03), valid, mean."""
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    win = ref_gaussian_2d()
    c1 = (0.01 * peak) ** 2
    c2 = (0.03 * peak) ** 2
    mu1 = ref_filter_valid(a, win)
    mu2 = ref_filter_valid(b, win)
    s11 = ref_filter_valid(a * a, win) - mu1 ** 2
    s22 = ref_filter_valid(b * b, win) - mu2 ** 2
    s12 = ref_filter_valid(a * b, win) - mu1 * mu2
    ssim_map = ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / (
        (mu1 ** 2 + mu2 ** 2 + c1) * (s11 + s22 + c2))
    return float(ssim_map.mean())


def ref_y(rgb: np.ndarray) -> np.ndarray:
    """(3, H, W) in [0, 255] -> (H, W) BT.601 luma in [16, 235], float."""
    r, g, b = (rgb.astype(np.float64) / 255.0)
    return 16.0 + 65.481 * r + 128.553 * g + 24.966 * b


def load_set5() -> list[tuple[str, np.ndarray]]:
    if not SET5.is_dir() or not sorted(SET5.glob("*.png")):
        pytest.skip("../shared/data/Set5 not found: benchmark images are only in the project's "
                    "shared folder")
    from PIL import Image
    out = []
    for p in sorted(SET5.glob("*.png")):
        with Image.open(p) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
        out.append((p.name, np.ascontiguousarray(arr.transpose(2, 0, 1))))
    return out


def t(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x))


# --------------------------------------------------------------------------------------------
# PSNR
# --------------------------------------------------------------------------------------------

def test_psnr_identical_is_inf():
    img = torch.rand(3, 16, 16, dtype=torch.float64) * 255
    assert psnr(img, img.clone()) == math.inf
    assert psnr(img.to(torch.uint8), img.to(torch.uint8)) == math.inf


def test_psnr_by_hand_constant_offset():
    a = torch.full((1, 20, 30), 100.0, dtype=torch.float64)
    b = a + 5  # MSE = 25
    want = 10 * math.log10(255 ** 2 / 25)
    assert want == pytest.approx(34.1514, abs=1e-4)
    assert psnr(a, b) == pytest.approx(want, abs=1e-12)
    # uint8 inputs must not wrap around (100 - 105 in uint8 would be 251)
    assert psnr(a.to(torch.uint8), b.to(torch.uint8)) == pytest.approx(want, abs=1e-12)
    # another peak: values in [0, 1], difference 0.1 -> MSE 0.01
    assert psnr(a / 255, a / 255 + 0.1, peak=1.0) == pytest.approx(10 * math.log10(1 / 0.01),
                                                                     abs=1e-9)


def test_psnr_by_hand_half_the_pixels_differ():
    a = torch.zeros(1, 4, 4, dtype=torch.float64)
    b = a.clone()
    b[0, :2] = 10.0  # 8 of 16 pixels off by 10 -> MSE = 100 * 8 / 16 = 50
    assert psnr(a, b) == pytest.approx(10 * math.log10(255 ** 2 / 50), abs=1e-12)


def test_psnr_symmetric():
    g = torch.Generator().manual_seed(1)
    a = torch.rand(3, 24, 24, generator=g, dtype=torch.float64) * 255
    b = torch.rand(3, 24, 24, generator=g, dtype=torch.float64) * 255
    assert psnr(a, b) == psnr(b, a)


def test_psnr_matches_numpy_reference_on_random_images():
    rng = np.random.default_rng(0)
    for shape in [(3, 32, 48), (1, 17, 23), (3, 64, 64)]:
        a = rng.uniform(0, 255, size=shape)
        for sigma in (0.5, 3.0, 20.0):
            b = np.clip(a + rng.normal(0, sigma, size=shape), 0, 255)
            assert psnr(t(a), t(b)) == pytest.approx(ref_psnr(a, b), abs=1e-9)
        a8 = rng.integers(0, 256, size=shape).astype(np.uint8)
        b8 = rng.integers(0, 256, size=shape).astype(np.uint8)
        assert psnr(t(a8), t(b8)) == pytest.approx(ref_psnr(a8, b8), abs=1e-9)


def test_psnr_on_real_images_matches_reference():
    from sr_ablate.core.degrade import bicubic_down, bicubic_up, modcrop
    for name, img in load_set5():
        hr = modcrop(t(img).to(torch.float64), 2)
        sr = bicubic_up(bicubic_down(hr, 2), 2).round().clamp(0, 255)
        y_hr, y_sr = shave(rgb_to_y(hr), 2), shave(rgb_to_y(sr), 2)
        want = ref_psnr(y_hr.numpy(), y_sr.numpy())
        assert math.isfinite(want)
        assert psnr(y_hr, y_sr) == pytest.approx(want, abs=1e-9), name


# --------------------------------------------------------------------------------------------
# SSIM
# --------------------------------------------------------------------------------------------

def smooth_image(h: int = 48, w: int = 48, seed: int = 0) -> np.ndarray:
    """A natural-ish (1, H, W) image in [0, 255]: gradients plus low-frequency texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = 60 + 2 * xx + 1.5 * yy + 30 * np.sin(xx / 4) * np.cos(yy / 5)
    img += rng.normal(0, 3, size=(h, w))
    return np.clip(img, 0, 255)[None]


def test_ssim_identical_is_one():
    for img in (smooth_image(), np.random.default_rng(3).uniform(0, 255, size=(3, 20, 30))):
        assert ssim(t(img), t(img.copy())) == pytest.approx(1.0, abs=1e-12)
    flat = torch.full((1, 16, 16), 77.0, dtype=torch.float64)
    assert ssim(flat, flat) == pytest.approx(1.0, abs=1e-12)


def test_ssim_symmetric_and_bounded():
    rng = np.random.default_rng(4)
    pairs = []
    for _ in range(4):
        a = rng.uniform(0, 255, size=(3, 24, 24))
        pairs.append((a, rng.uniform(0, 255, size=a.shape)))
        pairs.append((a, np.clip(a + rng.normal(0, 10, size=a.shape), 0, 255)))
    img = smooth_image()
    pairs.append((img, 255 - img))  # anti-correlated: structure term negative
    for a, b in pairs:
        s_ab, s_ba = ssim(t(a), t(b)), ssim(t(b), t(a))
        assert s_ab == pytest.approx(s_ba, abs=1e-12)
        assert -1.0 <= s_ab <= 1.0
        assert s_ab < 1.0
    assert ssim(t(img), t(255 - img)) < 0


def test_ssim_decreases_with_more_noise():
    img = smooth_image(64, 64)
    noise = np.random.default_rng(5).normal(0, 1, size=img.shape)
    values = [ssim(t(img), t(img + sigma * noise)) for sigma in (1, 3, 8, 20, 50)]
    assert all(x > y for x, y in zip(values, values[1:])), values
    assert values[0] < 1.0


def test_ssim_matches_numpy_reference_on_random_images():
    rng = np.random.default_rng(6)
    for shape in [(1, 11, 11), (1, 32, 40), (1, 23, 17)]:
        a = rng.uniform(0, 255, size=shape)
        b = np.clip(a + rng.normal(0, 25, size=shape), 0, 255)
        assert ssim(t(a), t(b)) == pytest.approx(ref_ssim_2d(a[0], b[0]), abs=1e-6)
    a = smooth_image(40, 40, seed=1)
    b = smooth_image(40, 40, seed=2)
    assert ssim(t(a), t(b)) == pytest.approx(ref_ssim_2d(a[0], b[0]), abs=1e-6)
    # peak other than 255 changes C1, C2
    assert ssim(t(a / 255), t(b / 255), peak=1.0) == pytest.approx(
        ref_ssim_2d(a[0] / 255, b[0] / 255, peak=1.0), abs=1e-6)


def test_ssim_multichannel_is_mean_of_channels():
    rng = np.random.default_rng(8)
    a = rng.uniform(0, 255, size=(3, 20, 24))
    b = np.clip(a + rng.normal(0, 15, size=a.shape) * np.array([1, 3, 6])[:, None, None], 0, 255)
    per_channel = [ref_ssim_2d(a[c], b[c]) for c in range(3)]
    assert len({round(v, 6) for v in per_channel}) == 3  # channels really differ
    assert ssim(t(a), t(b)) == pytest.approx(sum(per_channel) / 3, abs=1e-6)


def test_ssim_matches_numpy_reference_on_real_images():
    from sr_ablate.core.degrade import bicubic_down, bicubic_up, modcrop
    for name, img in load_set5():
        hr = modcrop(t(img).to(torch.float64), 3)
        sr = bicubic_up(bicubic_down(hr, 3), 3).round().clamp(0, 255)
        y_hr, y_sr = shave(rgb_to_y(hr), 3), shave(rgb_to_y(sr), 3)
        want = ref_ssim_2d(y_hr[0].numpy(), y_sr[0].numpy())
        got = ssim(y_hr, y_sr)
        assert got == pytest.approx(want, abs=1e-6), name
        assert 0 < got < 1


# --------------------------------------------------------------------------------------------
# rgb_to_y, shave
# --------------------------------------------------------------------------------------------

def test_rgb_to_y_white_black_and_mid_colour():
    white = torch.full((3, 2, 2), 255.0)
    black = torch.zeros(3, 2, 2)
    assert tuple(rgb_to_y(white).shape) == (1, 2, 2)
    torch.testing.assert_close(rgb_to_y(white), torch.full((1, 2, 2), 235.0, dtype=torch.float64),
                               rtol=0, atol=1e-12)
    torch.testing.assert_close(rgb_to_y(black), torch.full((1, 2, 2), 16.0, dtype=torch.float64),
                               rtol=0, atol=1e-12)
    r, g, b = 128, 64, 200
    want = 16 + 65.481 * r / 255 + 128.553 * g / 255 + 24.966 * b / 255
    mid = torch.tensor([r, g, b], dtype=torch.uint8).view(3, 1, 1)
    y = rgb_to_y(mid)
    assert y.dtype == torch.float64  # kept as float, not rounded
    assert y.item() == pytest.approx(want, abs=1e-12)
    assert y.item() != round(y.item())


def test_rgb_to_y_matches_reference_and_batches():
    rng = np.random.default_rng(9)
    img = rng.uniform(0, 255, size=(3, 7, 9))
    torch.testing.assert_close(rgb_to_y(t(img))[0], t(ref_y(img)), rtol=0, atol=1e-12)
    batch = rng.uniform(0, 255, size=(2, 3, 5, 5))
    yb = rgb_to_y(t(batch))
    assert tuple(yb.shape) == (2, 1, 5, 5)
    for i in range(2):
        torch.testing.assert_close(yb[i, 0], t(ref_y(batch[i])), rtol=0, atol=1e-12)


def test_rgb_to_y_gray_input_unchanged():
    gray = torch.tensor([[[0, 255], [17, 128]]], dtype=torch.uint8)
    y = rgb_to_y(gray)
    assert tuple(y.shape) == (1, 2, 2) and y.dtype == torch.float64
    torch.testing.assert_close(y, gray.to(torch.float64), rtol=0, atol=0)  # not squeezed to 16-235
    assert y.min().item() == 0 and y.max().item() == 255


@pytest.mark.parametrize("border", [0, 1, 2, 4])
def test_shave_removes_border(border):
    img = torch.arange(3 * 10 * 12, dtype=torch.float64).reshape(3, 10, 12)
    out = shave(img, border)
    assert tuple(out.shape) == (3, 10 - 2 * border, 12 - 2 * border)
    assert torch.equal(out, img[:, border:10 - border, border:12 - border])
    if border:
        # corners of the result are the pixels `border` in from each corner
        assert out[0, 0, 0].item() == img[0, border, border].item()
        assert out[0, -1, -1].item() == img[0, 9 - border, 11 - border].item()
    batch = img.expand(2, 3, 10, 12)
    assert tuple(shave(batch, border).shape) == (2, 3, 10 - 2 * border, 12 - 2 * border)


def test_shave_then_psnr_ignores_the_border():
    a = torch.full((1, 12, 12), 50.0, dtype=torch.float64)
    b = a.clone()
    b[..., :2, :] = 0  # differences only in the 2-pixel top border
    b[..., :, -2:] = 0
    assert psnr(shave(a, 2), shave(b, 2)) == math.inf
    assert psnr(shave(a, 1), shave(b, 1)) < math.inf


def test_bt601_coefficients_live_in_metrics_only():
    """One copy of the BT.601 coefficients: evaluation (colorize_y, to_gray) imports
    metrics' and rgb_to_y is its first row; no other module of the package spells them."""
    import re

    import sr_ablate
    from sr_ablate.core import evaluate, metrics
    assert evaluate.LUMA is metrics.LUMA and evaluate.YCBCR is metrics.YCBCR
    assert evaluate.YCBCR_OFFSET is metrics.YCBCR_OFFSET
    assert torch.equal(metrics.YCBCR[0], metrics.LUMA)
    rgb = torch.randint(0, 256, (3, 5, 7), generator=torch.Generator().manual_seed(0))
    ycc = torch.einsum("ij,jhw->ihw", metrics.YCBCR, rgb.double() / 255) + metrics.YCBCR_OFFSET
    torch.testing.assert_close(rgb_to_y(rgb), ycc[:1], rtol=0, atol=1e-12)
    root = Path(sr_ablate.__file__).parent
    spelt = sorted(str(p.relative_to(root)) for p in root.rglob("*.py")
                   if re.search(r"65\.481|128\.553|24\.966", p.read_text()))
    assert spelt == ["core/metrics.py"]
