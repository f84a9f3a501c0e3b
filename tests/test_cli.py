"""The real command line: a 2-job ``-m`` sweep under one parent run, then ``make report``."""
from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from conftest import REPO, TINY, cli


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("sweep")
    out = cli(["-m", "model.blocks=1,2", *TINY[:1], "model.channels=8", "trainer.progress=false"],
              cwd)
    assert out.returncode == 0, out.stderr[-3000:]
    return cwd


def test_sweep_runs_sit_under_one_parent(sweep_dir):
    client = MlflowClient(f"sqlite:///{sweep_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("sr_ablate")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("sr_ablate.role") == "sweep"]
    children = [r for r in runs if r not in parents]
    assert len(parents) == 1 and len(children) == 2
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert "model.blocks=1,2" in parent.data.tags["sr_ablate.sweep"]
    sweep_id = parent.data.tags["sr_ablate.sweep_id"]
    for c in children:
        assert c.info.status == "FINISHED"
        assert c.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert c.data.tags["sr_ablate.sweep_id"] == sweep_id
    assert sorted(c.data.params["model.blocks"] for c in children) == ["1", "2"]
    # the store is in the directory the user ran from, whatever Hydra did with directories
    assert (sweep_dir / "multirun").is_dir() and not (sweep_dir / "mlruns").exists()


def test_make_report_equals_mlflow_metrics(sweep_dir):
    out = subprocess.run(["make", "-f", str(REPO / "Makefile"), "report",
                          f"PYTHON={sys.executable}"], cwd=sweep_dir,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    csv_path = sweep_dir / "reports" / "sr_ablate" / "results.csv"
    md = (sweep_dir / "reports" / "sr_ablate" / "results.md").read_text()
    table = pd.read_csv(csv_path)
    assert list(table["model.blocks"]) == [1, 2]
    for col in ("model/params", "train/loss", "val/psnr", "val/ssim", "val/bicubic_psnr",
                "val/bicubic_ssim"):
        assert col in table.columns and col in md
    client = MlflowClient(f"sqlite:///{sweep_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("sr_ablate")
    for r in client.search_runs([exp.experiment_id]):
        if r.data.tags.get("sr_ablate.role") == "sweep":
            continue
        row = table[table["run_id"] == r.info.run_id[:8]].iloc[0]
        for col, value in r.data.metrics.items():
            if col in table.columns:
                assert row[col] == pytest.approx(value, rel=1e-12), col
        assert f"{r.data.metrics['val/psnr']:.2f}" in md


def test_single_run_progress_bar_and_no_parent(tmp_path):
    out = cli([*TINY[:3]], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    # tqdm on stderr: step counter, it/s, loss and validation PSNR
    assert "4/4" in out.stderr and "it/s" in out.stderr and "val_psnr=" in out.stderr
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (r,) = client.search_runs([client.get_experiment_by_name("sr_ablate").experiment_id])
    assert r.info.status == "FINISHED" and "mlflow.parentRunId" not in r.data.tags


@pytest.mark.slow
def test_a_diverging_job_fails_with_its_step_and_the_sweep_goes_on(tmp_path):
    """optim.lr=1e30 makes the loss non-finite at the first log: that run ends FAILED with
    the step and reason as a tag; the other job of the sweep still runs and finishes."""
    out = cli(["-m", *TINY, "optim.lr=1e30,1e-4"], tmp_path, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "the run ended FAILED - lower optim.lr or set trainer.grad_clip" in out.stderr
    assert "1 ran, 1 failed" in out.stderr
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("sr_ablate")
    runs = {r.data.params["optim.lr"]: r for r in client.search_runs([exp.experiment_id])
            if "optim.lr" in r.data.params}
    bad, good = runs["1e+30"], runs["0.0001"]
    assert bad.info.status == "FAILED" and good.info.status == "FINISHED"
    assert bad.data.tags["sr_ablate.error"].startswith("NonFiniteLoss: training loss is ")
    assert bad.data.tags["sr_ablate.error"].endswith(" at step 2")  # smoke: first log at 2
