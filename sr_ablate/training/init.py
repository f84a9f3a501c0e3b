"""Starting from a trained model: ``model.init`` loads its weights into the freshly built,
seeded network before step 0.

``model.init`` names a trained model as ``upscale`` takes one (a run id, ``runs:/<id>``,
``models:/<name>@<alias>``, ``models:/<name>/<version>`` or a ``final.pt``), resolved in the
run's own tracking store. The SHA-256 of that final.pt becomes ``model.init_sha256``: a param,
and part of the config hash, so runs from different weights are different configurations even
under one ``model.init`` (``models:/srnet@best`` moved to another version). ``settle`` sets it;
it is called wherever a training config is finalised, before its hash is taken.

``model.init_strict=true`` (the default): every tensor's name and shape must match. ``false``:
the tensors whose name and shape match are loaded and the others keep their seeded
initialisation (an x4 SRResNet from an x2 one loads all but its second upsampling stage); one
stderr line and the tags ``sr_ablate.init.loaded`` / ``sr_ablate.init.kept_initial`` say which.
A resumed run loads nothing: its checkpoint holds the trained weights.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf, open_dict

from sr_ablate import UserError, tracking
from sr_ablate.config.hashing import config_hash
from sr_ablate.core.digest import sha256_file
from sr_ablate.inference.trained import build, mismatch, read_checkpoint
from sr_ablate.training import checkpoint

TAG_LIMIT = 4000  # characters of a tag's list of names, well inside MLflow's 8000


@dataclass(frozen=True)
class Source:
    """The weights ``model.init`` names, as read from its final.pt (CPU tensors)."""
    sha256: str                      # of the final.pt file's bytes
    target: str                      # the ``_target_`` it was trained as
    weights: dict[str, torch.Tensor]  # its state dict


def read_source(spec: str, uri: str) -> Source:
    """The final.pt behind ``spec`` (a path, or a run or registry address in the store at
    ``uri``), read weights-only; UserError (one line, naming model.init) when there is none."""
    if spec.endswith(".onnx"):
        raise UserError(f"model.init={spec}: an ONNX export holds no weights to train on; give "
                        "the run it came from (its id) or its final.pt")
    try:
        with tracking.weights_file(spec, uri, key="model.init") as path:
            config, weights = read_checkpoint(path)
            sha = sha256_file(path)
    except UserError as e:
        said = str(e)
        raise UserError(said if said.startswith("model.init=") else f"model.init={spec}: {said}"
                        ) from None
    if not isinstance(weights, dict):
        raise UserError(f"model.init={spec}: its final.pt holds no state dict but a "
                        f"{type(weights).__name__}; give the final.pt of a run")
    return Source(sha, str(config["model"].get("_target_", "")), weights)


def settle(cfg: DictConfig, cwd: str | None) -> Source | None:
    """Read ``model.init``'s weights and set ``cfg.model.init_sha256`` to their SHA-256; None
    (and ``cfg`` as it is) without ``model.init``. Call it before ``config_hash(cfg)`` is
    taken for a training run; UserError (one line) on bad input, before any run opens."""
    spec = cfg.model.get("init")
    if spec is None:
        if "init_sha256" in cfg.model:
            raise UserError("model.init_sha256 is set from the weights model.init names; "
                            "leave it out, or give model.init=<trained run>")
        return None
    src = read_source(spec, tracking.store_uri(cfg.tracking.uri, cwd))
    with open_dict(cfg):
        cfg.model.init_sha256 = src.sha256
    return src


def check_fits(cfg: DictConfig, cwd: str | None) -> None:
    """``settle``, then whether its weights fit the model ``cfg`` builds (built on the meta
    device: shapes only, no memory): for the checks before a run or sweep starts, so a bad
    ``model.init`` is one line before Hydra or a sweep's parent run starts."""
    src = settle(cfg, cwd)
    if src is None:
        return
    node = OmegaConf.to_container(cfg.model, resolve=True)
    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            model = build(node)
    except Exception:  # a class of one's own that needs real tensors to build: checked on use
        return
    plan(model, src, cfg.model.init, cfg.model.init_strict)


def start_from(cfg: DictConfig, model: torch.nn.Module, cwd: str | None) -> dict[str, str]:
    """Load ``model.init``'s weights into ``model`` (just built and seeded) for a fresh run,
    after ``settle``; the run's tags saying what was loaded. ``{}`` without ``model.init``, and
    for a run that resumes (the same test as ``job.build_parts``'s): its checkpoint holds the
    trained weights."""
    src = settle(cfg, cwd)
    if src is None or (cfg.resume and checkpoint.path_for(cwd, config_hash(cfg)).exists()):
        return {}
    loaded, kept = plan(model, src, cfg.model.init, cfg.model.init_strict)
    model.load_state_dict({k: src.weights[k] for k in loaded}, strict=not kept)
    own = list(model.state_dict())
    unused = [k for k in src.weights if k not in set(loaded)]
    said = (f"loaded all {len(loaded)} tensors" if not kept else
            f"loaded {len(loaded)} of {len(own)} tensors ({', '.join(modules(loaded, own))}); "
            f"kept at initialisation: {', '.join(modules(kept, own))}")
    if unused:
        which = ", ".join(modules(unused, list(src.weights)))
        said += f"; {len(unused)} of its tensors unused ({which})"
    print(f"sr_ablate: model.init={cfg.model.init}: {said} (sha256 {src.sha256[:12]})",
          file=sys.stderr)
    return {"sr_ablate.init.loaded": _listed(loaded, own),
            "sr_ablate.init.kept_initial": _listed(kept, own) if kept else "none"}


def plan(model: torch.nn.Module, src: Source, spec: str, strict: bool
         ) -> tuple[list[str], list[str]]:
    """Which of ``model``'s tensors ``src`` gives: (loaded, kept at their initialisation),
    names in state-dict order. ``strict``: all of them (same names, same shapes), else
    UserError naming the first difference; otherwise those whose name and shape match (at
    least one). Copies nothing: ``model`` may be on the meta device."""
    try:
        same_class = get_class(src.target) is type(model)
    except Exception:  # a class that cannot be imported here is not this one
        same_class = False
    if not same_class:
        raise UserError(f"model.init={spec}: it is a {src.target or 'model of no class'}, this "
                        f"run trains {type(model).__name__}; give a run of the same model, or "
                        "choose its model=")
    own = model.state_dict()
    loaded = [k for k, v in own.items() if getattr(src.weights.get(k), "shape", None) == v.shape]
    fits = set(loaded)
    kept = [k for k in own if k not in fits]
    if strict and (kept or len(loaded) != len(src.weights)):
        raise UserError(f"model.init={spec}: its weights do not fit this model "
                        f"({mismatch(model, src.weights)}); use model.init_strict=false to load "
                        "the tensors that fit, or a run of the same architecture")
    if not loaded:
        raise UserError(f"model.init={spec}: none of its tensors fits this model "
                        f"({mismatch(model, src.weights)}); give a run of the same architecture")
    return loaded, kept


def modules(names: list[str], every: list[str]) -> list[str]:
    """``names`` (a subset of the tensor names ``every``) as the fewest module prefixes whose
    tensors are all in ``names``: ``["body.*", "up.0.*", "tail.weight"]``; exact, not lossy."""
    chosen, out = set(names), []

    def walk(prefix: str) -> None:
        under = [n for n in every if n.startswith(prefix)]
        if prefix and all(n in chosen for n in under):
            out.append(prefix + "*")
            return
        for part in dict.fromkeys(n[len(prefix):].split(".")[0] for n in under):
            name = prefix + part
            if name in chosen:  # a tensor of its own (``tail.weight``)
                out.append(name)
            elif any(n.startswith(name + ".") and n in chosen for n in under):
                walk(name + ".")

    walk("")
    return out


def _listed(names: list[str], every: list[str]) -> str:
    """A tag value: how many of ``every`` and which (``modules``), cut at ``TAG_LIMIT``."""
    text = f"{len(names)} of {len(every)} tensors: {', '.join(modules(names, every))}"
    if len(text) > TAG_LIMIT:  # whole names only, and said to be cut
        text = text[:TAG_LIMIT - 12].rsplit(", ", 1)[0] + ", … (cut)"
    return text
