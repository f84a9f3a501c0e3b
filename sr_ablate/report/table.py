"""The result table: MLflow runs -> one row per variant, with the statistics of each row.

Runs differing only in ``seed`` are repeats of one variant and pooled (mean, 95% CI over
seeds); a configuration run again with ``sweep.force=true`` replaces its earlier run; each
variant is compared with the baseline over the evaluation images (``sr_ablate.stats``).
Column names are the MLflow names (``model.blocks``, ``val/psnr``), which are also the
override keys.
"""
from __future__ import annotations

import math

import pandas as pd
import yaml

from sr_ablate.config.hashing import NOT_FACTORS, REPEATS
from sr_ablate.report.compare import COLUMNS, compare, family, per_seed
from sr_ablate.report.stats import mean_ci

COST = ["train/loss", "model/params", "model/gflops", "model/ms_per_frame",
        "model/s_per_30_frames", "wall_s"]
SET_METRICS = ("psnr", "ssim", "bicubic_psnr", "bicubic_ssim")
WITH_CI = ("psnr", "ssim")
ALPHA = 0.05


def _number(value):
    """'12' -> 12, '1e-4' -> 0.0001, 'true' -> 'true': params come back from MLflow as strings."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        return value
    return int(f) if f.is_integer() and "." not in str(value) and "e" not in str(value) else f


def same(a, b) -> bool:
    """Whether two values of a param are the same value: MLflow's string, a sweep's typed
    value or a YAML value (``'1e3'`` and ``'1000.0'``, ``'false'`` and ``False``, ``'[9,5,5]'``
    and ``[9, 5, 5]``). A missing value (None, NaN) is never the same as any."""
    def value(v):
        if isinstance(v, str):
            v = _number(v)
        if isinstance(v, str):
            try:
                v = yaml.safe_load(v)
            except yaml.YAMLError:
                pass
        return v
    if a is None or b is None or (isinstance(a, float) and math.isnan(a)) or (
            isinstance(b, float) and math.isnan(b)):
        return False
    va, vb = value(a), value(b)
    return va == vb or str(va) == str(vb)


def factors(runs: pd.DataFrame, swept=()) -> list[str]:
    """Swept parameters: params whose value differs between runs, and the keys ``swept``
    (those a sweep asked to vary: columns even when one value finished); keys the runs'
    command lines overrode come first, in the order typed."""
    meta = {"run_id", "status", "experiment", "start_time", "end_time"}
    varying = [c for c in runs.columns
               if c not in meta and "/" not in c and not c.startswith("tag:")
               and c not in NOT_FACTORS and c not in REPEATS
               and (runs[c].astype(str).nunique(dropna=False) > 1
                    or (c in swept and runs[c].notna().any()))]
    typed: list[str] = []
    for text in runs.get("tag:overrides", pd.Series(dtype=str)).fillna(""):
        for item in text.split():
            key = item.split("=", 1)[0].lstrip("+~")
            if key in varying and key not in typed:
                typed.append(key)
    return typed + [c for c in varying if c not in typed]


def eval_sets(runs: pd.DataFrame) -> list[str]:
    """Evaluation set prefixes (``val``, ``Set5``, ``val_x3``...) the runs logged, ``val`` first."""
    return sorted({c.split("/")[0] for c in runs.columns
                   if "/" in c and c.split("/", 1)[1] in SET_METRICS},
                  key=lambda n: (n != "val", n)) or ["val"]


def _sort(table: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    if keys:
        table = table.sort_values(keys, key=lambda s: s.map(lambda v: (isinstance(v, str), v)))
    return table.reset_index(drop=True)


def latest_per_config(runs: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """The FINISHED runs, only the newest per configuration and seed (config hash): a
    configuration run again with ``sweep.force=true`` replaces its earlier run instead of
    counting as another repeat. Returns (runs kept, number of older runs left out)."""
    done = runs[runs["status"] == "FINISHED"]
    col = "tag:sr_ablate.config_hash"
    if col not in done or done.empty:
        return done, 0
    newest = done.sort_values("start_time").groupby(
        done[col].fillna(done["run_id"]), sort=False).tail(1)
    return done.loc[done.index.isin(newest.index)], len(done) - len(newest)


def families(runs: pd.DataFrame) -> list[pd.DataFrame]:
    """Runs split by model family (the model's class, tag ``model.class``, else the ``model``
    option; compared in lower case: srresnet, vdsr...): families that no single sweep
    compared never share a table. A sweep that ran several families (``-m
    model=srcnn,vdsr``) keeps them together. Largest group first."""
    if runs.empty:
        return []
    nothing = pd.Series(index=runs.index, dtype=object)
    fam = runs.get("tag:model.class", nothing).fillna(runs.get("model", nothing))
    fam = fam.fillna("?").astype(str).str.lower()
    parent = {f: f for f in fam.unique()}

    def root(f):
        while parent[f] != f:
            f = parent[f]
        return f
    for ids in runs.groupby(runs.get("tag:sr_ablate.sweep_id", pd.Series(
            index=runs.index, dtype=str)).fillna(runs["run_id"])).groups.values():
        names = fam.loc[ids].unique()
        for other in names[1:]:
            parent[root(other)] = root(names[0])
    groups = [runs[fam.map(root) == r] for r in dict.fromkeys(fam.map(root))]
    return sorted(groups, key=lambda g: -len(g))


def results_table(runs: pd.DataFrame, baseline: dict | None = None,
                  per_image: dict[str, pd.DataFrame] | None = None,
                  rises: dict[str, float] | None = None, effect: float | None = None,
                  swept=()) -> pd.DataFrame:
    """One row per variant of the FINISHED runs: ``run_id`` (short ids), the factors, ``n``,
    ``seed`` (the pooled seeds), per set ``<set>/psnr`` (mean over seeds), ``<set>/psnr_ci``
    (95% half width over seeds), the same for SSIM, bicubic means, ``<set>/dpsnr_bicubic``;
    ``val_rise`` (dB the mean validation curve gained at its last evaluation, from
    ``rises[run_id]``). With a ``baseline`` ({factor: value}) also, per set, the comparison
    with the baseline from ``per_image[run_id]`` (``compare.Comparison``, columns
    ``compare.COLUMNS``: Δ ``<set>/dpsnr_baseline``, its shift and interval over images
    ``dpsnr_shift``/``dpsnr_lo``/``dpsnr_hi``, the interval over runs ``runs_lo``/``runs_hi``,
    ``p_images``, ``p_runs``, the claim's ``p_baseline``, seed spreads and image counts),
    ``<set>/p_holm`` (Holm over every variant x set of the table), ``<set>/p_reachable`` and
    ``<set>/seeds_needed`` (``effect``: the dB it is for, default the observed Δ); then the
    cost columns. ``swept``: keys that are factors (columns) even when they do not vary
    here, e.g. the swept key of a sweep of which one variant finished."""
    done = runs[runs["status"] == "FINISHED"].dropna(axis=1, how="all")
    keys, sets = factors(done, swept), eval_sets(done)
    groups = list(done.groupby(keys, sort=False, dropna=False)) if keys else [((), done)]
    rows, members = [], []
    for key, g in groups:
        row = {"run_id": " ".join(g["run_id"].str[:8]), **dict(zip(keys, map(_number, key))),
               "n": len(g), "seed": ",".join(sorted(g.get("seed", pd.Series(["0"])).astype(str),
                                                    key=_number))}
        for s in sets:
            for m in SET_METRICS:
                col = f"{s}/{m}"
                values = g[col] if col in g else pd.Series(dtype=float)
                if m in WITH_CI:
                    row[col], row[f"{col}_ci"] = mean_ci(values)
                else:
                    row[col] = values.mean()
            row[f"{s}/dpsnr_bicubic"] = row[f"{s}/psnr"] - row[f"{s}/bicubic_psnr"]
        row["val_rise"] = pd.Series([(rises or {}).get(r, math.nan) for r in g["run_id"]],
                                    dtype=float).mean()
        g_wall = (g["end_time"] - g["start_time"]) / 1000 if "end_time" in g else None
        for c in COST:
            row[c] = g_wall.mean() if c == "wall_s" and g_wall is not None else (
                g[c].mean() if c in g else math.nan)
        rows.append(row)
        members.append(g)
    table = pd.DataFrame(rows)
    base = _find(table, baseline) if baseline else None
    if base is not None:
        # added at once: one column at a time leaves pandas a fragmented frame
        table = pd.concat([table, pd.DataFrame(
            _compare_all(table, members, base, sets, per_image, effect), index=table.index)],
            axis=1)
    table["baseline"] = [i == base for i in range(len(table))]
    return _sort(table, keys)


def _compare_all(table: pd.DataFrame, members: list[pd.DataFrame], base: int, sets: list[str],
                 per_image: dict | None, effect: float | None) -> dict[str, list]:
    """The comparison columns (``compare.COLUMNS``) of every variant x set with the
    baseline (row ``base``), {column: a value per row}: one family, as ``compare.family``
    judges it."""
    where, found = [], []
    for s in sets:
        b_runs = members[base]
        b = per_seed(b_runs, per_image, s)
        for i in range(len(table)):
            if i != base:
                a = per_seed(members[i], per_image, s)
                where.append((i, s))
                found.append(compare(a, b, len(members[i]) - len(a), len(b_runs) - len(b)))
    cols = {f"{s}/{c}": [math.nan] * len(table) for s in sets for c in COLUMNS}
    for s in sets:
        cols[f"{s}/dpsnr_baseline"][base] = 0.0
    for (i, s), values in zip(where, family(found, ALPHA, effect)):
        for c, v in values.items():
            cols[f"{s}/{c}"][i] = v
    return cols


def _find(table: pd.DataFrame, baseline: dict) -> int | None:
    """Row index of the baseline variant: every {key: value} of ``baseline`` matches."""
    for i, row in table.iterrows():
        if all(k in table.columns and same(row[k], v) for k, v in baseline.items()):
            return i
    return None


