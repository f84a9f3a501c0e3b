"""Every check of a composed config, before any work: each key against its domain
(``schema.DOMAINS``), the class-valued groups (model, loss, optim, sched) against their
constructors' keyword arguments (a model's signature is the schema of its keys; the model is
built once on the meta device), and the checks that span several keys. Each raises UserError
with one line naming the problem and the fix.
"""
from __future__ import annotations

import inspect
import os
import types
import typing

import torch
from hydra.utils import get_class
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sr_ablate import UserError
from sr_ablate.config.drivers import check_driver
from sr_ablate.config.schema import (  # importing it registers the schema
    DOMAINS,
    EVALUATE_ONLY,
    NEUTRAL,
    ONLY_READ_WHEN,
    RootConf,
    class_keys,
)


def _target(node: DictConfig):
    return get_class(node._target_)


def _kwargs(node: DictConfig) -> dict:
    """The keyword arguments a ``_target_`` node passes to its class (resolved)."""
    return {k: v for k, v in class_keys(OmegaConf.to_container(node, resolve=True)).items()
            if not k.startswith("_")}


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
    for key in class_keys(node):
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


MAX_PARAMS = 10**9  # 4 GB of fp32 weights, 12 GB with Adam's moments: 20x the big EDSR


def check_model_builds(node: DictConfig) -> None:
    """Build the model once, on PyTorch's meta device (shapes only: no memory, milliseconds):
    settings that cannot work together (SRResNet at scale 5, an unknown upsampler) and models
    too big to hold are found before any work, as one line."""
    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            model = _target(node)(**_kwargs(node))
    except (ValueError, TypeError) as e:
        raise UserError(f"the model settings cannot work together: {e}; change model.* or "
                        "scale (or pick another model=)") from None
    except Exception:  # a class of one's own that needs real tensors to build: built on use
        return
    n = sum(p.numel() for p in model.parameters())
    if n > MAX_PARAMS:
        raise UserError(f"the model settings give {n:,} parameters, more than the "
                        f"{MAX_PARAMS:,} a run can hold; lower model.channels or model.blocks")


def check_optim_builds(cfg: DictConfig) -> None:
    """Build the optimiser (on one stand-in parameter) and the scheduler: torch's own checks
    (e.g. Nesterov momentum without momentum) become one line instead of a traceback."""
    param = torch.nn.Parameter(torch.zeros(1))
    built = param
    for group in ("optim", "sched"):
        node = cfg[group]
        if not node.get("_target_"):
            continue
        try:
            built = _target(node)([param] if group == "optim" else built, **_kwargs(node))
        except (ValueError, TypeError) as e:
            raise UserError(f"the {group} settings cannot work together: {e}; change "
                            f"{group}.* (or pick another {group}=)") from None


_ABSENT = object()


def show_value(value) -> str:
    """A value as the user would type it back: strings quoted, null, true/false."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, (str, list)) else str(value)


def check_domains(cfg: DictConfig, targets: tuple[str, ...] = ()) -> None:
    """Every key of ``cfg`` that has a domain (``schema.DOMAINS``) against it; the keys of a
    class-valued group only when ``targets`` holds the group and its class takes them."""
    for key, domain in DOMAINS.items():
        group = key.partition(".")[0]
        if group in TARGETS and group not in targets:
            continue
        try:
            value = OmegaConf.select(cfg, key, default=_ABSENT)
        except OmegaConfBaseException as e:  # e.g. an interpolation that resolves to nothing
            raise UserError(f"{key}: {str(e).splitlines()[0]}; give it a value") from None
        if value is _ABSENT:
            continue
        if isinstance(value, (DictConfig, ListConfig)):
            value = OmegaConf.to_container(value, resolve=True)
        wrong = domain.problem(value)
        if wrong:
            raise UserError(f"{key}={show_value(value)} {wrong}; use {domain.describe()}")


def check_tracking_uri(cfg: DictConfig) -> None:
    """$MLFLOW_TRACKING_URI, used when tracking.uri is null, in tracking.uri's domain; the
    database driver of the store and of sweep.storage installed."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if cfg.tracking.uri is None and env:
        domain = DOMAINS["tracking.uri"]
        wrong = domain.problem(env)
        if wrong:
            raise UserError(f"MLFLOW_TRACKING_URI={env!r} (tracking.uri is null) {wrong}; set "
                            f"it or tracking.uri to {domain.describe()}")
        check_driver(env, "MLFLOW_TRACKING_URI")
    if cfg.tracking.uri:
        check_driver(cfg.tracking.uri, "tracking.uri")
    if cfg.get("sweep") and cfg.sweep.storage:
        check_driver(cfg.sweep.storage, "sweep.storage")


def check_device(device: str) -> None:
    """trainer.device names a device this machine has."""
    if device.startswith("cuda"):
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(device.partition(":")[2] or 0)
        if index >= n:
            have = f"{n} CUDA device(s), cuda:0 to cuda:{n - 1}" if n else "no CUDA device"
            raise UserError(f"trainer.device={device}, but this machine has {have}; use "
                            "trainer.device=auto (CUDA when there is one) or cpu")
    if device == "mps" and not (getattr(torch.backends, "mps", None)
                                and torch.backends.mps.is_available()):
        raise UserError("trainer.device=mps, but this machine has no MPS device; use "
                        "trainer.device=auto or cpu")


TARGETS = ("model", "loss", "optim", "sched")
_DEFAULTS = OmegaConf.structured(RootConf)


def check_unread(cfg: DictConfig, training: bool) -> None:
    """A key the chosen option does not read keeps its default (``schema.ONLY_READ_WHEN``;
    for a training run, also ``schema.EVALUATE_ONLY``): otherwise the run would record a
    setting it never used."""
    for key, (chooser, readers, fix) in ONLY_READ_WHEN.items():
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is _ABSENT:  # e.g. the evaluate command's model, not from conf/model
            continue
        default = NEUTRAL[key] if key in NEUTRAL else OmegaConf.select(_DEFAULTS, key)
        chosen = OmegaConf.select(cfg, chooser)
        if value == default or chosen in readers or ("set" in readers and chosen):
            continue
        how = f"{chooser}={show_value(chosen)}"
        if chooser.partition(".")[2] == "name":  # a group's option: say it as it is chosen
            how = f"{chooser.partition('.')[0]}={chosen}"
        raise UserError(f"{key}={show_value(value)} is not read with {how}, so the run would "
                        f"record it without using it; {fix}, or leave {key} out")
    for key, fix in EVALUATE_ONLY.items() if training else ():
        value = OmegaConf.select(cfg, key)
        if value != OmegaConf.select(_DEFAULTS, key):
            raise UserError(f"{key}={show_value(value)} is read by the evaluate command only "
                            f"(python -m sr_ablate evaluate ...); {fix}")


def check(cfg: DictConfig, targets: tuple[str, ...] = TARGETS, here: bool = True) -> None:
    """Every check that can be made before any work starts; raises UserError (one line).
    ``targets``: the class-valued groups to check against their constructors (the evaluate
    command, which builds no training objects, checks none). ``here``: the config runs on this
    machine (not on a cluster's), so its device must be one this machine has."""
    check_domains(cfg, targets)
    for group in targets:
        if cfg[group].get("_target_"):
            check_target(group, cfg[group])
    if "model" in targets:
        model_scale = cfg.model.get("scale", cfg.scale)
        if model_scale != cfg.scale:
            raise UserError(f"model.scale={model_scale} but scale={cfg.scale}: the data and "
                            f"the evaluation follow scale; set scale={model_scale} instead")
        check_model_builds(cfg.model)
    if "loss" in targets and {"l2", "l1", "vgg54"} <= set(cfg.loss) \
            and not any(cfg.loss[k] for k in ("l2", "l1", "vgg54")):
        raise UserError("loss.l2, loss.l1 and loss.vgg54 are all 0, which leaves no loss; "
                        "give one of them a positive weight, e.g. loss.l2=1")
    if "optim" in targets:
        check_optim_builds(cfg)
    eta_min, lr = cfg.sched.get("eta_min"), cfg.optim.get("lr")
    if "sched" in targets and eta_min is not None and lr is not None and eta_min > lr:
        raise UserError(f"sched.eta_min={eta_min} is above optim.lr={lr}: the schedule would "
                        f"raise the learning rate; set sched.eta_min to at most {lr} (e.g. 0)")
    periods = cfg.sched.get("periods")  # sched=cosine_restarts
    if "sched" in targets and periods is not None and sum(periods) < cfg.trainer.steps:
        steps = cfg.trainer.steps
        raise UserError(f"sched.periods={list(periods)} cover {sum(periods)} steps, fewer than "
                        f"trainer.steps={steps}: the schedule would end before the run; "
                        f"lengthen the last period by {steps - sum(periods)} or add periods")
    want = {"y": 1, "rgb": 3}.get(cfg.data.color, cfg.model.get("in_channels", 3))
    if cfg.model.get("in_channels", want) != want:
        raise UserError(f"model.in_channels={cfg.model.in_channels} but data.color="
                        f"{cfg.data.color} gives {want} channel(s); set model.in_channels={want}")
    if cfg.eval.color == "rgb" and want == 1:
        raise UserError("eval.color=rgb needs an RGB model; use eval.color=y with data.color=y")
    if cfg.data.name == "folder" and not cfg.data.root:
        raise UserError("data=folder needs data.root; pass data.root=<folder of HR images>")
    check_unread(cfg, training="model" in targets)
    check_tracking_uri(cfg)
    if here:
        check_device(cfg.trainer.device)
