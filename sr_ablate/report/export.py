"""``sr-ablate report NAME --export DIR``: a folder the report can be rebuilt from without the
MLflow store (``sr-ablate report --from DIR``; the layout is in ``report.source``).

It holds what the report is made from: the reported runs (params, tags, status, times, final
metrics), every metric history of theirs, their per-image results and ``comparison.png``, the
sweep parent runs that say which jobs failed and which runs a sweep reused, and the sweeps'
definitions. Never weights (checkpoints, the MLflow Model): those stay in the store.
"""
from __future__ import annotations

import csv
import json
import shutil
import tempfile
from pathlib import Path

import pandas as pd

from sr_ablate import UserError
from sr_ablate.report.source import (
    COMPARISONS,
    FORMAT,
    MANIFEST,
    META,
    VERSION,
    Source,
    read_rows,
)
from sr_ablate.report.study import select

SWEEP_ID = "tag:sr_ablate.sweep_id"


def target(folder: Path) -> Path:
    """``folder`` when an export may go there (new, empty or an earlier export), else
    UserError: an export replaces the whole folder."""
    if folder.exists() and not (folder / MANIFEST).is_file() and (
            not folder.is_dir() or any(folder.iterdir())):
        raise UserError(f"--export {folder}: exists and is not an export (no {MANIFEST}); an "
                        "export replaces its folder, so name a new or empty one")
    return folder


def exported_runs(frame: pd.DataFrame, names: list[str]
                  ) -> tuple[pd.DataFrame, list[str], list[str]]:
    """What the reports of ``names`` read from ``frame`` (every run, sweep parents included):
    (its rows, in frame order, without the columns none of them has; the reported run ids;
    their sweep ids). Parents kept: those ``study.select`` and ``study.failures_of`` read."""
    role = frame.get("tag:sr_ablate.role", pd.Series(index=frame.index, dtype=str))
    parents, runs = frame[role == "sweep"], frame[role != "sweep"]
    ids, sweeps = set(), set()
    for name in names:
        sub = select(runs, name, parents)
        ids |= set(sub["run_id"])
        sweeps |= set(sub.get(SWEEP_ID, pd.Series(dtype=str)).dropna())
    of_sweep = parents.get(SWEEP_ID, pd.Series(index=parents.index, dtype=str))
    needed = parents[of_sweep.isin(sweeps | set(names)) | parents["run_id"].isin(names)
                     | parents["experiment"].isin(names)]
    rows = frame[frame["run_id"].isin(ids | set(needed["run_id"]))]
    # other experiments' columns are empty here; the report reads empty and absent alike
    keep = [c for c in rows.columns if c in META or rows[c].notna().any()]
    return rows[keep], sorted(ids), sorted(sweeps)


def write(source: Source, frame: pd.DataFrame, names: list[str], folder: Path) -> Path:
    """Write the export of the reports of ``names`` (experiments or sweep ids) to ``folder``,
    replacing it whole (written next to it first: a failed export leaves the old one)."""
    target(folder)
    rows, ids, sweeps = exported_runs(frame, names)
    folder.parent.mkdir(parents=True, exist_ok=True)
    part = folder.parent / f".{folder.name}.partial"
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir()
    try:
        metric_keys = _runs(rows, part)
        _histories(source, ids, metric_keys, part)
        with tempfile.TemporaryDirectory() as tmp:
            headers = _per_image(source, ids, Path(tmp), part)
            _comparisons(source, ids, Path(tmp), part)
        definitions = {s: source.sweep_definition(s) for s in sweeps}
        _json(part / "definitions.json", definitions)
        _json(part / MANIFEST, {"format": FORMAT, "version": VERSION, "names": list(names),
                                "columns": list(rows.columns), "per_image_headers": headers})
    except BaseException:
        shutil.rmtree(part, ignore_errors=True)
        raise
    shutil.rmtree(folder, ignore_errors=True)
    part.rename(folder)
    return folder


def _csv(path: Path, header: list[str], rows) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def _json(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=1, ensure_ascii=False) + "\n")


def _ms(value) -> str:
    return "" if pd.isna(value) else str(int(value))


def _runs(rows: pd.DataFrame, folder: Path) -> list[str]:
    """runs.csv, params.csv, metrics.csv, tags.csv; the metric keys."""
    _csv(folder / "runs.csv", list(META), (
        [run, exp, status, _ms(start), _ms(end)]
        for run, exp, status, start, end in rows[list(META)].itertuples(index=False)))
    params, metrics, tags = [], [], []
    for col in rows.columns.difference(META):
        for run, v in zip(rows["run_id"], rows[col]):
            if col.startswith("tag:"):
                if isinstance(v, str):
                    tags.append((run, col[len("tag:"):], v))
            elif isinstance(v, str):
                params.append((run, col, v))
            elif not pd.isna(v):
                # repr: the shortest text that reads back as the same float
                metrics.append((run, col, repr(float(v))))
    for name, found in (("params.csv", params), ("metrics.csv", metrics), ("tags.csv", tags)):
        _csv(folder / name, ["run_id", "key", "value"], sorted(found))
    return sorted({key for _, key, _ in metrics})


def _histories(source: Source, ids: list[str], keys: list[str], folder: Path) -> None:
    """history.csv: every (step, value) of every metric of the runs, in the source's order."""
    _csv(folder / "history.csv", ["run_id", "key", "step", "value"], (
        [run, key, step, repr(float(value))] for run in ids for key in keys
        for step, value in source.metric_history(run, key)))


def _per_image(source: Source, ids: list[str], tmp: Path, folder: Path) -> dict:
    """per_image.csv: the runs' ``per_image.csv`` records, cells as written, under the union
    of their headers; returns {run id: header} of the runs whose header is not that union
    (or that have no records), which ``ExportSource`` needs to give their files back."""
    found = {}
    for run in ids:
        path = source.artifact(run, "per_image.csv", tmp / run)
        records = read_rows(path) if path is not None else []
        if records:
            found[run] = records
    union = list(dict.fromkeys(c for header, *_ in found.values() for c in header))
    _csv(folder / "per_image.csv", ["run_id", *union], (
        [run, *(cells[header.index(c)] if c in header else "" for c in union)]
        for run, (header, *rows) in found.items() for cells in rows))
    return {run: header for run, (header, *rows) in found.items()
            if header != union or not rows}


def _comparisons(source: Source, ids: list[str], tmp: Path, folder: Path) -> None:
    for run in ids:
        path = source.artifact(run, "comparison.png", tmp / run)
        if path is not None:
            (folder / COMPARISONS).mkdir(exist_ok=True)
            shutil.copyfile(path, folder / COMPARISONS / f"{run}.png")
