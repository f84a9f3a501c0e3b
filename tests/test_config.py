"""Every config composes and passes the checks; typos and wrong types fail with one line."""
from __future__ import annotations

import pytest
from conftest import REPO

from sr_ablate import UserError
from sr_ablate.config.checks import check
from sr_ablate.config.hashing import flatten
from sr_ablate.config.validation import validate
from sr_ablate.training.job import instantiate_node

GROUP_OPTIONS = sorted((p.parent.name, p.stem) for p in (REPO / "conf").glob("*/*.yaml"))


@pytest.mark.parametrize("group,option", GROUP_OPTIONS, ids=[f"{g}={o}" for g, o in GROUP_OPTIONS])
def test_every_config_file_composes(compose, group, option, request):
    extra = ["data.root=/tmp"] if (group, option) == ("data", "folder") else []
    if "vgg" in option:
        request.getfixturevalue("vgg_weights")
    cfg = compose([f"{group}={option}", *extra])
    check(cfg)
    for node in ("model", "loss", "optim", "sched"):
        if cfg[node].get("_target_"):
            assert instantiate_node(cfg[node]) is not None  # as a run builds it


def test_defaults_are_the_documented_ones(compose):
    cfg = compose([])
    assert cfg.model._target_.endswith("SRResNet") and cfg.model.blocks == 16
    # RGB training: data.color=auto follows the 3-channel model
    assert cfg.scale == 2 and cfg.data.color == "auto" and cfg.model.in_channels == 3
    assert cfg.trainer.name == "quick"
    assert cfg.loss._target_ == "torch.nn.MSELoss"
    assert (cfg.optim.lr, list(cfg.optim.betas), cfg.optim.eps) == (1e-4, [0.9, 0.999], 1e-8)


def test_paper_trainer_is_the_study_recipe(compose):
    t = compose(["trainer=paper"]).trainer
    assert (t.patch_size, t.batch_size, t.steps) == (64, 8, 100_000)


def test_flatten_gives_dot_keys_equal_to_override_keys(compose):
    flat = flatten(compose(["model.blocks=8"]))
    assert flat["model.blocks"] == 8 and flat["optim.lr"] == 1e-4
    assert not any(k.split(".")[-1].startswith("_") for k in flat)


def test_scale_reaches_the_model(compose):
    assert compose(["scale=4"]).model.scale == 4


@pytest.mark.parametrize("argv,expected", [
    (["model.blokcs=3"], "valid keys in model: in_channels, channels, blocks"),
    (["trainer.stepz=3"], "valid keys in trainer:"),
    (["seeed=1"], "valid keys in the root config:"),
    (["sched.T_max=100"], "unknown setting 'sched.T_max': sched=none takes no settings besides"),
    (["model.blocks=abc"], "model.blocks='abc' has the wrong type"),
    (["trainer.steps=many"], "trainer.steps"),
    (["model=nosuch"], "model= takes one of:"),
    (["-m", "model.blocks=8,abc"], "model.blocks='abc' has the wrong type"),
    (["model.blocks=0"], "model.blocks=0 must be at least 1"),
    (["optim.lr=-1"], "optim.lr=-1 must be positive"),
    (["scale=0"], "scale=0 must be positive"),
    (["model=vdsr", "scale=1"], "scale=1 must be above 1; use a number > 1 and <= 8"),
    (["data.color=cmyk"], "data.color='cmyk' is not valid; use one of: auto, rgb, y"),
    (["data.color=y"], "set model.in_channels=1"),
    (["data=folder"], "data=folder needs data.root"),
    (["scale=1.5"], "scale=1.5 does not suit SRResNet, which takes whole scales; use scale=2"),
    (["scale=5"], "cannot work together: SRResNet supports scale 2, 3 or 4, got 5"),
    (["model=edsr_baseline", "scale=8"], "EDSR supports scale 2, 3 or 4, got 8; change model"),
    (["model.upsampler=nearest"],
     "model.upsampler='nearest' is not valid; use one of: pixelshuffle, bicubic"),
    (["model=espcn", "scale=1.3"], "ESPCN needs a scale >= 1 that is an integer or a ratio"),
])
def test_bad_overrides_give_one_line(argv, expected):
    with pytest.raises(UserError) as e:
        validate(argv)
    msg = str(e.value)
    assert expected in msg and "\n" not in msg


def test_good_sweep_overrides_pass():
    cfg = validate(["-m", "model.blocks=8,12", "loss=l1,l2"])
    assert cfg.model.blocks == 8


def test_help_is_left_to_hydra():
    assert validate(["--help"]) is None
