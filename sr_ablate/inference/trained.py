"""A trained model as a weights file holds it: the network, its scale and its colour mode.

The file is a run's ``final.pt`` (``{"model": state_dict, "config": resolved config,
"step": n}``), also what every run's MLflow Model carries. The network is built from the
config's ``model`` node by importing its ``_target_`` and calling it with the node's keys, so
loading needs neither Hydra nor any config file.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sr_ablate import UserError
from sr_ablate.core.evaluate import model_channels
from sr_ablate.models import START_KEYS


@dataclass
class Trained:
    """``model`` in eval mode, on the CPU until moved; it maps (B, channels, h, w) in [0, 1]
    to (B, channels, h*scale, w*scale) ([0, 1] intended; not clamped), or takes the
    bicubic-enlarged image when ``upsampled_input``."""
    model: nn.Module
    scale: float
    channels: int          # 3: RGB model; 1: Y-channel model (luma of BT.601)
    upsampled_input: bool  # SRCNN, VDSR: the input is the MATLAB-bicubic enlarged LR
    source: str            # where it came from (file, run id, registry URI), for messages

    @classmethod
    def of(cls, model: nn.Module, scale: float, source: str) -> Trained:
        """``model`` with what it says of itself: its input channels (``model_channels``)
        and whether it takes the enlarged picture (its ``upsampled_input``). Its train/eval
        mode is left as it is."""
        return cls(model, float(scale), model_channels(model),
                   bool(getattr(model, "upsampled_input", False)), source)

    @property
    def color(self) -> str:
        return "y" if self.channels == 1 else "rgb"

    def to(self, device) -> Trained:
        self.model.to(device)
        return self


def build(node: dict) -> nn.Module:
    """The network of a config's ``model`` node: ``_target_`` imported and called with the
    node's other keys (``model.blocks`` -> ``blocks=``). No Hydra involved."""
    target = node.get("_target_", "")
    module, _, name = target.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise UserError(f"the model class {target!r} cannot be imported here; install the "
                        "package that defines it (or run from the folder that holds it)"
                        ) from None
    return cls(**{k: v for k, v in node.items() if not k.startswith("_") and k not in START_KEYS})


def read_checkpoint(path: str | Path) -> tuple[dict, dict]:
    """(resolved config, state dict) of a ``final.pt`` file, read with
    ``torch.load(weights_only=True)`` (no pickled code runs), on the CPU; UserError (one line)
    for a missing file or any other file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model file {path} not found; give a run's final.pt, an MLflow run "
                        "id or models:/<name>@<alias>")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        # a final.pt's config holds its model node: checked here, with the rest of the file
        config, weights, _ = ckpt["config"], ckpt["model"], ckpt["config"]["model"]
    except Exception as e:
        raise UserError(f"{path} is not an sr_ablate checkpoint ({e.__class__.__name__}); "
                        "give the final.pt of a run") from None
    return config, weights


def from_checkpoint(path: str | Path, source: str | None = None) -> Trained:
    """The model of a ``final.pt`` file; UserError (one line) for any other file."""
    path = Path(path)
    config, weights = read_checkpoint(path)
    node = config["model"]
    model = build(node)
    load_weights(model, weights, path)
    return Trained.of(model.eval(), config.get("scale", node.get("scale")),
                      source or str(path))


def load_weights(model: torch.nn.Module, weights: dict, path: Path) -> None:
    """``model.load_state_dict(weights)``; UserError (one line) when the file holds another
    architecture's weights."""
    try:
        model.load_state_dict(weights)
    except (RuntimeError, KeyError, TypeError, AttributeError) as e:
        why = mismatch(model, weights, e)
        raise UserError(f"{path} holds weights of another architecture than "
                        f"{type(model).__name__} with these settings ({why}); use the "
                        "configuration it was trained with, or delete it") from None


def mismatch(model: torch.nn.Module, weights, error: Exception | None = None) -> str:
    """The first difference between the model's parameters and ``weights``, in words
    (``error``'s class name when none is found)."""
    if not isinstance(weights, dict):
        return f"no state dict but a {type(weights).__name__}"
    own = model.state_dict()
    for key, value in own.items():
        theirs = weights.get(key)
        if theirs is None:
            return f"{key} is not in the file"
        if getattr(theirs, "shape", None) != value.shape:
            shape = "x".join(map(str, getattr(theirs, "shape", ()))) or "no tensor"
            return f"{key} is {shape} in the file, {'x'.join(map(str, value.shape))} here"
    extra = [k for k in weights if k not in own]
    if extra:
        return f"unexpected {extra[0]}" + (f" and {len(extra) - 1} more" if len(extra) > 1 else "")
    return type(error).__name__ if error is not None else "no difference"


def check_scale(trained: Trained, asked: float | None) -> None:
    """UserError (one line) when ``scale=`` was given and the model was trained for another."""
    if asked is not None and abs(float(asked) - trained.scale) > 1e-9:
        raise UserError(f"{trained.source} was trained for scale={trained.scale:g}, not "
                        f"{float(asked):g}; pass scale={trained.scale:g}")
