"""fit()'s optimiser plumbing: gradient clipping modes and LR schedules from the real configs."""
from __future__ import annotations

import pytest
import torch

from sr_ablate.training.job import instantiate_node
from sr_ablate.training.loop import Every, Hooks, fit
from sr_ablate.training.step import Numerics, clip_gradients


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
    opt = instantiate_node(cfg.optim)(model.parameters())
    scheduler = instantiate_node(cfg.sched)(opt)
    data = iter(lambda: {"lq": torch.rand(2, 1, 8, 8), "gt": torch.rand(2, 1, 8, 8)}, None)
    logged = []
    fit(model, data, opt, torch.nn.MSELoss(), steps=6, scheduler=scheduler,
        hooks=Hooks(log=lambda s, m: logged.append(m["train/lr"])), every=Every(log=3),
        progress=False)
    # logged after 3 steps: step decayed once (x0.1), cosine half way (0.05)
    assert logged[0] == pytest.approx(0.01 if sched == "step" else 0.05)
    assert opt.param_groups[0]["lr"] == pytest.approx(expected, abs=1e-12)


def test_fp16_resume_keeps_the_loss_scale_so_it_matches_an_uninterrupted_run():
    """The GradScaler's scale travels in the checkpoint: a resumed fp16 run neither re-skips
    the overflowing steps the first part already skipped nor trains differently."""
    def batches(seed):
        g = torch.Generator().manual_seed(seed)
        return iter(lambda: {"lq": torch.rand(2, 1, 8, 8, generator=g),
                             "gt": torch.rand(2, 1, 8, 8, generator=g)}, None)

    def train(start_step=0, loop_state=None, weights=None, skip=0):
        torch.manual_seed(0)
        model = torch.nn.Conv2d(1, 1, 3, padding=1)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        if weights:
            model.load_state_dict(weights["model"])
            opt.load_state_dict(weights["optimizer"])
        data = batches(0)
        for _ in range(skip):
            next(data)
        saved = {}

        def save(step, loop):
            saved[step] = {"loop": loop, "model": {k: v.clone() for k, v in
                                                   model.state_dict().items()},
                           "optimizer": opt.state_dict()}
        # a huge loss overflows fp16 gradients at the start scale (65536): the scaler halves
        fit(model, data, opt, lambda out, gt: ((out - gt) ** 2).mean() * 1e3, steps=12,
            progress=False, numerics=Numerics(autocast=torch.float16),
            resume={"step": start_step, "loop": loop_state} if start_step else None,
            hooks=Hooks(checkpoint=save), every=Every(checkpoint=6))
        return model, saved

    whole, saved = train()
    scale = saved[6]["loop"]["scaler"]["scale"]
    assert scale < 65536.0  # it did back off: the state is worth keeping
    resumed, _ = train(6, saved[6]["loop"], saved[6], skip=6)
    for a, b in zip(whole.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    fresh, _ = train(6, {**saved[6]["loop"], "scaler": None}, saved[6], skip=6)
    assert any(not torch.equal(a, b) for a, b in zip(whole.parameters(), fresh.parameters()))
