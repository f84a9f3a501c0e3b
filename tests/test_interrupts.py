"""Ctrl-C loses nothing: not when the output is piped into a reader that Ctrl-C ended too
(``... 2>&1 | tee log``), and every stopped run or sweep says, and records, the command that
continues it. Real processes in their own sessions, real signals, a real sqlite store."""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import textwrap

import pandas as pd
import pytest
from conftest import MYNET_YAML, TINY, user_env
from mlflow.tracking import MlflowClient
from test_resume import history, wait_for_checkpoint

from sr_ablate import tracking
from sr_ablate.cli import interrupts
from sr_ablate.config.hashing import config_hash
from sr_ablate.config.validation import compose
from sr_ablate.report.build import select
from sr_ablate.sweeps import resources
from sr_ablate.training import checkpoint

# long enough to be stopped mid-way, one evaluation (at the end), a checkpoint every 20 steps
LONG = [*TINY, "tracking.checkpoint=false", "trainer.steps=400", "trainer.log_every=10",
        "trainer.eval_every=400", "trainer.checkpoint_every=20"]
SWEEP = ["-m", "seed=0,1", *LONG]


def start(args, cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE):
    """``python -m sr_ablate ARGS`` in its own session, as a shell's job: the test's SIGINT
    goes to it alone."""
    return subprocess.Popen([sys.executable, "-m", "sr_ablate", *args], cwd=cwd,
                            env={**user_env(), "OMP_NUM_THREADS": "1"}, stdout=stdout,
                            stderr=stderr, start_new_session=True)


def start_piped(args, cwd):
    """``python -m sr_ablate ARGS 2>&1 | tee tee.log``: returns (sr_ablate, tee)."""
    read, write = os.pipe()
    tee = subprocess.Popen(["tee", str(cwd / "tee.log")], stdin=read,
                           stdout=subprocess.DEVNULL, start_new_session=True)
    os.close(read)  # tee is the pipe's one reader: once it ends, the pipe has none
    proc = start(args, cwd, stdout=write, stderr=write)
    os.close(write)
    return proc, tee


def ckpt_of(args, cwd):
    return checkpoint.path_for(cwd, config_hash(compose([a for a in args if a != "-m"])))


def wait_for_file(path, proc, timeout=300):
    """Wait for the checkpoint ``path`` to exist while ``proc`` runs (a sweep's later job)."""
    import time
    end = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, "the sweep ended before its second job could be stopped"
        assert time.time() < end, f"{path} did not appear"
        time.sleep(0.05)


def runs(cwd):
    client = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
    exp = client.get_experiment_by_name("sr_ablate").experiment_id
    found = client.search_runs([exp], order_by=["attributes.start_time"])
    parents = [r for r in found if r.data.tags.get("sr_ablate.role") == "sweep"]
    return client, [r for r in found if r not in parents], parents


# -- the pipe ------------------------------------------------------------------------------

GUARDED = textwrap.dedent("""
    import os, sys
    from sr_ablate.cli import streams
    with streams.guarded():
        print("x" * 100_000)             # more than a pipe holds: the write meets EPIPE
        for i in range(10_000):          # dropped, quickly: nothing retries
            print(i, file=sys.stdout)
        print("still here", file=sys.stderr, flush=True)
        print("kept in the buffer")      # flushed when the block ends
    print("after the block", end="")     # the original stream, flushed at exit
    print(os.readlink("/proc/self/fd/1"), file=sys.stderr)
""")


def test_output_to_a_pipe_without_a_reader_is_dropped_quietly(tmp_path):
    read, write = os.pipe()
    subprocess.run(["true"], stdin=read, check=True)  # the reader came and went
    os.close(read)
    proc = subprocess.run([sys.executable, "-c", GUARDED], stdout=write,
                          stderr=subprocess.PIPE, text=True, timeout=60, env=user_env())
    os.close(write)
    assert proc.returncode == 0, proc.stderr
    # no BrokenPipeError, not even "Exception ignored" from the interpreter's last flush
    assert proc.stderr == f"still here\n{os.devnull}\n"


@pytest.mark.slow
def test_piped_run_stopped_after_its_reader_is_gone_keeps_its_checkpoint(tmp_path):
    """``sr_ablate ... 2>&1 | tee``, Ctrl-C: tee ends first; the run still saves its
    checkpoint and ends KILLED, and its resume command goes on from there to FINISHED."""
    proc, tee = start_piped(LONG, tmp_path)
    wait_for_checkpoint(tmp_path, 20, proc)
    tee.terminate()
    tee.wait(timeout=30)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=300) == 130
    client, (run,), _ = runs(tmp_path)
    assert run.info.status == "KILLED", run.data.tags.get("sr_ablate.error")
    stopped = run.data.tags["sr_ablate.stopped"]
    assert stopped.startswith("interrupted at step ") and "sr_ablate.error" not in run.data.tags
    at = int(stopped.split()[3])
    state = checkpoint.load(ckpt_of(LONG, tmp_path))
    assert state["step"] == at > 20 and state["run_id"] == run.info.run_id

    command = run.data.tags[tracking.RESUME_TAG]  # what `mlflow ui` shows on the KILLED run
    assert command == "python -m sr_ablate " + shlex.join([*LONG, "resume=true"])
    done = subprocess.run([sys.executable, *shlex.split(command)[1:]], cwd=tmp_path,
                          env=user_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resuming run {run.info.run_id} at step {at}" in done.stderr
    client, (again,), _ = runs(tmp_path)
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    assert tracking.RESUME_TAG not in again.data.tags  # done: nothing left to continue
    assert [s for s, _ in history(client, run.info.run_id, "train/loss")] == list(
        range(10, 401, 10))  # each step once: none lost, none from step 0 again


@pytest.mark.slow
def test_piped_sweep_stopped_after_its_reader_is_gone_ends_killed_not_failed(tmp_path):
    proc, tee = start_piped(SWEEP, tmp_path)
    second = ckpt_of([*LONG, "seed=1"], tmp_path)
    wait_for_file(second, proc)
    tee.terminate()
    tee.wait(timeout=30)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=300) == 130
    _, children, (parent,) = runs(tmp_path)
    assert [c.info.status for c in children] == ["FINISHED", "KILLED"]
    killed = children[1]
    assert "sr_ablate.error" not in killed.data.tags
    assert checkpoint.load(second)["run_id"] == killed.info.run_id
    assert parent.info.status == "KILLED"


# -- what a stopped run or sweep says ------------------------------------------------------

def test_the_resume_command_is_the_one_typed_with_resume_true(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/x/sr_ablate/__main__.py"])
    typed = ["--config-dir", "my confs", "eval.sets=[val,set5]", "resume=false", "seed=1"]
    assert interrupts.resume_command(typed, sweep=False) == (
        "python -m sr_ablate --config-dir 'my confs' 'eval.sets=[val,set5]' seed=1 resume=true")
    assert interrupts.resume_command(["-m", "seed=0,1", "sweep.force=true"], sweep=True) == (
        "python -m sr_ablate -m seed=0,1")  # forced again, its FINISHED jobs would run again
    monkeypatch.setattr(sys, "argv", ["/venv/bin/sr-ablate"])
    assert interrupts.resume_command(["sweep=srcnn_variants"], sweep=True) == (
        "sr-ablate sweep=srcnn_variants")


def test_summary_counts_every_job_of_a_stopped_sweep():
    results = [{"outcome": "ran"}, {"outcome": "interrupted", "checkpoint": True}]
    assert resources.summary(results, 4) == (
        "sr_ablate: 4 job(s): 1 ran, 1 interrupted (checkpoint saved), 2 not started")
    assert resources.summary([{"outcome": "interrupted", "checkpoint": False}]) == (
        "sr_ablate: 1 job(s): 0 ran, 1 interrupted (before their first checkpoint)")


@pytest.mark.slow
def test_a_stopped_run_ends_with_the_command_that_continues_it(tmp_path):
    mine = tmp_path / "my confs"  # a folder of the user's, with a space to quote
    (mine / "model").mkdir(parents=True)
    (mine / "model" / "mynet.yaml").write_text(MYNET_YAML)
    args = ["--config-dir", str(mine), "model=mynet", *LONG, "eval.sets=[val]"]
    proc = start(args, tmp_path)
    wait_for_checkpoint(tmp_path, 20, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-2000:]
    (run,) = runs(tmp_path)[1]
    at = int(run.data.tags["sr_ablate.stopped"].split()[3])
    command = "python -m sr_ablate " + shlex.join([*args, "resume=true"])
    assert "'eval.sets=[val]'" in command and shlex.quote(str(mine)) in command
    assert err.decode().splitlines()[-1] == (
        f"sr_ablate: interrupted at step {at} (checkpoint saved); to continue: {command}")
    assert run.data.tags[tracking.RESUME_TAG] == command


@pytest.mark.slow
def test_a_stopped_sweep_accounts_for_every_job_and_its_command_continues_it(tmp_path):
    """Ctrl-C in the second job: the summary and the table count it, the last line is the
    same sweep command; run again it shows the FINISHED job it reused under its own parent
    (a pointer run), resumes the other, and every query sees each configuration once."""
    proc = start(SWEEP, tmp_path)
    second = ckpt_of([*LONG, "seed=1"], tmp_path)
    wait_for_file(second, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    out, err = out.decode(), err.decode()
    assert proc.returncode == 130, err[-2000:]
    _, (first, killed), (parent,) = runs(tmp_path)
    command = "python -m sr_ablate " + shlex.join(SWEEP)
    assert "sr_ablate: 2 job(s): 1 ran, 1 interrupted (checkpoint saved)" in err
    assert err.splitlines()[-1] == (
        "sr_ablate: sweep interrupted; to continue it (FINISHED jobs are skipped, interrupted "
        f"ones resume from their checkpoints): {command}")
    lines = [line for line in out.splitlines() if line.startswith("  seed=")]
    rows = [line.split() for line in lines]
    assert [r[:2] for r in rows] == [["seed=0", "ran"], ["seed=1", "interrupted"]]
    assert rows[1][4] == killed.info.run_id and lines[1].endswith("(checkpoint saved))")
    assert killed.data.tags[tracking.RESUME_TAG] == command

    again = subprocess.run([sys.executable, *shlex.split(command)[1:]], cwd=tmp_path,
                           env=user_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"FINISHED run {first.info.run_id} has the same config hash" in again.stderr
    assert f"resuming run {killed.info.run_id} at step" in again.stderr
    assert "2 job(s): 1 ran, 1 skipped" in again.stderr
    client, children, parents = runs(tmp_path)
    new = next(p for p in parents if p.info.run_id != parent.info.run_id)
    under = {c.info.run_id: c for c in children
             if c.data.tags["mlflow.parentRunId"] == new.info.run_id}
    (pointer,) = [c for c in under.values() if tracking.REUSED_FROM in c.data.tags]
    assert set(under) == {pointer.info.run_id, killed.info.run_id}  # both jobs shown there
    assert pointer.info.status == "FINISHED"
    assert pointer.data.tags[tracking.REUSED_FROM] == first.info.run_id
    assert pointer.data.tags["mlflow.runName"] == first.info.run_name + " (reused)"
    assert first.info.run_id in pointer.data.tags["mlflow.note.content"]
    assert pointer.data.params == first.data.params
    assert pointer.data.metrics == first.data.metrics
    assert "sr_ablate.config_hash" not in pointer.data.tags

    # each configuration once: the skip check, the runs table and a report's selection
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg0 = compose([*LONG, "seed=0"])
    assert tracking.finished_run(uri, "sr_ablate", config_hash(cfg0)) == first.info.run_id
    frame = tracking.runs_frame(uri, parents=True)
    assert pointer.info.run_id not in set(frame["run_id"])
    role = frame.get("tag:sr_ablate.role", pd.Series(index=frame.index, dtype=str))
    trained, sweeps = frame[role != "sweep"], frame[role == "sweep"]
    assert sorted(trained["seed"]) == ["0", "1"]
    for name in ("sr_ablate", new.data.tags["sr_ablate.sweep_id"], new.info.run_id):
        chosen = select(trained, name, sweeps)
        assert sorted(chosen["run_id"]) == sorted([first.info.run_id, killed.info.run_id]), name
