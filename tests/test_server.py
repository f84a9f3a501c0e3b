"""A sweep against a real MLflow tracking server (``mlflow server`` on 127.0.0.1 with a temp
sqlite store), reached only through MLFLOW_TRACKING_URI, as jobs on a cluster would."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from mlflow.tracking import MlflowClient

from conftest import TINY, cli


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts")],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True)  # its own process group: stopped with all its workers
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:  # stop it only after it answered (design notes section 4)
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail(f"mlflow server did not start: {proc.stderr.read()[-2000:]}")
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.slow
def test_sweep_through_a_tracking_server(tmp_path, server):
    work = tmp_path / "work"
    work.mkdir()
    sweep = ["-m", "model.blocks=1,2", *[a for a in TINY if not a.startswith("model.blocks")]]
    out = cli(sweep, work, env={"MLFLOW_TRACKING_URI": server})
    assert out.returncode == 0, out.stderr[-3000:]
    assert not (work / "mlflow.db").exists()  # nothing went to a local store
    client = MlflowClient(server)
    exp = client.get_experiment_by_name("sr_ablate")
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("sr_ablate.role") == "sweep"]
    children = [r for r in runs if r is not parent]
    assert parent.info.status == "FINISHED" and len(children) == 2
    for c in children:
        assert c.info.status == "FINISHED"
        assert c.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert "val/psnr" in c.data.metrics
        names = {a.path for a in client.list_artifacts(c.info.run_id, "checkpoints")}
        assert names == {"checkpoints/final.pt"}  # artifacts went through the server
    # a re-run of the sweep sees the server's FINISHED runs and skips them
    again = cli(sweep, work, env={"MLFLOW_TRACKING_URI": server})
    assert again.returncode == 0 and "0 ran, 2 skipped" in again.stderr, again.stderr[-2000:]


@pytest.mark.parametrize("how", [[], pytest.param(["-m", "seed=0,1"], marks=pytest.mark.slow),
                                 pytest.param(["sweep=srresnet_optuna"], marks=pytest.mark.slow)],
                         ids=["run", "grid", "optuna"])
def test_unreachable_server_is_one_line_before_any_work(tmp_path, how):
    """Nothing listens on the port: the command stops at once, before training."""
    uri = f"http://127.0.0.1:{free_port()}"
    t = time.perf_counter()
    out = cli([*how, *TINY], tmp_path, env={"MLFLOW_TRACKING_URI": uri}, timeout=120)
    took = time.perf_counter() - t
    assert out.returncode == 2, out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: MLflow tracking server {uri} does not answer ([Errno 111] "
                      "Connection refused); start it (mlflow server --host 127.0.0.1 --port "
                      "5000) or set tracking.uri=sqlite:///mlflow.db"], out.stderr[-2000:]
    assert "Traceback" not in out.stderr and not (tmp_path / "mlflow.db").exists()
    assert not (tmp_path / "optuna.db").exists()
    print(f"stopped after {took:.1f} s")
