"""The config hash: one configuration, one hash, wherever and however it was launched.

A sweep skips a configuration that already has a FINISHED run with its hash; a checkpoint is
found by it; the report keeps the newest run per hash.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

from omegaconf import DictConfig, OmegaConf

from sr_ablate.config.schema import NEUTRAL


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
# data.on_device: where patches are cut, the same batches either way (data.resident)
NOT_HASHED = ("resume", "tracking.", "sweep.", "trainer.progress", "trainer.device", "eval.format",
              "eval.data", "data.on_device")


# Params that differ between runs without being a design choice.
NOT_FACTORS = {"tracking.uri", "tracking.experiment", "trainer.progress", "trainer.device",
               "sweep.force", "sweep.trials", "sweep.storage", "sweep.workers", "data.on_device",
               "trainer.effective_batch"}  # batch_size x accumulate: the swept keys are those
# Params swept to repeat a configuration, not to compare designs: their runs are pooled.
REPEATS = ("seed",)


def config_hash(cfg: DictConfig) -> str:
    """A 16-hex-digit hash of the resolved configuration: equal hashes mean the same run
    (same model, data, budget, seed, evaluation), wherever and however it was launched."""
    flat = {k: v for k, v in flatten(cfg, private=True).items()  # _target_ names the class
            if not k.startswith(NOT_HASHED) and not (k in NEUTRAL and v == NEUTRAL[k])}
    text = json.dumps(flat, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
