"""Checks before anything runs: one line per problem (``UserError``), no MLflow run.

``validate`` composes every value of every swept override once (the others at their first
value), so ``model.blocks=8,abc`` fails before the first job starts; ``check`` holds every
check of a composed config (``config.checks``).
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import MissingConfigException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from sr_ablate import UserError
from sr_ablate.config import CONF_DIR, CONFIG_DIR_ENV
from sr_ablate.config.checks import TARGETS, check, show_value
from sr_ablate.config.schema import DOMAINS, ROOT_READ  # importing it registers the schema
from sr_ablate.data.sets import check_present

# Hydra's own flags; with these we let Hydra answer (help, printing the config...).
PASSTHROUGH = ("--help", "-h", "--hydra-help", "--info", "-i", "--cfg", "-c", "--version",
               "--shell-completion", "-sc", "--resolve", "--package", "-p")


def compose(overrides: list[str], hydra_config: bool = False) -> DictConfig:
    """The config ``overrides`` compose to. The user's config folder (``sr-ablate
    --config-dir DIR``, passed on as ``$SR_ABLATE_CONFIG_DIR``) is searched after the built-in
    conf/, where Hydra's own ``--config-dir`` puts it in the run: DIR/model/mynet.yaml gives
    ``model=mynet``; a built-in option of the same name wins."""
    mine = os.environ.get(CONFIG_DIR_ENV)
    if mine:  # first in hydra.searchpath, before e.g. a sweep's generated variant folder
        given = next((o for o in overrides if o.startswith("hydra.searchpath=")), None)
        paths = [f"file://{Path(mine).resolve()}",
                 *(OverridesParser.create().parse_override(given).value() if given else [])]
        quoted = ", ".join("'" + p.replace("\\", "\\\\").replace("'", "\\'") + "'" for p in paths)
        overrides = [o for o in overrides if o is not given] + [f"hydra.searchpath=[{quoted}]"]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return hydra_compose("config", overrides=overrides, return_hydra_config=hydra_config)


def group_choices(choices) -> dict[str, str]:
    """The config group options a job was composed with (``{"model": "srresnet", ...}``,
    recorded as params), from Hydra's ``runtime.choices``: Hydra's own groups, the schema and
    the generated ``study_variant`` group left out."""
    return {k: v for k, v in choices.items()
            if not k.startswith("hydra") and k not in ("schema", "study_variant")
            and v is not None}


def compose_job(overrides: list[str]) -> tuple[DictConfig, dict[str, str]]:
    """A job's config as Hydra would hand it over (no ``hydra`` node), and its config group
    choices, for jobs run outside ``@hydra.main``."""
    cfg = compose(overrides, hydra_config=True)
    choices = group_choices(cfg.hydra.runtime.choices)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg, choices


def _explain(error: Exception, override: str, choices: list[str]) -> str:
    """One line for a composition error, naming the key and the fix."""
    key = override.split("=", 1)[0].lstrip("+~")
    if isinstance(error, MissingConfigException):
        group = key.split("/")[0]
        options = sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))
        return f"{override}: no such option; {group}= takes one of: {', '.join(options)}"
    text = " ".join(str(error).split())
    cause = error.__cause__ or error
    if "not in struct" in str(cause) or "Key '" in str(cause) and "not" in str(cause):
        parent, _, leaf = key.rpartition(".")
        base = compose(choices)
        node = OmegaConf.select(base, parent) if parent else base
        valid = [k for k in (node.keys() if isinstance(node, DictConfig) else [])
                 if not str(k).startswith("_")]
        where = parent or "the root config"
        own = [k for k in valid if k not in ROOT_READ.get(parent, ())]
        if not own:  # e.g. sched.T_max with sched=none, whose option has no settings
            chosen = compose(choices, hydra_config=True).hydra.runtime.choices.get(parent)
            shared = f" besides {', '.join(f'{parent}.{k}' for k in valid)}" if valid else ""
            return (f"unknown setting '{key}': {parent}={chosen} takes no settings{shared}; "
                    f"pick the option that reads it (e.g. {parent}=<option> {key}=...), "
                    "see --help")
        return f"unknown setting '{key}'; valid keys in {where}: {', '.join(map(str, valid))}"
    if isinstance(cause, OmegaConfBaseException):
        first = str(cause).splitlines()[0]
        if key in DOMAINS:
            return f"{override}: {first}; use {DOMAINS[key].describe()}"
        return f"{override}: {first}; give a value of the right type for {key}"
    return f"{override}: {text}"


def _expand(overrides: list[str], multirun: bool = True) -> list[list[str]]:
    """Override lists to compose: first values everywhere, then each other value once.
    Without ``multirun`` (no ``-m``) a swept value is refused: Hydra would say so in six
    lines that suggest --multirun."""
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as e:  # hydra's OverrideParseException
        raise UserError(f"cannot parse overrides: {' '.join(str(e).split())}") from None
    values = []
    for o in parsed:
        if o.is_sweep_override() and not multirun:
            raise UserError(f"{o.input_line} gives several values, which makes a sweep; add "
                            f"-m (python -m sr_ablate -m {o.input_line} ...), or for one "
                            f"list value write {o.key_or_group}=[...]")
        if o.is_sweep_override():
            vals = [str(v) for v in o.sweep_string_iterator()]
        else:
            vals = [o.get_value_element_as_str()] if o.value() is not None else ["null"]
        prefix = {"ADD": "+", "DEL": "~", "FORCE_ADD": "++"}.get(o.type.name, "")
        values.append([f"{prefix}{o.key_or_group}={v}" for v in vals])
    combos = [[v[0] for v in values]]
    for i, vals in enumerate(values):
        for other in vals[1:]:
            combos.append([other if j == i else v[0] for j, v in enumerate(values)])
    return combos


LOCAL_LAUNCHERS = ("basic", "joblib")


def check_typed(overrides: list[str]) -> None:
    """Values as typed, for what composing would hide: OmegaConf turns 2, 0 or yes into a
    bool (``degradation.quantize=2`` would run as true)."""
    for o in OverridesParser.create().parse_overrides(overrides):
        domain = DOMAINS.get(o.key_or_group)
        if domain is None or domain.kind != "bool" or o.type.name == "DEL":
            continue
        value = o.value()
        if isinstance(value, bool) or (value is None and domain.null) or \
                (isinstance(value, str) and value.lower() in ("true", "false")):
            continue
        raise UserError(f"{o.key_or_group}={show_value(value)} has the wrong type; use "
                        f"{domain.describe()}")


def validate(argv: list[str], targets: tuple[str, ...] = TARGETS,
             files: bool = False, then: Callable[[DictConfig], None] | None = None
             ) -> DictConfig | None:
    """Compose and check the config(s) named by ``argv``; returns the first, or None when
    ``argv`` asks Hydra for help/printing. Raises UserError with a one-line message.
    ``targets``: the class-valued groups checked against their constructors. ``files``: the
    config is about to run here, so its training data and evaluation sets must be here.
    ``then``: called with each config once checked (training: ``model.init``'s weights)."""
    if any(a.split("=")[0] in PASSTHROUGH for a in argv):
        return None
    overrides = [a for a in argv if not a.startswith("-")
                 and not a.lstrip("+~").startswith(("hydra.", "hydra/"))]
    # jobs sent to a cluster (hydra/launcher=slurm) run on its machines, not on this one
    here = not any(a.startswith("hydra/launcher=") and a.split("=", 1)[1] not in LOCAL_LAUNCHERS
                   for a in argv)
    first = None
    multirun = any(a in ("-m", "--multirun") for a in argv)
    for combo in _expand(overrides, multirun):
        check_typed(combo)
        try:
            cfg = compose(combo)
        except Exception as e:
            bad = _find_culprit(combo)
            choices = [o for o in combo if "." not in o.split("=")[0] and o != bad]
            raise UserError(_explain(e if bad is None else _error_of(bad, choices), bad or
                                     " ".join(combo), choices)) from None
        check(cfg, targets, here)
        if files and here:
            check_present(cfg)
        if then is not None:
            then(cfg)
        first = first or cfg
    return first


def _error_of(override: str, choices: list[str]) -> Exception:
    try:
        compose(choices + [override])
    except Exception as e:
        return e
    return RuntimeError("invalid together with the other overrides")


def _find_culprit(combo: list[str]) -> str | None:
    """The first override that fails on its own (next to the group choices)."""
    choices = [o for o in combo if "." not in o.split("=")[0]]
    for o in combo:
        rest = [c for c in choices if c != o]
        try:
            compose(rest + [o])
        except Exception:
            return o
    return None
