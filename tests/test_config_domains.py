"""Every config key's domain (``schema.DOMAINS``) is checked before anything runs.

Invalid values are made from the domain declaration itself, so a key added there is covered
without a line here, and a key added to a config without a domain fails
``test_every_key_has_a_domain``. Four layers, fastest first:

* every key x every value of ``invalid_values`` (negative, zero, NaN, +-inf, 1e30, 10**12, a
  string, a list, a bool, empty, null, just past each bound, unsupported URI schemes and plain
  paths), each through Hydra's own override parser and override merge on the composed base
  config, then ``check`` (Hydra's compose costs ~0.3 s, so composing each case would take
  minutes; the base is composed once per config option);
* random out-of-domain values from Hypothesis strategies built from each domain, same path;
* a sample of those through the real ``validate()`` (Hydra compose included);
* a few through ``python -m sr_ablate`` itself: one ``error:`` line, exit 2, no traceback, no
  MLflow run and no store.
"""
from __future__ import annotations

import copy
import math
import sqlite3
from functools import cache
from pathlib import Path

import pytest
import yaml
from conftest import REPO, cli
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sr_ablate import UserError
from sr_ablate.config.checks import TARGETS, check
from sr_ablate.config.domain import Domain
from sr_ablate.config.hashing import flatten
from sr_ablate.config.schema import DOMAINS
from sr_ablate.config.validation import _explain, check_typed, compose, validate

CONF = REPO / "conf"
PARSER = OverridesParser.create()


# ----------------------------------------------------------------------------- the values

def example(d: Domain):
    """One value inside ``d`` (a list's filler items)."""
    if d.choices:
        return d.choices[0]
    if d.kind == "str":
        return "val"
    if d.kind == "bool":
        return True
    if d.kind == "int":
        v = d.low + 1 if d.low_open else d.low
        return v + 1 if d.odd and v % 2 == 0 else v
    return (d.low + d.high) / 2 if d.low_open else d.low


URIS_REFUSED = {  # tracking.uri: plain paths, file stores, schemes MLflow cannot track to
    "plain name": "mlruns", "relative path": "./mlruns", "absolute path": "/tmp/x/mlruns",
    "home path": "~/mlruns", "database file path": "mlflow.db", "windows path": "C:\\mlruns",
    "file URI": "file:///tmp/mlruns", "file: relative": "file:mlruns", "file://": "file://mlruns",
    "s3": "s3://bucket/mlruns", "ftp": "ftp://host/x", "gs": "gs://bucket/x", "hdfs": "hdfs://h/x",
    "unknown scheme": "foo://bar", "in-memory sqlite": "sqlite://", "sqlite no path": "sqlite:///",
    "sqlite two slashes": "sqlite://host/m.db", "http no host": "http://",
    "https no host": "https:///x", "postgres no host": "postgresql:///db",
    "mlflow-artifacts": "mlflow-artifacts://host/x", "runs:/": "runs:/abc/model",
}


def invalid_values(d: Domain) -> dict[str, object]:
    """Named values outside ``d``: the catalogue every key is tried with."""
    out: dict[str, object] = {}
    if not d.null:
        out["null"] = None
    if d.kind in ("int", "float"):
        out.update({"negative": -1, "NaN": math.nan, "inf": math.inf, "-inf": -math.inf,
                    "huge float": 1e30, "huge int": 10**12, "string": "abc", "list": [1, 2],
                    "bool": True, "empty": "", "dict": {"a": 1}})
        if d.choices:
            out["not a choice"] = max(d.choices) + 1
            out["zero"] = 0
        else:
            if d.low > 0 or d.low_open:
                out["zero"] = 0
            out["below low"] = d.low if d.low_open else (
                d.low - 1 if d.kind == "int" else d.low - 0.5)
            out["above high"] = d.high if d.high_open else (
                d.high + 1 if d.kind == "int" else d.high * 2)
        if d.kind == "int":
            out["fraction"] = example(d) + 0.5
        if d.odd:
            out["even"] = example(d) + 1
    elif d.kind == "bool":
        out.update({"string": "maybe", "yes": "yes", "int 2": 2, "int 0": 0, "float": 1.5,
                    "empty": "", "list": [True]})
    elif d.kind == "switch":  # true, false or a word such as auto
        out.update({"string": "maybe", "yes": "yes", "case": "AUTO", "int 2": 2, "int 0": 0,
                    "float": 1.5, "empty": "", "list": [True], "dict": {"a": 1}})
    elif d.kind == "str":
        out.update({"empty": "", "blank": "  ", "list": ["a"], "dict": {"a": 1}})
        if d.choices:
            out.update({"not a choice": "nosuch", "number": 123, "case": d.choices[0].upper()})
        if d.pattern:
            out.update({"not a device": "nosuch", "bad index": "cuda:x", "tpu": "tpu",
                        "number": 3})
        if d.schemes == DOMAINS["tracking.uri"].schemes:
            out.update(URIS_REFUSED)
        elif d.schemes:
            out.update({"not a URL": "not a url", "plain path": "optuna.db",
                        "file URI": "file:///tmp/optuna.db", "redis": "redis://host",
                        "in-memory sqlite": "sqlite://", "http": "http://host:5000"})
    elif d.kind == "list":
        n = d.length or 1
        fill = [example(d.item)] * (n - 1)
        out.update({"scalar": example(d.item), "empty string": "", "nested list": [fill or [1]]})
        if d.length:
            out["too short"] = fill
            out["too long"] = [example(d.item)] * (n + 1)
        for label, v in invalid_values(d.item).items():
            out[f"item {label}"] = [v, *fill]
    return out


def typed(v) -> str:
    """``v`` as one types it in an override."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return "nan" if math.isnan(v) else "inf" if v == math.inf else "-inf" \
            if v == -math.inf else repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(v, dict):
        return "{" + ",".join(f"{k}:{typed(x)}" for k, x in v.items()) + "}"
    return "[" + ",".join(typed(x) for x in v) + "]"


# ----------------------------------------------------------------------------- the checker

def option_files(group: str) -> list[Path]:
    return sorted((CONF / group).glob("*.yaml"))


def base_for(key: str) -> tuple[str, ...]:
    """Group choices that give ``key``: the first option of a class-valued group that has it."""
    group, _, leaf = key.partition(".")
    if group not in TARGETS:
        return ()
    for path in option_files(group):
        if leaf in (yaml.safe_load(path.read_text()) or {}):
            return (f"{group}={path.stem}",)
    raise AssertionError(f"no conf/{group}/*.yaml has {leaf}")


@cache
def composed(base: tuple[str, ...]):
    return compose(list(base))


def refusal(key: str, value) -> str | None:
    """What ``validate`` says to ``key=value`` (None: nothing), without composing anew:
    Hydra's override parser and merge on the composed base, as Hydra's compose applies a
    ``key=value`` override after the defaults; then the checks."""
    base = base_for(key)
    override = f"{key}={typed(value)}"
    try:
        check_typed([override])
        cfg = copy.deepcopy(composed(base))
        o = PARSER.parse_override(override)
        try:
            OmegaConf.update(cfg, o.key_or_group, o.value(), merge=True)
        except OmegaConfBaseException as e:  # Hydra wraps it so: validate() explains it
            error = ConfigCompositionException(f"Error merging override {override}")
            error.__cause__ = e
            return _explain(error, override, list(base))
        check(cfg)
    except UserError as e:
        return str(e)
    return None


CASES = {key: invalid_values(d) for key, d in DOMAINS.items()}
N_CASES = sum(map(len, CASES.values()))  # 79 keys, 924 values at the time of writing


def assert_refused(key: str, value, message: str | None) -> None:
    assert message is not None, f"{key}={typed(value)} was accepted"
    assert "\n" not in message and key in message, message


@pytest.mark.parametrize("key", list(CASES))
def test_every_invalid_value_of_every_key_is_one_line(key):
    assert len(CASES[key]) >= 4
    for value in CASES[key].values():
        assert_refused(key, value, refusal(key, value))


def test_the_catalogue_is_large():
    assert len(CASES) == len(DOMAINS) >= 79 and N_CASES >= 900


# ----------------------------------------------------------------------------- Hypothesis

SAFE_TEXT = st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="'\"\\${}")


def bad(d: Domain) -> st.SearchStrategy:
    """Values outside ``d``: its catalogue, and random ones past its bounds / not its choices."""
    catalogue = st.sampled_from(list(invalid_values(d).values()))
    more: list[st.SearchStrategy] = []
    if d.kind == "int" and not d.choices:
        more += [st.integers(max_value=d.low if d.low_open else d.low - 1),
                 st.integers(min_value=d.high if d.high_open else d.high + 1),
                 st.floats(allow_nan=True).filter(lambda v: v != int(v) if math.isfinite(v)
                                                  else True)]
    elif d.kind == "float":
        more += [st.floats(max_value=d.low, exclude_max=not d.low_open),
                 st.floats(min_value=d.high, exclude_min=not d.high_open),
                 st.text(SAFE_TEXT, min_size=1).filter(_not_number)]
    elif d.kind == "str" and (d.choices or d.pattern):
        more.append(st.text(SAFE_TEXT, min_size=1).filter(
            lambda s: s not in d.choices and not (d.pattern and _matches(d.pattern, s))))
    elif d.kind == "str" and d.schemes:
        more += [st.from_regex(r"(\./|/|~/)?[a-z0-9_]{1,8}(/[a-z0-9_.]{1,8}){0,3}", fullmatch=True),
                 st.builds("{}://{}".format,
                           st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True).filter(
                               lambda s: s.split("+")[0] not in d.schemes and s != "file"),
                           st.from_regex(r"[a-z0-9_]{1,8}(/[a-z0-9_.]{1,8}){0,2}", fullmatch=True)),
                 st.from_regex(r"file:(//)?/?[a-z0-9_/]{0,12}", fullmatch=True)]
    elif d.kind == "str":
        more.append(st.text(" \t", min_size=1))
    elif d.kind == "switch":
        more.append(st.text(SAFE_TEXT, min_size=1).filter(lambda s: s not in d.choices))
    elif d.kind == "list":
        n = d.length or 1
        more.append(st.builds(lambda v: [v] + [example(d.item)] * (n - 1), bad(d.item)))
    return st.one_of(catalogue, *more)


def _not_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return True
    return False


def _matches(pattern: str, s: str) -> bool:
    import re
    return re.fullmatch(pattern, s) is not None


KEY_VALUE = st.sampled_from(sorted(DOMAINS)).flatmap(
    lambda k: st.tuples(st.just(k), bad(DOMAINS[k])))


@settings(max_examples=400, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(KEY_VALUE)
def test_random_out_of_domain_values_are_one_line(key_value):
    key, value = key_value
    assert_refused(key, value, refusal(key, value))


@settings(max_examples=24, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(KEY_VALUE)
def test_validate_refuses_them_through_hydra_compose(key_value):
    key, value = key_value
    with pytest.raises(UserError) as e:
        validate([*base_for(key), f"{key}={typed(value)}"])
    assert "\n" not in str(e.value) and key in str(e.value), str(e.value)


@pytest.mark.parametrize("argv, expected", [
    (["model.blocks=1000000000000"], "model.blocks=1000000000000 must be at most 1024"),
    (["model.blocks=1024", "model.channels=1024"], "parameters, more than the 1,000,000,000"),
    (["trainer.steps=nan"], "trainer.steps=nan: "),
    (["optim.betas=[0.9,1.0]"], "optim.betas=[0.9, 1.0] holds 1.0, which must be below 1"),
    (["tracking.uri=./mlruns"], "tracking.uri='./mlruns' is not a tracking URI"),
    (["tracking.uri=file:///tmp/mlruns"], "is a file store"),
    (["tracking.uri=sqlite://"], "is an in-memory database"),
    (["degradation.quantize=2"], "degradation.quantize=2 has the wrong type; use true or false"),
    (["-m", "trainer.batch_size=2,1000000000000"], "trainer.batch_size=1000000000000 must be at"),
    (["model.scale=3"], "model.scale=3 but scale=2"),
    (["loss=l2_vgg54", "loss.l2=0", "loss.vgg54=0"], "all 0, which leaves no loss"),
    (["optim=sgd", "+optim.nesterov=true", "optim.momentum=0"], "the optim settings cannot"),
    (["trainer.device=cuda:99"], "trainer.device=cuda:99, but this machine has"),
    (["optim.betas=[0,0.999]"], "betas must be either both floats or both Tensors"),
    (["sched=cosine", "sched.eta_min=1.5"], "sched.eta_min=1.5 is above optim.lr=0.0001"),
])
def test_named_refusals(argv, expected):
    with pytest.raises(UserError) as e:
        validate(argv)
    assert expected in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_valid_edges_pass():
    validate(["scale=8", "model=vdsr", "optim.lr=1e6", "optim.betas=[0.0,0.999]",
              "trainer.eval_every=0", "trainer.grad_clip=null", "tracking.uri=databricks",
              "eval.tile=0", "seed=4294967295", "model.blocks=1024", "model.channels=64"])
    for uri in ("sqlite:///mlflow.db", "sqlite:////tmp/m.db", "http://127.0.0.1:5000",
                "https://mlflow.example.org/", "postgresql+psycopg2://u:p@db:5432/mlflow",
                "postgresql://u@db/mlflow", "databricks://profile"):
        assert DOMAINS["tracking.uri"].problem(uri) is None, uri
    for uri in ("mysql://u@db/mlflow", "mssql+pyodbc://u:p@db/mlflow"):  # untested: refused
        assert "not a tracking URI scheme" in DOMAINS["tracking.uri"].problem(uri), uri


def test_cluster_jobs_are_not_checked_against_this_machines_devices():
    with pytest.raises(UserError):
        validate(["trainer.device=cuda:99"])
    assert validate(["trainer.device=cuda:99", "hydra/launcher=slurm"]) is not None


def test_mlflow_tracking_uri_from_the_environment_is_checked(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "./mlruns")
    with pytest.raises(UserError, match=r"MLFLOW_TRACKING_URI='./mlruns' \(tracking.uri is "
                                        r"null\) is not a tracking URI"):
        validate([])
    assert validate(["tracking.uri=sqlite:///m.db"]) is not None  # tracking.uri wins


# ----------------------------------------------------------------------------- coverage

def config_keys() -> set[str]:
    """Every key of the composed default config and of every shipped config file."""
    keys = set(flatten(composed(())))
    for group_dir in CONF.iterdir():
        if not group_dir.is_dir() or group_dir.name == "hydra":
            continue
        for path in option_files(group_dir.name):
            text = path.read_text()
            node = {k: v for k, v in (yaml.safe_load(text) or {}).items() if k != "defaults"}
            prefix = "" if "@package _global_" in text else f"{group_dir.name}."
            keys |= set(flatten(node, prefix))
    return keys


def test_every_key_has_a_domain():
    missing = sorted(config_keys() - set(DOMAINS))
    assert not missing, f"keys without a domain in sr_ablate/config/schema.py: {missing}"


def test_every_domain_is_a_key_of_some_config():
    stale = sorted(set(DOMAINS) - config_keys())
    assert not stale, f"domains of keys no config has: {stale}"


def test_shipped_configs_are_inside_their_domains():
    for group in TARGETS:
        for path in option_files(group):
            check(compose([f"{group}={path.stem}"]))


# ----------------------------------------------------------------------------- the command

E2E = {
    "block count that would fill the memory": (["model.blocks=1000000000000"], {}),
    "file store as tracking.uri": (["tracking.uri=./mlruns"], {}),
    "file store in MLFLOW_TRACKING_URI": ([], {"MLFLOW_TRACKING_URI": "file:./mlruns"}),
    "bool that would run as true": (["degradation.quantize=2"], {}),
    "one bad value of a sweep": (["-m", "trainer.batch_size=2,1000000000000"], {}),
}


@pytest.mark.parametrize("case", list(E2E))
def test_the_command_says_one_line_and_starts_nothing(tmp_path, case):
    argv, env = E2E[case]
    tracking = [] if env else [f"tracking.uri=sqlite:///{tmp_path / 'm.db'}"]
    out = cli(["trainer=smoke", *tracking, *argv], tmp_path, timeout=120, env=env)
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert out.returncode == 2, out.stderr[-2000:]
    assert len(errors) == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    db = tmp_path / "m.db"
    if db.exists():
        with sqlite3.connect(db) as c:
            assert c.execute("select count(*) from runs").fetchone()[0] == 0
    left = {p.name for p in tmp_path.iterdir()} - {"m.db"}
    assert not left, left  # no mlruns/, mlflow.db, outputs/, multirun/ or .sr_ablate/
