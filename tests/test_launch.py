"""Grid sweeps that scale: jobs share cores and GPUs, a re-run skips what already FINISHED,
and the joblib launcher runs jobs in parallel on a fresh store."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO, TINY, cli
from mlflow.tracking import MlflowClient

from sr_ablate.config.hashing import config_hash
from sr_ablate.sweeps import resources

SWEEP = ["-m", "model.blocks=1,2", *[a for a in TINY if not a.startswith("model.blocks")]]


@pytest.mark.parametrize("jobs, requested, cores, gpus, expected", [
    (4, None, 2, 0, (2, 1)),     # this machine: two jobs at once, one thread each
    (1, None, 2, 0, (1, 2)),     # one job keeps every core
    (8, -1, 16, 0, (8, 2)),      # joblib's -1 = all cores, capped by the jobs
    (3, 10, 2, 0, (3, 1)),       # more jobs than cores when asked: at least a thread each
    (4, None, 16, 2, (2, 8)),    # two GPUs: two jobs at once, the cores split between them
    (6, -2, 4, 0, (3, 1)),       # -2 = all cores but one
])
def test_plan_shares_the_machine(jobs, requested, cores, gpus, expected):
    assert resources.plan(jobs, requested, cores, gpus) == expected


def test_sweep_size_counts_the_jobs():
    assert resources.sweep_size(["model.blocks=8,12", "seed=0,1,2", "trainer=smoke"]) == 6
    assert resources.sweep_size(["hydra/launcher=joblib", "loss=l1,l2",
                                 "hydra.launcher.n_jobs=2"]) == 2
    assert resources.sweep_size(["trainer=smoke"]) == 1


CLAIM = textwrap.dedent("""
    import json, sys, time
    from sr_ablate.sweeps.resources import claim_device
    with claim_device(sys.argv[1], 2, start=0, poll=0.05) as i:
        t0 = time.time()
        time.sleep(0.8)
        print(json.dumps({"device": i, "start": t0, "end": time.time()}))
""")


def test_parallel_jobs_never_share_a_device(tmp_path):
    """Three processes, two devices, all asking for device 0 first: two run at once on
    different devices, the third waits for one to be free."""
    procs = [subprocess.Popen([sys.executable, "-c", CLAIM, str(tmp_path / "pool")],
                              stdout=subprocess.PIPE, text=True) for _ in range(3)]
    held = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
    for a in held:
        for b in held:
            if a is not b and a["device"] == b["device"]:  # same device: one after the other
                assert a["end"] <= b["start"] + 0.05 or b["end"] <= a["start"] + 0.05
    assert {h["device"] for h in held} == {0, 1}


def test_config_hash_is_what_is_computed(compose):
    base = config_hash(compose(TINY))
    assert config_hash(compose(TINY)) == base
    for same in (["tracking.experiment=other"], ["sweep.force=true"], ["trainer.progress=true"],
                 ["trainer.device=cpu"]):
        assert config_hash(compose([*TINY, *same])) == base, same
    for other in (["model.blocks=2"], ["seed=1"], ["loss=l1"], ["eval.protocol=classic"]):
        assert config_hash(compose([*TINY, *other])) != base, other


def test_summary_line_says_what_was_skipped():
    line = resources.summary([{"outcome": "ran"}, {"outcome": "skipped"},
                              {"outcome": "failed"}])
    assert line.startswith("sr_ablate: 3 job(s): 1 ran, 1 skipped")
    assert "sweep.force=true" in line and "1 failed" in line


def _children(cwd):
    """(client, the runs that trained, the sweep parents); a relaunch's pointers to the runs
    it reused (``sr_ablate.reused_from``) are neither."""
    client = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
    exp = client.get_experiment_by_name("sr_ablate")
    runs = [r for r in client.search_runs([exp.experiment_id])
            if "sr_ablate.reused_from" not in r.data.tags]
    return client, [r for r in runs if r.data.tags.get("sr_ablate.role") != "sweep"], \
        [r for r in runs if r.data.tags.get("sr_ablate.role") == "sweep"]


@pytest.mark.slow
def test_grid_rerun_skips_finished_reruns_failed_and_force_runs_all(tmp_path):
    sweep = SWEEP
    first = cli(sweep, tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    assert first.stderr.count("sr_ablate: training in ") == 1  # the speed settings, said once
    client, runs, _ = _children(tmp_path)
    assert len(runs) == 2 and all("sr_ablate.config_hash" in r.data.tags for r in runs)

    again = cli(sweep, tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stderr.count("skip ") == 2
    assert "0 ran, 2 skipped" in again.stderr
    _, runs, parents = _children(tmp_path)
    assert len(runs) == 2 and len(parents) == 2

    failed = next(r for r in runs if r.data.params["model.blocks"] == "2")
    client.set_terminated(failed.info.run_id, "FAILED")  # as if it had crashed
    third = cli(sweep, tmp_path)
    assert third.returncode == 0 and "1 ran, 1 skipped" in third.stderr, third.stderr[-2000:]
    _, runs, _ = _children(tmp_path)
    assert sorted((r.data.params["model.blocks"], r.info.status) for r in runs) == [
        ("1", "FINISHED"), ("2", "FAILED"), ("2", "FINISHED")]

    forced = cli([*sweep, "sweep.force=true"], tmp_path)
    assert forced.returncode == 0 and "2 ran" in forced.stderr and "skip " not in forced.stderr
    _, runs, parents = _children(tmp_path)
    assert len(runs) == 5 and len(parents) == 4


@pytest.mark.slow  # default run under 10 min on 2 cores; CI's slow pass runs it
def test_joblib_runs_two_jobs_in_parallel_on_a_fresh_store(tmp_path):
    """... and on a fresh speed cache: the launcher measures the probe once, before the jobs
    start, and the parallel jobs read it (none measures beside another)."""
    cache = tmp_path / "speed-cache"
    out = cli([*SWEEP, "hydra/launcher=joblib"], tmp_path, env={"SR_ABLATE_CACHE": str(cache)})
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stderr.count("measuring the speed settings on this machine") == 1
    assert (cache / "speed.json").is_file()
    parallel, threads = resources.plan(2, None, resources.cores())
    assert f"{parallel} job(s) at a time, {threads} thread(s) each" in out.stderr
    assert "2 ran" in out.stderr
    _, runs, parents = _children(tmp_path)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(r.data.params["model.blocks"] for r in runs) == ["1", "2"]
    for r in runs:
        assert r.info.status == "FINISHED"
        assert r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert r.data.tags["torch.threads"] == str(threads)  # what the job really used
    a, b = (r.info for r in runs)  # in parallel: each run started before the other ended
    assert parallel == 2 and a.start_time < b.end_time and b.start_time < a.end_time
    assert not (tmp_path / ".sr_ablate").exists()  # the outcome files are cleaned up


def test_slurm_launcher_config_composes(tmp_path):
    out = subprocess.run([sys.executable, "-m", "sr_ablate", "hydra/launcher=slurm",
                          "hydra.launcher.partition=gpu", "--cfg", "hydra"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "SlurmLauncher" in out.stdout and "partition: gpu" in out.stdout
    assert "gpus_per_node: 1" in out.stdout
    assert (REPO / "conf" / "hydra" / "launcher" / "slurm.yaml").is_file()


@pytest.mark.slow
def test_four_parallel_jobs_write_twenty_runs_to_one_fresh_store(tmp_path):
    """20 jobs, 4 processes at a time, one sqlite file created by the launching process:
    every run lands FINISHED with all its metrics; nothing is lost to a locked database."""
    seeds = ",".join(str(i) for i in range(20))
    out = cli(["-m", *TINY, "tracking.checkpoint=false", f"seed={seeds}",
               "hydra/launcher=joblib", "hydra.launcher.n_jobs=4"], tmp_path, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "20 job(s): 20 ran" in out.stderr
    client, runs, parents = _children(tmp_path)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(int(r.data.params["seed"]) for r in runs) == list(range(20))
    for r in runs:
        assert r.info.status == "FINISHED"
        for key in ("train/loss", "val/psnr"):
            assert [m.step for m in client.get_metric_history(r.info.run_id, key)] == [2, 4]


@pytest.mark.slow
def test_a_store_locked_longer_than_mlflow_waits_is_retried(store):
    """Another process holds the sqlite store's write lock for 25 s, past the 20 s MLflow
    waits itself: the metric is still stored (sr_ablate retries with backoff), not lost."""
    import sqlite3
    import threading
    import time

    from sr_ablate import tracking
    with tracking.run(store, "e", params={"a": 1}, tags={}) as log:
        locked, db = threading.Event(), store[len("sqlite:///"):]

        def hold():
            con = sqlite3.connect(db, timeout=0, isolation_level=None)
            con.execute("BEGIN EXCLUSIVE")
            locked.set()
            time.sleep(25)
            con.execute("ROLLBACK")
            con.close()

        holder = threading.Thread(target=hold)
        holder.start()
        locked.wait()
        t = time.monotonic()
        log.log_metrics(1, {"x": 1.0})
        waited = time.monotonic() - t
        holder.join()
    assert waited > 20  # MLflow's own wait ran out: only the retry got it through
    client = MlflowClient(store)
    assert [(m.step, m.value) for m in client.get_metric_history(log.run_id, "x")] == [(1, 1.0)]
    assert client.get_run(log.run_id).info.status == "FINISHED"
