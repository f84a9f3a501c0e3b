"""Result tables from the runs in MLflow: ``python -m sr_ablate.report [experiment ...]``.

Writes ``reports/<experiment>/results.md`` and ``results.csv``: one row per finished run with
the swept parameters and the SRResNet study's columns. Column names are the MLflow names
(``model.blocks``, ``val/psnr``), which are also the override keys.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

METRICS = ["model/params", "train/loss", "val/psnr", "val/ssim", "val/bicubic_psnr",
           "val/bicubic_ssim"]
# Params that differ between runs without being a design choice.
NOT_FACTORS = {"tracking.uri", "tracking.experiment", "trainer.progress", "trainer.device"}


def _number(value):
    """'12' -> 12, '1e-4' -> 0.0001, 'true' -> 'true': params come back from MLflow as strings."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        return value
    return int(f) if f.is_integer() and "." not in str(value) and "e" not in str(value) else f


def factors(runs: pd.DataFrame) -> list[str]:
    """Swept parameters: keys of the runs' command-line overrides, plus params that differ."""
    keys: list[str] = []
    for text in runs.get("tag:overrides", pd.Series(dtype=str)).fillna(""):
        for item in text.split():
            key = item.split("=", 1)[0].lstrip("+~")
            if key in runs.columns and key not in keys and not key.startswith("hydra"):
                keys.append(key)
    meta = {"run_id", "status", "experiment", "start_time"}
    for col in runs.columns:
        if col in meta or col in METRICS or "/" in col or col.startswith("tag:") or col in keys:
            continue
        if col not in NOT_FACTORS and runs[col].astype(str).nunique(dropna=False) > 1:
            keys.append(col)
    return keys


def results_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per FINISHED run: run id, swept params (typed), then METRICS; sorted by params."""
    done = runs[runs["status"] == "FINISHED"]
    keys = factors(done)
    table = pd.DataFrame({"run_id": done["run_id"].str[:8]})
    for k in keys:
        table[k] = done[k].map(_number)
    for m in METRICS:
        table[m] = done[m] if m in done.columns else float("nan")
    if keys:
        table = table.sort_values(keys, key=lambda s: s.map(lambda v: (isinstance(v, str), v)))
    return table.reset_index(drop=True)


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


def write(runs: pd.DataFrame, out_dir: Path, experiment: str) -> pd.DataFrame:
    """Write results.csv and results.md for one experiment's runs; returns the table."""
    table = results_table(runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(out_dir / "results.csv", index=False)
    (out_dir / "results.md").write_text(
        f"# {experiment}\n\n{len(table)} finished runs. PSNR/SSIM: Y channel (BT.601), "
        f"crop = scale, mean over validation images.\n\n{to_markdown(table)}")
    return table


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
        table = write(sub, Path(args.out) / name, name)
        print(f"{Path(args.out) / name / 'results.md'}: {len(table)} runs")
        print(to_markdown(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
