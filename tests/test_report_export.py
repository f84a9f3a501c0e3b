"""Reports rebuilt from an export folder (``report NAME --export DIR``, ``report --from DIR``)
with no MLflow store: the same results.{md,csv,tex} and index.html as the report from the
store, the same inputs (runs table and its dtypes, per-image results, histories, crops), no
weights, the same files when exported again; a folder that is not an export fails in one
line."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO, cli
from mlflow.tracking import MlflowClient

from sr_ablate.cli.report import main
from sr_ablate.report import export
from sr_ablate.report.build import select
from sr_ablate.report.source import ExportSource, Source, StoreSource, read_rows

# conftest.reported: the sweep (2 variants x 2 seeds of real smoke runs, weights logged), and
# its report from the store: (cwd holding mlflow.db, reports/rep)
RESULTS = ("results.md", "results.csv", "results.tex", "index.html")
TABLES = ("export.json", "runs.csv", "params.csv", "metrics.csv", "tags.csv", "history.csv",
          "per_image.csv", "definitions.json")


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def exported(reported, tmp_path_factory):
    """The sweep exported (``report rep --export``), then its report rebuilt from the export
    in a folder without any MLflow store: (store uri, store's report, export, rebuilt report)."""
    cwd, rep = reported
    folder = tmp_path_factory.mktemp("export")
    out = cli(["rep", "--out", str(folder / "reports"), "--export", str(folder / "export")],
              cwd, command="report")
    assert out.returncode == 0, out.stderr[-3000:]
    bare = tmp_path_factory.mktemp("no_store")
    out = cli(["--from", str(folder / "export"), "--out", str(bare / "reports")], bare,
              command="report")
    assert out.returncode == 0, out.stderr[-3000:]
    assert not list(bare.glob("*.db")) and not (bare / "mlruns").exists()
    return f"sqlite:///{cwd / 'mlflow.db'}", rep, folder / "export", bare / "reports" / "rep"


def test_report_from_the_export_is_the_report_from_the_store(exported):
    _, rep, _, rebuilt = exported
    for name in RESULTS:  # index.html: the plots drawn again, embedded, the same bytes
        assert (rebuilt / name).read_bytes() == (rep / name).read_bytes(), name
    assert sorted(p.name for p in (rebuilt / "plots").iterdir()) == sorted(
        p.name for p in (rep / "plots").iterdir())


def test_the_export_gives_back_what_the_store_gave(exported, tmp_path):
    uri, _, folder, _ = exported
    store, back = StoreSource(uri), ExportSource(folder)
    runs = store.runs_frame()  # one experiment: every run of the store is in the export
    pd.testing.assert_frame_equal(back.runs_frame(), runs)
    assert back.names == ["rep"]
    children = runs[runs["tag:sr_ablate.role"] != "sweep"]["run_id"]
    assert len(children) == 4
    for run in children:
        pd.testing.assert_frame_equal(back.per_image(run), store.per_image(run))
        crops = [s.artifact(run, "comparison.png", tmp_path / str(i) / run).read_bytes()
                 for i, s in enumerate((back, store))]
        assert crops[0] == crops[1]
        for key in (c for c in runs if "/" in c and not c.startswith("tag:")):
            assert back.metric_history(run, key) == store.metric_history(run, key), key
    (sweep,) = runs["tag:sr_ablate.sweep_id"].dropna().unique()
    assert back.sweep_definition(sweep) == store.sweep_definition(sweep) is not None


def test_the_export_holds_no_weights(exported):
    uri, _, folder, _ = exported
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("rep")
    children = [r.info.run_id for r in client.search_runs([exp.experiment_id])
                if r.data.tags.get("sr_ablate.role") != "sweep"]
    for run in children:  # the store has them...
        assert {"checkpoints", "model"} <= {a.path for a in client.list_artifacts(run)}
    # ...the export only its tables and one comparison crop per run
    assert sorted(files(folder)) == sorted([*TABLES, *(f"comparisons/{r}.png"
                                                       for r in children)])
    assert sum(map(len, files(folder).values())) < 1_000_000


def test_exporting_again_writes_the_same_files(exported, tmp_path):
    uri, _, folder, _ = exported
    assert main(["rep", "--uri", uri, "--out", str(tmp_path / "r1"),
                 "--export", str(tmp_path / "again")]) == 0
    assert files(tmp_path / "again") == files(folder)
    # the export of an export, from the files alone
    assert main(["--from", str(folder), "--out", str(tmp_path / "r2"),
                 "--export", str(tmp_path / "twice")]) == 0
    assert files(tmp_path / "twice") == files(folder)
    for name in ("params.csv", "metrics.csv", "tags.csv", "history.csv"):  # sorted: diffable
        rows = read_rows(folder / name)[1:]
        assert rows and [r[:2] for r in rows] == sorted(r[:2] for r in rows), name


def test_from_a_folder_that_is_not_an_export_fails_in_one_line(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not an export")
    out = cli(["--from", str(tmp_path)], tmp_path, command="report")
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith("error: ") and out.stderr.count("\n") == 1
    assert "not a report export" in out.stderr and "export.json" in out.stderr

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "export.json").write_text(json.dumps({"format": "something else"}))
    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    (incomplete / "export.json").write_text(json.dumps({"format": export.FORMAT,
                                                       "version": 1}))
    for args, why in (([str(tmp_path / "missing")], "no such folder"),
                      ([str(bad)], "'format'"),
                      ([str(incomplete)], "missing runs.csv"),
                      ([str(incomplete), "--uri", "sqlite:///x.db"], "--uri")):
        assert main(["--from", *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and why in err, err
    # an export replaces its folder whole: never one that is not an export
    assert main(["rep", "--export", str(tmp_path)]) == 2
    assert "is not an export" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").is_file()


class Given(Source):
    """A source holding what the test gives it."""

    def __init__(self, frame, histories, files, definitions):
        self.frame, self.histories, self.files = frame, histories, files
        self.definitions = definitions

    def runs_frame(self):
        return self.frame

    def sweep_definition(self, sweep_id):
        return self.definitions.get(sweep_id)

    def metric_history(self, run_id, key):
        return self.histories.get((run_id, key), [])

    def artifact(self, run_id, path, dst):
        if (run_id, path) not in self.files:
            return None
        dst.mkdir(parents=True, exist_ok=True)
        (dst / path).write_bytes(self.files[run_id, path])
        return dst / path


def test_export_keeps_every_value_its_type_and_only_the_runs_reported(tmp_path):
    """Sweep s1 (runs r1, r2, and r3 reused from sweep s0): its runs and both parents are
    exported; another experiment's runs, parent and columns are not. Empty strings stay
    empty, missing stays missing, floats come back bit for bit, per-image files cell for
    cell whatever their headers."""
    meta = dict(experiment="a", status="FINISHED", start_time=1, end_time=2)
    rows = [
        {**meta, "run_id": "p1", "start_time": 5, "end_time": None, "status": "RUNNING",
         "tag:sr_ablate.role": "sweep", "tag:sr_ablate.sweep_id": "s1",
         "tag:sr_ablate.reused_run_ids": "r3",
         "tag:sr_ablate.failed_jobs": json.dumps([["variant=b3", "RuntimeError: x\ny"]])},
        {**meta, "run_id": "r1", "start_time": 4, "end_time": None, "status": "FAILED",
         "model.blocks": "1", "note": "", "data.root": "None", "val/psnr": 0.1 + 0.2,
         "tiny": 5e-324, "val/ssim": math.nan, "tag:sr_ablate.sweep_id": "s1",
         "tag:overrides": "", "tag:why": 'two\nlines, "quoted"'},
        {**meta, "run_id": "r2", "model.blocks": "2", "val/psnr": 30.123456789012345,
         "big": 1e300, "tag:sr_ablate.sweep_id": "s1", "tag:overrides": "model.blocks=2"},
        {**meta, "run_id": "r3", "model.blocks": "3", "val/psnr": -math.inf,
         "tag:sr_ablate.sweep_id": "s0"},
        {**meta, "run_id": "p0", "tag:sr_ablate.role": "sweep", "tag:sr_ablate.sweep_id": "s0"},
        {**meta, "run_id": "x1", "experiment": "b", "only_b": "1", "val/psnr": 1.0,
         "tag:sr_ablate.sweep_id": "sx"},
        {**meta, "run_id": "px", "experiment": "b", "tag:sr_ablate.role": "sweep",
         "tag:sr_ablate.sweep_id": "sx"},
    ]
    frame = pd.DataFrame(rows)  # as tracking.runs_frame builds it
    per_image = {"r1": [["set", "image", "psnr"], ["val", "a,b", "1.5"], ["val", "c", ""]],
                 "r2": [["set", "image", "psnr", "ssim"], ["val", "a,b", "2.25", "0.5"]],
                 "r3": [["set", "image", "psnr"]]}  # a header and no rows
    given = {(r, "per_image.csv"): "".join(
        ",".join(f'"{c}"' if "," in c else c for c in rec) + "\r\n" for rec in recs).encode()
        for r, recs in per_image.items()}
    given["r2", "comparison.png"] = b"\x89PNG not really"
    histories = {("r1", "val/psnr"): [(0, 1.5), (2, math.nan), (2, 0.1 + 0.2)],
                 ("r2", "big"): [(0, 1e300)], ("x1", "val/psnr"): [(0, 1.0)]}
    export.write(Given(frame, histories, given, {"s1": "study: s\nbaseline: b1\n"}), frame,
                 ["s1"], tmp_path / "e")
    back = ExportSource(tmp_path / "e")

    got = back.runs_frame()
    # columns only other runs had, or only NaN had (val/ssim), are left out: the report
    # reads an empty column as it reads none
    kept = [c for c in frame.columns if c not in ("only_b", "val/ssim")]
    want = frame[frame["run_id"].isin(["p1", "r1", "r2", "r3", "p0"])][kept]
    pd.testing.assert_frame_equal(got, want.reset_index(drop=True))
    assert got.loc[1, "note"] == "" and got.loc[1, "tiny"] == 5e-324
    assert got.loc[1, "val/psnr"] == 0.1 + 0.2 and got.loc[1, "tag:why"] == rows[1]["tag:why"]
    runs, parents = got[got["tag:sr_ablate.role"] != "sweep"], got[
        got["tag:sr_ablate.role"] == "sweep"]
    assert list(select(runs, "s1", parents)["run_id"]) == ["r1", "r2", "r3"]

    assert repr(back.metric_history("r1", "val/psnr")) == repr(histories["r1", "val/psnr"])
    assert back.metric_history("r2", "big") == [(0, 1e300)]
    assert back.metric_history("x1", "val/psnr") == []  # not reported: not exported
    for run, records in per_image.items():
        path = back.artifact(run, "per_image.csv", tmp_path / "dst" / run)
        with open(path, newline="") as f:
            assert list(csv.reader(f)) == records, run
    assert back.per_image("r3").empty and list(back.per_image("r3")) == ["set", "image", "psnr"]
    assert back.per_image("x1") is None
    assert back.artifact("r2", "comparison.png", tmp_path / "png").read_bytes() == given[
        "r2", "comparison.png"]
    assert back.artifact("r1", "comparison.png", tmp_path / "png") is None
    assert back.sweep_definition("s1") == "study: s\nbaseline: b1\n"
    assert back.sweep_definition("s0") is None and back.names == ["s1"]


WORKED = sorted(p.parent for p in (REPO / "docs" / "results").glob("*/export/export.json"))


@pytest.mark.parametrize("folder", WORKED, ids=[p.parent.name for p in WORKED])
def test_the_worked_examples_rebuild_to_the_committed_reports(folder, tmp_path):
    """docs/results/<name>/ is what the current code makes of docs/results/<name>/export: a
    change to the report's rules that changes a worked example shows up here."""
    name = folder.parent.name
    assert main(["--from", str(folder), "--out", str(tmp_path), name]) == 0
    for file in ("results.md", "results.csv", "results.tex"):
        assert (tmp_path / name / file).read_text() == (folder.parent / file).read_text(), file
