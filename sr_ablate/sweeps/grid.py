"""Sweep files (``sweeps/<study>.yaml``) turned into one Hydra ``-m`` invocation.

    sr-ablate sweep=srresnet_ablation [more overrides, e.g. trainer=smoke]

A sweep file names its ``study`` and holds any of:
  ``overrides``: applied to every run;
  ``grid``: {key: [values]} swept as every combination (Hydra's ``key=a,b,c``);
  ``variants``: {name: [overrides]}: a list of one-off variants (an ablation), run as a
  generated config group ``study_variant`` (one ``# @package _global_`` file per variant);
  ``baseline``: the variant the others are compared with in reports (a variant's name, or
  a grid point such as ``{model.blocks: 16}``);
  ``optuna``: instead of a grid, an Optuna search (see ``optuna_study``).
Every run gets ``study=<study>`` (a param) and goes to the MLflow experiment of that name.
A grid swept without a named baseline (``-m model.blocks=8,12,16,24``, or a sweep file
with ``grid`` and neither ``baseline`` nor ``variants``) is compared with the default
configuration: ``definition`` records it as the sweep's ``baseline``.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sr_ablate import UserError
from sr_ablate.config import SWEEPS_DIR, config_dirs
from sr_ablate.config.hashing import NOT_FACTORS, REPEATS
from sr_ablate.config.validation import compose_job

KEYS = {"study", "description", "overrides", "grid", "variants", "baseline", "optuna"}


def load(name: str) -> dict:
    """The sweep file ``sweeps/<name>.yaml`` (or a path), checked; UserError when wrong."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else SWEEPS_DIR / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in SWEEPS_DIR.glob("*.yaml")))
        raise UserError(f"no sweep file {path}; known sweeps: {known}")
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise UserError(f"sweep file {path} is not valid YAML{where}: "
                        f"{getattr(e, 'problem', None) or e}; quote overrides that hold "
                        "brackets or commas, e.g. \"eval.sets=[val,set5]\"") from None
    unknown = set(spec) - KEYS
    if unknown:
        raise UserError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; a sweep file "
                        f"holds {', '.join(sorted(KEYS))}")
    if not spec.get("study"):
        raise UserError(f"{path}: missing 'study: <name>'")
    if not spec.get("grid") and not spec.get("variants") and not spec.get("optuna"):
        raise UserError(f"{path}: give 'grid' or 'variants' (or both), or 'optuna'")
    base = spec.get("baseline")
    if isinstance(base, dict):  # a grid point, e.g. {model.blocks: 16}
        grid = spec.get("grid") or {}
        for k, v in base.items():
            if v not in grid.get(k, []):
                raise UserError(f"{path}: baseline {k}={v} is not a point of the grid")
    elif base and base not in (spec.get("variants") or {}):
        raise UserError(f"{path}: baseline {base!r} is not one of the variants")
    spec["path"] = str(path)
    return spec


def _value(text: str):
    return yaml.safe_load(text) if text != "" else ""


def variant_yaml(name: str, overrides: list[str]) -> str:
    """A ``# @package _global_`` config that applies ``overrides`` (group choices go in its
    defaults list, ``a.b=v`` into the config body)."""
    defaults, body = [], {"variant": name}
    for o in overrides:
        key, _, value = o.partition("=")
        if "." not in key and any((d / key).is_dir() for d in config_dirs()):
            defaults.append({f"override /{key}": value})
            continue
        node = body
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = _value(value)
    doc = {"defaults": [*defaults, "_self_"], **body}
    return "# @package _global_\n" + yaml.safe_dump(doc, sort_keys=False)


def _grid(spec: dict, extra: list[str] = ()) -> list[str]:
    """The grid as Hydra sweep overrides; a key the command line also gives is left to the
    command line (``sweep=srcnn_variants seed=5,6`` runs seeds 5 and 6, e.g. to add seeds)."""
    given = {a.split("=", 1)[0].lstrip("+~") for a in extra if "=" in a}
    return [f"{k}={','.join(str(v).lower() if isinstance(v, bool) else str(v) for v in vals)}"
            for k, vals in (spec.get("grid") or {}).items() if k not in given]


def to_argv(spec: dict, extra: list[str], workdir: Path) -> list[str]:
    """The Hydra command line for a sweep; variant configs are written under ``workdir``."""
    argv = ["-m", *(spec.get("overrides") or []), *_grid(spec, extra),
            f"study={spec['study']}", f"tracking.experiment={spec['study']}"]
    variants = spec.get("variants") or {}
    if variants:
        group = workdir / "study_variant"
        group.mkdir(parents=True, exist_ok=True)
        for name, overrides in variants.items():
            (group / f"{name}.yaml").write_text(variant_yaml(name, overrides or []))
        argv += [f"hydra.searchpath=[file://{workdir}]", f"+study_variant={','.join(variants)}"]
    return argv + extra


def checks(spec: dict, extra: list[str]) -> list[list[str]]:
    """Plain override lists to validate, one per variant (grid values are swept by -m)."""
    base = ["-m", *(spec.get("overrides") or []), *_grid(spec, extra), f"study={spec['study']}",
            f"tracking.experiment={spec['study']}"]
    variants = spec.get("variants") or {"": []}
    return [base + [*(v or []), f"variant={n}" if n else "variant=null"] + extra
            for n, v in variants.items()]


def expand(argv: list[str]) -> tuple[list[str], dict | None, tempfile.TemporaryDirectory | None]:
    """If ``argv`` names ``sweep=<name>``: (Hydra argv, the sweep spec, its temp dir)."""
    named = [a for a in argv if a.startswith("sweep=")]
    if not named:
        return argv, None, None
    spec = load(named[0].split("=", 1)[1])
    extra = [a for a in argv if not a.startswith("sweep=") and a not in ("-m", "--multirun")]
    if spec.get("optuna"):  # not a Hydra sweep: optuna_study drives it
        return extra, spec, None
    tmp = tempfile.TemporaryDirectory(prefix="sr_ablate_sweep_")
    return to_argv(spec, extra, Path(tmp.name)), spec, tmp


def default_baseline(argv: list[str]) -> dict:
    """{key: default value} for every key a Hydra ``-m`` command line sweeps: the default
    is the key's value in the config composed from ``argv`` without its swept overrides (a
    config group's is its option, e.g. ``{"model": "srresnet"}``; None when the default
    config has no such key). Keys the report pools or ignores (``seed``, ``trainer.device``...)
    and the ``study_variant`` group are left out. {} when that config does not compose."""
    typed = [a for a in argv if not a.startswith("-")
             and not a.lstrip("+~").startswith(("hydra.", "hydra/"))]
    parsed = OverridesParser.create().parse_overrides(typed)
    swept = [o.key_or_group for o in parsed if o.is_sweep_override()
             and o.key_or_group not in ("study_variant", *REPEATS, *NOT_FACTORS)]
    if not swept:
        return {}
    try:
        cfg, choices = compose_job([t for t, o in zip(typed, parsed) if not o.is_sweep_override()])
    except (HydraException, OmegaConfBaseException):  # e.g. a fixed override that only fits
        return {}                                      # a swept option: there is no default
    base = {}
    for key in swept:
        value = choices[key] if key in choices else OmegaConf.select(cfg, key, default=None)
        base[key] = (OmegaConf.to_container(value, resolve=True)
                     if isinstance(value, (DictConfig, ListConfig)) else value)
    return base


def definition(argv: list[str], spec: dict | None) -> str:
    """What a sweep's parent run holds (tag ``sr_ablate.sweep``, read by the report): the
    sweep file as written, or for a command-line sweep the YAML ``{command, baseline}``; a
    grid without a named baseline gets ``baseline:`` = ``default_baseline(argv)``."""
    text = Path(spec["path"]).read_text() if spec else ""
    if spec and (spec.get("baseline") or spec.get("variants")):
        return text  # a named baseline is kept; a variant has no default to stand for
    base = default_baseline(argv)
    if spec:
        return text if not base else (
            text.rstrip("\n") + "\n# added by sr_ablate: no baseline named, so the default "
            "configuration is\n" + yaml.safe_dump({"baseline": base}, default_flow_style=None,
                                                   sort_keys=False))
    doc = {"command": " ".join(argv), **({"baseline": base} if base else {})}
    return yaml.safe_dump(doc, default_flow_style=False, sort_keys=False, width=1_000_000)
