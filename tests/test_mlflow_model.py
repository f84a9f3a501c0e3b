"""Every finished run is an MLflow Model: loaded by ``mlflow.pyfunc`` in a fresh process,
served by ``mlflow models serve``, registered with the alias ``best`` by the report, and
addressed as ``models:/<name>@best`` by ``upscale`` and ``evaluate``."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from conftest import TINY, builtin_images, cli, free_port, user_env
from mlflow.models import Model
from mlflow.tracking import MlflowClient
from PIL import Image

from sr_ablate.cli.main import main
from sr_ablate.inference.trained import from_checkpoint
from sr_ablate.inference.upscale import upscale_array


def photo(h: int = 24, w: int = 32) -> np.ndarray:
    (path,) = [p for p in builtin_images() if p.stem == "chelsea"]
    return np.asarray(Image.open(path).convert("RGB"))[100:100 + h, 150:150 + w].copy()


def clean_env(uri: str) -> dict:
    return {**user_env(), "MLFLOW_TRACKING_URI": uri}


def test_a_run_logs_a_pyfunc_model_with_signature_and_example(trained_run):
    client = MlflowClient(trained_run.uri)
    names = {a.path for a in client.list_artifacts(trained_run.run_id, "model")}
    assert {"model/MLmodel", "model/requirements.txt", "model/input_example.json",
            "model/artifacts"} <= names
    folder = client.download_artifacts(trained_run.run_id, "model", str(trained_run.cwd / "m"))
    model = Model.load(folder)
    image = [{"type": "tensor", "tensor-spec": {"dtype": "uint8", "shape": (-1, -1, -1)}}]
    assert "python_function" in model.flavors
    assert model.signature.inputs.to_dict() == image == model.signature.outputs.to_dict()
    example = np.asarray(json.load(open(os.path.join(folder, "input_example.json"))))
    assert example.shape == (8, 8, 3)
    reqs = open(os.path.join(folder, "requirements.txt")).read().split()
    assert any(r.startswith("sr_ablate==") for r in reqs) and any(r.startswith("torch==")
                                                                 for r in reqs)
    # the weights inside are the run's final.pt
    inside = from_checkpoint(os.path.join(folder, "artifacts", "final.pt"))
    outside = from_checkpoint(trained_run.weights)
    assert all((a == b).all() for a, b in zip(inside.model.state_dict().values(),
                                               outside.model.state_dict().values()))


def test_pyfunc_loads_in_a_fresh_process_without_configs(trained_run, tmp_path):
    img = photo()
    np.save(tmp_path / "in.npy", img)
    code = (
        "import sys, numpy as np, mlflow\n"
        f"m = mlflow.pyfunc.load_model('runs:/{trained_run.run_id}/model')\n"
        "x = np.load('in.npy')\n"
        "np.save('out.npy', m.predict(x))\n"
        "np.save('gray.npy', m.predict(x[..., :1]))\n"
        "print('hydra' in sys.modules, 'sr_ablate.config' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, env=clean_env(trained_run.uri), timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]  # neither Hydra nor the configs loaded
    got = np.load(tmp_path / "out.npy")
    want = upscale_array(from_checkpoint(trained_run.weights), img)
    assert got.dtype == np.uint8 and got.shape == (48, 64, 3) and np.array_equal(got, want)
    assert np.load(tmp_path / "gray.npy").shape == (48, 64, 1)


def test_the_model_is_served_and_answers_a_real_request(trained_run, tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m",
         f"runs:/{trained_run.run_id}/model", "--env-manager", "local", "-h", "127.0.0.1",
         "-p", str(port), "-w", "1"],
        cwd=tmp_path, env=clean_env(trained_run.uri), stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                assert proc.poll() is None and time.time() < deadline, "server did not start"
                time.sleep(0.5)
        img = photo(6, 8)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", method="POST",
            data=json.dumps({"inputs": img.tolist()}).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as r:
            answer = json.loads(r.read())
        got = np.asarray(answer["predictions"])
        want = upscale_array(from_checkpoint(trained_run.weights), img)
        assert got.shape == (12, 16, 3) and np.array_equal(got, want)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two finished runs of one experiment, two variants (1 and 2 blocks, seed 0) that differ
    in val PSNR."""
    from sr_ablate.config.validation import compose
    from sr_ablate.training.job import run_job
    cwd = tmp_path_factory.mktemp("registry")
    tiny = [a for a in TINY if not a.startswith("model.blocks=")]
    for blocks in (1, 2):
        run_job(compose([*tiny, f"model.blocks={blocks}"]), cwd=str(cwd))
    client = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("sr_ablate").experiment_id])
    return cwd, {r.data.params["model.blocks"]: r for r in runs}


@pytest.mark.slow  # default run under 10 min on 2 cores; CI's slow pass runs it
def test_report_registers_the_best_run_and_upscale_and_evaluate_use_the_alias(two_runs):
    cwd, runs = two_runs
    best = max(runs.values(), key=lambda r: r.data.metrics["val/psnr"])
    worst = min(runs.values(), key=lambda r: r.data.metrics["val/psnr"])
    out = cli(["--register", "srnet", "--metric", "val/psnr"], cwd, command="report")
    assert out.returncode == 0, out.stderr
    blocks = best.data.params["model.blocks"]
    assert (f"registered run {best.info.run_id} as models:/srnet/1 (@best) from sr_ablate: "
            f"variant model.blocks={blocks}: val/psnr {best.data.metrics['val/psnr']:.4f} (1 "
            "seed: its spread between runs is unknown), the highest mean of 2 variants; its "
            "seed 0 is the best of them on val/psnr; it is below bicubic "
            f"({best.data.metrics['val/bicubic_psnr']:.4f}): undertrained") in out.stdout
    client = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
    version = client.get_model_version_by_alias("srnet", "best")
    assert version.run_id == best.info.run_id and version.tags == {
        "sr_ablate.chosen_by": "val/psnr",
        "val/psnr": f"{best.data.metrics['val/psnr']:.6g}"}
    # the alias moves to a new version when another metric chooses another run
    out = cli(["--register", "srnet", "--metric", "val/psnr", "--lowest"], cwd,
              command="report")
    assert out.returncode == 0 and "as models:/srnet/2 (@best) from sr_ablate: variant " \
        f"model.blocks={worst.data.params['model.blocks']}" in out.stdout
    assert "the lowest mean of 2 variants" in out.stdout
    assert client.get_model_version_by_alias("srnet", "best").run_id == worst.info.run_id
    # upscale and evaluate take the registry's names
    Image.fromarray(photo()).save(cwd / "in.png")
    up = cli(["model=models:/srnet@best", "input=in.png", "output=out.png"], cwd,
             command="upscale")
    assert up.returncode == 0 and "out.png: 32x24 -> 64x48" in up.stdout, up.stderr
    one = cli(["model=models:/srnet/1", "input=in.png", "output=one.png"], cwd,
              command="upscale")
    assert one.returncode == 0
    weights = lambda r: client.download_artifacts(  # noqa: E731
        r.info.run_id, "checkpoints/final.pt", str(cwd / r.info.run_id))
    for name, run in (("out.png", worst), ("one.png", best)):
        want = upscale_array(from_checkpoint(weights(run)), photo())
        assert np.array_equal(np.asarray(Image.open(cwd / name)), want)
    (cwd / "hr").mkdir(exist_ok=True)
    Image.fromarray(photo(48, 64)).save(cwd / "hr" / "cat.png")
    ev = cli(["model=models:/srnet/1", f"eval.data={cwd / 'hr'}", "eval.format=json"], cwd,
             command="evaluate")
    assert ev.returncode == 0, ev.stderr
    assert ev.stdout.strip().splitlines()[-1].startswith("{")


@pytest.mark.parametrize("args, expected", [
    (["--register", "srnet"], "--register needs --metric"),
    (["--register", "srnet", "--metric", "set5/psnr"],
     "--metric set5/psnr: no finished run of this report's selection has it; choose one of "
     "val/psnr, val/ssim"),
])
def test_register_refuses_in_one_line(two_runs, args, expected, capsys, monkeypatch):
    cwd, _ = two_runs
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    status = main(["report", "--out", str(cwd / "reports-refused"), *args])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert status == 2 and len(errors) == 1 and expected in errors[0], errors


@pytest.mark.parametrize("spec, expected", [
    ("models:/nosuch@best", "is not in the model registry of"),
    ("models:/srnet", "names no version; give models:/srnet/<version> or models:/srnet@best"),
])
def test_unknown_registry_names_are_one_line(two_runs, spec, expected, capsys, monkeypatch):
    cwd, _ = two_runs
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    Image.fromarray(photo()).save(cwd / "in2.png")
    status = main(["upscale", f"model={spec}", "input=in2.png", "output=never.png"])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert status == 2 and len(errors) == 1 and expected in errors[0], errors
    assert not (cwd / "never.png").exists()
