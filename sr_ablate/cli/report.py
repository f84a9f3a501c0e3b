"""``sr-ablate report [experiment | sweep id ...]`` (``make report``): result tables from
the runs in MLflow.

Writes ``reports/<name>/``: ``results.{md,csv,tex}``, a self-contained ``index.html`` and the
plots, one table per evaluation protocol and model family, with the verdict of every
comparison with the baseline (see docs/protocol.md#statistics).

``--register NAME --metric set5/psnr``: the finished run of the experiment or sweep that is
best by that metric becomes a new version of the registered model NAME, with the alias
``best`` (``sr-ablate upscale model=models:/NAME@best``); the version is tagged with the
metric that chose it and its value.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import pandas as pd

from sr_ablate import UserError, tracking
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
    ap.add_argument("--register", metavar="NAME", default=None, help="register the best run's "
                    "MLflow Model as NAME, alias @best (needs --metric)")
    ap.add_argument("--metric", default=None, help="what --register chooses by, e.g. "
                    "set5/psnr (highest wins; lowest for --lowest)")
    ap.add_argument("--lowest", action="store_true", help="--metric: lower is better "
                    "(a loss, ms per frame)")
    args = ap.parse_args(argv)
    if args.register and (not args.metric or len(args.names) > 1):
        print("error: --register needs --metric <key> (e.g. set5/psnr) and at most one "
              "experiment or sweep id", file=sys.stderr)
        return 2
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
    if args.register:
        try:
            print(_register(uri, select(runs, names[0], parents), names[0], args))
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    return 0


def _register(uri: str, runs: pd.DataFrame, name: str, args) -> str:
    """Register the best finished run of ``runs`` by ``args.metric``; the line saying so."""
    metric = args.metric
    done = runs[runs["status"] == "FINISHED"]
    if metric not in done or done[metric].isna().all():
        keys = sorted(c for c in done.columns if "/" in c and not c.startswith("tag:"))
        raise UserError(f"no finished run of {name} has the metric {metric!r}; choose one of "
                        f"{', '.join(k for k in keys if k.endswith(('psnr', 'ssim')))}")
    scored = done.dropna(subset=[metric])
    best = scored.loc[scored[metric].idxmin() if args.lowest else scored[metric].idxmax()]
    version = tracking.register(uri, best["run_id"], args.register, metric, best[metric])
    line = (f"registered run {best['run_id']} as models:/{args.register}/{version} "
            f"(@{tracking.ALIAS}): {'lowest' if args.lowest else 'highest'} {metric} = "
            f"{best[metric]:.4f} of {len(scored)} finished runs of {name}")
    bicubic = best.get(metric.replace("/psnr", "/bicubic_psnr")) if metric.endswith(
        "/psnr") else None
    if bicubic is not None and pd.notna(bicubic) and best[metric] < bicubic:
        # the best of the runs is not a good model: say so where it is chosen
        line += (f"; it is below bicubic ({bicubic:.4f}): undertrained, read the report's "
                 "verdicts before using it")
    return line


def _parse_baseline(text: str | None) -> dict | None:
    if not text:
        return None
    if "=" not in text:
        return {"variant": text}
    return dict(item.split("=", 1) for item in text.split(","))


if __name__ == "__main__":
    sys.exit(main())
