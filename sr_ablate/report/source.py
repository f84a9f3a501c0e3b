"""Where a report reads its runs from: the MLflow store (``StoreSource``) or an export folder
(``ExportSource``), written by ``sr-ablate report NAME --export DIR`` (``report.export``).

Both answer the same five questions, so the report is the same whichever it reads: the runs
table, a sweep's definition, a run's per-image results, a run's metric history, and one
artifact file of a run (``per_image.csv``, ``comparison.png``).

An export folder (text files, rows sorted by run id and key, so that a new export diffs well)::

    export.json       what the folder is: format, version, the names it was exported for,
                      the runs table's columns in order, per-image headers that differ
    runs.csv          run_id, experiment, status, start_time, end_time (ms): one row per run,
                      sweep parent runs included, in the store's order (newest first)
    params.csv        run_id, key, value    (every param of every run)
    metrics.csv       run_id, key, value    (final value of every metric)
    tags.csv          run_id, key, value    (every tag, without the ``tag:`` prefix)
    history.csv       run_id, key, step, value    (every metric history)
    per_image.csv     run_id, then the columns of the runs' ``per_image.csv``
    definitions.json  {sweep id: the sweep's definition}
    comparisons/<run_id>.png    the runs' ``comparison.png``

Long files (one value a line) rather than one wide table: a string may be empty, and empty
must stay distinct from missing for the table to come back the same.
"""
from __future__ import annotations

import csv
import json
import shutil
import tempfile
from functools import cached_property
from pathlib import Path

import pandas as pd

from sr_ablate import UserError, tracking

FORMAT = "sr_ablate report export"
VERSION = 1
MANIFEST = "export.json"
META = ("run_id", "experiment", "status", "start_time", "end_time")
TABLES = ("runs.csv", "params.csv", "metrics.csv", "tags.csv", "history.csv", "per_image.csv",
          "definitions.json")
COMPARISONS = "comparisons"


class Source:
    """What a report reads. Subclasses answer all but ``per_image``, which both read the
    same way (the same parser: the same numbers)."""

    names: list[str] = []  # reported when none are named ([]: every experiment)

    def runs_frame(self) -> pd.DataFrame:
        """Every run, sweep parents included, as ``tracking.runs_frame(uri, parents=True)``."""
        raise NotImplementedError

    def sweep_definition(self, sweep_id: str) -> str | None:
        raise NotImplementedError

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """(step, value) pairs of one metric of one run, by step; [] when none."""
        raise NotImplementedError

    def artifact(self, run_id: str, path: str, dst: Path) -> Path | None:
        """Artifact ``path`` of a run copied into folder ``dst``; None when it has none."""
        raise NotImplementedError

    def per_image(self, run_id: str) -> pd.DataFrame | None:
        """The run's ``per_image.csv`` (set, image, psnr, ssim...); None when it has none."""
        with tempfile.TemporaryDirectory() as tmp:
            path = self.artifact(run_id, "per_image.csv", Path(tmp))
            return None if path is None else pd.read_csv(path)


class StoreSource(Source):
    """The MLflow store at ``uri`` (sqlite file or tracking server)."""

    def __init__(self, uri: str):
        self.uri = uri

    def __str__(self) -> str:
        return self.uri

    def runs_frame(self) -> pd.DataFrame:
        return tracking.runs_frame(self.uri, parents=True)

    def sweep_definition(self, sweep_id: str) -> str | None:
        return tracking.sweep_definition(self.uri, sweep_id)

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        return tracking.metric_history(self.uri, run_id, key)

    def artifact(self, run_id: str, path: str, dst: Path) -> Path | None:
        return tracking.fetch_artifact(self.uri, run_id, path, dst)


def read_rows(path: Path) -> list[list[str]]:
    """The records of a CSV file as strings (header first): cells exactly as written."""
    with open(path, newline="") as f:
        return list(csv.reader(f))


def _int(text: str) -> int | None:
    return int(text) if text else None


class ExportSource(Source):
    """An export folder (see the module docstring); UserError when ``folder`` is not one."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.manifest = check(self.folder)
        self.names = list(self.manifest["names"])

    def __str__(self) -> str:
        return str(self.folder)

    def _records(self, name: str) -> list[dict[str, str]]:
        with open(self.folder / name, newline="") as f:
            return list(csv.DictReader(f))

    def runs_frame(self) -> pd.DataFrame:
        # built as tracking.runs_frame builds it (dicts of str, float and int values), so
        # that pandas gives every column the same dtype
        rows = {r["run_id"]: {**r, "start_time": _int(r["start_time"]),
                              "end_time": _int(r["end_time"])}
                for r in self._records("runs.csv")}
        for r in self._records("params.csv"):
            rows[r["run_id"]][r["key"]] = r["value"]
        for r in self._records("metrics.csv"):
            rows[r["run_id"]][r["key"]] = float(r["value"])
        for r in self._records("tags.csv"):
            rows[r["run_id"]][f"tag:{r['key']}"] = r["value"]
        frame = pd.DataFrame(list(rows.values()), columns=self.manifest["columns"])
        # a sweep's pointer to a run it reused is no run of its own (tracking.runs_frame
        # leaves it out of the store's table): never counted twice, whoever wrote the export
        pointer = f"tag:{tracking.REUSED_FROM}"
        return frame[frame[pointer].isna()] if pointer in frame else frame

    def sweep_definition(self, sweep_id: str) -> str | None:
        return self._definitions.get(sweep_id)

    @cached_property
    def _definitions(self) -> dict:
        return json.loads((self.folder / "definitions.json").read_text())

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        return self._histories.get((run_id, key), [])

    @cached_property
    def _histories(self) -> dict[tuple[str, str], list[tuple[int, float]]]:
        out: dict[tuple[str, str], list[tuple[int, float]]] = {}
        for r in self._records("history.csv"):  # in the order the store gave them
            out.setdefault((r["run_id"], r["key"]), []).append((int(r["step"]),
                                                                float(r["value"])))
        return out

    def artifact(self, run_id: str, path: str, dst: Path) -> Path | None:
        if path == "comparison.png":
            src = self.folder / COMPARISONS / f"{run_id}.png"
            if not src.is_file():
                return None
            Path(dst).mkdir(parents=True, exist_ok=True)
            return Path(shutil.copyfile(src, Path(dst) / path))
        if path == "per_image.csv" and run_id in self._per_image:
            Path(dst).mkdir(parents=True, exist_ok=True)
            with open(Path(dst) / path, "w", newline="") as f:
                csv.writer(f).writerows(self._per_image[run_id])
            return Path(dst) / path
        return None  # an export holds nothing else (no weights)

    @cached_property
    def _per_image(self) -> dict[str, list[list[str]]]:
        """{run id: its per_image.csv records, header first}, cells as the run wrote them."""
        header, *rows = read_rows(self.folder / "per_image.csv")
        union = header[1:]
        own = self.manifest.get("per_image_headers", {})  # runs whose header is not ``union``
        out = {run: [cols] for run, cols in own.items()}
        at = {run: [union.index(c) for c in cols] for run, cols in own.items()}
        for run, *cells in rows:
            out.setdefault(run, [union])
            mine = at.get(run)
            out[run].append(cells if mine is None else [cells[i] for i in mine])
        return out


def check(folder: Path) -> dict:
    """The manifest of export folder ``folder``; UserError (one line) naming what is wrong
    when it is not one that this version reads."""
    how = "write one with `sr-ablate report <name> --export DIR`"
    if not folder.is_dir():
        raise UserError(f"--from {folder}: no such folder ({how})")
    path = folder / MANIFEST
    if not path.is_file():
        raise UserError(f"--from {folder}: not a report export, it has no {MANIFEST} ({how})")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"--from {folder}: {MANIFEST} is not readable JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UserError(f"--from {folder}: {MANIFEST} is not a report export's (its "
                        f"'format' is not {FORMAT!r}; {how})")
    if not isinstance(manifest.get("version"), int) or manifest["version"] > VERSION:
        raise UserError(f"--from {folder}: export version {manifest.get('version')!r}; this "
                        f"sr_ablate reads version {VERSION} and older: upgrade sr_ablate")
    missing = [name for name in TABLES if not (folder / name).is_file()]
    if missing:
        raise UserError(f"--from {folder}: incomplete export, missing {', '.join(missing)}")
    return manifest
