"""Learning-rate schedules by value: warm-up in front of every schedule, cosine annealing with
restarts, resuming a schedule from a checkpoint, trainer=msrresnet_basicsr. Real torch
optimisers and schedulers, real Hydra composition, real runs."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import TINY, cli, stopped_after
from mlflow.tracking import MlflowClient
from omegaconf import open_dict

from sr_ablate import UserError
from sr_ablate.config.hashing import config_hash
from sr_ablate.config.validation import validate
from sr_ablate.training import checkpoint, schedules
from sr_ablate.training.job import instantiate_node, run_job

SCHEDS = ["none", "cosine", "step", "cosine_restarts"]
# short enough to see every schedule move: a step drop at 5, two restarts
SHORT = {"none": [], "cosine": [], "step": ["sched.step_size=5", "sched.gamma=0.5"],
         "cosine_restarts": ["sched.periods=[5,7]", "sched.restart_weights=[1,0.5]",
                             "sched.eta_min=1e-5"]}


def built(cfg, optimizer):
    """The scheduler as the composition root builds it (training.job.build_parts)."""
    schedule = instantiate_node(cfg.sched)(optimizer) if cfg.sched.get("_target_") else None
    return schedules.warm_up(optimizer, schedule, cfg.sched)


def optimizer(lr: float = 1e-3) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def rates(opt, scheduler, n: int) -> list[float]:
    """The learning rate each of ``n`` optimiser steps runs at."""
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()  # no gradient: a no-op, but torch expects it before the scheduler's step
        if scheduler is not None:
            scheduler.step()
    return out


def config_rates(compose, overrides: list[str], n: int = 12) -> list[float]:
    cfg = compose(["trainer.steps=12", "optim.lr=1e-3", *overrides])
    opt = optimizer(cfg.optim.lr)
    return rates(opt, built(cfg, opt), n)


# ----------------------------------------------------------------------------- no warm-up

@pytest.mark.parametrize("name, torch_schedule", [
    ("cosine", lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=12,
                                                                      eta_min=0.0)),
    ("step", lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)),
])
def test_without_warmup_the_schedule_is_torchs_own(compose, name, torch_schedule):
    cfg = compose([f"sched={name}", "trainer.steps=12", "optim.lr=1e-3", *SHORT[name]])
    opt = optimizer()
    schedule = instantiate_node(cfg.sched)(opt)
    assert schedules.warm_up(opt, schedule, cfg.sched) is schedule
    mine = rates(opt, schedule, 13)
    ref_opt = optimizer()
    assert mine == rates(ref_opt, torch_schedule(ref_opt), 13)  # bit for bit


def test_sched_none_without_warmup_has_no_scheduler(compose):
    assert built(compose(["sched=none"]), optimizer()) is None


@pytest.mark.parametrize("name", ["none", "cosine", "step"])
def test_warmup_keys_at_zero_leave_the_config_hash(compose, name):
    cfg = compose([f"sched={name}"])
    before = copy.deepcopy(cfg)  # as the sched files were before warm-up: without its keys
    with open_dict(before):
        del before.sched["warmup_steps"], before.sched["warmup_start"]
    assert config_hash(cfg) == config_hash(before)
    assert config_hash(compose([f"sched={name}", "sched.warmup_steps=10"])) != config_hash(cfg)


# ----------------------------------------------------------------------------- warm-up

@pytest.mark.parametrize("name", SCHEDS)
def test_warmup_scales_the_first_steps_of_every_schedule(compose, name):
    plain = config_rates(compose, [f"sched={name}", *SHORT[name]])
    warm = config_rates(compose, [f"sched={name}", *SHORT[name], "sched.warmup_steps=4",
                                  "sched.warmup_start=0.2"])
    for t in range(4):  # the schedule's clock runs from step 0 under the warm-up
        assert warm[t] == pytest.approx(plain[t] * (0.2 + 0.8 * t / 4), rel=1e-12), t
    assert warm[4:] == plain[4:]  # then the schedule's own values, bit for bit
    assert len(set(plain)) > (1 if name != "none" else 0)  # the schedule moved


def test_warmup_on_a_constant_rate_by_hand(compose):
    got = config_rates(compose, ["sched=none", "sched.warmup_steps=4"], n=6)
    assert got == pytest.approx([0.0, 2.5e-4, 5.0e-4, 7.5e-4, 1.0e-3, 1.0e-3], rel=1e-12)


def test_warmup_start_without_warmup_steps_is_refused_in_one_line():
    with pytest.raises(UserError, match=r"sched.warmup_start=0.1 is not read with "
                                        r"sched.warmup_steps=0"):
        validate(["sched=cosine", "sched.warmup_start=0.1"])


# ----------------------------------------------------------------------------- restarts

def test_cosine_restarts_by_hand():
    """periods [4, 4], weights [1, 0.5], base lr 1e-3, eta_min 0: restarts at step 4."""
    opt = optimizer(1e-3)
    got = rates(opt, schedules.CosineRestarts(opt, periods=[4, 4], restart_weights=[1, 0.5],
                                              eta_min=0.0), 10)
    c = (1 + math.cos(math.pi / 4)) / 2  # 0.853553...
    expected = [1.0e-3, 0.853553e-3, 0.5e-3, 0.146447e-3,  # period 0 from its peak
                0.5e-3, 0.426777e-3, 0.25e-3, 0.073223e-3,  # period 1: half height
                0.0, 0.0]  # past the last period: eta_min
    assert got == pytest.approx(expected, abs=1e-9)
    assert got[1] == pytest.approx(1e-3 * c, rel=1e-12) and got[5] == pytest.approx(0.5e-3 * c)


def test_cosine_restarts_decay_to_eta_min_at_each_period_end():
    opt = optimizer(1e-3)
    got = rates(opt, schedules.CosineRestarts(opt, periods=[2, 3], restart_weights=[0.5, 1],
                                              eta_min=1e-4), 6)
    assert got == pytest.approx([1e-4 + 0.5 * 9e-4, 1e-4 + 0.5 * 0.5 * 9e-4,  # (0.5: cos pi/2)
                                 1e-3, 1e-4 + 0.75 * 9e-4, 1e-4 + 0.25 * 9e-4, 1e-4], rel=1e-12)


def test_the_default_is_one_period_over_the_run(compose):
    """``periods: ["${trainer.steps}"]``: an interpolation inside a list, built as a run
    builds it (training.job.instantiate_node)."""
    opt = optimizer()
    got = rates(opt, built(compose(["sched=cosine_restarts", "trainer.steps=12"]), opt), 13)
    ref = optimizer()
    assert got == rates(ref, schedules.CosineRestarts(ref, periods=[12]), 13)


def test_one_period_of_full_height_is_torchs_cosine():
    opt, ref = optimizer(), optimizer()
    mine = rates(opt, schedules.CosineRestarts(opt, periods=[50], eta_min=1e-5), 51)
    torchs = rates(ref, torch.optim.lr_scheduler.CosineAnnealingLR(ref, 50, 1e-5), 51)
    assert mine == pytest.approx(torchs, rel=1e-9)


@pytest.mark.parametrize("argv, expected", [
    (["sched.periods=[4,4]", "sched.restart_weights=[1]"],
     "sched.periods has 2 periods but sched.restart_weights has 1 weights"),
    (["sched.periods=[4,4]", "sched.restart_weights=[1,0.5]", "trainer.steps=10"],
     "sched.periods=[4, 4] cover 8 steps, fewer than trainer.steps=10"),
    (["sched.periods=[]", "sched.restart_weights=[]"], "sched.periods is empty"),
    (["sched.restart_weights=[0]"], "sched.restart_weights=[0] holds 0, which must be positive"),
    (["sched.periods=[0]"], "sched.periods=[0] holds 0, which must be at least 1"),
])
def test_restart_settings_that_cannot_work_are_refused_in_one_line(argv, expected):
    with pytest.raises(UserError) as e:
        validate(["sched=cosine_restarts", *argv])
    assert expected in str(e.value) and "\n" not in str(e.value), str(e.value)


# ----------------------------------------------------------------------------- resume

@pytest.mark.parametrize("name, warmup", [(n, w) for n in SCHEDS for w in (0, 3)])
@pytest.mark.parametrize("k", [2, 7])  # stopped inside the warm-up, and after it
def test_a_resumed_schedule_gives_the_same_learning_rates(compose, tmp_path, name, warmup, k):
    """Step k times, save as job.py does (through a checkpoint file, loaded weights_only),
    build anew, restore as checkpoint.restore does, go on: equal to an uninterrupted run."""
    cfg = compose([f"sched={name}", "trainer.steps=12", "optim.lr=1e-3", *SHORT[name],
                   f"sched.warmup_steps={warmup}"])
    opt = optimizer()
    whole = rates(opt, built(cfg, opt), 12)
    opt = optimizer()
    scheduler = built(cfg, opt)
    first = rates(opt, scheduler, k)
    path = tmp_path / "c.pt"
    checkpoint.save_atomic({"optimizer": opt.state_dict(), "scheduler":
                            scheduler.state_dict() if scheduler is not None else None}, path)
    state = checkpoint.load(path)
    opt = optimizer()
    scheduler = built(cfg, opt)
    opt.load_state_dict(state["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    assert first + rates(opt, scheduler, 12 - k) == whole


# ----------------------------------------------------------------------------- runs

def _lr_history(uri: str) -> tuple[dict, list[tuple[int, float]]]:
    client = MlflowClient(uri)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    history = client.get_metric_history(run.info.run_id, "train/lr")
    return run.data.params, sorted((m.step, m.value) for m in history)


RUN = [*TINY, "trainer.log_every=1", "optim.lr=1e-3", "sched=cosine_restarts",
       "sched.periods=[2,2]", "sched.restart_weights=[1,0.5]", "sched.warmup_steps=2",
       "sched.warmup_start=0.5", "tracking.checkpoint=false"]
# logged after step s: the rate of step s + 1 (0-based t = s). The schedule s(t): 1e-3, 5e-4
# | 5e-4, 2.5e-4 | 0; warm-up factors 0.5, 0.75, then 1
LOGGED = [(1, 0.75 * 5e-4), (2, 5e-4), (3, 2.5e-4), (4, 0.0)]


@pytest.mark.slow  # default run under 10 min on 2 cores; CI's slow pass runs it
def test_a_run_with_warmup_and_restarts_logs_the_hand_computed_rates(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = cli([*RUN, f"tracking.uri={uri}"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    params, logged = _lr_history(uri)
    assert [s for s, _ in logged] == [s for s, _ in LOGGED]
    assert [v for _, v in logged] == pytest.approx([v for _, v in LOGGED], abs=1e-12)
    assert params["sched.warmup_steps"] == "2" and params["sched.periods"] == "[2, 2]"


def test_a_run_stopped_in_its_warmup_resumes_to_the_same_rates(tmp_path, compose,
                                                               monkeypatch):
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    stopped_after(1, lambda: run_job(compose(RUN), cwd=str(tmp_path)), monkeypatch)
    (ckpt,) = (tmp_path / ".sr_ablate" / "checkpoints").glob("*.pt")
    assert checkpoint.load(ckpt)["scheduler"]["step_count"] == 1  # inside the warm-up
    run_job(compose([*RUN, "resume=true"]), cwd=str(tmp_path))
    _, logged = _lr_history(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert [s for s, _ in logged] == [s for s, _ in LOGGED]
    assert [v for _, v in logged] == pytest.approx([v for _, v in LOGGED], abs=1e-12)


# ----------------------------------------------------------------------------- BasicSR

def test_trainer_msrresnet_basicsr_is_basicsrs_msrresnet_x4_recipe(compose):
    validate(["trainer=msrresnet_basicsr", "scale=4", "model.bn=false"])
    cfg = compose(["trainer=msrresnet_basicsr", "scale=4"])
    t = cfg.trainer
    assert (t.steps, t.batch_size, t.patch_size * cfg.scale, t.ema) == (10**6, 16, 128, 0.999)
    assert (cfg.optim._target_, cfg.optim.lr, list(cfg.optim.betas)) == \
        ("torch.optim.Adam", 2e-4, [0.9, 0.99])
    assert cfg.loss._target_ == "torch.nn.L1Loss"
    assert (list(cfg.sched.periods), list(cfg.sched.restart_weights), cfg.sched.eta_min) == \
        ([250_000] * 4, [1.0] * 4, 1e-7)
    assert cfg.sched.warmup_steps == 0  # BasicSR's warmup_iter: -1
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=cfg.optim.lr)
    schedule = built(cfg, opt)
    for t_, lr in [(0, 2e-4), (125_000, 1e-7 + (2e-4 - 1e-7) / 2), (250_000, 2e-4),
                   (750_000, 2e-4), (999_999, 1e-7)]:
        schedule.last_epoch = t_  # closed form: no need to step there
        assert schedule.get_lr() == pytest.approx([lr], rel=1e-6, abs=1e-12), t_
