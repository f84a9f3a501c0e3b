"""The config schema (structured, so typos and wrong types fail at once) and its checks.

Groups with fixed keys (data, degradation, trainer, tracking, eval) are dataclasses here;
groups that name a class (model, loss, optim) are checked against that class's keyword
arguments, so the model's signature *is* its schema.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from sr_ablate import UserError
from sr_ablate.degrade import KERNELS


@dataclass
class DataConf:
    name: str = "builtin"          # builtin | folder
    root: Optional[str] = None     # folder of HR training images (data=folder)
    val_root: Optional[str] = None  # folder of HR validation images; default: hold out val_count
    val_count: int = 2
    color: str = "auto"            # auto (follows model.in_channels) | rgb | y (1-channel luma)


@dataclass
class DegradationConf:
    name: str = "bicubic"          # MATLAB imresize kernel: bicubic | bilinear | area | nearest
    quantize: bool = True          # round the LR to uint8, as a stored PNG would be


@dataclass
class TrainerConf:
    # budgets live in conf/trainer/*.yaml (smoke, quick, paper)
    name: str = MISSING
    steps: int = MISSING
    batch_size: int = MISSING
    patch_size: int = MISSING      # LR patch side; the HR patch is patch_size * scale
    eval_every: int = MISSING
    log_every: int = 10
    grad_clip: Optional[float] = None
    clip_mode: str = "norm"        # norm | value | adjustable (VDSR: value clip at grad_clip / lr)
    scales: list[float] = field(default_factory=list)  # multi-scale training (VDSR); [] = [scale]
    device: str = "auto"           # auto (CUDA when available) | cpu | cuda | cuda:N
    progress: bool = True
    # Speed knobs, defaults chosen by measurement (BENCHMARKS.md):
    precision: str = "fp32"        # fp32 | bf16 (autocast) | fp16 (autocast + gradient scaling)
    channels_last: bool = False    # NHWC weights/activations
    compile: bool = False          # torch.compile the training forward/backward
    checkpoint_every: int = 0      # steps between resumable checkpoints; 0: at every evaluation


@dataclass
class TrackingConf:
    uri: Optional[str] = None      # default: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db
    experiment: str = "sr_ablate"
    checkpoint: bool = True        # log the final checkpoint as an artifact
    flush_timeout: float = 600     # s a finished run waits for a tracking server that is down


@dataclass
class SweepConf:
    # how a sweep is launched; not part of a run's configuration (left out of its hash)
    force: bool = False            # grid: run again configurations that already FINISHED
    trials: Optional[int] = None   # optuna: finished trials wanted (default: the sweep file's)
    storage: Optional[str] = None  # optuna: RDB URL (default: sqlite:///<cwd>/optuna.db)
    workers: int = 1               # optuna: worker processes to start on this machine


@dataclass
class EvalConf:
    protocol: str = "modern"       # modern | classic
    color: str = "y"               # y | rgb
    kernel: str = "bicubic"
    sets: list[str] = field(default_factory=lambda: ["val"])
    final_sets: list[str] = field(default_factory=list)  # evaluated once, after the last step
    root: Optional[str] = None
    tile: int = 0
    frame: list[int] = field(default_factory=lambda: [256, 256])
    scales: list[float] = field(default_factory=list)  # more scales to evaluate: <set>_x<s>/psnr
    data: Optional[str] = None     # evaluate command: folder of HR images
    format: str = "table"          # evaluate command: table | json


@dataclass
class RootConf:
    model: Any = MISSING
    loss: Any = MISSING
    optim: Any = MISSING
    sched: Any = MISSING
    data: DataConf = field(default_factory=DataConf)
    degradation: DegradationConf = field(default_factory=DegradationConf)
    trainer: TrainerConf = field(default_factory=TrainerConf)
    tracking: TrackingConf = field(default_factory=TrackingConf)
    eval: EvalConf = field(default_factory=EvalConf)
    sweep: SweepConf = field(default_factory=SweepConf)
    seed: int = 0
    scale: Union[int, float] = 2
    study: Optional[str] = None    # set by sweep files: the study a run belongs to
    variant: Optional[str] = None  # set by sweep files: the variant's name within the study
    resume: bool = False           # continue this config's interrupted run from its checkpoint


ConfigStore.instance().store(name="schema", node=RootConf)

CHOICES = {"data.name": ("builtin", "folder"), "data.color": ("auto", "rgb", "y"),
           "trainer.clip_mode": ("norm", "value", "adjustable"),
           "trainer.precision": ("fp32", "bf16", "fp16"),
           "degradation.name": KERNELS, "eval.protocol": ("modern", "classic"),
           "eval.color": ("y", "rgb"), "eval.kernel": KERNELS, "eval.format": ("table", "json")}
POSITIVE = ("scale", "trainer.steps", "trainer.batch_size", "trainer.patch_size",
            "trainer.log_every", "sweep.workers")


def _target(node: DictConfig):
    from hydra.utils import get_class
    return get_class(node._target_)


def _type_ok(value, annotation) -> bool:
    if annotation is inspect.Parameter.empty or isinstance(annotation, str):
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation in (bool, str):
        return isinstance(value, annotation)
    return True  # tensors, sequences...: leave to the class


def check_target(group: str, node: DictConfig) -> None:
    """Keys of a ``_target_`` node must be keyword arguments of the class, of the right type."""
    cls = _target(node)
    sig = inspect.signature(cls.__init__)
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # unresolvable annotations: check names only
        hints = {}
    valid = [n for n in sig.parameters if n not in ("self", "params", "args", "kwargs")]
    for key in node:
        if key.startswith("_"):
            continue
        if key not in valid:
            raise UserError(f"{group}.{key} is not a setting of {cls.__name__}; "
                            f"valid keys: {', '.join(valid)}")
        value = node[key]
        if not _type_ok(value, hints.get(key, sig.parameters[key].annotation)):
            if group == "model" and key == "scale":  # a model/scale pair that cannot work
                raise UserError(f"scale={value} does not suit {cls.__name__}, which takes whole "
                                "scales; use scale=2, 3 or 4, or a model that takes fractional "
                                "scales (model=espcn, srcnn, srcnn_rnn or vdsr)")
            want = getattr(hints.get(key), "__name__", str(hints.get(key)))
            raise UserError(f"{group}.{key}={value!r} has the wrong type; give a value of "
                            f"type {want}")


def check_model_builds(node: DictConfig) -> None:
    """Build the model once (milliseconds): settings that cannot work together (SRResNet at
    scale 5, an unknown upsampler) are found before any work, as one line."""
    kwargs = {k: v for k, v in OmegaConf.to_container(node, resolve=True).items()
              if not k.startswith("_")}
    import torch
    try:
        with torch.random.fork_rng(devices=[]):  # weight init must not move anyone's seed
            _target(node)(**kwargs)
    except (ValueError, TypeError) as e:
        raise UserError(f"the model settings cannot work together: {e}; change model.* or "
                        "scale (or pick another model=)") from None


TARGETS = ("model", "loss", "optim", "sched")


def check(cfg: DictConfig, targets: tuple[str, ...] = TARGETS) -> None:
    """Every check that can be made before any work starts; raises UserError (one line).
    ``targets``: the class-valued groups to check against their constructors (the evaluate
    command, which builds no training objects, checks none)."""
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            raise UserError(f"{key}={value!r} is not valid; use one of: {', '.join(allowed)}")
    for key in POSITIVE:
        if OmegaConf.select(cfg, key) <= 0:
            raise UserError(f"{key}={OmegaConf.select(cfg, key)} must be positive")
    for group in targets:
        if cfg[group].get("_target_"):
            check_target(group, cfg[group])
    if "model" in targets:
        check_model_builds(cfg.model)
    lr = cfg.optim.get("lr")
    if lr is not None and lr <= 0:
        raise UserError(f"optim.lr={lr} must be positive")
    if cfg.model.get("blocks") is not None and cfg.model.blocks < 1:
        raise UserError(f"model.blocks={cfg.model.blocks} must be at least 1")
    want = {"y": 1, "rgb": 3}.get(cfg.data.color, cfg.model.get("in_channels", 3))
    if cfg.model.get("in_channels", want) != want:
        raise UserError(f"model.in_channels={cfg.model.in_channels} but data.color="
                        f"{cfg.data.color} gives {want} channel(s); set model.in_channels={want}")
    if cfg.eval.tile < 0:
        raise UserError(f"eval.tile={cfg.eval.tile} must be 0 (whole images) or a tile size")
    if len(cfg.eval.frame) != 2 or min(cfg.eval.frame) <= 0:
        raise UserError(f"eval.frame={list(cfg.eval.frame)} must be [height, width]")
    if cfg.eval.color == "rgb" and want == 1:
        raise UserError("eval.color=rgb needs an RGB model; use eval.color=y with data.color=y")
    if min(list(cfg.trainer.scales) or [1]) <= 0 or min(list(cfg.eval.scales) or [1]) <= 0:
        raise UserError("trainer.scales and eval.scales must hold positive scales")
    if cfg.data.name == "folder" and not cfg.data.root:
        raise UserError("data=folder needs data.root; pass data.root=<folder of HR images>")


def flatten(cfg: DictConfig | dict, prefix: str = "", private: bool = False) -> dict[str, Any]:
    """Resolved config as {"model.blocks": 16, ...}; keys starting with '_' (``_target_``)
    are left out unless ``private``."""
    node = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    out: dict[str, Any] = {}
    for k, v in node.items():
        if str(k).startswith("_") and not private:
            continue
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + ".", private))
        else:
            out[key] = v
    return out


# Settings that say where or how a run is launched and shown, not what it computes.
NOT_HASHED = ("resume", "tracking.", "sweep.", "trainer.progress", "trainer.device", "eval.format",
              "eval.data")


def config_hash(cfg: DictConfig) -> str:
    """A 16-hex-digit hash of the resolved configuration: equal hashes mean the same run
    (same model, data, budget, seed, evaluation), wherever and however it was launched."""
    flat = {k: v for k, v in flatten(cfg, private=True).items()  # _target_ names the class
            if not k.startswith(NOT_HASHED)}
    text = json.dumps(flat, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
