"""The config schema: structured, so a mistyped key or a wrong type fails at once.

Groups with fixed keys (data, degradation, trainer, tracking, eval, sweep) are dataclasses
here; groups that name a class (model, loss, optim, sched) are checked against that class's
keyword arguments (``config.validation``), so the model's signature is the schema of its keys.
``DOMAINS`` says, once for every key of both kinds, which values it takes (type, range,
choices, URI schemes).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Union

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from sr_ablate.config.domain import (
    BOOL,
    DEPTH,
    KERNEL,
    PATH,
    SCALE,
    STEPS,
    TEXT,
    WIDTH,
    Choice,
    Domain,
    Float,
    Int,
    ListOf,
)
from sr_ablate.core.degrade import KERNELS
from sr_ablate.models import START_KEYS
from sr_ablate.models.vgg19 import CONV_INDEX


@dataclass
class DataConf:
    name: str = "builtin"          # builtin | folder
    root: Optional[str] = None     # folder of HR training images (data=folder)
    val_root: Optional[str] = None  # folder of HR validation images; default: hold out val_count
    val_count: int = 2
    color: str = "auto"            # auto (follows model.in_channels) | rgb | y (1-channel luma)
    # auto | true | false: pairs kept on the training device, patches cut there (data.resident)
    on_device: Union[bool, str] = "auto"


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
    # Speed knobs; auto: chosen per device by training.speed (measured, quality-checked)
    precision: str = "auto"        # auto | fp32 | bf16 (autocast) | fp16 (autocast + scaling)
    channels_last: Union[bool, str] = "auto"  # auto | true | false: NHWC weights/activations
    compile: bool = False          # torch.compile the training forward/backward
    checkpoint_every: int = 0      # steps between resumable checkpoints; 0: at every evaluation
    # Recipes (training.ema, training.loop.Numerics)
    ema: float = 0.0               # decay of the weights' moving average; 0: off
    ema_start: int = 0             # optimiser steps before averaging starts (the EMA copies)
    accumulate: int = 1            # micro-batches per optimiser step (effective batch x N)
    deterministic: bool = False    # deterministic kernels only (torch, cuDNN, cuBLAS)


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


# ---------------------------------------------------------------------------------------------
# Domains: what values each key takes, declared once. ``config.checks.check`` checks every
# key of a composed config against its domain before anything runs (one ``error:`` line, no
# MLflow run), and tests/test_config_domains.py feeds every key out-of-domain values and checks
# that every key of every shipped config has a domain here.
LOSS_WEIGHT = Float(0, 1000)
VGG_LAYERS = Choice(*CONV_INDEX)
# The SQLAlchemy stores tested here (sqlite, PostgreSQL: postgresql+psycopg2://... counts as
# postgresql), MLflow's REST server, and Databricks. Not MySQL or SQL Server: no test runs them
# and no extra installs their drivers. Not a path or file:, MLflow's file store: MLflow 3
# refuses to open it unless opted in, and sweeps' parallel jobs cannot share it.
TRACKING_SCHEMES = ("sqlite", "postgresql", "http", "https", "databricks")
OPTUNA_SCHEMES = ("sqlite", "postgresql")  # Optuna's RDB storages, as above

DOMAINS: dict[str, Domain] = {
    # data, degradation
    "data.name": Choice("builtin", "folder"),
    "data.root": PATH,
    "data.val_root": PATH,
    "data.val_count": Int(1, 10**6),
    "data.color": Choice("auto", "rgb", "y"),
    "data.on_device": Choice("auto", True, False, kind="switch"),
    "degradation.name": Choice(*KERNELS),
    "degradation.quantize": BOOL,
    # trainer
    "trainer.name": TEXT,
    "trainer.steps": Int(1, STEPS),
    "trainer.batch_size": Int(1, 4096),
    "trainer.patch_size": Int(1, 1024),
    "trainer.eval_every": Int(0, STEPS, fix=f"a whole number from 0 (at the end only) to {STEPS}"),
    "trainer.log_every": Int(1, STEPS),
    "trainer.grad_clip": Float(0, 1e6, low_open=True, null=True),
    "trainer.clip_mode": Choice("norm", "value", "adjustable"),
    "trainer.scales": ListOf(SCALE, fix="a list of scales > 1 and <= 8, or [] (train at scale)"),
    "trainer.device": Domain("str", pattern=r"auto|cpu|cuda(:\d+)?|mps",
                             fix="auto, cpu, cuda, cuda:N or mps"),
    "trainer.progress": BOOL,
    "trainer.precision": Choice("auto", "fp32", "bf16", "fp16"),
    "trainer.channels_last": Choice("auto", True, False, kind="switch"),
    "trainer.compile": BOOL,
    "trainer.checkpoint_every": Int(0, STEPS,
                                    fix=f"a whole number from 0 (at every evaluation) to {STEPS}"),
    "trainer.ema": Float(0, 1, high_open=True,
                         fix="a decay >= 0 and < 1, e.g. 0.999 (0: no moving average)"),
    "trainer.ema_start": Int(0, STEPS),
    "trainer.accumulate": Int(1, 4096),
    "trainer.deterministic": BOOL,
    # tracking
    "tracking.uri": Domain("str", null=True, schemes=TRACKING_SCHEMES, noun="tracking URI",
                           fix="sqlite:///mlflow.db (a database file), http://host:5000 (a "
                               "tracking server), postgresql://user@host/db (a "
                               "database; pip install 'sr_ablate[cluster]') or databricks"),
    "tracking.experiment": TEXT,
    "tracking.checkpoint": BOOL,
    "tracking.flush_timeout": Float(0, 1e6),
    # eval
    "eval.protocol": Choice("modern", "classic"),
    "eval.color": Choice("y", "rgb"),
    "eval.kernel": Choice(*KERNELS),
    "eval.sets": ListOf(TEXT, fix="a list of set names or folders, e.g. [val,set5]"),
    "eval.final_sets": ListOf(TEXT, fix="a list of set names or folders, e.g. [set5,set14]"),
    "eval.root": PATH,
    "eval.tile": Int(0, 16384, fix="0 (whole images) or a tile size from 1 to 16384"),
    "eval.frame": ListOf(Int(1, 8192), length=2,
                         fix="[height, width], each a whole number from 1 to 8192"),
    "eval.scales": ListOf(SCALE, fix="a list of scales > 1 and <= 8, or []"),
    "eval.data": PATH,
    "eval.format": Choice("table", "json"),
    # sweep
    "sweep.force": BOOL,
    "sweep.trials": Int(1, 10**6, null=True),
    "sweep.storage": Domain("str", null=True, schemes=OPTUNA_SCHEMES, noun="database URL",
                            fix="e.g. sqlite:///optuna.db or postgresql://user:password@host/db"),
    "sweep.workers": Int(1, 1024),
    # the root
    "seed": Int(0, 2**32 - 1),
    "scale": SCALE,
    "study": Domain("str", null=True),
    "variant": Domain("str", null=True),
    "resume": BOOL,
    # model.*: keyword arguments of the models in conf/model (whichever the chosen class takes)
    "model.in_channels": Choice(1, 3, kind="int"),
    "model.channels": WIDTH,
    "model.mid_channels": WIDTH,
    "model.blocks": DEPTH,
    "model.steps": DEPTH,
    "model.res_scale": Float(0, 1, low_open=True),
    "model.scale": SCALE,
    "model.act": Choice("tanh", "relu"),
    "model.kernel_sizes": ListOf(KERNEL, length=3,
                                 fix="three odd kernel sizes from 1 to 31, e.g. [9,5,5]"),
    "model.head_kernel": KERNEL,
    "model.residual": BOOL,
    "model.global_skip": BOOL,
    "model.bn": BOOL,
    "model.upsampler": Choice("pixelshuffle", "bicubic"),
    # read by the composition root, not the class (ROOT_READ): how the model starts
    "model.init": Domain("str", null=True, noun="trained model",
                         fix="a run id, runs:/<id>, models:/<name>@<alias> or path/final.pt"),
    "model.init_strict": BOOL,
    # loss.*: conf/loss (WeightedSum, VGGLoss)
    "loss.l2": LOSS_WEIGHT,
    "loss.l1": LOSS_WEIGHT,
    "loss.vgg54": LOSS_WEIGHT,
    "loss.vgg_layer": VGG_LAYERS,
    "loss.vgg_after_relu": BOOL,
    "loss.vgg_weights": PATH,
    "loss.layer": VGG_LAYERS,
    "loss.after_relu": BOOL,
    "loss.weights": PATH,
    "loss.weight": Float(0, 1000, low_open=True),
    # optim.*: conf/optim (Adam, SGD). lr up to 1e6: a diverging run (lr 1e3 diverges at once)
    # ends FAILED with its step, which the catalogue's row 52 keeps so
    "optim.lr": Float(0, 1e6, low_open=True),
    "optim.betas": ListOf(Float(0, 1, high_open=True), length=2,
                          fix="two numbers >= 0 and < 1, e.g. [0.9,0.999]"),
    "optim.eps": Float(0, 1, low_open=True),
    "optim.weight_decay": Float(0, 1),
    "optim.momentum": Float(0, 1, high_open=True),
    # sched.*: conf/sched (CosineAnnealingLR, StepLR, training.schedules.CosineRestarts)
    "sched.T_max": Int(1, STEPS),
    "sched.eta_min": Float(0, 1e6),
    "sched.step_size": Int(1, STEPS),
    "sched.gamma": Float(0, 1, low_open=True),
    "sched.periods": ListOf(Int(1, STEPS), fix="a list of period lengths in steps, each from 1 "
                            f"to {STEPS}, covering trainer.steps, e.g. [1200,1200]"),
    "sched.restart_weights": ListOf(Float(0, 1, low_open=True),
                                    fix="a list of weights > 0 and <= 1, one per period, "
                                        "e.g. [1,0.5]"),
    # read by the composition root for every schedule (ROOT_READ): linear warm-up
    "sched.warmup_steps": Int(0, STEPS),
    "sched.warmup_start": Float(0, 1),
}


# ---------------------------------------------------------------------------------------------
# Keys that only some choices read: key -> (the key whose value chooses, the values that read
# it, what to do instead). Under another choice a value other than the schema's default would be
# recorded as a param the run never used (data.root=/my/photos beside data=builtin reads as if
# the run had trained on that folder), so ``checks.check_unread`` refuses it in one line.
# "set": read when the chooser is set (not null, not 0): trainer.grad_clip, trainer.ema...
ONLY_READ_WHEN: dict[str, tuple[str, tuple, str]] = {
    "data.root": ("data.name", ("folder",), "add data=folder to train on that folder"),
    "data.val_root": ("data.name", ("folder",), "add data=folder data.root=<training folder>"),
    "data.val_count": ("data.name", ("folder",), "add data=folder data.root=<training folder>"),
    "trainer.clip_mode": ("trainer.grad_clip", ("set",),
                          "set trainer.grad_clip=<threshold> as well (e.g. 0.4)"),
    "trainer.ema_start": ("trainer.ema", ("set",), "set trainer.ema=<decay> as well (e.g. 0.999)"),
    "model.init_strict": ("model.init", ("set",), "set model.init=<trained run> as well"),
    "sched.warmup_start": ("sched.warmup_steps", ("set",),
                           "set sched.warmup_steps=<steps> as well"),
}
# Keys of a class-valued group that the composition root (training.job) reads instead of the
# class: where the model's weights start, and the warm-up every schedule takes.
# model.init_sha256 is no setting: training.init sets it from the weights model.init names.
ROOT_READ: dict[str, tuple[str, ...]] = {"model": START_KEYS,
                                         "sched": ("warmup_steps", "warmup_start")}
_ROOT_KEYS = {k for keys in ROOT_READ.values() for k in keys}


def class_keys(node) -> dict:
    """A class-valued group's node (DictConfig or dict) as its class is called: without the
    keys the composition root reads (``ROOT_READ``)."""
    items = node.items() if hasattr(node, "items") else node
    return {k: v for k, v in items if k not in _ROOT_KEYS}
# Keys only the evaluate command reads (a training run scores eval.sets / eval.final_sets)
EVALUATE_ONLY: dict[str, str] = {
    "eval.data": "to score a folder during training give eval.sets=[val,/path/to/folder]",
    "eval.format": "training prints one line per run; eval.format is for the evaluate command",
}
# Keys added after runs were made, at the values that compute what those runs computed: the
# config hash leaves a key out at its value here (``hashing.config_hash``), so earlier runs are
# still reused by sweeps and resumed from their checkpoints. Also the defaults of ROOT_READ keys.
NEUTRAL: dict[str, object] = {
    "trainer.ema": 0.0, "trainer.ema_start": 0, "trainer.accumulate": 1,
    "trainer.deterministic": False, "model.init": None, "model.init_strict": True,
    "sched.warmup_steps": 0, "sched.warmup_start": 0.0,
}
