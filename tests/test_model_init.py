"""``model.init``: a run starts from a trained run's weights. Checked by value on a real tiny
x2 SRResNet run (trained through the command line, its final.pt read from MLflow)."""
from __future__ import annotations

import fnmatch
import hashlib
import shutil
from types import SimpleNamespace

import pytest
import torch
from conftest import TINY, cli
from mlflow.tracking import MlflowClient

from sr_ablate import UserError
from sr_ablate.cli.main import main
from sr_ablate.config.hashing import config_hash
from sr_ablate.training import checkpoint
from sr_ablate.training.init import settle, start_from
from sr_ablate.training.job import instantiate_node, run_job, seed_everything


@pytest.fixture(scope="module")
def x2_run(tmp_path_factory):
    """A finished tiny x2 SRResNet run made with ``python -m sr_ablate``:
    SimpleNamespace(cwd, uri, run_id, weights (its final.pt, downloaded))."""
    cwd = tmp_path_factory.mktemp("x2")
    out = cli(TINY, cwd)
    assert out.returncode == 0, out.stderr[-3000:]
    uri = f"sqlite:///{cwd / 'mlflow.db'}"
    client = MlflowClient(uri)
    (r,) = client.search_runs([client.get_experiment_by_name("sr_ablate").experiment_id])
    weights = client.download_artifacts(r.info.run_id, "checkpoints/final.pt", str(cwd))
    return SimpleNamespace(cwd=cwd, uri=uri, run_id=r.info.run_id, weights=weights)


def runs(uri: str) -> list:
    client = MlflowClient(uri)
    return [r for e in client.search_experiments()
            for r in client.search_runs([e.experiment_id])]


def named(tag: str, names: list[str]) -> set[str]:
    """The tensor names a tag ``"N of M tensors: body.*, tail.weight"`` stands for."""
    patterns = tag.split(": ", 1)[1].split(", ")
    return {n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)}


@pytest.mark.parametrize("strict", [True, False])
def test_init_loads_exactly_the_tensors_it_reports(x2_run, compose, tmp_path, strict, capsys):
    overrides = [*TINY, f"model.init={x2_run.weights}", f"tracking.uri={x2_run.uri}"]
    if not strict:  # x4 from x2: the second upsampling stage has nothing to come from
        overrides += ["scale=4", "model.init_strict=false"]
    cfg = compose(overrides)
    seed_everything(cfg.seed)
    model = instantiate_node(cfg.model)
    seed_everything(cfg.seed)
    fresh = instantiate_node(cfg.model).state_dict()
    tags = start_from(cfg, model, str(tmp_path))

    source = torch.load(x2_run.weights, weights_only=True)["model"]
    got = model.state_dict()
    fits = {k for k, v in got.items() if k in source and source[k].shape == v.shape}
    assert named(tags["sr_ablate.init.loaded"], list(got)) == fits
    assert tags["sr_ablate.init.loaded"].startswith(f"{len(fits)} of {len(got)} tensors: ")
    for k, v in got.items():
        assert torch.equal(v, source[k] if k in fits else fresh[k]), k
    # the loaded weights are the trained ones, not what a fresh model starts with
    assert not torch.equal(source["body.0.body.0.weight"], fresh["body.0.body.0.weight"])
    if strict:
        assert fits == set(got) and tags["sr_ablate.init.kept_initial"] == "none"
    else:
        kept = set(got) - fits
        assert kept == {"up.1.0.weight", "up.1.0.bias", "up.1.2.weight"}
        assert tags["sr_ablate.init.kept_initial"] == "3 of 33 tensors: up.1.*"
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"sr_ablate: model.init={x2_run.weights}: loaded ")
    assert cfg.model.init_sha256 == hashlib.sha256(open(x2_run.weights, "rb").read()).hexdigest()


@pytest.mark.slow  # default run under 10 min on 2 cores; CI's slow pass runs it
def test_x4_run_from_a_x2_run_through_the_command_line(x2_run):
    before = {r.info.run_id for r in runs(x2_run.uri)}
    out = cli([*TINY, "scale=4", f"model.init={x2_run.run_id}", "model.init_strict=false"],
              x2_run.cwd)
    assert out.returncode == 0, out.stderr[-3000:]
    (run,) = [r for r in runs(x2_run.uri) if r.info.run_id not in before]
    said = [x for x in out.stderr.splitlines() if x.startswith("sr_ablate: model.init=")]
    assert len(said) == 1 and "loaded 30 of 33 tensors" in said[0], out.stderr[-3000:]
    assert "kept at initialisation: up.1.*" in said[0]
    sha = hashlib.sha256(open(x2_run.weights, "rb").read()).hexdigest()
    assert run.data.params["model.init"] == x2_run.run_id
    assert run.data.params["model.init_sha256"] == sha
    assert run.data.params["model.init_strict"] == "False"
    assert run.data.tags["sr_ablate.init.kept_initial"] == "3 of 33 tensors: up.1.*"
    assert run.data.tags["sr_ablate.init.loaded"] == (
        "30 of 33 tensors: head.*, body.*, body_tail.*, up.0.*, tail.*")
    # 4 Adam steps of lr 1e-4 move each weight by about 4e-4 at most: the body it ended with
    # is the x2 run's, not a fresh initialisation's
    x4 = MlflowClient(x2_run.uri).download_artifacts(run.info.run_id, "checkpoints/final.pt",
                                                     str(x2_run.cwd / "x4"))
    ended = torch.load(x4, weights_only=True)["model"]
    source = torch.load(x2_run.weights, weights_only=True)["model"]
    for k in ("head.0.weight", "body.0.body.0.weight", "body_tail.0.weight", "tail.weight"):
        assert (ended[k] - source[k]).abs().max() < 2e-3, k


@pytest.mark.parametrize("case", ["strict_mismatch", "not_a_checkpoint", "unknown_run",
                                  "unknown_name", "other_class", "sha_by_hand"])
def test_bad_init_is_one_line_and_creates_no_run(x2_run, tmp_path, case, capsys):
    args = [*TINY, f"tracking.uri={x2_run.uri}"]
    notes = tmp_path / "notes.pt"
    notes.write_text("not weights")
    args += {
        "strict_mismatch": ["scale=4", f"model.init={x2_run.run_id}"],
        "not_a_checkpoint": [f"model.init={notes}"],
        "unknown_run": ["model.init=0123456789abcdef0123456789abcdef"],
        "unknown_name": ["model.init=models:/nosuch@best"],
        "other_class": ["model=edsr_baseline", f"model.init={x2_run.run_id}"],
        "sha_by_hand": ["+model.init_sha256=abc"],
    }[case]
    expect = {
        "strict_mismatch": f"model.init={x2_run.run_id}: its weights do not fit this model "
                           "(up.1.0.weight is not in the file); use model.init_strict=false to "
                           "load the tensors that fit, or a run of the same architecture",
        "not_a_checkpoint": f"model.init={notes}: {notes} is not an sr_ablate checkpoint",
        "unknown_run": "model.init=0123456789abcdef0123456789abcdef: MLflow run "
                       "'0123456789abcdef0123456789abcdef' does not exist in",
        "unknown_name": "model.init=models:/nosuch@best: models:/nosuch@best is not in the "
                        "model registry",
        "other_class": f"model.init={x2_run.run_id}: it is a sr_ablate.models.SRResNet, this "
                       "run trains EDSR",
        "sha_by_hand": "model.init_sha256 is set from the weights model.init names",
    }[case]
    before = len(runs(x2_run.uri))
    status = main(args)
    err = capsys.readouterr().err
    errors = [x for x in err.splitlines() if x.startswith("error:")]
    assert status == 2 and len(errors) == 1 and expect in errors[0], err
    assert len(runs(x2_run.uri)) == before


def test_a_misfit_init_stops_run_job_before_its_run_opens(x2_run, compose, tmp_path):
    cfg = compose([*TINY, "scale=4", f"model.init={x2_run.weights}", f"tracking.uri={x2_run.uri}"])
    before = len(runs(x2_run.uri))
    with pytest.raises(UserError, match="its weights do not fit this model"):
        run_job(cfg, cwd=str(tmp_path))
    assert len(runs(x2_run.uri)) == before


def test_config_hash_follows_the_init_weights(x2_run, compose, tmp_path):
    path = tmp_path / "final.pt"
    other = torch.load(x2_run.weights, weights_only=True)
    other["model"]["tail.bias"] += 1  # the same file name, other weights
    torch.save(other, tmp_path / "other.pt")

    def hashed(src) -> str:
        shutil.copy(src, path)
        cfg = compose([*TINY, f"model.init={path}"])
        settle(cfg, str(tmp_path))
        assert cfg.model.init_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        return config_hash(cfg)

    first = hashed(x2_run.weights)
    assert hashed(tmp_path / "other.pt") != first
    assert hashed(x2_run.weights) == first
    assert config_hash(compose(TINY)) != first


def test_a_resumed_run_keeps_its_checkpoint_not_the_init_weights(x2_run, compose, tmp_path):
    cfg = compose([*TINY, f"model.init={x2_run.weights}", "resume=true"])
    settle(cfg, str(tmp_path))
    ckpt = checkpoint.path_for(tmp_path, config_hash(cfg))
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"")  # there: build_parts restores it over the model
    seed_everything(cfg.seed)
    model = instantiate_node(cfg.model)
    seed_everything(cfg.seed)
    fresh = instantiate_node(cfg.model).state_dict()
    assert start_from(cfg, model, str(tmp_path)) == {}
    assert all(torch.equal(v, fresh[k]) for k, v in model.state_dict().items())
    ckpt.unlink()  # no checkpoint: resume=true starts it, from the init weights
    assert start_from(cfg, model, str(tmp_path))["sr_ablate.init.kept_initial"] == "none"
