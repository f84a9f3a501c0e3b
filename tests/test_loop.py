"""fit(): the throughput it logs, non-finite losses caught at the step they happen, and no host
sync between log steps. Real ``fit`` runs of a one-layer model."""
from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F

from sr_ablate.training.loop import Every, Hooks, NonFiniteLoss, fit

STEP_S = 0.02  # every batch takes at least this long: a training step of known length


def tiny():
    torch.manual_seed(0)
    model = torch.nn.Conv2d(1, 1, 3, padding=1)
    return model, torch.optim.SGD(model.parameters(), lr=1e-3)


def batches(delay: float = 0.0, on_next=None):
    def gen():
        while True:
            if on_next is not None:
                on_next()
            if delay:
                time.sleep(delay)
            yield {"lq": torch.rand(2, 1, 8, 8), "gt": torch.rand(2, 1, 8, 8)}
    return gen()


@pytest.fixture
def one_thread():
    """A 1-layer model's steps take ~3 ms on one thread, ~150 ms on two busy cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("start_step", [0, 1000])
def test_it_per_s_is_this_process_steps_over_training_time_only(start_step, one_thread):
    """Evaluation, logging and checkpoints are slow here (0.3 s, 0.1 s, 0.3 s at every 10th
    step) and a step takes >= 20 ms. The rate must be that of the 10 steps since the last
    log over the time they took (seen from here: from the batch request of the first to the
    start of the evaluation after the last), neither the absolute step over the wall time
    (400-1,500 it/s after resuming at step 1000, where the steps ran at ~35 it/s) nor
    dragged down by evaluation, logging and checkpoints (12-17 it/s)."""
    model, opt = tiny()
    requests, evals, rates = [], [], {}

    def eval_fn(m):
        evals.append(time.perf_counter())
        time.sleep(0.3)
        return {"val/psnr": 30.0}

    def log_fn(step, metrics):
        rates[step] = metrics["train/it_per_s"]
        time.sleep(0.1)

    fit(model, batches(STEP_S, on_next=lambda: requests.append(time.perf_counter())), opt,
        F.mse_loss, steps=start_step + 30, resume={"step": start_step, "loop": None},
        every=Every(log=10, eval=10, checkpoint=10), progress=False,
        hooks=Hooks(evaluate=eval_fn, log=log_fn,
                    checkpoint=lambda step, state: time.sleep(0.3)))
    assert sorted(rates) == [start_step + 10, start_step + 20, start_step + 30]
    seen = {start_step + 10 * (i + 1): 10 / (evals[i] - requests[10 * i]) for i in range(3)}
    print({s: f"{r:.1f} it/s (seen {seen[s]:.1f})" for s, r in rates.items()})
    for step, rate in rates.items():
        assert rate <= 1 / STEP_S and rate == pytest.approx(seen[step], rel=0.1), step


def nan_at(bad_call: int, value: float = float("nan")):
    """An MSE loss that is ``value`` at its ``bad_call``-th call (1-based)."""
    calls = []

    def loss_fn(out, gt):
        calls.append(1)
        loss = F.mse_loss(out, gt)
        return loss * value if len(calls) == bad_call else loss
    return loss_fn


@pytest.mark.parametrize("start_step,value", [(0, float("nan")), (1000, float("inf"))])
def test_non_finite_loss_names_the_step_it_happened_at(start_step, value):
    model, opt = tiny()
    logged = []
    with pytest.raises(NonFiniteLoss) as e:
        fit(model, batches(), opt, nan_at(3, value), steps=start_step + 20,
            resume={"step": start_step, "loop": None}, every=Every(log=10), progress=False,
            hooks=Hooks(log=lambda step, m: logged.append(step)))
    print(e.value)
    assert f"at step {start_step + 3}" in str(e.value) and "\n" not in str(e.value)
    assert logged == []  # nothing of that window reaches the tracking store


def test_non_finite_loss_is_caught_before_a_checkpoint_saves_it():
    """A checkpoint between the bad step and the next log would hold NaN weights: the check
    runs before every checkpoint too."""
    model, opt = tiny()
    saved = []
    with pytest.raises(NonFiniteLoss, match="at step 3"):
        fit(model, batches(), opt, nan_at(3), steps=20, every=Every(log=10, checkpoint=5),
            hooks=Hooks(checkpoint=lambda step, state: saved.append(step)), progress=False)
    assert saved == []


def test_loss_is_read_from_the_device_only_at_log_and_checkpoint_steps(monkeypatch):
    """The per-step loss check stays on the device: host reads (``item``, ``bool``...) happen
    in log and checkpoint steps only (on a GPU each one would be a sync)."""
    reads = [0]
    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy"):
        real = getattr(torch.Tensor, name)

        def counted(self, *a, _real=real, **k):
            reads[0] += 1
            return _real(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, counted)
    marks = []
    model, opt = tiny()
    fit(model, batches(on_next=lambda: marks.append(reads[0])), opt, F.mse_loss, steps=21,
        every=Every(log=7, checkpoint=10), hooks=Hooks(checkpoint=lambda step, state: None),
        progress=False)
    marks.append(reads[0])
    per_step = {step: marks[step] - marks[step - 1] for step in range(1, 22)}
    assert {s for s, n in per_step.items() if n} == {7, 10, 14, 20, 21}, per_step
