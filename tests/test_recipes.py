"""Training recipes by value: the EMA of the weights (trainer.ema / ema_start), gradient
accumulation (trainer.accumulate), deterministic mode, and a run with them resumed exactly."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY, stopped_after
from mlflow.tracking import MlflowClient

from sr_ablate.training import checkpoint
from sr_ablate.training.ema import EMA
from sr_ablate.training.job import run_job
from sr_ablate.training.loop import Every, Hooks, fit
from sr_ablate.training.step import Numerics


def batches(seed: int = 0, n: int = 4):
    g = torch.Generator().manual_seed(seed)
    return iter(lambda: {"lq": torch.rand(n, 1, 8, 8, generator=g),
                         "gt": torch.rand(n, 1, 8, 8, generator=g)}, None)


def net(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(4, 1, 3, padding=1))


def test_ema_after_k_steps_is_the_hand_computed_average():
    """Copies the weights for ema_start steps, then e_t = d e_{t-1} + (1 - d) w_t."""
    model, decay, start = net(), 0.9, 2
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    ema = EMA(model, decay, start)
    seen = []  # the raw weights after every step
    fit(model, batches(), opt, F.mse_loss, steps=6, every=Every(log=1), progress=False,
        numerics=Numerics(ema=ema),
        hooks=Hooks(log=lambda step, m: seen.append([p.detach().clone()
                                                     for p in model.parameters()])))
    expected = seen[start - 1]
    for w in seen[start:]:
        expected = [decay * e + (1 - decay) * x for e, x in zip(expected, w)]
    for got, want, raw in zip(ema.model.parameters(), expected, seen[-1]):
        assert torch.allclose(got, want, atol=1e-7, rtol=0)
        assert not torch.allclose(got, raw)  # an average, not the last weights
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in ema.model.parameters())


def test_the_ema_stays_fp32_under_bf16_autocast_and_copies_integer_buffers():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4),
                                torch.nn.Conv2d(4, 1, 3, padding=1))
    ema = EMA(model, 0.5)
    fit(model, batches(), torch.optim.SGD(model.parameters(), lr=0.1), F.mse_loss, steps=3,
        progress=False, numerics=Numerics(autocast=torch.bfloat16, ema=ema))
    tracked = dict(ema.model.named_buffers())["1.num_batches_tracked"]
    assert tracked.item() == 3 and tracked.dtype == torch.long
    assert all(t.dtype == torch.float32 for t in ema.model.state_dict().values()
               if t.is_floating_point())


def _plain_steps(model, data, opt, steps):
    for _ in range(steps):
        b = next(data)
        loss = F.mse_loss(model(b["lq"]), b["gt"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def test_accumulate_1_is_exactly_the_single_batch_step():
    a, b = net(), net()
    fit(a, batches(), torch.optim.Adam(a.parameters(), 1e-2), F.mse_loss, steps=5,
        progress=False, numerics=Numerics(accumulate=1))
    _plain_steps(b, batches(), torch.optim.Adam(b.parameters(), 1e-2), 5)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


def test_accumulating_n_batches_of_b_equals_one_batch_of_n_times_b():
    """No batch norm: the mean loss over N·B samples is the mean of N micro-batch means."""
    small, large = net(), net()
    g = torch.Generator().manual_seed(1)
    data = [{"lq": torch.rand(3, 1, 8, 8, generator=g), "gt": torch.rand(3, 1, 8, 8, generator=g)}
            for _ in range(8)]
    joined = [{k: torch.cat([data[i][k], data[i + 1][k]]) for k in ("lq", "gt")}
              for i in range(0, 8, 2)]
    logged = []
    fit(small, iter(data), torch.optim.SGD(small.parameters(), lr=0.3), F.mse_loss, steps=4,
        progress=False, numerics=Numerics(accumulate=2), every=Every(log=1),
        hooks=Hooks(log=lambda s, m: logged.append(m["train/loss"])))
    whole = []
    fit(large, iter(joined), torch.optim.SGD(large.parameters(), lr=0.3), F.mse_loss, steps=4,
        progress=False, every=Every(log=1),
        hooks=Hooks(log=lambda s, m: whole.append(m["train/loss"])))
    for x, y in zip(small.parameters(), large.parameters()):
        assert torch.allclose(x, y, atol=1e-6, rtol=0)
    assert logged == pytest.approx(whole, abs=1e-6)  # the logged loss: the effective batch's


RECIPES = [*TINY, "trainer.steps=12", "trainer.eval_every=6", "trainer.log_every=2",
           "trainer.ema=0.8", "trainer.ema_start=3", "trainer.accumulate=2"]


def _history(store: str, key: str) -> list[tuple[int, float]]:
    client = MlflowClient(store)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))


@pytest.mark.slow  # default run under 10 min on 2 cores; CI's slow pass runs it
def test_a_run_with_ema_and_accumulation_resumes_to_the_same_numbers(tmp_path, compose,
                                                                      monkeypatch):
    """Stopped after step 4 (between evaluations), resumed: every logged value, the EMA's
    evaluation and the released weights equal an uninterrupted run's."""
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    whole.mkdir(), cut.mkdir()
    run_job(compose(RECIPES), cwd=str(whole))
    stopped_after(4, lambda: run_job(compose(RECIPES), cwd=str(cut)), monkeypatch)
    (ckpt,) = (cut / ".sr_ablate" / "checkpoints").glob("*.pt")
    assert checkpoint.load(ckpt)["step"] == 4 and checkpoint.load(ckpt)["loop"]["ema"]
    run_job(compose([*RECIPES, "resume=true"]), cwd=str(cut))
    for key in ("train/loss", "val/psnr", "val/psnr_raw", "val/ssim"):
        a = _history(f"sqlite:///{whole / 'mlflow.db'}", key)
        assert a and a == _history(f"sqlite:///{cut / 'mlflow.db'}", key), key
    assert _history(f"sqlite:///{whole / 'mlflow.db'}", "val/psnr") != \
        _history(f"sqlite:///{whole / 'mlflow.db'}", "val/psnr_raw")


@pytest.mark.parametrize("deterministic", [pytest.param(False, marks=pytest.mark.slow), True])
def test_two_seeded_runs_with_ema_and_accumulation_match(tmp_path, compose, monkeypatch,
                                                         deterministic):
    """On a CPU two runs of one seed already match; trainer.deterministic keeps them so (and
    is what makes them match on a GPU)."""
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    args = [*RECIPES, f"trainer.deterministic={str(deterministic).lower()}"]
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()
    try:
        run_job(compose(args), cwd=str(first))
        assert torch.are_deterministic_algorithms_enabled() == deterministic
        run_job(compose(args), cwd=str(second))
    finally:
        torch.use_deterministic_algorithms(False)
    for key in ("train/loss", "val/psnr", "val/psnr_raw"):
        assert _history(f"sqlite:///{first / 'mlflow.db'}", key) == \
            _history(f"sqlite:///{second / 'mlflow.db'}", key), key
    client = MlflowClient(f"sqlite:///{first / 'mlflow.db'}")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.data.tags["sr_ablate.deterministic"] == str(deterministic).lower()
    assert run.data.tags["sr_ablate.weights"] == "ema"
    assert run.data.params["trainer.effective_batch"] == str(2 * compose(TINY).trainer.batch_size)


def test_the_ema_is_an_independent_copy():
    model = net()
    ema = EMA(model, 0.99)
    before = copy.deepcopy(ema.model.state_dict())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert all(torch.equal(before[k], v) for k, v in ema.model.state_dict().items())


@pytest.mark.slow  # default run under 10 min on 2 cores; CI's slow pass runs it
def test_the_released_weights_are_the_ema_everywhere(tmp_path):
    """trainer.ema on: the run's evaluation, final.pt's model (what every loader takes), the
    MLflow Model and upscale are the average's weights; the raw ones stay in final.pt and
    their validation PSNR is logged beside as val/psnr_raw."""
    import mlflow
    import numpy as np
    from conftest import builtin_images, cli
    from PIL import Image

    from sr_ablate.core.evaluate import Evaluator
    from sr_ablate.data import BUILTIN_VAL, load_eval_images
    from sr_ablate.inference.trained import from_checkpoint
    from sr_ablate.inference.upscale import upscale_array

    out = cli([*TINY, "trainer.steps=8", "trainer.eval_every=8", "trainer.ema=0.5",
               "trainer.ema_start=2", "trainer.precision=fp32", "trainer.channels_last=false"],
              tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(store)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.data.tags["sr_ablate.weights"] == "ema"
    path = client.download_artifacts(run.info.run_id, "checkpoints/final.pt", str(tmp_path))
    saved = torch.load(path, weights_only=True)
    assert any(not torch.equal(saved["model"][k], saved["model_raw"][k]) for k in saved["model"])
    trained = from_checkpoint(path)
    assert all(torch.equal(v, saved["model"][k]) for k, v in trained.model.state_dict().items())
    val = [p for p in builtin_images() if p.name in BUILTIN_VAL]
    scores = Evaluator(load_eval_images(val, 2), 2)
    assert scores(trained.model)["val/psnr"] == pytest.approx(run.data.metrics["val/psnr"],
                                                              abs=1e-9)
    raw = copy.deepcopy(trained.model)
    raw.load_state_dict(saved["model_raw"])
    assert scores(raw)["val/psnr"] == pytest.approx(run.data.metrics["val/psnr_raw"], abs=1e-9)
    # the MLflow Model and the upscale command
    img = np.asarray(Image.open(val[0]).convert("RGB"))[:24, :32].copy()
    want = upscale_array(trained, img)
    # loaded from its folder: setting the tracking URI would leak into later tests' processes
    folder = client.download_artifacts(run.info.run_id, "model", str(tmp_path / "m"))
    served = mlflow.pyfunc.load_model(folder).predict(img)
    assert np.array_equal(np.asarray(served), want)
    Image.fromarray(img).save(tmp_path / "in.png")
    up = cli([f"model={run.info.run_id}", "input=in.png", "output=out.png"], tmp_path,
             command="upscale")
    assert up.returncode == 0, up.stderr
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out.png")), want)


def test_keeping_an_ema_leaves_training_as_it_was():
    """The EMA only reads the weights: a run with it trains the very weights a run without it
    does, so one run measures both (its val/psnr_raw is the EMA-off run's val/psnr)."""
    a, b = net(), net()
    fit(a, batches(), torch.optim.Adam(a.parameters(), 1e-2), F.mse_loss, steps=6,
        progress=False, numerics=Numerics(ema=EMA(a, 0.9, 2)))
    fit(b, batches(), torch.optim.Adam(b.parameters(), 1e-2), F.mse_loss, steps=6,
        progress=False)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
