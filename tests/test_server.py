"""A sweep against a real MLflow tracking server (``mlflow server`` on 127.0.0.1 with a temp
sqlite store), reached only through MLFLOW_TRACKING_URI, as jobs on a cluster would; the
server going away mid-run with sqlite or PostgreSQL behind it (the outbox keeps the metrics)."""
from __future__ import annotations

import time

import pytest
from conftest import TINY, cli, free_port
from mlflow.tracking import MlflowClient

from sr_ablate import UserError
from sr_ablate.training import checkpoint
from sr_ablate.training.job import run_job


@pytest.fixture
def server(mlflow_server):
    return mlflow_server.url


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


MID = [*TINY, "trainer.steps=8", "trainer.eval_every=2", "trainer.log_every=1",
       "tracking.checkpoint=false"]


def logged_steps(url: str, key: str) -> tuple[str, list[int]]:
    client = MlflowClient(url)
    (r,) = client.search_runs([client.get_experiment_by_name("sr_ablate").experiment_id])
    return r, sorted(m.step for m in client.get_metric_history(r.info.run_id, key))


@pytest.fixture(params=["sqlite", "postgresql"])
def backed_server(request, tmp_path):
    """``mlflow server`` over a sqlite file, or over a PostgreSQL database (the cluster
    recipe's backend; skipped where PostgreSQL cannot be started)."""
    from conftest import MlflowServer
    backend = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    server = MlflowServer(tmp_path, backend)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fail_fast(monkeypatch, store):
    """MLflow's own retries would hold each send for minutes; the Outbox does the waiting."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")


@pytest.mark.slow
def test_server_down_mid_run_training_goes_on_and_every_metric_arrives_once(
        tmp_path, compose, backed_server, fail_fast, capsys):
    def on_eval(step, metrics):
        if step == 2:
            backed_server.stop()  # steps 3-6 are logged while nothing answers
        if step == 6:
            backed_server.start()

    run_job(compose([*MID, f"tracking.uri={backed_server.url}"]), cwd=str(tmp_path),
        on_eval=on_eval)
    err = capsys.readouterr().err
    assert "does not answer" in err and "training goes on" in err and "answers again" in err
    r, steps = logged_steps(backed_server.url, "train/loss")
    assert r.info.status == "FINISHED" and steps == list(range(1, 9))
    assert logged_steps(backed_server.url, "val/psnr")[1] == [2, 4, 6, 8]


@pytest.mark.slow
def test_server_gone_at_the_end_fails_loudly_and_resume_sends_the_kept_metrics(
        tmp_path, compose, backed_server, fail_fast):
    def on_eval(step, metrics):
        if step == 4:
            backed_server.stop()  # and it does not come back before the run ends

    args = [*MID, f"tracking.uri={backed_server.url}", "tracking.flush_timeout=3"]
    with pytest.raises(UserError) as e:
        run_job(compose(args), cwd=str(tmp_path), on_eval=on_eval)
    msg = str(e.value)
    assert "\n" not in msg and "has not answered for 3 s: training finished" in msg
    assert "run the same command with resume=true" in msg
    (ckpt,) = (tmp_path / ".sr_ablate" / "checkpoints").glob("*.pt")
    kept = checkpoint.load(ckpt)
    assert kept["step"] == 8 and {s for k, _, _, s in kept["unsent"] if k == "train/loss"} >= {
        5, 6, 7, 8}

    backed_server.start()
    run_job(compose([*args, "resume=true"]), cwd=str(tmp_path))
    r, steps = logged_steps(backed_server.url, "train/loss")
    assert r.info.status == "FINISHED" and steps == list(range(1, 9))
    assert logged_steps(backed_server.url, "val/psnr")[1] == [2, 4, 6, 8]
    assert not ckpt.exists()
