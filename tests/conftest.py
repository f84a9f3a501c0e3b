"""Shared fixtures: real Hydra composition, a real sqlite MLflow store in a temp dir."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
MODEL_CONFIGS = sorted(p.stem for p in (REPO / "conf" / "model").glob("*.yaml"))
# Small enough that a full run takes seconds on 2 CPU cores.
TINY = ["trainer=smoke", "model.blocks=1", "model.channels=8", "trainer.progress=false"]


@pytest.fixture(scope="session", autouse=True)
def speed_cache(tmp_path_factory):
    """The measured speed settings (``trainer.precision=auto``) in a folder of this test
    session's, shared by its runs and the processes ``cli`` starts: measured once per
    session, never written into the user's ~/.cache."""
    folder = tmp_path_factory.mktemp("speed-cache")
    before = os.environ.get("SR_ABLATE_CACHE")
    os.environ["SR_ABLATE_CACHE"] = str(folder)
    yield folder
    if before is None:
        os.environ.pop("SR_ABLATE_CACHE", None)
    else:
        os.environ["SR_ABLATE_CACHE"] = before


@pytest.fixture
def compose():
    from sr_ablate.config.validation import compose as _compose
    return _compose


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fresh sqlite tracking URI in a temp dir (and no inherited MLflow env)."""
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "SR_ABLATE_PARENT_RUN_ID",
                "SR_ABLATE_SWEEP_ID"):
        monkeypatch.delenv(var, raising=False)
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def user_env() -> dict:
    """The environment of a user's shell for a process a test starts: no inherited MLflow run
    or sr_ablate setting, except this session's speed cache (without it, a process measures
    its own speed settings and two runs compared bit for bit may differ in memory format)."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("MLFLOW_", "SR_ABLATE_")) or k == "SR_ABLATE_CACHE"}


def cli(args: list[str], cwd: Path, timeout: float = 300, command: str | None = None,
        env: dict | None = None):
    """Run ``python -m sr_ablate [COMMAND] ARGS`` in ``cwd`` like a user would (``command``:
    evaluate, report, download, bench; none: train); returns CompletedProcess."""
    env = {**user_env(), **(env or {})}
    cmd = [sys.executable, "-m", "sr_ablate", *([command] if command else []), *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def builtin_images() -> list[Path]:
    from sr_ablate.data import BUILTIN_TRAIN, BUILTIN_VAL, builtin_dir
    return [builtin_dir() / n for n in BUILTIN_TRAIN + BUILTIN_VAL]


def save_fake_vgg19(torch_home: Path) -> Path:
    """A torchvision-format VGG19 ``features`` state dict with random values, where
    torch.hub looks for it: tests the VGG54 plumbing without any download."""
    import torch

    from sr_ablate.models.vgg19 import VGG19Features
    torch.manual_seed(0)
    path = torch_home / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({f"features.{k}": v for k, v in VGG19Features().state_dict().items()}, path)
    return path


@pytest.fixture
def vgg_weights(tmp_path, monkeypatch):
    """TORCH_HOME pointing at a hub cache that holds fake VGG19 weights; no network."""
    path = save_fake_vgg19(tmp_path / "torch")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """A real ``mlflow server`` on 127.0.0.1 over ``backend`` (default: a sqlite store in
    ``folder``), artifacts proxied into ``folder/server-artifacts``; it can be stopped and
    started again on the same port and store (a server that goes away)."""

    def __init__(self, folder: Path, backend: str | None = None):
        self.folder, self.port, self.proc = folder, free_port(), None
        self.backend = backend or f"sqlite:///{folder / 'server.db'}"
        self.artifacts = folder / "server-artifacts"
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> str:
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port",
             str(self.port), "--workers", "1", "--backend-store-uri", self.backend,
             "--artifacts-destination", str(self.artifacts)],
            cwd=self.folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True)  # its own process group: stopped with all its workers
        deadline = time.time() + 120
        while True:  # stop it only after it answered (docs/protocol.md#mlflow-pitfalls)
            try:
                urllib.request.urlopen(f"{self.url}/health", timeout=2)
                return self.url
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    self.stop()
                    raise RuntimeError("mlflow server did not start") from None
                time.sleep(0.5)

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            pass
        self.proc = None


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server of this test session's (``pgserver.PostgresServer``); skips with
    the reason when this machine cannot start one."""
    from pgserver import PostgresServer, missing
    why = missing()
    if why:
        pytest.skip(why)
    server = PostgresServer()
    try:
        yield server.start()
    finally:
        server.remove()


@pytest.fixture
def pg_url(postgres, request):
    """A new, empty database on the session's PostgreSQL server, named after the test."""
    name = "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[:40]
    return postgres.database(f"{name}_{os.getpid()}_{int(time.time() * 1000) % 10**6}")


@pytest.fixture
def mlflow_server(tmp_path):
    server = MlflowServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


# A model option of a user's own config folder (``--config-dir``): SRResNet, small.
MYNET_YAML = """\
_target_: sr_ablate.models.SRResNet
channels: 8
blocks: 1
scale: ${scale}
"""


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """One tiny finished run (SRResNet x2 RGB, trainer=smoke) in its own sqlite store, shared
    by the tests that use a trained model: SimpleNamespace(cwd, uri, run_id, weights), where
    ``weights`` is the run's final.pt downloaded from MLflow."""
    from types import SimpleNamespace

    from mlflow.tracking import MlflowClient

    from sr_ablate.config.validation import compose as _compose
    from sr_ablate.training.job import run_job
    cwd = tmp_path_factory.mktemp("trained_run")
    uri = f"sqlite:///{cwd / 'mlflow.db'}"
    run_job(_compose(TINY + [f"tracking.uri={uri}"]), cwd=str(cwd))
    client = MlflowClient(uri)
    (r,) = client.search_runs([client.get_experiment_by_name("sr_ablate").experiment_id])
    weights = Path(client.download_artifacts(r.info.run_id, "checkpoints/final.pt",
                                             str(cwd)))
    return SimpleNamespace(cwd=cwd, uri=uri, run_id=r.info.run_id, weights=weights)


REPORT_SWEEP = """
study: rep
baseline: b2
overrides: [trainer=smoke, model.channels=8, trainer.progress=false]
grid: {seed: [0, 1]}
variants:
  b1: [model.blocks=1]
  b2: [model.blocks=2]
"""


@pytest.fixture(scope="session")
def reported(tmp_path_factory):
    """Four real runs (2 variants x 2 seeds) from a sweep file, then
    `python -m sr_ablate report`."""
    cwd = tmp_path_factory.mktemp("report")
    (cwd / "rep.yaml").write_text(REPORT_SWEEP)
    out = cli([f"sweep={cwd / 'rep.yaml'}"], cwd)
    assert out.returncode == 0, out.stderr[-3000:]
    out = cli(["rep"], cwd, command="report")
    assert out.returncode == 0, out.stderr[-3000:]
    return cwd, cwd / "reports" / "rep"


def stopped_after(steps: int, run, monkeypatch) -> None:
    """``run()`` with a stop request (as SIGTERM makes one) seen after ``steps`` optimiser
    steps: the loop polls once per step, saves a checkpoint and raises Interrupted."""
    from contextlib import contextmanager

    from sr_ablate.training import checkpoint
    from sr_ablate.training.loop import Interrupted
    polls = []

    @contextmanager
    def stop_after():
        yield lambda: polls.append(1) or len(polls) >= steps
    with monkeypatch.context() as m:
        m.setattr(checkpoint, "stop_on_signals", stop_after)
        with pytest.raises(Interrupted):
            run()


def read_results(path, **kwargs):
    """A report's results CSV as a reader should load it: run ids as text (a run id such as
    ``202e6316…`` would otherwise be read as the number 202 × 10^6316 = inf)."""
    import pandas as pd
    return pd.read_csv(path, dtype={"run_id": str}, **kwargs)
