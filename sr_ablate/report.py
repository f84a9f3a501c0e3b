"""Result tables from the runs in MLflow: ``python -m sr_ablate.report [experiment ...]``.

Writes ``reports/<experiment>/results.md`` and ``results.csv``: one row per finished run
(per design when seeds were swept: runs differing only in ``seed`` are pooled, ``n`` and means)
with the swept parameters and the SRResNet study's columns (parameters, GFLOPs, ms per frame,
final training loss, and per evaluation set PSNR, SSIM, bicubic PSNR, bicubic SSIM). Column
names are the MLflow names (``model.blocks``, ``val/psnr``), which are also the override keys.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

COST = ["model/params", "model/gflops", "model/ms_per_frame", "model/s_per_30_frames",
        "train/loss"]
SET_METRICS = ("psnr", "ssim", "bicubic_psnr", "bicubic_ssim")
# Params that differ between runs without being a design choice.
NOT_FACTORS = {"tracking.uri", "tracking.experiment", "trainer.progress", "trainer.device",
               "sweep.force", "sweep.trials", "sweep.storage", "sweep.workers"}
# Params swept to repeat a configuration, not to compare designs: their runs are pooled.
REPEATS = ("seed",)


def _number(value):
    """'12' -> 12, '1e-4' -> 0.0001, 'true' -> 'true': params come back from MLflow as strings."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        return value
    return int(f) if f.is_integer() and "." not in str(value) and "e" not in str(value) else f


def factors(runs: pd.DataFrame) -> list[str]:
    """Swept parameters: params whose value differs between runs; keys the runs' command
    lines overrode come first, in the order typed."""
    meta = {"run_id", "status", "experiment", "start_time"}
    varying = [c for c in runs.columns
               if c not in meta and "/" not in c and not c.startswith("tag:")
               and c not in NOT_FACTORS and c not in REPEATS
               and runs[c].astype(str).nunique(dropna=False) > 1]
    typed: list[str] = []
    for text in runs.get("tag:overrides", pd.Series(dtype=str)).fillna(""):
        for item in text.split():
            key = item.split("=", 1)[0].lstrip("+~")
            if key in varying and key not in typed:
                typed.append(key)
    return typed + [c for c in varying if c not in typed]


def metric_columns(runs: pd.DataFrame) -> list[str]:
    """The study's columns: cost, then per evaluation set (``val`` first) PSNR, SSIM, bicubic."""
    sets = sorted({c.split("/")[0] for c in runs.columns
                   if "/" in c and c.split("/", 1)[1] in SET_METRICS}, key=lambda n: (n != "val", n))
    cols = [c for c in COST if c in runs.columns] or ["model/params", "train/loss"]
    return cols + [f"{n}/{m}" for n in (sets or ["val"]) for m in SET_METRICS]


def results_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per FINISHED run: run id, swept params (typed), then the metric columns;
    sorted by params."""
    # columns of other experiments' runs (all empty here) are not this table's
    done = runs[runs["status"] == "FINISHED"].dropna(axis=1, how="all")
    keys = factors(done)
    table = pd.DataFrame({"run_id": done["run_id"].str[:8]})
    for k in keys:
        table[k] = done[k].map(_number)
    for m in metric_columns(done):
        table[m] = done[m] if m in done.columns else float("nan")
    repeats = [r for r in REPEATS if r in done.columns and done[r].nunique() > 1]
    if repeats:  # one row per design: n runs, repeats listed, metrics averaged
        table[repeats] = done[repeats].map(_number)
        table = pool(table, keys, repeats)
    if keys:
        table = table.sort_values(keys, key=lambda s: s.map(lambda v: (isinstance(v, str), v)))
    return table.reset_index(drop=True)


def pool(table: pd.DataFrame, keys: list[str], repeats: list[str]) -> pd.DataFrame:
    """Rows that differ only in ``repeats`` (seeds) become one: ``n``, the run ids and
    repeat values joined, every metric the mean over the runs."""
    metrics = [c for c in table.columns if c not in ("run_id", *keys, *repeats)]
    agg = {"run_id": " ".join, **{r: lambda v: ",".join(map(str, sorted(v))) for r in repeats},
           **{m: "mean" for m in metrics}}
    grouped = table.groupby(keys, dropna=False, sort=False) if keys else table.groupby(
        lambda _: 0)
    out = grouped.agg(agg).reset_index(drop=not keys)
    out.insert(len(keys) + 1, "n", grouped.size().to_numpy())
    return out[["run_id", *keys, "n", *repeats, *metrics]]


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table; PSNR to 2 decimals, SSIM and loss to 4."""
    def fmt(col, v):
        if pd.isna(v):
            return ""
        if isinstance(v, float):
            if col.endswith("psnr"):
                return f"{v:.2f}"
            if col == "model/params":
                return f"{int(v):,}"
            return f"{v:.4f}" if abs(v) >= 1e-3 else f"{v:.3g}"
        return str(v)
    cols = list(table.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, row in table.iterrows():
        lines.append("| " + " | ".join(fmt(c, row[c]) for c in cols) + " |")
    return "\n".join(lines) + "\n"


FP = "tag:eval.fingerprint"
PROTOCOL_TAGS = ("eval.protocol", "eval.color_space", "eval.crop", "eval.lr_source", "eval.ssim")


def by_fingerprint(runs: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """Runs split by evaluation-protocol fingerprint: runs scored differently never share a
    table. Largest group first."""
    fp = runs[FP].fillna("unknown") if FP in runs.columns else pd.Series("unknown", runs.index)
    groups = [(k, runs[fp == k]) for k in fp.unique()]
    return sorted(groups, key=lambda g: -len(g[1]))


def _protocol_line(runs: pd.DataFrame) -> str:
    first = runs.iloc[0]
    parts = [f"{t.split('.', 1)[1]}={first.get('tag:' + t)}" for t in PROTOCOL_TAGS
             if isinstance(first.get("tag:" + t), str)]
    return ", ".join(parts) or "not recorded"


def write(runs: pd.DataFrame, out_dir: Path, experiment: str) -> pd.DataFrame:
    """Write results.md and results.csv for one experiment's runs; returns the (first) table.

    Runs with different evaluation fingerprints go to separate tables (``results.csv`` for
    the largest group, ``results-<fingerprint>.csv`` for the others) and the Markdown says why.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    groups = by_fingerprint(runs[runs["status"] == "FINISHED"])
    md = [f"# {experiment}\n"]
    if len(groups) > 1:
        md.append(f"These runs were evaluated under {len(groups)} different protocols or "
                  "evaluation sets (fingerprints), so their numbers are not comparable: one "
                  "table per fingerprint.\n")
    first = None
    for i, (fp, group) in enumerate(groups):
        table = results_table(group)
        name = "results.csv" if i == 0 else f"results-{fp}.csv"
        table.to_csv(out_dir / name, index=False)
        md.append(f"## Fingerprint {fp} ({name})\n\n{len(table)} finished runs. "
                  f"Protocol: {_protocol_line(group)}; PSNR/SSIM are means over each set's "
                  f"images.\n\n{to_markdown(table)}")
        first = table if first is None else first
    if first is None:
        first = results_table(runs)
        first.to_csv(out_dir / "results.csv", index=False)
        md.append("No finished runs.\n")
    (out_dir / "results.md").write_text("\n".join(md))
    return first


def main(argv: list[str] | None = None) -> int:
    from sr_ablate import tracking

    ap = argparse.ArgumentParser(prog="python -m sr_ablate.report", description=__doc__)
    ap.add_argument("experiments", nargs="*", help="experiment names (default: all with runs)")
    ap.add_argument("--uri", default=None, help="tracking URI (default: $MLFLOW_TRACKING_URI "
                    "or sqlite:///<cwd>/mlflow.db)")
    ap.add_argument("--out", default="reports", help="output folder (default: reports)")
    args = ap.parse_args(argv)
    uri = tracking.store_uri(args.uri)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        print(f"error: no MLflow store at {uri}; run `python -m sr_ablate` first or pass --uri",
              file=sys.stderr)
        return 2
    runs = tracking.runs_frame(uri)
    if runs.empty:
        print(f"error: no runs in {uri}; run `python -m sr_ablate` first", file=sys.stderr)
        return 2
    names = args.experiments or sorted(runs["experiment"].unique())
    for name in names:
        sub = runs[runs["experiment"] == name]
        if sub.empty:
            print(f"error: experiment {name!r} has no runs; known: "
                  f"{', '.join(sorted(runs['experiment'].unique()))}", file=sys.stderr)
            return 2
        write(sub, Path(args.out) / name, name)
        path = Path(args.out) / name / "results.md"
        print(f"{path}\n{path.read_text()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
