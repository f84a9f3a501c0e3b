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


@pytest.mark.parametrize("key", ["tracking.uri", "sweep.storage"])
def test_a_postgresql_database_that_does_not_answer_is_one_line(tmp_path, key):
    pytest.importorskip("psycopg", reason="needs the PostgreSQL driver (pip install -e "
                                          "'.[cluster]')")
    uri = f"postgresql://sr@127.0.0.1:{free_port()}/db"
    how = ["sweep=srresnet_optuna"] if key == "sweep.storage" else []
    out = cli([*how, f"{key}={uri}", *TINY], tmp_path, timeout=120)
    error = one_error(out)
    assert error.startswith(f"error: {key}='{uri}': the database does not answer ("), error
    assert "Connection refused" in error and "start PostgreSQL" in error
    # checked before any work (at most Hydra's log folder was made)
    assert {p.name for p in tmp_path.iterdir()} <= {"outputs"}


@pytest.mark.slow  # default run under 10 min on 2 cores; CI's slow pass runs it
def test_a_run_tracks_straight_into_postgresql(tmp_path, pg_url):
    """tracking.uri=postgresql://... without a server: params, metrics and status arrive."""
    out = cli([f"tracking.uri={pg_url}", *TINY], tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    client = MlflowClient(pg_url)
    (run,) = client.search_runs([client.get_experiment_by_name("sr_ablate").experiment_id])
    assert run.info.status == "FINISHED" and "val/psnr" in run.data.metrics
    assert run.data.params["model.blocks"] == "1"


def test_passwords_are_not_stored_in_mlflow():
    from sr_ablate.config.drivers import hide_passwords
    assert hide_passwords("python -m sr_ablate sweep.storage=postgresql://u:s3cr%40t@db:5432/o "
                          "tracking.uri=http://me:pw@head:5000 seed=1") == (
        "python -m sr_ablate sweep.storage=postgresql://u:***@db:5432/o "
        "tracking.uri=http://me:***@head:5000 seed=1")
    for text in ("sqlite:////tmp/a.db", "postgresql://u@db/o", "model.channels=8"):
        assert hide_passwords(text) == text


def trials(storage: str):
    return optuna.load_study(study_name="pg", storage=storage).trials


@pytest.mark.slow
def test_two_workers_on_postgresql_one_killed_mid_trial(tmp_path, postgres, pg_server):
    """Two workers started on their own (as on two nodes) share a study in PostgreSQL and
    track through ``mlflow server`` over PostgreSQL; one is SIGKILLed while its trial runs.
    Its trial goes stale, is queued again with the same parameters, and the other worker
    finishes it (resuming the killed run from its checkpoint): exactly the requested trials
    finish, no run stays RUNNING."""
    server, _ = pg_server
    started = time.perf_counter()
    storage = postgres.database("optuna_kill")
    args = [sys.executable, "-m", "sr_ablate", optuna_file(tmp_path, trials=4),
            f"sweep.storage={storage}", "trainer.steps=40", "trainer.eval_every=20",
            "trainer.checkpoint_every=5"]
    env = {**user_env(), "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": server.url}
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

    client = MlflowClient(server.url)
    runs = client.search_runs([client.get_experiment_by_name("pg").experiment_id])
    assert [r.info.status for r in runs if r.info.status not in ("FINISHED", "KILLED")] == []
    (parent,) = [r for r in runs if r.data.tags.get("sr_ablate.role") == "sweep"]
    assert parent.info.status == "FINISHED"
    hidden = storage.replace(f":{postgres.password}@", ":***@")
    assert parent.data.tags["optuna.storage"] == hidden  # no password stored in MLflow
    assert {r.data.params["sweep.storage"] for r in runs if r is not parent} == {hidden}
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


# a grid sweep of 4 jobs, logging every 10 steps, long enough (~30 s a job here) for the
# server to be restarted while it trains
GRID = ["-m", "model.blocks=1,2", "seed=0,1", "trainer=smoke", "model.channels=8",
        "trainer.progress=false", "trainer.steps=1500", "trainer.log_every=10",
        "trainer.eval_every=500"]
LAUNCHERS = {"joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
             "submitit_local": ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=20",
                                "hydra.launcher.tasks_per_node=1"]}


@pytest.fixture
def pg_server(tmp_path, postgres):
    """``mlflow server`` with its runs in a new PostgreSQL database and its artifacts proxied
    into a folder of its own (the client never touches it); (server, backend URL)."""
    from conftest import MlflowServer
    backend = postgres.database(f"mlflow_{free_port()}")
    (tmp_path / "server").mkdir()
    server = MlflowServer(tmp_path / "server", backend)
    server.start()
    try:
        yield server, backend
    finally:
        server.stop()


def _running_with_metrics(backend: str, n: int) -> bool:
    """``n`` runs are RUNNING and have logged train/loss at least 3 times (read from
    PostgreSQL itself, which answers while the server is down)."""
    client = MlflowClient(backend)
    exp = client.get_experiment_by_name("sr_ablate")
    if exp is None:
        return False
    runs = client.search_runs([exp.experiment_id], filter_string="attributes.status='RUNNING'")
    return sum(len(client.get_metric_history(r.info.run_id, "train/loss")) >= 3
               for r in runs if "sr_ablate.role" not in r.data.tags) >= n


@pytest.mark.slow
@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_grid_sweep_through_a_server_on_postgresql_survives_its_restart(
        tmp_path, pg_server, launcher):
    """Two jobs at a time (joblib; or each job its own process, as on SLURM: submitit_local)
    track through the server while it is stopped and started again: every run finishes with
    every metric once, the artifacts went through the server, and the report and upscale
    read the runs back through it."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher",
                        reason="needs hydra-submitit-launcher (pip install -e '.[cluster]')")
    server, backend = pg_server
    work = tmp_path / "work"
    work.mkdir()
    env = {**user_env(), "MLFLOW_TRACKING_URI": server.url, "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    with open(tmp_path / "sweep.log", "w") as log:
        sweep = subprocess.Popen([sys.executable, "-m", "sr_ablate", *GRID, *LAUNCHERS[launcher],
                                  f"hydra.sweep.dir={work / 'multirun'}"],
                                 cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 300
            while not _running_with_metrics(backend, 2):
                assert sweep.poll() is None and time.time() < deadline, \
                    (tmp_path / "sweep.log").read_text()[-3000:]
                time.sleep(0.5)
            server.stop()  # two jobs are training: their metrics have nowhere to go...
            time.sleep(3)
            server.start()  # ...until the server is back (it takes a few seconds to start)
            assert sweep.wait(timeout=900) == 0, (tmp_path / "sweep.log").read_text()[-3000:]
        finally:
            if sweep.poll() is None:
                sweep.kill()
    took = time.perf_counter() - started
    said = (tmp_path / "sweep.log").read_text()

    client = MlflowClient(server.url)
    runs = client.search_runs([client.get_experiment_by_name("sr_ablate").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("sr_ablate.role") == "sweep"]
    jobs = [r for r in runs if r is not parent]
    assert parent.info.status == "FINISHED" and len(jobs) == 4, said[-3000:]
    assert sorted((r.data.params["model.blocks"], r.data.params["seed"]) for r in jobs) == [
        ("1", "0"), ("1", "1"), ("2", "0"), ("2", "1")]
    for r in jobs:
        assert r.info.status == "FINISHED"
        assert r.data.tags["mlflow.parentRunId"] == parent.info.run_id
        loss = [m.step for m in client.get_metric_history(r.info.run_id, "train/loss")]
        assert sorted(loss) == list(range(10, 1501, 10)), r.info.run_id  # each step once
        psnr = [m.step for m in client.get_metric_history(r.info.run_id, "val/psnr")]
        assert sorted(psnr) == [500, 1000, 1500]
        # artifacts went through the server into its folder, never the client's
        assert r.info.artifact_uri.startswith("mlflow-artifacts:/")
        assert any(server.artifacts.rglob(f"{r.info.run_id}/artifacts/checkpoints/final.pt"))
    # the restart was felt where metrics are sent: a send waited through it, none failed
    slowest = max(float(r.data.tags["sr_ablate.outbox.slowest_ms"]) for r in jobs)
    assert slowest > 1000, slowest
    assert not any(work.glob("**/mlruns")) and not any(work.glob("**/mlartifacts"))
    assert not (work / "mlflow.db").exists()
    if launcher == "submitit_local":  # each job ran in a process submitit started
        assert len(list((work / "multirun" / ".submitit").glob("*/*_result.pkl"))) == 4

    # the report and upscale read the runs back through the server
    report = cli([], work, command="report", env={"MLFLOW_TRACKING_URI": server.url})
    assert report.returncode == 0, report.stderr[-3000:]
    from conftest import builtin_images, read_results
    (csv,) = (work / "reports").glob("*/results.csv")
    table = read_results(csv)
    shown = sorted(i for cell in table["run_id"] for i in cell.split())  # short ids
    assert shown == sorted(r.info.run_id[:len(shown[0])] for r in jobs)
    src = builtin_images()[0]
    out = cli([f"model={jobs[0].info.run_id}", f"input={src}", f"output={work / 'up.png'}"],
              work, command="upscale", env={"MLFLOW_TRACKING_URI": server.url})
    assert out.returncode == 0, out.stderr[-3000:]
    from PIL import Image
    w, h = Image.open(src).size
    assert Image.open(work / "up.png").size == (2 * w, 2 * h)
    print(f"grid sweep through mlflow server on PostgreSQL ({launcher}), server restarted: "
          f"{took:.0f} s; slowest metric send {slowest / 1000:.1f} s; "
          f"{said.count('does not answer')} outbox outage(s) reported")


@pytest.mark.slow
def test_concurrency_figures_through_the_server(tmp_path, postgres):
    """The figure for BENCHMARKS.md (printed, not asserted): 8 jobs, 2 at a time, logging
    every 10 steps through ``mlflow server``, once over PostgreSQL and once over sqlite, in
    one run: metric values written, batches, retries, the slowest log_batch round trip. What
    is asserted: every value the outboxes counted as sent is in the store."""
    from conftest import MlflowServer
    rows = []
    for backend in ("postgresql", "sqlite"):
        folder = tmp_path / backend
        folder.mkdir()
        server = MlflowServer(folder, postgres.database("mlflow_bench")
                              if backend == "postgresql" else None)
        server.start()
        try:
            began = time.perf_counter()
            out = cli(["-m", "seed=0,1,2,3,4,5,6,7", "trainer=smoke", "model.channels=8",
                       "model.blocks=1", "trainer.progress=false", "trainer.steps=1000",
                       "trainer.log_every=10", "trainer.eval_every=500",
                       "tracking.checkpoint=false", *LAUNCHERS["joblib"]], folder,
                      env={"MLFLOW_TRACKING_URI": server.url}, timeout=1200)
            took = time.perf_counter() - began
            assert out.returncode == 0, out.stderr[-3000:]
            client = MlflowClient(server.url)
            runs = client.search_runs([client.get_experiment_by_name("sr_ablate")
                                       .experiment_id], filter_string="tags.`sr_ablate.outbox"
                                      ".writes` != ''")
            assert len(runs) == 8
            stored = sum(len(client.get_metric_history(r.info.run_id, k))
                         for r in runs for k in r.data.metrics)
            tags = [r.data.tags for r in runs]
            writes = sum(int(t["sr_ablate.outbox.writes"]) for t in tags)
            assert 8 * 100 <= writes <= stored  # train/loss alone: 100 values a job
            slowest = sorted(float(t["sr_ablate.outbox.slowest_ms"]) for t in tags)
            rows.append(f"| {backend} | {took:.0f} | {writes} | "
                        f"{sum(int(t['sr_ablate.outbox.batches']) for t in tags)} | "
                        f"{sum(int(t['sr_ablate.outbox.retries']) for t in tags)} | "
                        f"{slowest[-1]:.0f} | {slowest[len(slowest) // 2]:.0f} |")
        finally:
            server.stop()
    print("\n| server backend | sweep s | metric values sent | log_batch calls | retries "
          "| slowest log_batch ms | median job's slowest ms |\n|---|---|---|---|---|---|---|\n"
          + "\n".join(rows))
