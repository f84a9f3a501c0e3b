"""Interrupted runs resume to the same result: real processes, real signals, a real store."""
from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from conftest import TINY, cli, user_env
from mlflow.tracking import MlflowClient

from sr_ablate import UserError
from sr_ablate.training import checkpoint
from sr_ablate.training.job import run_job, seed_everything
from sr_ablate.training.loop import Interrupted


def start(args, cwd):
    return subprocess.Popen([sys.executable, "-m", "sr_ablate", *args], cwd=cwd, env=user_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def only_run(cwd):
    client = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
    exp = client.get_experiment_by_name("sr_ablate")
    (r,) = client.search_runs([exp.experiment_id])
    return client, r


def wait_for_checkpoint(cwd, step, proc, timeout=180):
    """Wait until the run's checkpoint holds ``step`` or later; returns its step. (The
    checkpoint, not the store, is watched: opening a sqlite store while the run creates it
    races in MLflow's schema migration.)"""
    end = time.time() + timeout
    while time.time() < end:
        assert proc.poll() is None, "the run ended before it could be interrupted"
        for path in (cwd / ".sr_ablate" / "checkpoints").glob("*.pt"):
            try:
                at = checkpoint.load(path)["step"]
            except Exception:
                continue  # replaced while we read it
            if at >= step:
                return at
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint at step {step} appeared")


def history(client, run_id, key):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key),
                                               key=lambda m: m.step)]


LONG = [*TINY, "tracking.checkpoint=false", "trainer.steps=400", "trainer.log_every=10",
        "trainer.eval_every=200", "trainer.checkpoint_every=50"]


@pytest.mark.slow  # the default run resumes in-process: test_checkpoint_faults.py
def test_sigterm_saves_a_checkpoint_ends_killed_and_resume_finishes_the_same_run(tmp_path):
    proc = start(LONG, tmp_path)
    wait_for_checkpoint(tmp_path, 50, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode not in (0, None), err[-2000:]
    assert "SIGTERM: stopping after this step with a checkpoint" in err
    client, r = only_run(tmp_path)
    assert r.info.status == "KILLED"
    stopped = r.data.tags["sr_ablate.stopped"]
    assert stopped.startswith("interrupted at step ") and stopped.endswith("(checkpoint saved)")
    at = int(stopped.split()[3])
    (ckpt,) = (tmp_path / ".sr_ablate" / "checkpoints").glob("*.pt")
    state = checkpoint.load(ckpt)
    assert state["step"] == at and state["run_id"] == r.info.run_id
    assert not list(ckpt.parent.glob("*.tmp"))  # written whole, renamed into place
    params = dict(r.data.params)

    done = cli([*LONG, "resume=true"], tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resuming run {r.info.run_id} at step {at}" in done.stderr
    client, again = only_run(tmp_path)  # still one run: the same one, finished
    assert again.info.run_id == r.info.run_id and again.info.status == "FINISHED"
    assert again.data.params == params  # params untouched
    assert [s for s, _ in history(client, r.info.run_id, "train/loss")] == list(range(10, 401, 10))
    assert [s for s, _ in history(client, r.info.run_id, "val/psnr")] == [200, 400]
    assert not ckpt.exists()  # finished: nothing left to resume


@pytest.mark.slow
def test_resume_without_a_checkpoint_starts_the_run(tmp_path):
    out = cli([*TINY, "resume=true"], tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "this configuration has no checkpoint: starting it" in out.stderr
    assert only_run(tmp_path)[1].info.status == "FINISHED"


@pytest.mark.slow
def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path):
    """The acceptance test: SIGKILL mid-way (between checkpoints), resume, compare every
    logged loss and the final evaluation with a run that was never interrupted. With an EMA
    of the weights and gradient accumulation on: both live in the checkpoint too."""
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    whole.mkdir(), cut.mkdir()
    args = [*LONG, "trainer.ema=0.99", "trainer.ema_start=100", "trainer.accumulate=2"]
    assert cli(args, whole, timeout=600).returncode == 0
    proc = start(args, cut)
    wait_for_checkpoint(cut, 100, proc)
    time.sleep(0.5)  # into the next 50 steps: logged past the checkpoint, then killed
    proc.kill()  # SIGKILL: no handler runs, the run stays RUNNING, the checkpoint is older
    proc.wait(timeout=60)
    client, r = only_run(cut)
    assert r.info.status == "RUNNING"
    killed_after = max(s for s, _ in history(client, r.info.run_id, "train/loss"))
    state = checkpoint.load(next((cut / ".sr_ablate" / "checkpoints").glob("*.pt")))
    assert state["step"] % 50 == 0 and state["step"] <= killed_after < 400
    done = cli([*args, "resume=true"], cut, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    client_w, w = only_run(whole)
    client_c, c = only_run(cut)
    assert c.info.run_id == r.info.run_id and c.info.status == "FINISHED"
    for key in ("train/loss", "val/psnr", "val/psnr_raw", "val/ssim"):
        assert history(client_c, c.info.run_id, key) == history(client_w, w.info.run_id, key), key
    print(f"killed after step {killed_after}, resumed from {state['step']}: val/psnr "
          f"{c.data.metrics['val/psnr']} == {w.data.metrics['val/psnr']}")


@pytest.mark.slow
def test_relaunching_a_sweep_resumes_its_interrupted_job_in_the_new_parent(tmp_path):
    sweep = ["-m", "seed=0,1", *LONG]
    proc = start(sweep, tmp_path)
    wait_for_checkpoint(tmp_path, 50, proc)  # the first job (seed=0), mid-way
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode not in (0, None)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("sr_ablate").experiment_id
    (killed,) = [r for r in client.search_runs([exp]) if "sr_ablate.role" not in r.data.tags]
    assert killed.info.status == "KILLED"

    again = cli(sweep, tmp_path, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"resuming run {killed.info.run_id} at step" in again.stderr
    runs = client.search_runs([exp])
    parents = sorted((r for r in runs if r.data.tags.get("sr_ablate.role") == "sweep"),
                     key=lambda r: r.info.start_time)
    children = [r for r in runs if r not in parents]
    assert [p.info.status for p in parents] == ["KILLED", "FINISHED"]
    assert len(children) == 2 and {c.info.status for c in children} == {"FINISHED"}
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[1].info.run_id}
    assert killed.info.run_id in {c.info.run_id for c in children}  # the same run, resumed
    for c in children:
        assert [s for s, _ in history(client, c.info.run_id, "train/loss")] == list(
            range(10, 401, 10))


def test_seeding_repeats_numpy_draws_and_a_checkpoint_restores_them(tmp_path):
    """NumPy's generator is seeded with the others (same seed, same draws), and its state
    travels in a checkpoint file and back, with Python's and torch's."""
    seed_everything(7)
    first = np.random.rand(4)
    np.random.rand(100)
    seed_everything(7)
    assert np.array_equal(np.random.rand(4), first)
    seed_everything(8)
    assert not np.array_equal(np.random.rand(4), first)

    np.random.randn(1)  # Box-Muller keeps its second value: the state's cached gaussian
    checkpoint.save_atomic({"rng": checkpoint.rng_state()}, tmp_path / "rng.pt")
    want = (np.random.rand(5), np.random.randn(3), random.random(), torch.rand(3))
    np.random.rand(50), random.random(), torch.rand(9)  # the process goes on drawing
    checkpoint.set_rng_state(checkpoint.load(tmp_path / "rng.pt")["rng"])
    got = (np.random.rand(5), np.random.randn(3), random.random(), torch.rand(3))
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    assert got[2] == want[2] and torch.equal(got[3], want[3])


def test_resume_into_another_experiment_is_refused_in_one_line(store, compose, tmp_path,
                                                                monkeypatch):
    """A checkpoint's run lives in experiment sr_ablate; resuming it with
    tracking.experiment=other stops before touching any run, and the checkpoint still
    resumes with the right experiment."""
    short = [*TINY, "tracking.checkpoint=false", "trainer.steps=6"]

    @contextmanager
    def stop_at_once():
        yield lambda: True  # as if SIGTERM came during the first step
    real = checkpoint.stop_on_signals
    monkeypatch.setattr(checkpoint, "stop_on_signals", stop_at_once)
    with pytest.raises(Interrupted):
        run_job(compose(short), cwd=str(tmp_path))
    monkeypatch.setattr(checkpoint, "stop_on_signals", real)
    client = MlflowClient(store)
    (ckpt,) = (tmp_path / ".sr_ablate" / "checkpoints").glob("*.pt")
    (run,) = client.search_runs([client.get_experiment_by_name("sr_ablate").experiment_id])
    assert run.info.status == "KILLED" and checkpoint.load(ckpt)["run_id"] == run.info.run_id

    with pytest.raises(UserError) as e:
        run_job(compose([*short, "resume=true", "tracking.experiment=other"]),
                cwd=str(tmp_path))
    msg = str(e.value)
    print(msg)
    assert "\n" not in msg
    assert f"MLflow run {run.info.run_id} of experiment 'sr_ablate', not 'other'" in msg
    assert "tracking.experiment=sr_ablate or resume=false" in msg
    again = client.get_run(run.info.run_id)
    assert (again.info.status, again.info.end_time, again.data.tags) == (
        run.info.status, run.info.end_time, run.data.tags)  # untouched
    other = client.get_experiment_by_name("other")
    assert other is None or client.search_runs([other.experiment_id]) == []
    assert ckpt.exists()

    run_job(compose([*short, "resume=true"]), cwd=str(tmp_path))
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
