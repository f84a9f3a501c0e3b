"""``sr-ablate report [experiment | sweep id ...]`` (``make report``): result tables from
the runs in MLflow.

Writes ``reports/<name>/``: ``results.{md,csv,tex}``, a self-contained ``index.html`` and the
plots, one table per evaluation protocol and model family, with the verdict of every
comparison with the baseline (see docs/protocol.md#statistics).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import pandas as pd

from sr_ablate import tracking
from sr_ablate.report import artifacts, html
from sr_ablate.report.build import (
    baseline_of,
    expected_variants,
    failures_of,
    rises_of,
    select,
    write,
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="sr-ablate report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help="experiment names or sweep ids (default: every "
                    "experiment with runs newer than its report)")
    ap.add_argument("--uri", default=None, help="tracking URI (default: $MLFLOW_TRACKING_URI "
                    "or sqlite:///<cwd>/mlflow.db)")
    ap.add_argument("--out", default="reports", help="output folder (default: reports)")
    ap.add_argument("--baseline", default=None, help="baseline variant: a variant name or "
                    "key=value[,key=value] (default: the sweep file's 'baseline')")
    args = ap.parse_args(argv)
    uri = tracking.store_uri(args.uri)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        print(f"error: no MLflow store at {uri}; run `python -m sr_ablate` first or pass --uri",
              file=sys.stderr)
        return 2
    runs = tracking.runs_frame(uri, parents=True)
    role = runs.get("tag:sr_ablate.role", pd.Series(index=runs.index, dtype=str))
    parents, runs = runs[role == "sweep"], runs[role != "sweep"]
    if runs.empty:
        print(f"error: no runs in {uri}; run `python -m sr_ablate` first", file=sys.stderr)
        return 2
    names = args.names or sorted(runs["experiment"].unique())
    for name in names:
        sub = select(runs, name, parents)
        if sub.empty:
            print(f"error: {name!r} is neither an experiment nor a sweep id; experiments: "
                  f"{', '.join(sorted(runs['experiment'].unique()))}", file=sys.stderr)
            return 2
        out = Path(args.out) / name
        stamp = str(sub["end_time"].max())
        if not args.names and (out / ".runs").is_file() and (out / ".runs").read_text() == stamp:
            print(f"{out}: up to date")
            continue
        definitions = [tracking.sweep_definition(uri, s) or "" for s in
                       sub.get("tag:sr_ablate.sweep_id", pd.Series(dtype=str)).dropna().unique()]
        baseline = _parse_baseline(args.baseline) or baseline_of(sub, definitions)
        with tempfile.TemporaryDirectory() as tmp:
            per_image = artifacts.fetch_per_image(uri, sub, Path(tmp))
            write(sub, out, name, baseline, per_image,
                  figures=lambda g, t, d, s: html.figures(uri, g, t, d, s),
                  rises=rises_of(uri, sub), expected=expected_variants(definitions),
                  failures=failures_of(parents, sub, name))
        (out / ".runs").write_text(stamp)
        print(f"{out / 'results.md'}\n{(out / 'results.md').read_text()}")
    return 0


def _parse_baseline(text: str | None) -> dict | None:
    if not text:
        return None
    if "=" not in text:
        return {"variant": text}
    return dict(item.split("=", 1) for item in text.split(","))


if __name__ == "__main__":
    sys.exit(main())
