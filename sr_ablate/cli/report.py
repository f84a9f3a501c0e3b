"""``sr-ablate report [experiment | sweep id ...]`` (``make report``): result tables from
the runs in MLflow.

Writes ``reports/<experiment>/`` (for a sweep id: ``reports/<experiment>-sweep-<id>/``; a
study file's sweep runs in the experiment named after the study): ``results.{md,csv,tex}``,
a self-contained ``index.html`` and the plots; per evaluation protocol and model family a
table of the variants and one compact table per evaluation set, with the verdict of every
comparison with the baseline (see docs/protocol.md#statistics). The baseline: ``--baseline``,
else the sweep file's ``baseline``, else for a plain ``-m`` sweep per swept key its default
value when swept, else the first value swept.

``--export DIR``: also writes DIR, what the report is made from (the runs, their metric
histories, per-image results and comparison crops; never weights); ``--from DIR [--out OUT]``
rebuilds the report from such a folder with the current code, no MLflow store needed
(``report.source`` describes the folder).

``--register NAME --metric set5/psnr``: from the report's own selection (the newest finished
run per configuration and seed, one fingerprint), the variant with the best mean over seeds of
that metric; its best seed on validation becomes a new version of the registered model NAME,
with the alias ``best`` (``sr-ablate upscale model=models:/NAME@best``); the line says which
variant, its mean ± spread over seeds and its verdict against the baseline; the version is
tagged with the metric that chose it and its value.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from sr_ablate import UserError, tracking
from sr_ablate.cli.args import plain
from sr_ablate.report import artifacts, export, html
from sr_ablate.report.build import registration, rises_of, write
from sr_ablate.report.source import ExportSource, Source, StoreSource
from sr_ablate.report.study import (
    choose_baseline,
    expected_variants,
    failures_of,
    folder_name,
    select,
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="sr-ablate report", description=plain(__doc__),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help="experiment names or sweep ids (default: every "
                    "experiment with runs newer than its report)")
    ap.add_argument("--uri", default=None, help="tracking URI (default: $MLFLOW_TRACKING_URI "
                    "or sqlite:///<cwd>/mlflow.db)")
    ap.add_argument("--out", default="reports", help="output folder (default: reports)")
    ap.add_argument("--baseline", default=None, help="baseline variant: a variant name or "
                    "key=value[,key=value] (default: the sweep file's 'baseline')")
    ap.add_argument("--effect", type=float, default=None, metavar="DB", help="the difference "
                    "(dB) that the seeds-needed estimate of an undecided comparison is for "
                    "(default: the observed difference)")
    ap.add_argument("--register", metavar="NAME", default=None, help="register the MLflow "
                    "Model of the variant best by its mean over seeds (its best seed on "
                    "validation) as NAME, alias @best (needs --metric)")
    ap.add_argument("--metric", default=None, help="what --register chooses by, e.g. "
                    "set5/psnr (highest wins; lowest for --lowest)")
    ap.add_argument("--lowest", action="store_true", help="--metric: lower is better "
                    "(a loss, ms per frame)")
    ap.add_argument("--export", metavar="DIR", default=None, help="also write DIR: what the "
                    "report is made from (runs, metric histories, per-image results, "
                    "comparison crops; never weights), for --from")
    ap.add_argument("--from", dest="source", metavar="DIR", default=None, help="rebuild the "
                    "report from an export folder (--export) instead of the MLflow store "
                    "(default names: the ones it was exported for)")
    args = ap.parse_args(argv)
    if args.effect is not None and not args.effect > 0:
        print(f"error: --effect {args.effect}: give the difference to detect in dB, above 0 "
              "(e.g. --effect 0.1)", file=sys.stderr)
        return 2
    if args.register and (not args.metric or len(args.names) > 1):
        print("error: --register needs --metric <key> (e.g. set5/psnr) and at most one "
              "experiment or sweep id", file=sys.stderr)
        return 2
    try:
        source = _open(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    frame = source.runs_frame()
    role = frame.get("tag:sr_ablate.role", pd.Series(index=frame.index, dtype=str))
    parents, runs = frame[role == "sweep"], frame[role != "sweep"]
    if runs.empty:
        print(f"error: no runs in {source}; run `python -m sr_ablate` first", file=sys.stderr)
        return 2
    names = args.names or source.names or sorted(runs["experiment"].unique())
    for name in names:
        sub = select(runs, name, parents)
        if sub.empty:
            print(f"error: {name!r} is neither an experiment nor a sweep id; experiments: "
                  f"{', '.join(sorted(runs['experiment'].unique()))}", file=sys.stderr)
            return 2
        out = Path(args.out) / folder_name(sub, name)
        stamp = str(sub["end_time"].max())
        if not args.names and not args.source and (out / ".runs").is_file() and (
                out / ".runs").read_text() == stamp:
            print(f"{out}: up to date")
            continue
        definitions, baseline = _study(source, sub, args)
        write(sub, out, out.name, baseline, artifacts.fetch_per_image(source, sub),
              figures=lambda g, t, d, s: html.figures(source, g, t, d, s),
              rises=rises_of(source, sub), expected=expected_variants(definitions),
              failures=failures_of(parents, sub, name), effect=args.effect,
              definitions=definitions)
        if not args.source:  # what `make report` compares to skip a store's unchanged runs
            (out / ".runs").write_text(stamp)
        print(f"{out / 'results.md'}\n{(out / 'results.md').read_text()}")
    if args.export:
        folder = export.write(source, frame, names, Path(args.export))
        print(f"{folder}: what the report is made from; rebuild it with "
              f"`sr-ablate report --from {folder}`")
    if args.register:
        try:
            sub = select(runs, names[0], parents)
            print(_register(source, sub, names[0], _study(source, sub, args)[1], args))
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    return 0


def _study(source: Source, runs: pd.DataFrame, args) -> tuple[list[str], dict | None]:
    """(the definitions of the sweeps that made ``runs``, the baseline: ``--baseline``, else
    the one those definitions give: ``study.choose_baseline``)."""
    definitions = [source.sweep_definition(s) or "" for s in
                   runs.get("tag:sr_ablate.sweep_id", pd.Series(dtype=str)).dropna().unique()]
    return definitions, _parse_baseline(args.baseline) or choose_baseline(definitions)[0]


def _register(source: Source, runs: pd.DataFrame, name: str, baseline: dict | None,
              args) -> str:
    """Register the run ``build.registration`` chooses from the report's selection of ``runs``
    by ``args.metric``; the line saying what was registered and why."""
    run_id, value, why = registration(runs, args.metric, args.lowest, baseline,
                                      artifacts.fetch_per_image(source, runs),
                                      rises_of(source, runs))
    version = tracking.register(source.uri, run_id, args.register, args.metric, value)
    line = (f"registered run {run_id} as models:/{args.register}/{version} "
            f"(@{tracking.ALIAS}) from {name}: {why}")
    metric = args.metric
    row = runs[runs["run_id"] == run_id].iloc[0]
    bicubic = row.get(metric.replace("/psnr", "/bicubic_psnr")) if metric.endswith(
        "/psnr") else None
    if bicubic is not None and pd.notna(bicubic) and value < bicubic:
        # the best of the runs is not a good model: say so where it is chosen
        line += (f"; it is below bicubic ({bicubic:.4f}): undertrained, read the report's "
                 "verdicts before using it")
    return line


def _open(args) -> Source:
    """What the report reads: the export folder of ``--from``, else the MLflow store; checks
    first that an ``--export`` folder may be replaced. UserError (one line) when it cannot."""
    if args.export:
        export.target(Path(args.export))
    if args.source:
        if args.uri or args.register:
            raise UserError("--from reads an export folder: --uri and --register need the "
                            "MLflow store")
        return ExportSource(Path(args.source))
    uri = tracking.store_uri(args.uri)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        raise UserError(f"no MLflow store at {uri}; run `python -m sr_ablate` first or pass "
                        "--uri")
    return StoreSource(uri)


def _parse_baseline(text: str | None) -> dict | None:
    if not text:
        return None
    if "=" not in text:
        return {"variant": text}
    return dict(item.split("=", 1) for item in text.split(","))


if __name__ == "__main__":
    sys.exit(main())
