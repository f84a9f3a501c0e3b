"""fit()'s optimiser plumbing: gradient clipping modes and LR schedules from the real configs."""
from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from sr_ablate.train import clip_gradients, fit


def grads(values):
    p = torch.nn.Parameter(torch.zeros(len(values)))
    p.grad = torch.tensor(values, dtype=torch.float32)
    return p


def test_clip_by_norm_value_and_adjustable():
    p = grads([3.0, 4.0])  # norm 5
    opt = torch.optim.SGD([p], lr=0.1)
    clip_gradients([p], opt, 1.0, "norm")
    assert p.grad.norm().item() == pytest.approx(1.0, rel=1e-5)
    p = grads([3.0, -0.5])
    clip_gradients([p], opt, 1.0, "value")
    assert p.grad.tolist() == [1.0, -0.5]
    p = grads([3.0, -50.0])  # VDSR: clip at theta / lr = 0.5 / 0.1 = 5
    clip_gradients([p], opt, 0.5, "adjustable")
    assert p.grad.tolist() == pytest.approx([3.0, -5.0])
    with pytest.raises(ValueError):
        clip_gradients([p], opt, 1.0, "sideways")


@pytest.mark.parametrize("sched,expected", [("step", 0.1 * 0.1 * 0.1), ("cosine", 0.0)])
def test_schedules_from_config_are_stepped_by_fit(compose, sched, expected):
    cfg = compose([f"sched={sched}", "optim=sgd", "trainer.steps=6", "sched.step_size=3"
                   if sched == "step" else "sched.eta_min=0.0"])
    model = torch.nn.Conv2d(1, 1, 3, padding=1)
    opt = instantiate(cfg.optim)(model.parameters())
    scheduler = instantiate(cfg.sched)(opt)
    data = iter(lambda: {"lq": torch.rand(2, 1, 8, 8), "gt": torch.rand(2, 1, 8, 8)}, None)
    logged = []
    fit(model, data, opt, steps=6, loss_fn=torch.nn.MSELoss(), scheduler=scheduler,
        log_fn=lambda s, m: logged.append(m["train/lr"]), log_every=3, progress=False)
    # logged after 3 steps: step decayed once (x0.1), cosine half way (0.05)
    assert logged[0] == pytest.approx(0.01 if sched == "step" else 0.05)
    assert opt.param_groups[0]["lr"] == pytest.approx(expected, abs=1e-12)
