"""Composition root: the one place that turns a config into objects and runs them.

``run(cfg)`` = build (data, evaluation sets, model, optimiser, loss) -> track -> fit ->
log. Everything that can fail on bad input is built *before* the MLflow run opens, so bad
input leaves no run behind; a failure after that ends the run FAILED.
"""
from __future__ import annotations

import csv
import random
import sys
import tempfile
from pathlib import Path
from typing import Callable

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from sr_ablate import UserError, checkpoint, complexity, data, tracking
from sr_ablate.config import check, config_hash, flatten
from sr_ablate.degrade import crop_multiple
from sr_ablate.evaluate import (Evaluator, Protocol, files_sha256, fingerprint, model_channels,
                                quantize)
from sr_ablate.train import fit


AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)  # also seeds CUDA


def build(node):
    """``instantiate(node)``, with a UserError raised inside (e.g. VGG weights missing)
    passed through as itself instead of wrapped in Hydra's InstantiationException."""
    from hydra.errors import InstantiationException
    try:
        return instantiate(node)
    except InstantiationException as e:
        if isinstance(e.__cause__, UserError):
            raise e.__cause__ from None
        raise


def build_model(model_cfg) -> torch.nn.Module:
    """The model named by a ``model`` config node (a dict or DictConfig with ``_target_``)."""
    return build(model_cfg)


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
            name, files = data.eval_set_paths(name, eval_cfg.root)
        hashes[name] = files_sha256(files)
        for i, s in enumerate(scales):
            prefix = name if i == 0 else f"{name}_x{s:g}"
            # one per process: its LR inputs and bicubic scores are computed once per sweep
            key = (data.files_key(files), s, protocol, prefix, eval_cfg.tile)
            ev = data.memo(_evaluators, key, lambda: Evaluator(
                data.load_eval_images(files, s), s, protocol, prefix=prefix, tile=eval_cfg.tile))
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


def comparison_image(ev: Evaluator, crop: int = 96) -> torch.Tensor:
    """bicubic | SR | HR of the centre crop of the set's first image, (C, crop, 3*crop) uint8.

    A Y-channel model on a colour image is shown in colour (C = 3), as papers show it: its Y
    with the Cb/Cr of the bicubic upscale of the RGB LR; bicubic and HR tiles in RGB."""
    from sr_ablate.degrade import bicubic_up
    from sr_ablate.evaluate import colorize_y, model_input
    (_, hr), sr = ev.images[0], ev.last_outputs[0]
    c_model = sr.shape[0]
    gt = hr.to(torch.float64).expand(c_model, -1, -1) if hr.shape[0] == 1 else hr.to(torch.float64)
    if c_model == 1 and hr.shape[0] == 3:
        # the RGB LR an RGB model would get under this protocol: its bicubic lends the chroma
        bic = quantize(bicubic_up(model_input(hr, ev.scale, ev.protocol, 3), ev.scale))
        sr = colorize_y(sr, bic)
    else:
        lq = ev.inputs(c_model)[0][0]  # the LR the model saw, computed once by the evaluator
        bic = quantize(bicubic_up(lq, ev.scale))
    h, w = gt.shape[-2:]
    c = min(crop, h, w)
    y, x = (h - c) // 2, (w - c) // 2
    tiles = [quantize(t[:, y:y + c, x:x + c]).to(torch.uint8) for t in (bic, sr, gt)]
    return torch.cat(tiles, dim=-1)


def save_png(img: torch.Tensor, path: Path) -> None:
    from PIL import Image
    arr = img.permute(1, 2, 0).contiguous().numpy()
    Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(path)


def log_outputs(log, cfg: DictConfig, model, evaluators: list[Evaluator], steps: int) -> None:
    """Artifacts: resolved config, per-image metrics, comparison image, final checkpoint."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        with open(tmp / "per_image.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["set", *evaluators[0].per_image[0]])
            writer.writeheader()
            for ev in evaluators:
                writer.writerows({"set": ev.prefix, **row} for row in ev.per_image)
        save_png(comparison_image(evaluators[0]), tmp / "comparison.png")
        for name in ("config.yaml", "per_image.csv", "comparison.png"):
            log.log_artifact(tmp / name)
        if cfg.tracking.checkpoint:
            checkpoint.save_atomic({"model": model.state_dict(), "config": OmegaConf.to_container(
                cfg, resolve=True), "step": steps}, tmp / "final.pt")
            log.log_artifact(tmp / "final.pt", "checkpoints")


def complexity_metrics(model, cfg: DictConfig, device) -> tuple[dict[str, float], dict[str, str]]:
    """model/params, model/gflops and model/ms_per_frame at ``eval.frame``, and tags saying so."""
    m = crop_multiple(cfg.scale)  # e.g. a 256 frame is measured as 255 at x1.5 (LR 170)
    frame = tuple(x - x % m for x in cfg.eval.frame)
    shape = complexity.model_input_shape(model, frame, model_channels(model))
    ms = complexity.ms_per_frame(model, shape, warmup=1, repeats=3, device=device)
    metrics = {"model/params": complexity.count_params(model),
               "model/gflops": complexity.gflops(model, shape), "model/ms_per_frame": ms,
               "model/s_per_30_frames": 30 * ms / 1000}  # how the live-SR project judged it
    return metrics, {"model.input_shape": "x".join(map(str, shape)),
                     "model.frame_hw": "x".join(map(str, frame))}


def resume_interrupted(cfg: DictConfig, cwd: str | None) -> None:
    """Set ``resume`` when this configuration has a checkpoint: a sweep launched again
    (grid or Optuna) goes on where its interrupted runs stopped, in the same MLflow runs."""
    if checkpoint.path_for(cwd, config_hash(cfg)).exists():
        cfg.resume = True


def run(cfg: DictConfig, *, cwd: str | None = None, overrides: list[str] | None = None,
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
    from sr_ablate.launch import process_start
    started_at = process_start() if started_at is None else started_at
    check(cfg)
    uri = tracking.store_uri(cfg.tracking.uri, cwd)
    tracking.reachable(uri)  # before any work: a dead server is found now, not after training
    seed_everything(cfg.seed)
    device = pick_device(cfg.trainer.device)
    t = cfg.trainer
    model = build_model(cfg.model).to(device)
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    channels = model_channels(model)
    train_scales = list(t.scales) or [cfg.scale]
    if not model.upsampled_input and train_scales != [cfg.scale]:
        raise UserError(f"trainer.scales={train_scales}: multi-scale training needs a "
                        "pre-upsampling model (srcnn, vdsr, srcnn_rnn); use trainer.scales=[]")
    color = cfg.data.color if cfg.data.color != "auto" else ("y" if channels == 1 else "rgb")
    train_pairs, val_files = data.build(
        cfg.data, scales=train_scales, patch_size=t.patch_size, color=color,
        kernel=cfg.degradation.name, quantize=cfg.degradation.quantize,
        upsampled=model.upsampled_input, device=device)
    eval_scales = [cfg.scale] + [s for s in [*train_scales, *cfg.eval.scales] if s != cfg.scale]
    evaluators, eval_tags = build_evaluators(cfg.eval, list(dict.fromkeys(eval_scales)),
                                             val_files)
    if not evaluators:
        raise UserError("eval.sets is empty; list at least one set, e.g. eval.sets=[val]")
    optimizer = build(cfg.optim)(model.parameters())
    scheduler = build(cfg.sched)(optimizer) if cfg.sched.get("_target_") else None
    loss_fn = build(cfg.loss).to(device)  # may stop here: e.g. VGG weights missing
    batches = data.batches(train_pairs, patch_size=t.patch_size, batch_size=t.batch_size,
                           seed=cfg.seed, device=device)
    cfg_hash = config_hash(cfg)
    ckpt = checkpoint.path_for(cwd, cfg_hash)
    state = checkpoint.load(ckpt) if cfg.resume and ckpt.exists() else None
    if state is not None:
        checkpoint.restore(state, ckpt, model, optimizer, scheduler, batches)
        print(f"sr_ablate: resuming run {state['run_id']} at step {state['step']}",
              file=sys.stderr)
    elif cfg.resume:
        print("sr_ablate: resume=true, but this configuration has no checkpoint: starting it",
              file=sys.stderr)

    params = {**(choices or {}), **flatten(cfg)}
    tags = {**eval_tags, **getattr(loss_fn, "tags", {}), "overrides": " ".join(overrides or []),
            "device": str(device), "torch.threads": torch.get_num_threads(),
            "model.class": type(model).__name__,  # the family a report keeps to one table
            "sr_ablate.config_hash": cfg_hash, **(tags or {})}
    if cfg.study:
        tags["sr_ablate.study"] = cfg.study
    name = " ".join(overrides) if overrides else None
    with tracking.run(uri, cfg.tracking.experiment, params=params, tags=tags, name=name,
                      resume_run_id=state and state["run_id"]) as log:
        if on_start is not None:
            on_start(log.run_id)
        if state is not None:  # what the server had not received when the checkpoint was saved
            log.resend(state.get("unsent", []))
        # a resumed run logs only the steps it had not logged before it stopped
        done = log.last_step() if state else -1
        log_fn = log.log_metrics if state is None else (
            lambda step, m: log.log_metrics(step, m) if step > done else None)
        cost, cost_tags = complexity_metrics(model, cfg, device)
        if state is None:
            log.set_tags(cost_tags)
        log_fn(0, cost)

        def save(step: int, loop: dict) -> None:
            checkpoint.save_atomic({
                "step": step, "loop": loop, "run_id": log.run_id, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "batches": batches.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "rng": checkpoint.rng_state(), "unsent": log.unsent()}, ckpt)

        if state is not None:
            checkpoint.set_rng_state(state["rng"])
        # compiled for training only: evaluation sees whole images of every size (no recompiles)
        trained = torch.compile(model) if t.compile else model
        evaluate = evaluate_all([ev for ev in evaluators if not ev.final])
        final_sets = evaluate_all([ev for ev in evaluators if ev.final])
        with checkpoint.stop_on_signals() as stop_requested:
            result = fit(trained, batches, optimizer, steps=t.steps, loss_fn=loss_fn,
                         eval_fn=lambda _: evaluate(model), log_fn=log_fn,
                         eval_every=t.eval_every, log_every=t.log_every, grad_clip=t.grad_clip,
                         clip_mode=t.clip_mode, scheduler=scheduler, device=device,
                         progress=t.progress, on_eval=on_eval, started_at=started_at,
                         autocast=AUTOCAST[t.precision],
                         start_step=state["step"] if state else 0,
                         loop_state=state["loop"] if state else None, checkpoint_fn=save,
                         checkpoint_every=t.checkpoint_every or t.eval_every,
                         stop_requested=stop_requested)
        if not result:  # resumed after its last step: outputs for the artifacts, not logged
            result = evaluate(model)
        final = final_sets(model)  # eval.final_sets: once, after the last step
        if final:
            log_fn(t.steps, final)
        result = {**result, **final}
        unsent = log.flush(cfg.tracking.flush_timeout)
        if unsent:  # the server is still down; the last checkpoint (at the last step) holds
            # every value unsent then, so resume=true finds them (resend skips any sent since)
            raise UserError(f"tracking server {uri} has not answered for "
                            f"{cfg.tracking.flush_timeout:g} s: training finished, but "
                            f"{len(unsent)} metric values are not in MLflow yet; they are kept "
                            f"in {ckpt}: once the server is back, run the same command with "
                            "resume=true to send them and end the run")
        log_outputs(log, cfg, model, evaluators, t.steps)
    checkpoint.remove(ckpt)  # finished: nothing left to resume
    metrics = {**result, **cost}
    from sr_ablate.summary import run_line
    # said once the MLflow run has ended; a sweep's job leaves the pointers to its end table
    print(run_line(log.run_id, metrics, hint=tracking.sweep_parent() is None), flush=True)
    return metrics
