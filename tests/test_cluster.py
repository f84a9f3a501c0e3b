"""The cluster path end to end: a sweep through hydra-submitit-launcher's ``submitit_local``
(the code path of ``hydra/launcher=slurm`` minus the scheduler: the task is pickled, each job
runs in its own process started by submitit) lands its runs under one MLflow parent."""
from __future__ import annotations

import pytest
from conftest import TINY, cli
from mlflow.tracking import MlflowClient

pytest.importorskip("hydra_plugins.hydra_submitit_launcher",
                    reason="needs hydra-submitit-launcher (pip install -e '.[cluster]')")


@pytest.mark.slow  # default run under 10 min on 2 cores; CI's slow pass runs it
def test_submitit_local_sweep_lands_under_one_parent(tmp_path):
    tiny = [a for a in TINY if not a.startswith("model.blocks")]
    out = cli(["-m", "hydra/launcher=submitit_local", "model.blocks=1,2", *tiny,
               "hydra.launcher.timeout_min=10", f"hydra.sweep.dir={tmp_path / 'multirun'}",
               f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"], tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("sr_ablate")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("sr_ablate.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("sr_ablate.role") != "sweep"]
    assert [r.info.status for r in runs if r.info.status == "RUNNING"] == []
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    assert len(children) == 2
    assert sorted(r.data.params["model.blocks"] for r in children) == ["1", "2"]
    sweep_id = parent.data.tags["sr_ablate.sweep_id"]
    for r in children:
        assert r.info.status == "FINISHED"
        assert r.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert r.data.tags["sr_ablate.sweep_id"] == sweep_id
    # each job ran in a process submitit started (not in the launching process)
    assert len(list((tmp_path / "multirun" / ".submitit").glob("*/*_result.pkl"))) == 2
