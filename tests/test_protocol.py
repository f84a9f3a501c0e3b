"""The evaluation protocols against an independent float64 NumPy pipeline written here, and
against the bicubic numbers published in SR papers."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA
from test_degrade import ref_imresize
from test_metrics import ref_psnr
from test_metrics import ref_ssim_2d as ref_ssim

from sr_ablate.core.evaluate import Evaluator, Protocol
from sr_ablate.data import list_images, load_eval_images

needs_shared = pytest.mark.skipif(not (SHARED_DATA / "Set5").is_dir(),
                                  reason="../shared/data not found: benchmark images are only "
                                         "in the project's shared folder")


def np_y(rgb: np.ndarray) -> np.ndarray:
    """MATLAB rgb2ycbcr luma of (H, W, 3) in [0, 255], float."""
    return 16 + (65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]) / 255


def np_bicubic_baseline(hr: np.ndarray, s: int, protocol: str) -> tuple[float, float]:
    """The whole protocol for the bicubic baseline, from uint8 HR (H, W[, 3]), in NumPy."""
    h, w = hr.shape[:2]
    hr = hr[: h - h % s, : w - w % s].astype(np.float64)
    gray = hr.ndim == 2
    if protocol == "classic":  # Y first (rounded), float LR, float upscale, rounded output
        y = hr if gray else np.round(np_y(hr))
        out = np.clip(np.round(ref_imresize(ref_imresize(y, 1 / s), s)), 0, 255)
        ref = y
    else:  # RGB degradation, uint8 LR and output, Y at metric time
        chans = [hr] if gray else [hr[..., c] for c in range(3)]
        lq = [np.clip(np.round(ref_imresize(c, 1 / s)), 0, 255) for c in chans]
        up = [np.clip(np.round(ref_imresize(c, s)), 0, 255) for c in lq]
        out = up[0] if gray else np_y(np.stack(up, -1))
        ref = hr if gray else np_y(hr)
    out, ref = out[s:-s, s:-s], ref[s:-s, s:-s]
    return ref_psnr(out, ref), ref_ssim(out, ref)


def project_baseline(images, s, protocol):
    ev = Evaluator(images, s, Protocol(protocol))
    return ev.inputs(3)


@pytest.mark.parametrize("protocol", ["classic", "modern"])
@pytest.mark.parametrize("s", [2, 3, 4])
def test_bicubic_baseline_matches_numpy_on_random_images(protocol, s):
    g = np.random.default_rng(s)
    rgb = g.integers(0, 256, (37, 29, 3), dtype=np.uint8)
    gray = g.integers(0, 256, (31, 40), dtype=np.uint8)
    images = [("rgb", torch.from_numpy(rgb).permute(2, 0, 1)[:, : 37 - 37 % s, : 29 - 29 % s]),
              ("gray", torch.from_numpy(gray)[None, : 31 - 31 % s, : 40 - 40 % s])]
    rows = project_baseline(images, s, protocol)
    for arr, (_, _, p, q) in zip((rgb, gray), rows):
        want_p, want_q = np_bicubic_baseline(arr, s, protocol)
        assert p == pytest.approx(want_p, abs=1e-6) and q == pytest.approx(want_q, abs=1e-6)


@needs_shared
@pytest.mark.parametrize("protocol", ["classic", "modern"])
def test_bicubic_baseline_matches_numpy_on_set5_and_gray_bridge(protocol):
    from PIL import Image
    files = list_images(SHARED_DATA / "Set5")[:2] + [SHARED_DATA / "Set14" / "bridge.png"]
    images = load_eval_images(files, 3)
    assert images[-1][1].shape[0] == 1  # bridge is a gray PNG: kept 1-channel
    rows = project_baseline(images, 3, protocol)
    for f, (_, _, p, q) in zip(files, rows):
        want_p, want_q = np_bicubic_baseline(np.asarray(Image.open(f)), 3, protocol)
        assert p == pytest.approx(want_p, abs=1e-6) and q == pytest.approx(want_q, abs=1e-6)


# Bicubic PSNR (Y, crop = scale) as published in the SR literature (e.g. the VDSR/EDSR tables),
# produced by the MATLAB pipeline that the classic protocol reimplements.
PUBLISHED = {("Set5", 2): 33.66, ("Set5", 3): 30.39, ("Set5", 4): 28.42,
             ("Set14", 2): 30.24, ("Set14", 3): 27.55, ("Set14", 4): 26.00,
             ("BSD100", 2): 29.56, ("BSD100", 3): 27.21, ("BSD100", 4): 25.96}


@needs_shared
@pytest.mark.parametrize("set_name,s", list(PUBLISHED))
def test_classic_bicubic_equals_published_tables(set_name, s):
    images = load_eval_images(list_images(SHARED_DATA / set_name), s)
    metrics, _ = Evaluator(images, s, Protocol("classic")).bicubic_only()
    assert abs(metrics["val/psnr"] - PUBLISHED[set_name, s]) < 0.01


@needs_shared
def test_gray_images_are_not_squeezed_into_16_235():
    """Set14's bridge is gray: scoring its gray values differs from pushing it through RGB->Y."""
    bridge = load_eval_images([SHARED_DATA / "Set14" / "bridge.png"], 2)
    as_rgb = [(n, img.expand(3, -1, -1)) for n, img in bridge]
    gray = Evaluator(bridge, 2, Protocol("modern")).bicubic_only()[0]["val/psnr"]
    squeezed = Evaluator(as_rgb, 2, Protocol("modern")).bicubic_only()[0]["val/psnr"]
    assert squeezed - gray > 0.5  # 219/255 of the error: +1.3 dB on this image


def test_rgb_colour_option_scores_rgb_channels():
    g = np.random.default_rng(0)
    rgb = torch.from_numpy(g.integers(0, 256, (3, 24, 24), dtype=np.uint8))
    y = Evaluator([("a", rgb)], 2, Protocol("modern", "y")).bicubic_only()[0]["val/psnr"]
    c = Evaluator([("a", rgb)], 2, Protocol("modern", "rgb")).bicubic_only()[0]["val/psnr"]
    assert y != c


def test_protocol_tags_name_what_was_done():
    assert Protocol("classic").tags()["eval.lr_source"].endswith("_float")
    assert Protocol("modern").tags()["eval.lr_source"].endswith("_uint8")
    assert Protocol(color="rgb").tags()["eval.color_space"] == "rgb"


class Capture(torch.nn.Module):
    """A pre-upsampling 'model' (as SRCNN, VDSR) that returns its input and keeps it."""
    upsampled_input, scale = True, 2

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 1)
        self.seen = []

    def forward(self, x):
        self.seen.append(x)
        return x


@pytest.mark.parametrize("protocol,quantize", [("modern", True), ("classic", False)])
def test_pre_upsampling_model_is_evaluated_on_its_training_input(protocol, quantize):
    """The bicubic-enlarged LR that SRCNN/VDSR train on (make_pairs; the sampler divides by
    255) is the one they are evaluated on: rounded to uint8 with a uint8 LR (modern and
    degradation.quantize), float with a float LR (classic, degradation.quantize=false)."""
    from sr_ablate.core.degrade import modcrop
    from sr_ablate.data import builtin_dir, make_pairs, read_image
    hr = modcrop(read_image(builtin_dir() / "chelsea.png"), 2)
    model = Capture()
    Evaluator([("chelsea", hr)], 2, Protocol(protocol))(model)
    (pair,) = make_pairs([("chelsea", hr)], 2, "bicubic", quantize=quantize, upsampled=True)
    (seen,) = model.seen
    train = pair.lq.float().div(255)
    print(f"{protocol}: {(seen[0] != train).double().mean().item():.1%} of the input differs")
    if quantize:
        assert torch.equal(seen[0], train)
    else:  # float32 of x / 255 in float64 vs of float32(x) / 255: within an ulp
        torch.testing.assert_close(seen[0], train, rtol=0, atol=1e-6)


class Raises(torch.nn.Module):
    scale = 2

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 1)

    def forward(self, x):
        raise RuntimeError("CUDA out of memory")


@pytest.mark.parametrize("training", [True, False])
def test_evaluation_leaves_the_model_in_its_mode_when_it_raises(training):
    model = Raises().train(training)
    ev = Evaluator([("a", torch.zeros(3, 24, 24, dtype=torch.uint8))], 2)
    with pytest.raises(RuntimeError, match="out of memory"):
        ev(model)
    assert model.training is training
