"""What the sweeps behind a report asked for, read from their definitions (the parent run's
tag ``sr_ablate.sweep``: a sweep file as written, or ``{command, baseline}`` for a plain
``-m`` command line) and their parent runs (failed jobs, reused runs).

- ``expected_variants``: every variant a sweep asked for, as {key: value}: a sweep file's
  named variants or grid points, or the combinations of a ``-m`` command line's swept values;
- ``choose_baseline``: the baseline and the rule that chose it. A sweep file's ``baseline``
  is taken as named. A sweep that names none (a plain ``-m`` sweep, a grid file without
  ``baseline``) is compared with a variant it asked for: per swept key, its default value
  when the sweep swept it, else the first value swept;
- ``failures_of`` and ``why_missing``: the error of a variant with no finished run.
"""
from __future__ import annotations

import itertools
import json
import shlex
from collections.abc import Callable

import pandas as pd
import yaml

from sr_ablate.config.hashing import NOT_FACTORS, REPEATS
from sr_ablate.report.table import same

REUSED = "tag:sr_ablate.reused_run_ids"
ADDED = "# added by sr_ablate"  # grid.definition's mark on a default baseline it recorded
_GENERATED = {"study", "tracking.experiment", "study_variant", "seed", "variant",
              "hydra.searchpath"}


def parse(text: str):
    """A sweep definition parsed, None when it is not YAML (the report then ignores it)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return None


def key_of(token: str) -> str:
    return str(token).split("=", 1)[0].lstrip("+~")


def swept_values(command: str) -> dict[str, list[str]]:
    """{key: the values swept, as Hydra writes them into each job's overrides} of a ``-m``
    command line (``model.blocks=8,12``, ``optim.lr=range(...)``); seeds (repeats), keys the
    report ignores and Hydra's own flags left out. Tokens Hydra cannot parse are skipped."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser, out = OverridesParser.create(), {}
    for token in str(command).split():
        if token.startswith("-") or key_of(token).startswith(("hydra.", "hydra/")):
            continue
        try:
            (o,) = parser.parse_overrides([token])
        except HydraException:
            continue
        key = o.key_or_group
        if o.is_sweep_override() and key not in (*REPEATS, *NOT_FACTORS, "study_variant"):
            out[key] = list(o.sweep_string_iterator())
    return out


def _grid(spec: dict) -> dict[str, list]:
    """{key: values} a definition sweeps: a sweep file's grid, or a command line's."""
    if isinstance(spec.get("grid"), dict):
        return {k: list(v) if isinstance(v, list) else [v]
                for k, v in spec["grid"].items() if k not in REPEATS}
    if spec.get("command"):
        return swept_values(spec["command"])
    return {}


def expected_variants(definitions: list[str]) -> list[dict]:
    """The variants the sweeps asked for: ``{variant: name}`` per named variant of a sweep
    file, else one ``{key: value}`` per combination of its grid, or of a ``-m`` command
    line's swept values (seeds left out: they are repeats)."""
    out = []
    for spec in map(parse, definitions):
        if not isinstance(spec, dict):
            continue
        if isinstance(spec.get("variants"), dict):
            out += [{"variant": v} for v in spec["variants"]]
        else:
            grid = _grid(spec)
            out += [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]
    return [dict(t) for t in dict.fromkeys(tuple((k, str(v)) for k, v in e.items())
                                            for e in out)]


def choose_baseline(definitions: list[str]) -> tuple[dict | None, str]:
    """(the baseline, the rule that chose it, as a phrase) of the first definition that
    gives one: a sweep file's named ``baseline``; else, for a sweep that names none, per
    swept key the default value (recorded by ``grid.definition``) when the sweep swept it,
    else the first value swept. (None, "") when no definition gives one."""
    for text, spec in zip(definitions, map(parse, definitions)):
        if not isinstance(spec, dict):
            continue
        b = spec.get("baseline")
        named = b is not None and (spec.get("variants") or ADDED not in str(text))
        if spec.get("command") is None and named:
            return ({"variant": b} if isinstance(b, str) else b), "named by the sweep file"
        grid = _grid(spec)
        if not grid:
            continue
        default = b if isinstance(b, dict) else {}
        base, rules = {}, []
        for key, values in grid.items():
            hit = next((v for v in values if key in default and same(v, default[key])), None)
            if hit is not None:
                base[key] = hit
                rules.append(f"the default of {key}, one of the values swept")
            else:
                base[key] = values[0]
                rules.append(f"the first value swept of {key}; " + (
                    f"its default, {default[key]}, was not swept"
                    if default.get(key) is not None else "it has no default"))
        return base, "; ".join(rules)
    return None, ""


def baseline_of(runs, definitions: list[str]) -> dict | None:
    """The baseline a sweep definition records (``baseline: <variant>`` or {key: value}),
    as written, whether or not the sweep swept it (``choose_baseline`` chooses the one a
    report compares with)."""
    for spec in map(parse, definitions):
        b = spec.get("baseline") if isinstance(spec, dict) else None
        if isinstance(b, str):
            return {"variant": b}
        if isinstance(b, dict):
            return b
    return None


def matching(runs: pd.DataFrame, expected: dict) -> pd.DataFrame:
    """The runs of ``runs`` that have every {param: value} of ``expected`` (values compared
    as numbers, lists or booleans where they are: ``1e3`` is ``1000.0``)."""
    if runs.empty or any(k not in runs for k in expected):
        return runs.iloc[0:0]
    ok = pd.Series(True, index=runs.index)
    for k, v in expected.items():
        ok &= runs[k].map(lambda x, v=v: same(x, v))
    return runs[ok]


def label(expected: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in expected.items())


def why_missing(runs: pd.DataFrame, expected: dict, failures: list) -> str:
    """Why a variant has no finished run: the error its sweep recorded for the job
    (``failures``: [job overrides, message]), else its newest unfinished run's status."""
    for job, message in failures:
        given = {key_of(t): t.split("=", 1)[1] for t in str(job).split() if "=" in t}
        if all(same(given.get(k), v) or (k == "variant" and given.get("study_variant") == v)
               for k, v in expected.items()):
            return f"failed: {message}"
    mine = matching(runs[runs["status"] != "FINISHED"], expected)
    if mine.empty:
        return "no run recorded: the job failed before training (see the sweep's output)"
    r = mine.sort_values("start_time").iloc[-1]
    err = r.get("tag:sr_ablate.error")
    return f"{r['status']}" + (f": {err}" if isinstance(err, str) else "")


def select(runs: pd.DataFrame, name: str, parents: pd.DataFrame | None = None) -> pd.DataFrame:
    """Runs of experiment ``name``, or of the sweep whose id (or parent run id) is ``name``:
    its own runs and the FINISHED runs it reused (listed on its parent run, ``parents``)."""
    sub = runs[runs["experiment"] == name]
    if sub.empty:
        for col in ("tag:sr_ablate.sweep_id", "tag:mlflow.parentRunId"):
            if col in runs.columns:
                sub = runs[runs[col] == name]
                if not sub.empty:
                    break
        reused = set()
        if parents is not None and not parents.empty and REUSED in parents:
            mine = parents[(parents["run_id"] == name) | (parents.get(
                "tag:sr_ablate.sweep_id", pd.Series(index=parents.index, dtype=str)) == name)]
            for text in mine[REUSED].dropna():
                reused |= set(text.split())
        if reused:
            sub = pd.concat([sub, runs[runs["run_id"].isin(reused - set(sub["run_id"]))]])
    return sub


def folder_name(runs: pd.DataFrame, name: str) -> str:
    """The folder of the report of ``name``: the experiment's name, or for a sweep (by its
    id or its parent run's id) ``<experiment>-sweep-<sweep id>``; the experiment of a study
    file's sweep is the study's name."""
    if (runs["experiment"] == name).any() or runs.empty:
        return name
    ids = runs.get("tag:sr_ablate.sweep_id", pd.Series(dtype=str))
    own = runs[(ids == name) | (runs.get("tag:mlflow.parentRunId",
                                         pd.Series(index=runs.index, dtype=str)) == name)]
    own = own if not own.empty else runs
    sweep = own.get("tag:sr_ablate.sweep_id", pd.Series(dtype=str)).dropna()
    return f"{own['experiment'].mode().iloc[0]}-sweep-{sweep.iloc[0] if len(sweep) else name}"


def failures_of(parents: pd.DataFrame, runs: pd.DataFrame, name: str) -> list:
    """[job overrides, error] of the failed jobs recorded on the parent runs of the sweeps of
    ``runs``, of experiment ``name`` or of sweep ``name`` (a relaunch that only reused runs
    and failed again has no runs of its own), oldest sweep first."""
    ids = set(runs.get("tag:sr_ablate.sweep_id", pd.Series(dtype=str)).dropna())
    col = "tag:sr_ablate.failed_jobs"
    if parents.empty or col not in parents:
        return []
    sweep = parents["tag:sr_ablate.sweep_id"]
    mine = parents[sweep.isin(ids) | (sweep == name) | (parents["run_id"] == name)
                   | (parents["experiment"] == name)].sort_values("start_time")
    return [f for text in mine[col].dropna() for f in json.loads(text)]


def seeds_command(group: pd.DataFrame, definitions: list[str]) -> Callable[[int], str] | None:
    """``add(n)``: the command that brings every variant of ``group`` to ``n`` seeds: a sweep
    file's ``sweep=<study>`` with the extra overrides all its runs were given, or the one
    command line of a ``-m`` sweep, with a seed list. None when no single study command
    made these runs (e.g. two command lines)."""
    specs = [spec for spec in map(parse, definitions) if isinstance(spec, dict)]
    files = {spec["study"]: spec for spec in specs if spec.get("study")}
    lines = {str(spec["command"]) for spec in specs if spec.get("command")}
    if "seed" not in group or len(files) + len(lines) != 1:
        return None
    if files:
        (study, spec), = files.items()
        skip = {key_of(t) for t in spec.get("overrides") or []} | set(spec.get("grid") or {})
        tokens = [set(str(t).split()) for t in group.get(
            "tag:overrides", pd.Series(dtype=str)).fillna("")]
        common = set.intersection(*tokens) if tokens else set()
        words = ["python", "-m", "sr_ablate", f"sweep={study}",
                 *sorted(t for t in common if key_of(t) not in skip | _GENERATED)]
    else:
        words = ["python", "-m", "sr_ablate",
                 *(t for t in next(iter(lines)).split() if key_of(t) != "seed")]
    done = sorted({int(v) for v in group["seed"].dropna() if str(v).lstrip("-").isdigit()})

    def add(n: int) -> str:
        # the first n seeds of those already run (then new ones): re-running the study skips
        # every run already FINISHED, so each variant runs only the seeds it lacks
        seeds, k = list(done), (done[-1] + 1 if done else 0)
        while len(seeds) < n:
            seeds.append(k)
            k += 1
        return " ".join([*words[:3], *map(shlex.quote, words[3:]),
                         f"seed={','.join(map(str, seeds[:n]))}"])
    return add
