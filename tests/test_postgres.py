"""The cluster path on a real PostgreSQL server (``pgserver``): an Optuna study shared by two
independently started workers, one killed mid-trial; ``mlflow server`` over PostgreSQL with
proxied artifacts under a parallel grid sweep, a report, an upscale and a server restart; the
same sweep through submitit. Without a driver, or without a server, one line before any work.

Each end-to-end test prints its wall time (``-s`` shows it; the closing notes quote them)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import TINY, cli, free_port, user_env
from mlflow.tracking import MlflowClient

# a folder whose sitecustomize hides psycopg: this Python behaves as if the cluster extra
# were not installed
HIDE_DRIVER = "import sys\nsys.modules['psycopg'] = None\n"


def one_error(out) -> str:
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert out.returncode == 2 and len(errors) == 1 and "Traceback" not in out.stderr, \
        out.stderr[-3000:]
    return errors[0]


def without_driver(tmp_path) -> dict:
    site = tmp_path / "no-driver"
    site.mkdir()
    (site / "sitecustomize.py").write_text(HIDE_DRIVER)
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(site),
                                                        os.environ.get("PYTHONPATH")]))}


OPTUNA_SWEEP = {"study": "pg", "overrides": TINY,
                "optuna": {"trials": 2, "objectives": {"val/psnr": "maximize"},
                           "params": {"optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2,
                                                   "log": True}},
                           "sampler": {"name": "random", "seed": 0}, "heartbeat": 1}}


def optuna_file(tmp_path, trials: int) -> str:
    spec = yaml.safe_load(yaml.safe_dump(OPTUNA_SWEEP))
    spec["optuna"]["trials"] = trials
    path = tmp_path / "pg.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return f"sweep={path}"


@pytest.mark.parametrize("how", [
    ["tracking.uri=postgresql://sr:secret@127.0.0.1:5432/mlflow"],
    ["sweep=srresnet_optuna", "sweep.storage=postgresql://sr:secret@127.0.0.1:5432/optuna"],
], ids=["tracking.uri", "sweep.storage"])
def test_without_the_driver_a_postgresql_url_is_one_line_naming_the_extra(tmp_path, how):
    out = cli([*how, *TINY], tmp_path, env=without_driver(tmp_path), timeout=120)
    key, _, url = how[-1].partition("=")
    assert one_error(out) == (
        f"error: {key}='{url.replace(':secret@', ':***@')}' needs the PostgreSQL driver "
        "psycopg, which is not installed; pip install 'sr_ablate[cluster]' (pip install -e "
        "'.[cluster]' in a checkout)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["no-driver"]  # nothing written


def test_a_postgresql_store_that_does_not_answer_is_one_line(tmp_path):
    pytest.importorskip("psycopg", reason="needs the PostgreSQL driver (pip install -e "
                                          "'.[cluster]')")
    uri = f"postgresql://sr@127.0.0.1:{free_port()}/mlflow"
    out = cli([f"tracking.uri={uri}", *TINY], tmp_path, timeout=120)
    error = one_error(out)
    assert error.startswith(f"error: tracking.uri='{uri}': the database does not answer ("), error
    assert "Connection refused" in error and "start PostgreSQL" in error
    # checked before any work (only Hydra's log folder was made)
    assert [p.name for p in tmp_path.iterdir()] == ["outputs"]


def test_a_run_tracks_straight_into_postgresql(tmp_path, pg_url):
    """tracking.uri=postgresql://... without a server: params, metrics and status arrive."""
    out = cli([f"tracking.uri={pg_url}", *TINY], tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    client = MlflowClient(pg_url)
    (run,) = client.search_runs([client.get_experiment_by_name("sr_ablate").experiment_id])
    assert run.info.status == "FINISHED" and "val/psnr" in run.data.metrics
    assert run.data.params["model.blocks"] == "1"


def trials(storage: str):
    return optuna.load_study(study_name="pg", storage=storage).trials


@pytest.mark.slow
def test_two_workers_on_postgresql_one_killed_mid_trial(tmp_path, postgres):
    """Two workers started on their own (as on two nodes) share a study in PostgreSQL and
    track into PostgreSQL; one is SIGKILLed while its trial runs. Its trial goes stale, is
    queued again with the same parameters, and the other worker finishes it (resuming the
    killed run from its checkpoint): exactly the requested trials finish, no run stays
    RUNNING."""
    started = time.perf_counter()
    storage, store = postgres.database("optuna_kill"), postgres.database("mlflow_kill")
    args = [sys.executable, "-m", "sr_ablate", optuna_file(tmp_path, trials=4),
            f"sweep.storage={storage}", f"tracking.uri={store}", "trainer.steps=40",
            "trainer.eval_every=20", "trainer.checkpoint_every=5"]
    env = {**user_env(), "OMP_NUM_THREADS": "1"}
    logs = [open(tmp_path / f"worker{i}.log", "w") for i in range(2)]
    workers = [subprocess.Popen(args, cwd=tmp_path, env=env, stderr=log) for log in logs]
    try:
        victim, victim_trial = _kill_one_mid_trial(workers, storage, tmp_path)
        survivor = workers[1 - workers.index(victim)]
        assert survivor.wait(timeout=600) == 0, _tail(tmp_path)
    finally:
        for p in workers:
            if p.poll() is None:
                p.kill()
        for log in logs:
            log.close()
    took = time.perf_counter() - started
    err = _tail(tmp_path)
    assert f"trial {victim_trial.number}: its worker stopped answering; queued again" in err

    ts = trials(storage)
    finished = [t for t in ts if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 4, [(t.number, t.state.name) for t in ts]  # exactly as asked
    assert ts[victim_trial.number].state.name == "FAIL"
    (retry,) = [t for t in ts if t.system_attrs.get("failed_trial") == victim_trial.number]
    assert retry.state.name == "COMPLETE" and retry.params == victim_trial.params
    assert retry.user_attrs["sr_ablate.worker"].endswith(f":{survivor.pid}")
    assert {t.user_attrs["sr_ablate.worker"].rpartition(":")[2] for t in finished} <= {
        str(victim.pid), str(survivor.pid)}

    client = MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("pg").experiment_id])
    assert [r.info.status for r in runs if r.info.status not in ("FINISHED", "KILLED")] == []
    (parent,) = [r for r in runs if r.data.tags.get("sr_ablate.role") == "sweep"]
    assert parent.info.status == "FINISHED"
    # the killed trial's run was resumed by the retry and finished, each evaluation once
    (killed_run,) = victim_trial.user_attrs["mlflow_run_ids"]
    assert retry.user_attrs["mlflow_run_ids"] == [killed_run]
    assert client.get_run(killed_run).info.status == "FINISHED"
    steps = sorted(m.step for m in client.get_metric_history(killed_run, "val/psnr"))
    assert steps == [20, 40]
    print(f"two workers on PostgreSQL, one killed: {took:.0f} s")


def _kill_one_mid_trial(workers, storage, folder: Path):
    """SIGKILL the worker of the first trial that runs past its first checkpoint; returns
    (that worker, its trial as it was)."""
    deadline = time.time() + 300
    while time.time() < deadline:
        time.sleep(0.2)
        try:
            ts = trials(storage)
        except (KeyError, Exception):  # the study or its tables do not exist yet
            continue
        for t in ts:
            owner = t.user_attrs.get("sr_ablate.worker", "").rpartition(":")[2]
            victim = next((p for p in workers if str(p.pid) == owner), None)
            if t.state.name == "RUNNING" and victim and t.user_attrs.get("mlflow_run_ids") \
                    and any((folder / ".sr_ablate" / "checkpoints").glob("*.pt")):
                victim.send_signal(signal.SIGKILL)
                victim.wait()
                return victim, t
    raise AssertionError("no trial ran past a checkpoint in 300 s: " + _tail(folder))


def _tail(folder: Path) -> str:
    return "\n".join((folder / f"worker{i}.log").read_text()[-3000:] for i in range(2))
