"""Composition root: the one place that turns a config into objects and runs them.

``run_job(cfg)`` = build (data, evaluation sets, model, optimiser, loss) -> track -> fit ->
log. Everything that can fail on bad input is built *before* the MLflow run opens, so bad
input leaves no run behind; a failure after that ends the run FAILED.
"""
from __future__ import annotations

import dataclasses
import os
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from sr_ablate import UserError, tracking
from sr_ablate.config.checks import check
from sr_ablate.config.drivers import hide_passwords
from sr_ablate.config.hashing import config_hash, flatten
from sr_ablate.config.schema import class_keys
from sr_ablate.core import fp32
from sr_ablate.core.evaluate import Evaluator, Protocol, files_sha256, fingerprint, model_channels
from sr_ablate.data import images, pairs, resident, sampler, sets
from sr_ablate.training import checkpoint, schedules, speed
from sr_ablate.training.clock import process_start
from sr_ablate.training.ema import EMA, released
from sr_ablate.training.init import start_from
from sr_ablate.training.loop import Every, Hooks, fit
from sr_ablate.training.outputs import complexity_metrics, log_outputs
from sr_ablate.training.step import Numerics
from sr_ablate.training.summary import run_line

# seconds a sweep's job waits for a tracking server that does not answer (it did when the
# sweep started: a restart, not a wrong address)
SWEEP_JOB_PATIENCE = 120

AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Python's, NumPy's and torch's generators (CUDA's too): all three are in a checkpoint.
    ``deterministic`` (``trainer.deterministic``): only kernels that give the same bits every
    time (an op without one raises, naming itself), cuDNN's autotuner off."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:  # cuBLAS reads it when it starts: before this process's first matmul
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(deterministic)  # per job: a sweep's jobs differ
    torch.backends.cudnn.deterministic = deterministic


def instantiate_node(node):
    """``instantiate(node)`` for a node with ``_target_`` (a model, loss, optimiser...), with a
    UserError raised inside (e.g. VGG weights missing) passed through as itself instead of
    wrapped in Hydra's InstantiationException."""
    try:
        if isinstance(node, DictConfig):  # resolved first: ${trainer.steps} inside a list
            node = OmegaConf.to_container(node, resolve=True)  # needs the config's root
        return instantiate(class_keys(node) if isinstance(node, dict) else node)
    except InstantiationException as e:
        if isinstance(e.__cause__, UserError):
            raise e.__cause__ from None
        raise


_evaluators: dict[tuple, Evaluator] = {}


def build_evaluators(eval_cfg, scales: list[float], val_files: list[Path] | None
                     ) -> tuple[list[Evaluator], dict[str, str]]:
    """One Evaluator per entry of ``eval.sets`` + ``eval.final_sets`` and scale (``val`` =
    the data's validation files; ``Evaluator.final`` marks the final sets' ones), and the
    protocol fingerprint tags over all sets. The first scale is the run's: its metrics are
    ``<set>/psnr``; other scales' are ``<set>_x<s>/psnr``."""
    protocol = Protocol(eval_cfg.protocol, eval_cfg.color, eval_cfg.kernel)
    evaluators, hashes = [], {}
    for name in [*eval_cfg.sets, *eval_cfg.get("final_sets", [])]:
        if name == "val":
            if val_files is None:
                continue
            files = val_files
        else:
            name, files = sets.eval_set_paths(name, eval_cfg.root)
        hashes[name] = files_sha256(files)
        for i, s in enumerate(scales):
            prefix = name if i == 0 else f"{name}_x{s:g}"
            # one per process: its LR inputs and bicubic scores are computed once per sweep
            key = (pairs.files_key(files), s, protocol, prefix, eval_cfg.tile)
            ev = pairs.memo(_evaluators, key, lambda files=files, s=s, prefix=prefix: Evaluator(
                images.load_eval_images(files, s), s, protocol, prefix=prefix,
                tile=eval_cfg.tile))
            ev.final = name not in eval_cfg.sets  # set per run: a sweep's jobs share evaluators
            evaluators.append(ev)
    return evaluators, fingerprint(protocol, hashes)


def evaluate_all(evaluators: list[Evaluator]):
    """eval_fn for ``fit``: every set's metrics in one dict."""
    def eval_fn(model):
        out = {}
        for ev in evaluators:
            out.update(ev(model))
        return out
    return eval_fn


def resume_interrupted(cfg: DictConfig, cwd: str | None) -> None:
    """Set ``resume`` when this configuration has a checkpoint: a sweep launched again
    (grid or Optuna) goes on where its interrupted runs stopped, in the same MLflow runs."""
    if checkpoint.path_for(cwd, config_hash(cfg)).exists():
        cfg.resume = True


@dataclass
class Parts:
    """Everything a run needs, built before its MLflow run opens."""
    model: torch.nn.Module
    device: torch.device
    evaluators: list[Evaluator]
    eval_tags: dict[str, str]
    optimizer: torch.optim.Optimizer
    scheduler: object
    loss_fn: torch.nn.Module
    batches: sampler.Batches
    cfg_hash: str
    ckpt: Path
    state: dict | None  # the checkpoint resumed from, if any
    speed: speed.Choice  # trainer.precision / channels_last as resolved for this device
    placement: resident.Placement  # data.on_device as resolved for this device and data
    ema: EMA | None = None  # trainer.ema: the weights' moving average, what the run releases
    init_tags: dict[str, str] = dataclasses.field(default_factory=dict)  # model.init: loaded what


def build_parts(cfg: DictConfig, cwd: str | None) -> Parts:
    """Model, data, evaluation sets, optimiser, loss and the checkpoint to resume, for ``cfg``
    (already checked); raises UserError on bad input, before anything is tracked."""
    seed_everything(cfg.seed, cfg.trainer.deterministic)
    device = speed.pick_device(cfg.trainer.device)
    t = cfg.trainer
    model = instantiate_node(cfg.model).to(device)
    init_tags = start_from(cfg, model, cwd)  # model.init; sets model.init_sha256 before hashing
    channels = model_channels(model)
    train_scales = list(t.scales) or [cfg.scale]
    if not model.upsampled_input and train_scales != [cfg.scale]:
        raise UserError(f"trainer.scales={train_scales}: multi-scale training needs a "
                        "pre-upsampling model (srcnn, vdsr, srcnn_rnn); use trainer.scales=[]")
    color = cfg.data.color if cfg.data.color != "auto" else ("y" if channels == 1 else "rgb")
    train_files, val_files = sets.training_files(cfg.data)
    train_pairs = pairs.training_pairs(
        train_files, scales=train_scales, patch_size=t.patch_size, color=color,
        kernel=cfg.degradation.name, quantize=cfg.degradation.quantize,
        upsampled=model.upsampled_input, device=device)
    eval_scales = [cfg.scale] + [s for s in [*train_scales, *cfg.eval.scales] if s != cfg.scale]
    evaluators, eval_tags = build_evaluators(cfg.eval, list(dict.fromkeys(eval_scales)),
                                             val_files)
    if not evaluators:
        raise UserError("eval.sets is empty; list at least one set, e.g. eval.sets=[val]")
    loss_fn = instantiate_node(cfg.loss).to(device)  # may stop here: e.g. VGG weights missing
    cfg_hash = config_hash(cfg)
    ckpt = checkpoint.path_for(cwd, cfg_hash)
    state = checkpoint.load(ckpt) if cfg.resume and ckpt.exists() else None
    knobs = resolve_speed(t, device, model, loss_fn, state)
    if knobs.channels_last:  # before the optimiser: its state takes the parameters' layout
        model = model.to(memory_format=torch.channels_last)
    optimizer = instantiate_node(cfg.optim)(model.parameters())
    schedule = instantiate_node(cfg.sched)(optimizer) if cfg.sched.get("_target_") else None
    scheduler = schedules.warm_up(optimizer, schedule, cfg.sched)  # sched.warmup_*
    # after the model, loss and optimiser: the free memory counted is what training leaves
    placement = resident.place(cfg.data.on_device, device, train_pairs)
    resident.say_once(placement, device)
    batches = sampler.batches(train_pairs, patch_size=t.patch_size, batch_size=t.batch_size,
                              seed=cfg.seed, device=device, on_device=placement.on)
    if state is not None:
        checkpoint.restore(state, ckpt, model, optimizer, scheduler, batches)
        print(f"sr_ablate: resuming run {state['run_id']} at step {state['step']}",
              file=sys.stderr)
    elif cfg.resume:
        print("sr_ablate: resume=true, but this configuration has no checkpoint: starting it",
              file=sys.stderr)
    ema = EMA(model, t.ema, t.ema_start) if t.ema else None  # its state: in the checkpoint
    return Parts(model, device, evaluators, eval_tags, optimizer, scheduler, loss_fn, batches,
                 cfg_hash, ckpt, state, knobs, placement, ema, init_tags=init_tags)


def resolve_speed(t, device: torch.device, model, loss_fn, state: dict | None) -> speed.Choice:
    """``trainer.precision`` and ``trainer.channels_last`` for this run, said once on stderr.
    A resumed run keeps what it started with (a sweep resumed on another machine must not
    change precision half-way through a run)."""
    if state is not None and state.get("speed"):
        was = state["speed"]
        knobs = speed.Choice(was["precision"], was["channels_last"],
                             f"{was['why_precision']}; kept on resume",
                             f"{was['why_channels_last']}; kept on resume")
    else:
        knobs = speed.choose(t.precision, t.channels_last, device, model, loss_fn)
    speed.say_once(knobs)
    return knobs


def run_tags(cfg: DictConfig, p: Parts, overrides: list[str] | None,
             extra: dict[str, str] | None) -> dict:
    """The tags a run opens with: protocol fingerprint, loss tags, device, model family..."""
    tags = {**p.eval_tags, **getattr(p.loss_fn, "tags", {}), **p.speed.tags(), **p.init_tags,
            "overrides": " ".join(overrides or []), "device": str(p.device),
            "torch.threads": torch.get_num_threads(),
            "model.class": type(p.model).__name__,  # the family a report keeps to one table
            "sr_ablate.config_hash": p.cfg_hash,
            # the weights evaluated and released: the moving average's (trainer.ema) or raw
            "sr_ablate.weights": "ema" if p.ema is not None else "raw",
            "sr_ablate.deterministic": str(cfg.trainer.deterministic).lower(),
            # training runs with the user's TF32 setting; evaluation turns it off
            "sr_ablate.tf32": fp32.describe(), **(extra or {})}
    tags.update(p.placement.tags())  # data.on_device: where patches are cut, and why
    if cfg.study:
        tags["sr_ablate.study"] = cfg.study
    return tags


def run_job(cfg: DictConfig, *, cwd: str | None = None, overrides: list[str] | None = None,
            choices: dict[str, str] | None = None, tags: dict[str, str] | None = None,
            on_start: Callable[[str], None] | None = None,
            on_eval: Callable[[int, dict], None] | None = None,
            started_at: float | None = None) -> dict:
    """Train and evaluate one configuration, logging to MLflow; returns the final metrics.

    ``overrides`` (as typed, e.g. ``model.blocks=8``) and ``choices`` (config group options,
    e.g. ``{"loss": "l2"}``) are recorded too; the latter as params named after the group.
    ``tags`` are added to the run's; ``on_start(run_id)`` is called once the MLflow run is
    open, ``on_eval(step, metrics)`` after every evaluation (it may raise ``Stopped``).
    ``started_at``: where the job's fixed cost counts from (``time/to_first_step_s``);
    default: the process start.
    """
    started_at = process_start() if started_at is None else started_at
    check(cfg)
    uri = tracking.store_uri(cfg.tracking.uri, cwd)
    # before any work: a dead server is found now, not after training; a sweep's job waits
    # for a server that answered when the sweep started (e.g. one being restarted)
    tracking.reachable(uri, patience=SWEEP_JOB_PATIENCE if os.environ.get(tracking.PARENT_ENV)
                       else 0)
    p = build_parts(cfg, cwd)
    params = {**(choices or {}), **flatten(cfg),
              "trainer.effective_batch": cfg.trainer.batch_size * cfg.trainer.accumulate}
    params = {k: hide_passwords(v) if isinstance(v, str) else v for k, v in params.items()}
    with tracking.run(uri, cfg.tracking.experiment, params=params,
                      tags=run_tags(cfg, p, overrides, tags),
                      name=" ".join(overrides) if overrides else None,
                      resume_run_id=p.state and p.state["run_id"]) as log:
        if on_start is not None:
            on_start(log.run_id)
        metrics = _train_tracked(cfg, p, log, uri, on_eval, started_at)
    checkpoint.remove(p.ckpt)  # finished: nothing left to resume
    # said once the MLflow run has ended; a sweep's job leaves the pointers to its end table
    print(run_line(log.run_id, metrics, hint=tracking.sweep_parent() is None), flush=True)
    return metrics


def _train_tracked(cfg: DictConfig, p: Parts, log: tracking.RunLog, uri: str,
                   on_eval, started_at: float) -> dict:
    """Inside the open MLflow run: cost metrics, training, final sets, artifacts."""
    t, state = cfg.trainer, p.state
    if state is not None:  # what the server had not received when the checkpoint was saved
        log.resend(state.get("unsent", []))
    # a resumed run logs only the steps it had not logged before it stopped
    done = log.last_step() if state else -1
    log_fn = log.log_metrics if state is None else (
        lambda step, m: log.log_metrics(step, m) if step > done else None)
    cost, cost_tags = complexity_metrics(p.model, cfg, p.device)
    if state is None:
        log.set_tags(cost_tags)
    else:  # a reopened run keeps its tags: these say what it resumed with (its checkpoint's
        # speed; the placement chosen anew on this machine: the same batches either way)
        log.set_tags({**p.speed.tags(), **p.placement.tags()})
    log_fn(0, cost)

    def save(step: int, loop: dict) -> None:
        checkpoint.save_atomic({
            "step": step, "loop": loop, "run_id": log.run_id, "model": p.model.state_dict(),
            "optimizer": p.optimizer.state_dict(), "batches": p.batches.state_dict(),
            "scheduler": p.scheduler.state_dict() if p.scheduler is not None else None,
            "rng": checkpoint.rng_state(), "unsent": log.unsent(),
            "speed": dataclasses.asdict(p.speed)}, p.ckpt)

    if state is not None:
        checkpoint.set_rng_state(state["rng"])
    # compiled for training only: evaluation sees whole images of every size (no recompiles)
    trained = torch.compile(p.model) if t.compile else p.model
    score = released(evaluate_all([ev for ev in p.evaluators if not ev.final]), p.model, p.ema)
    final_sets = released(evaluate_all([ev for ev in p.evaluators if ev.final]), p.model, p.ema)
    numerics = Numerics(autocast=AUTOCAST[p.speed.precision], grad_clip=t.grad_clip,
                        clip_mode=t.clip_mode, accumulate=t.accumulate, ema=p.ema)
    with checkpoint.stop_on_signals() as stop_requested:
        result = fit(trained, p.batches, p.optimizer, p.loss_fn, steps=t.steps,
                     numerics=numerics, scheduler=p.scheduler, device=p.device,
                     every=Every(log=t.log_every, eval=t.eval_every,
                                 checkpoint=t.checkpoint_every),
                     # evaluation runs eagerly on whole images, whatever model trains
                     hooks=Hooks(evaluate=lambda _: score(), log=log_fn, evaluated=on_eval,
                                 checkpoint=save, stop=stop_requested),
                     progress=t.progress, resume=state, started_at=started_at)
    if not result:  # resumed after its last step: outputs for the artifacts, not logged
        result = score()
    final = final_sets()  # eval.final_sets: once, after the last step
    if final:
        log_fn(t.steps, final)
    unsent = log.flush(cfg.tracking.flush_timeout)
    if unsent:  # the server is still down; the last checkpoint (at the last step) holds
        # every value unsent then, so resume=true finds them (resend skips any sent since)
        raise UserError(f"tracking server {uri} has not answered for "
                        f"{cfg.tracking.flush_timeout:g} s: training finished, but "
                        f"{len(unsent)} metric values are not in MLflow yet; they are kept "
                        f"in {p.ckpt}: once the server is back, run the same command with "
                        "resume=true to send them and end the run")
    log_outputs(log, cfg, p.model, p.evaluators, t.steps, p.ema)
    return {**result, **final, **cost}
