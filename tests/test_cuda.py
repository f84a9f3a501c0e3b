"""The GPU path, on the device named by ``SR_ABLATE_TEST_DEVICE`` (default ``cuda``): training
in fp32/bf16/fp16, evaluation in fp32 inside autocast, tiled == whole, MATLAB imresize on the
device == on the CPU, ``upscale`` on the device, resume bit-exact in fp32, patches cut on the
device == on the host.

Marked ``cuda`` (``pytest -m cuda``); without a CUDA GPU they skip. ``SR_ABLATE_TEST_DEVICE=cpu``
runs the same checks on the CPU: the dry run of ``scripts/gpu_check.sh --device cpu`` (what only
a CUDA device can do is skipped there, saying why)."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from conftest import TINY, builtin_images, cli, stopped_after
from mlflow.tracking import MlflowClient
from PIL import Image

from sr_ablate.core.degrade import bicubic_down, imresize, to_uint8
from sr_ablate.core.evaluate import Evaluator
from sr_ablate.core.fp32 import describe, exact_fp32
from sr_ablate.core.tiling import tiled_forward
from sr_ablate.data.images import load_eval_images
from sr_ablate.inference.trained import Trained, from_checkpoint
from sr_ablate.inference.upscale import forward, upscale_array
from sr_ablate.training.job import instantiate_node, run_job

DEVICE = os.environ.get("SR_ABLATE_TEST_DEVICE", "cuda")
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(
    DEVICE.startswith("cuda") and not torch.cuda.is_available(), reason="needs a CUDA GPU")]
ON_CUDA = DEVICE.startswith("cuda")


@pytest.fixture(params=[DEVICE])
def device(request) -> torch.device:
    """The device under test (one; its name shows in the test ids: ``[cuda]``, ``[cpu]``)."""
    return torch.device(request.param)


def tiny_net(compose, seed: int = 0) -> torch.nn.Module:
    """SRResNet x2, 1 block of 8 channels, random weights, in eval mode (on the CPU)."""
    torch.manual_seed(seed)
    return instantiate_node(compose(["model.blocks=1", "model.channels=8"]).model).eval()


def only_run(uri: str):
    client = MlflowClient(uri)
    (r,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return client, r


def history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_training_runs_on_the_device(store, compose, tmp_path, device, precision):
    """trainer.device=<device>: a tiny run trains there in each precision and finishes with
    finite numbers (fp16 with its gradient scaler; on the CPU fp16 and bf16 are emulated)."""
    run_job(compose([*TINY, f"trainer.device={device}", f"trainer.precision={precision}",
                     "trainer.channels_last=false"]), cwd=str(tmp_path))
    client, r = only_run(store)
    assert r.info.status == "FINISHED"
    assert r.data.tags["device"] == str(device)
    assert r.data.tags["sr_ablate.precision"] == precision
    losses = [v for _, v in history(client, r.info.run_id, "train/loss")]
    assert losses and all(math.isfinite(v) for v in losses), losses
    assert math.isfinite(r.data.metrics["val/psnr"])


def photo(name: str = "chelsea", h: int = 64, w: int = 96) -> np.ndarray:
    """The top-left h x w of a built-in photograph, RGB uint8 (H, W, 3)."""
    (path,) = [p for p in builtin_images() if p.stem == name]
    return np.asarray(Image.open(path).convert("RGB"))[:h, :w].copy()


def eval_images() -> list[tuple[str, torch.Tensor]]:
    """Two small validation photographs (HR (3, 96, 128) uint8)."""
    files = [p for p in builtin_images() if p.stem in ("chelsea", "coffee")]
    return [(name, hr[:, :96, :128]) for name, hr in load_eval_images(files, 2)]


def fp32_outputs(net: torch.nn.Module, ev: Evaluator) -> list[torch.Tensor]:
    """What evaluation must give: a plain fp32 forward (TF32 off) of every LR input, clamped
    and scaled to [0, 255] as ``super_resolve`` returns it."""
    device = next(net.parameters()).device
    outs = []
    with torch.no_grad(), exact_fp32():
        for lq, *_ in ev.inputs(3):
            y = net((lq.to(torch.float64) / 255).float()[None].to(device))[0]
            outs.append(y.float().clamp(0, 1).to("cpu", torch.float64) * 255)
    return outs


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_evaluation_inside_autocast_is_the_fp32_evaluation(compose, device, dtype):
    """Evaluation called inside the training's autocast region (as ``fit`` may) runs in fp32:
    the same outputs and metrics as evaluation outside it."""
    net = tiny_net(compose).to(device)
    ev = Evaluator(eval_images(), 2)
    plain = ev(net)
    outs = list(ev.last_outputs)
    with torch.autocast(device.type, dtype=dtype):
        cast = ev(net)
    for a, b in zip(ev.last_outputs, outs):
        assert (a - b).abs().max() <= 255 * 1e-6, (a - b).abs().max()
    assert abs(cast["val/psnr"] - plain["val/psnr"]) < 1e-6


def test_evaluation_equals_a_strict_fp32_forward(compose, device):
    """Evaluation's outputs equal a true fp32 forward (no TF32, no autocast) to float
    rounding; TF32 convolutions (cuDNN's default) would miss by ~1e-3 of the range."""
    net = tiny_net(compose).to(device)
    ev = Evaluator(eval_images(), 2)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        ev(net)
    for got, want in zip(ev.last_outputs, fp32_outputs(net, ev)):
        diff = (got - want).abs().max().item()
        assert diff <= 255 * 1e-5, f"max |evaluation - fp32| = {diff:.3g} of 255 ({describe()})"


def test_tiled_equals_whole_on_the_device(compose, device):
    """``tiled_forward`` on the device: the whole-image fp32 output within 1e-6 (range
    [0, 1]), the input on the CPU or on the device; and ``upscale``'s forward likewise."""
    net = tiny_net(compose).to(device)
    x = torch.rand(1, 3, 70, 92, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), exact_fp32():
        whole = net(x.to(device)).cpu()
    for inputs in (x, x.to(device)):  # tiles moved to the model's device, or already there
        tiled = tiled_forward(net, inputs, tile=24).cpu()
        assert tiled.shape == whole.shape
        diff = (tiled - whole).abs().max().item()
        assert diff <= 1e-6, f"max |tiled - whole| = {diff:.3g} ({describe()})"
    trained = Trained.of(net, 2, "tiny")
    img = torch.from_numpy(photo(h=70, w=92)).permute(2, 0, 1)[None]
    a, b = forward(trained, img, tile=24), forward(trained, img, tile=0)
    assert (a - b).abs().max().item() <= 255 * 1e-6


@pytest.mark.parametrize("scale", [2, 3, 4, 1.5])
def test_imresize_on_the_device_equals_the_cpu_in_float64(device, scale):
    """MATLAB imresize in float64 on the device: the CPU's values to float64 rounding, and
    the same uint8 LR (``bicubic_down``) and enlargement."""
    g = torch.Generator().manual_seed(1)
    hr = torch.randint(0, 256, (2, 3, 96, 120), generator=g).to(torch.float64)
    cpu = imresize(hr, size=(round(96 / scale), round(120 / scale)))
    dev = imresize(hr.to(device), size=(round(96 / scale), round(120 / scale)))
    assert dev.device.type == device.type and dev.dtype == torch.float64
    assert (dev.cpu() - cpu).abs().max().item() <= 1e-9
    assert torch.equal(bicubic_down(hr.to(device), scale).cpu(), bicubic_down(hr, scale))
    lq = bicubic_down(hr, scale)
    up_cpu = imresize(lq, size=(96, 120))
    up_dev = imresize(lq.to(device), size=(96, 120)).cpu()
    assert (up_dev - up_cpu).abs().max().item() <= 1e-9
    assert torch.equal(to_uint8(up_dev), to_uint8(up_cpu))


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_upscale_on_the_device(trained_run, tmp_path, device, precision):
    """``python -m sr_ablate upscale device=<device>``: a picture in each precision; fp32 gives
    the CPU's pixels (to one level where float rounding lands a value across a boundary)."""
    if precision == "fp16" and not ON_CUDA:
        pytest.skip("precision=fp16 needs a CUDA device: upscale refuses it on the CPU")
    src, dst = tmp_path / "cat.png", tmp_path / f"cat_{precision}.png"
    img = photo()
    Image.fromarray(img).save(src)
    out = cli([f"model={trained_run.weights}", f"input={src}", f"output={dst}",
               f"device={device.type}", f"precision={precision}"], tmp_path, command="upscale")
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"{dst}: 96x64 -> 192x128 (x2, rgb model, whole) in" in out.stdout
    got = np.asarray(Image.open(dst)).astype(int)
    want = upscale_array(from_checkpoint(trained_run.weights), img).astype(int)  # CPU fp32
    diff = np.abs(got - want)
    assert got.shape == want.shape == (128, 192, 3)
    if precision == "fp32":
        assert diff.max() <= 1 and (diff > 0).mean() <= 1e-3, (diff.max(), (diff > 0).sum())
    else:  # a reduced precision: close to fp32, not equal
        assert diff.mean() < 2, diff.mean()


RESUME = [*TINY, "trainer.steps=6", "trainer.eval_every=3", "trainer.log_every=1",
          "trainer.checkpoint_every=2", "trainer.precision=fp32", "trainer.channels_last=false",
          "trainer.deterministic=true", "tracking.checkpoint=false"]


def test_resume_on_the_device_is_bit_exact_in_fp32(compose, tmp_path, device, monkeypatch):
    """Stopped after step 4 on the device (between evaluations), resumed from its checkpoint:
    every logged loss and evaluation equals an uninterrupted run's, bit for bit
    (``trainer.deterministic=true``: cuDNN's backward may otherwise sum in any order)."""
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    args = [*RESUME, f"trainer.device={device}"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    whole.mkdir(), cut.mkdir()
    run_job(compose(args), cwd=str(whole))
    stopped_after(4, lambda: run_job(compose(args), cwd=str(cut)), monkeypatch)
    run_job(compose([*args, "resume=true"]), cwd=str(cut))
    (cw, w), (cc, c) = only_run(f"sqlite:///{whole / 'mlflow.db'}"), \
        only_run(f"sqlite:///{cut / 'mlflow.db'}")
    assert c.info.status == "FINISHED" and c.data.tags["device"] == str(device)
    for key in ("train/loss", "val/psnr", "val/ssim"):
        a, b = history(cw, w.info.run_id, key), history(cc, c.info.run_id, key)
        assert a and a == b, (key, a, b)


def test_device_side_sampling_trains_like_host_side(compose, tmp_path, device, monkeypatch):
    """``data.on_device=true`` on the device (patches cut there by index) gives the host
    sampler's batches bit for bit: the same losses and evaluation, deterministic kernels."""
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    runs = {}
    for on in ("false", "true"):
        (tmp_path / on).mkdir()
        run_job(compose([*RESUME, f"trainer.device={device}", f"data.on_device={on}"]),
                cwd=str(tmp_path / on))
        runs[on] = only_run(f"sqlite:///{tmp_path / on / 'mlflow.db'}")
    (ch, host), (cd, dev) = runs["false"], runs["true"]
    assert (host.data.tags["sr_ablate.on_device"], dev.data.tags["sr_ablate.on_device"]) == (
        "false", "true")
    for key in ("train/loss", "val/psnr"):
        a, b = history(ch, host.info.run_id, key), history(cd, dev.info.run_id, key)
        assert a and a == b, (key, a, b)
