"""Checkpoints that cannot be written or read: one line, nothing RUNNING, the last good
checkpoint kept and still resumable. Real runs into a real sqlite store; the full disk is
simulated (torch.save fails part-way), everything else is real files."""
from __future__ import annotations

import errno
import shutil

import pytest
import torch
from conftest import TINY, builtin_images
from mlflow.tracking import MlflowClient

from sr_ablate import UserError
from sr_ablate.cli import evaluate
from sr_ablate.config.hashing import config_hash
from sr_ablate.training import checkpoint
from sr_ablate.training.job import instantiate_node, run_job

SHORT = [*TINY, "tracking.checkpoint=false", "trainer.steps=6", "trainer.checkpoint_every=2"]


def runs(uri: str):
    client = MlflowClient(uri)
    return [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]


def steps_of(uri: str, run_id: str, key: str = "train/loss") -> list[int]:
    return sorted(m.step for m in MlflowClient(uri).get_metric_history(run_id, key))


FULL = {"OSError": OSError(errno.ENOSPC, "No space left on device"),
        "RuntimeError": RuntimeError("[enforce fail at inline_container.cc:626] . unexpected "
                                     "pos 64 vs 0\nPytorchStreamWriter failed writing file")}


@pytest.mark.parametrize("how", ["OSError", pytest.param("RuntimeError", marks=pytest.mark.slow)])
def test_disk_full_keeps_the_last_good_checkpoint_and_resume_finishes(
        store, compose, tmp_path, monkeypatch, how):
    real_save, saves = torch.save, []

    def full_disk(obj, f, *a, **k):
        if str(f).endswith(".pt.tmp"):
            saves.append(f)
            if len(saves) == 2:  # the second checkpoint (step 4) hits a full disk part-way
                with open(f, "wb") as out:
                    out.write(b"PK\x03\x04 half a zip")
                raise FULL[how]
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(UserError) as e:
        run_job(compose(SHORT), cwd=str(tmp_path))
    msg = str(e.value)
    assert "\n" not in msg and "cannot write checkpoint" in msg and "free disk space" in msg
    assert "the previous checkpoint is kept" in msg
    if how == "OSError":
        assert "No space left on device" in msg
    (r,) = runs(store)
    assert r.info.status == "FAILED" and "cannot write checkpoint" in r.data.tags["sr_ablate.error"]
    folder = tmp_path / ".sr_ablate" / "checkpoints"
    assert not list(folder.glob("*.tmp"))  # the half-written file is gone
    (good,) = folder.glob("*.pt")
    assert checkpoint.load(good)["step"] == 2  # the last good one, intact

    monkeypatch.setattr(torch, "save", real_save)
    elsewhere = f"sqlite:///{tmp_path / 'other.db'}"
    with pytest.raises(UserError, match=f"belongs to MLflow run {r.info.run_id}, which is not in"):
        run_job(compose([*SHORT, "resume=true", f"tracking.uri={elsewhere}"]), cwd=str(tmp_path))
    assert runs(elsewhere) == [] and good.exists()

    run_job(compose([*SHORT, "resume=true"]), cwd=str(tmp_path))
    (r,) = runs(store)
    assert r.info.status == "FINISHED"
    assert steps_of(store, r.info.run_id) == [2, 4, 6]  # step 4 logged once, before and after
    assert not good.exists()


def resumable(model, run_id: str = "0" * 32) -> dict:
    """A checkpoint in the layout run() writes, holding ``model``'s weights."""
    opt = torch.optim.Adam(model.parameters())
    return {"step": 2, "loop": {"running": 0.0, "since": 0}, "run_id": run_id,
            "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": None,
            "batches": {}, "rng": checkpoint.rng_state()}


def test_resume_from_a_checkpoint_of_another_architecture_is_one_line(store, compose, tmp_path):
    cfg = compose([*SHORT, "resume=true"])
    path = checkpoint.path_for(tmp_path, config_hash(cfg))
    other = instantiate_node({**cfg.model, "channels": 16})  # same class, other width
    path.parent.mkdir(parents=True)
    torch.save(resumable(other), path)
    with pytest.raises(UserError) as e:
        run_job(cfg, cwd=str(tmp_path))
    msg = str(e.value)
    assert "\n" not in msg and "holds weights of another architecture than SRResNet" in msg
    assert "head.0.weight is 16x3x3x3 in the file, 8x3x3x3 here" in msg
    assert runs(store) == [] and path.exists()  # nothing opened, nothing deleted


def test_resume_from_a_file_that_is_no_resumable_checkpoint(store, compose, tmp_path):
    cfg = compose([*SHORT, "resume=true"])
    path = checkpoint.path_for(tmp_path, config_hash(cfg))
    path.parent.mkdir(parents=True)
    torch.save({"model": instantiate_node(cfg.model).state_dict(), "step": 6}, path)  # a final.pt
    with pytest.raises(UserError, match=r"is not a resumable checkpoint \(no optimizer, scheduler"):
        run_job(cfg, cwd=str(tmp_path))
    assert runs(store) == []


def test_resume_from_a_corrupt_checkpoint(store, compose, tmp_path):
    cfg = compose([*SHORT, "resume=true"])
    path = checkpoint.path_for(tmp_path, config_hash(cfg))
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x80\x02 not a torch file")
    with pytest.raises(UserError) as e:
        run_job(cfg, cwd=str(tmp_path))
    msg = str(e.value)
    assert "\n" not in msg and f"checkpoint {path} cannot be read (UnpicklingError)" in msg
    assert "delete it to start this configuration afresh, or run without resume=true" in msg
    assert runs(store) == [] and path.exists()


def test_evaluating_a_final_checkpoint_whose_weights_do_not_fit_is_one_line(
        compose, tmp_path, capsys):
    cfg = compose(TINY)
    other = instantiate_node({**cfg.model, "blocks": 2})
    ckpt = tmp_path / "final.pt"
    from omegaconf import OmegaConf
    torch.save({"model": other.state_dict(), "config": OmegaConf.to_container(cfg, resolve=True),
                "step": 4}, ckpt)
    hr = tmp_path / "hr"
    hr.mkdir()
    for src in builtin_images()[-2:]:
        shutil.copy(src, hr / src.name)
    assert evaluate.main([f"model={ckpt}", f"eval.data={hr}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds weights of another architecture" in err[0]
    assert "(unexpected body.1." in err[0]
