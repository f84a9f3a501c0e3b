"""TF32 off (matmul and cuDNN, oneDNN's bf16/tf32 too) wherever sr_ablate evaluates or
measures, with the user's own settings back afterwards, exactly; training keeps the user's
setting and records it as the tag ``sr_ablate.tf32``."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import REPO, TINY
from mlflow.tracking import MlflowClient
from torch import nn
from torch.overrides import TorchFunctionMode

from sr_ablate import data, tracking
from sr_ablate.core import fp32
from sr_ablate.core.complexity import gflops, ms_per_frame
from sr_ablate.core.degrade import imresize
from sr_ablate.core.evaluate import Evaluator, Protocol
from sr_ablate.inference.trained import Trained
from sr_ablate.inference.upscale import upscale_array
from sr_ablate.training.job import run_job

NEW = pytest.mark.skipif(not fp32.NEW_API, reason="torch < 2.9 has the legacy flags only")
# a user's non-default settings, each with TF32 (or oneDNN's bf16) allowed somewhere
USERS = {
    "legacy": lambda: torch.set_float32_matmul_precision("high"),
    "new_api": lambda: setattr(torch.backends, "fp32_precision", "tf32"),
    "cpu_bf16": lambda: (setattr(torch.backends.mkldnn.conv, "fp32_precision", "bf16"),
                         setattr(torch.backends.mkldnn.matmul, "fp32_precision", "bf16")),
}
# fp32.describe() under each, from torch's defaults
DESCRIBED = {
    "legacy": "cuda.matmul=tf32, cudnn.conv=tf32" + (
        ", mkldnn.matmul=tf32, mkldnn.conv=ieee" if fp32.NEW_API else ""),
    "new_api": "cuda.matmul=tf32, cudnn.conv=tf32, mkldnn.matmul=tf32, mkldnn.conv=tf32",
    "cpu_bf16": "cuda.matmul=ieee, cudnn.conv=tf32, mkldnn.matmul=bf16, mkldnn.conv=bf16",
}


def _read(getter):
    try:
        return getter()
    except RuntimeError:  # torch refuses a legacy flag the new API disagrees with
        return "refused"


def seen() -> dict:
    """What each kind of float32 op computes in now, as torch's own getters say."""
    b = torch.backends
    if not fp32.NEW_API:
        return {"cuda.matmul": b.cuda.matmul.allow_tf32, "cudnn.conv": b.cudnn.allow_tf32}
    return {"cuda.matmul": b.cuda.matmul.fp32_precision, "cudnn.conv": b.cudnn.conv.fp32_precision,
            "cudnn.rnn": b.cudnn.rnn.fp32_precision,
            "mkldnn.matmul": b.mkldnn.matmul.fp32_precision,
            "mkldnn.conv": b.mkldnn.conv.fp32_precision,
            "mkldnn.rnn": b.mkldnn.rnn.fp32_precision,
            "legacy matmul": _read(torch.get_float32_matmul_precision)}


OFF = ({"cuda.matmul": False, "cudnn.conv": False} if not fp32.NEW_API else
       {**dict.fromkeys(["cuda.matmul", "cudnn.conv", "cudnn.rnn", "mkldnn.matmul",
                         "mkldnn.conv", "mkldnn.rnn"], "ieee"), "legacy matmul": "highest"})


def settings() -> dict:
    """Everything a user can read of the float32 settings (the new API's nodes and the
    legacy flags), to compare before and after."""
    b = torch.backends
    out = {"matmul_precision": _read(torch.get_float32_matmul_precision),
           "cuda.matmul.allow_tf32": _read(lambda: b.cuda.matmul.allow_tf32),
           "cudnn.allow_tf32": _read(lambda: b.cudnn.allow_tf32)}
    if fp32.NEW_API:
        nodes = {"generic": b, "cuda": b.cudnn, "mkldnn": b.mkldnn, "cuda.matmul": b.cuda.matmul,
                 "cudnn.conv": b.cudnn.conv, "cudnn.rnn": b.cudnn.rnn,
                 "mkldnn.matmul": b.mkldnn.matmul, "mkldnn.conv": b.mkldnn.conv,
                 "mkldnn.rnn": b.mkldnn.rnn}
        out.update((name, node.fp32_precision) for name, node in nodes.items())
    return out


@pytest.fixture(params=[pytest.param("legacy"), pytest.param("new_api", marks=NEW),
                        pytest.param("cpu_bf16", marks=NEW)])
def user(request):
    """A user's non-default settings in force: SimpleNamespace(name, settings: what they read
    as). The session's settings are back afterwards, so that no other test runs with them."""
    session, readable = fp32.current(), settings()
    try:
        USERS[request.param]()
        assert seen() != OFF and fp32.describe() == DESCRIBED[request.param]
        yield SimpleNamespace(name=request.param, settings=settings())
    finally:
        fp32.restore(session)
    assert settings() == readable


class Recorder(nn.Module):
    """x2 SR (conv 3x3, pixel shuffle) whose forward records what it runs with: ``seen()``
    and whether autocast is on; ``fail`` makes it raise after recording."""
    upsampled_input = False

    def __init__(self, channels: int = 3):
        super().__init__()
        self.in_channels, self.scale, self.fail = channels, 2, False
        self.conv = nn.Conv2d(channels, 4 * channels, 3, padding=1)
        self.up = nn.PixelShuffle(2)
        self.calls: list[dict] = []

    def forward(self, x):  # (B, C, h, w) -> (B, C, 2h, 2w)
        self.calls.append({**seen(), "autocast": torch.is_autocast_enabled(x.device.type)})
        if self.fail:
            raise RuntimeError("out of memory (the test's)")
        return self.up(self.conv(x))


class MatmulWatch(TorchFunctionMode):
    """Records ``seen()`` at every matrix product torch is asked for (imresize is two)."""

    def __init__(self):
        super().__init__()
        self.calls: list[dict] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in (torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.mm):
            self.calls.append(seen())
        return func(*args, **(kwargs or {}))


def images(n: int = 2, side: int = 48) -> list[tuple[str, torch.Tensor]]:
    paths = [data.builtin_dir() / name for name in data.BUILTIN_VAL[:n]]
    return [(name, hr[:, :side, :side]) for name, hr in data.load_eval_images(paths, 2)]


def test_inside_off_after_the_users_settings_exactly(user):
    """Each kind of op computes IEEE float32 inside, and every setting reads as before after."""
    with fp32.exact_fp32():
        assert seen() == OFF
        assert fp32.describe() == ("cuda.matmul=ieee, cudnn.conv=ieee" if not fp32.NEW_API else
                                   "cuda.matmul=ieee, cudnn.conv=ieee, mkldnn.matmul=ieee, "
                                   "mkldnn.conv=ieee")
    assert settings() == user.settings


def test_nested_blocks_and_an_exception_restore(user):
    with fp32.exact_fp32():
        with fp32.exact_fp32():
            assert seen() == OFF
        assert seen() == OFF  # the inner block put back the outer one's settings
        if fp32.NEW_API:  # changed inside: undone on the way out
            torch.backends.mkldnn.conv.fp32_precision = "bf16"
        else:
            torch.set_float32_matmul_precision("medium")
    assert settings() == user.settings
    with pytest.raises(KeyError), fp32.exact_fp32():
        {}["raised inside"]
    assert settings() == user.settings


def test_evaluation_runs_off_also_in_autocast_and_when_the_model_raises(user):
    """The real Evaluator on built-in photographs: every forward (also inside a bf16 autocast
    region) and every matrix product of the bicubic baseline's imresize sees TF32 off and
    autocast off; a forward that raises leaves the user's settings too."""
    model, ev = Recorder(), Evaluator(images(), 2, Protocol(), prefix="x")
    with MatmulWatch() as watch:
        ev(model)
        with torch.autocast("cpu", torch.bfloat16):
            ev(model)
        metrics, _ = Evaluator(images(), 2, Protocol("classic")).bicubic_only()
    assert len(model.calls) == 4 and watch.calls and metrics["val/psnr"] > 20
    assert all(c == {**OFF, "autocast": False} for c in model.calls)
    assert all(c == OFF for c in watch.calls)
    assert settings() == user.settings
    model.fail = True
    with pytest.raises(RuntimeError, match="the test's"):
        ev(model)
    assert settings() == user.settings and model.training  # back in its mode, as before


def test_imresize_ms_per_frame_gflops_and_upscale_run_off(user):
    x = torch.rand(3, 20, 30)  # float32: the matrix products would be TF32's to take
    with MatmulWatch() as watch:
        imresize(x, 0.5)
    assert len(watch.calls) == 2 and all(c == OFF for c in watch.calls)
    model = Recorder()
    timing = ms_per_frame(model, (1, 3, 16, 16), warmup=1, repeats=2)
    gflops(model, (1, 3, 16, 16))
    assert timing.passes >= 2 and len(model.calls) == timing.passes + 2
    img = np.asarray(torch.randint(0, 256, (40, 36, 3), dtype=torch.uint8))
    trained = Trained.of(model.eval(), 2, "test")
    tiled = upscale_array(trained, img, tile=16)  # the receptive-radius probe, then tiles
    with torch.autocast("cpu", torch.bfloat16):  # fp32 even inside an autocast region
        whole = upscale_array(trained, img, tile=0)
    assert np.abs(whole.astype(int) - tiled).max() <= 1
    assert all(c == {**OFF, "autocast": False} for c in model.calls)
    assert settings() == user.settings


@NEW
def test_a_fresh_torch_is_as_if_nothing_had_run():
    """In a fresh process, from torch's defaults and from states set with either API: after
    ``exact_fp32`` every setting reads as before, and later changes of parent nodes act as
    they would have (cuDNN conv's built-in default follows the parents; a value written to it
    would not). Compared with a forked twin that never entered the block."""
    script = textwrap.dedent("""
        import os, torch
        from sr_ablate.core import fp32
        b = torch.backends
        states = {
            "default": [],
            "legacy": ["b.cudnn.allow_tf32 = False", "torch.set_float32_matmul_precision('high')"],
            "new": ["b.cudnn.conv.fp32_precision = 'ieee'",
                    "b.mkldnn.matmul.fp32_precision = 'bf16'", "b.cudnn.fp32_precision = 'tf32'"],
            "mixed": ["b.cuda.matmul.fp32_precision = 'tf32'", "b.cudnn.allow_tf32 = True"],
        }
        later = ["b.fp32_precision = 'ieee'", "b.cudnn.fp32_precision = 'tf32'",
                 "b.fp32_precision = 'none'"]
        def read():
            out = [fp32._get(n) for n in (fp32.GENERIC, *fp32.BACKENDS, *fp32.LEAVES)]
            for getter in (torch.get_float32_matmul_precision, lambda: b.cudnn.allow_tf32):
                try:
                    out.append(getter())
                except RuntimeError:
                    out.append("refused")
            return out
        def run(steps, wrap):
            r, w = os.pipe()
            if os.fork() == 0:  # the twin: the state torch has now, in a process of its own
                try:
                    for s in steps:
                        exec(s)
                    if wrap:
                        with fp32.exact_fp32():
                            pass
                    seen = [read()]
                    for s in later:
                        exec(s)
                        seen.append(read())
                    os.write(w, repr(seen).encode())
                except BaseException as e:
                    os.write(w, repr(e).encode())
                finally:
                    os._exit(0)
            os.close(w)
            out = os.read(r, 1 << 16).decode()
            os.wait()
            return out
        for name, steps in states.items():
            print(name, run(steps, False) == run(steps, True))
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                         text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["default", "True", "legacy", "True", "new", "True",
                                  "mixed", "True"]


@pytest.mark.parametrize("user", ["legacy", pytest.param("new_api", marks=NEW)], indirect=True)
def test_training_keeps_the_users_setting_and_records_it(user, store, compose, tmp_path):
    """A real run: its training steps see the user's setting, every evaluation, timing and
    FLOP count sees TF32 off, and the run's ``sr_ablate.tf32`` tag says the user's setting."""
    users, described, calls = seen(), fp32.describe(), []

    def hook(module, args):
        if type(module).__name__ == "SRResNet":
            calls.append((module.training, seen()))
    handle = nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        run_job(compose(TINY + ["trainer.precision=fp32", "trainer.channels_last=false",
                                "tracking.checkpoint=false"]), cwd=str(tmp_path))
    finally:
        handle.remove()
    training = [s for is_training, s in calls if is_training]
    evaluation = [s for is_training, s in calls if not is_training]
    assert len(training) == 4 and len(evaluation) >= 3  # 4 steps; evaluations, ms_per_frame
    assert all(s == users for s in training) and all(s == OFF for s in evaluation)
    (r,) = tracking.runs_frame(store).itertuples()
    tags = MlflowClient(store).get_run(r.run_id).data.tags
    assert tags["sr_ablate.tf32"] == described == DESCRIBED[user.name]
    assert settings() == user.settings
