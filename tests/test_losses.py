"""VGG54 and weighted-sum losses, offline: a fake torchvision-format VGG19 file in a temp hub."""
from __future__ import annotations

import hashlib

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from sr_ablate import UserError
from sr_ablate.config.checks import check
from sr_ablate.models.vgg19 import VGG19Features
from sr_ablate.training.losses import VGGLoss, WeightedSum

FILE = "vgg19-dcbb9e9d.pth"
# torchvision vgg19().features conv indices and (out, in) channels, written out by hand
CONVS = {0: (64, 3), 2: (64, 64), 5: (128, 64), 7: (128, 128),
         10: (256, 128), 12: (256, 256), 14: (256, 256), 16: (256, 256),
         19: (512, 256), 21: (512, 512), 23: (512, 512), 25: (512, 512),
         28: (512, 512), 30: (512, 512), 32: (512, 512), 34: (512, 512)}


def fake_vgg19_state() -> dict[str, torch.Tensor]:
    """Random weights with torchvision's VGG19 keys and shapes (classifier included)."""
    g = torch.Generator().manual_seed(0)
    state = {}
    for i, (out_ch, in_ch) in CONVS.items():
        state[f"features.{i}.weight"] = torch.randn(out_ch, in_ch, 3, 3, generator=g) * (
            2 / (9 * in_ch)) ** 0.5
        state[f"features.{i}.bias"] = torch.randn(out_ch, generator=g) * 0.1
    state["classifier.0.weight"] = torch.zeros(8, 8)  # ignored by the loss
    state["classifier.0.bias"] = torch.zeros(8)
    return state


def reference_vgg54(sr: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """VGG54 written out from its definition, on the fake weights: ImageNet-normalise, run
    torchvision's VGG19 layers 0..34 (conv5_4, before its ReLU), MSE of the two feature maps."""
    state = fake_vgg19_state()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def features(x):
        x = (x - mean) / std
        for i in range(35):
            if i in CONVS:
                x = F.conv2d(x, state[f"features.{i}.weight"], state[f"features.{i}.bias"],
                             padding=1)
            elif i in (4, 9, 18, 27):
                x = F.max_pool2d(x, 2)
            else:
                x = F.relu(x)
        return x
    return F.mse_loss(features(sr), features(gt))


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """Isolated, empty torch hub; any download attempt fails at once (dead proxy)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "torch" / "hub" / "checkpoints"


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("vgg") / FILE
    torch.save(fake_vgg19_state(), path)
    return path


@pytest.fixture
def hub_file(offline, vgg_file):
    """The fake weights placed where torch.hub keeps them."""
    offline.mkdir(parents=True)
    path = offline / FILE
    path.symlink_to(vgg_file)
    return path


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(1)
    gt = torch.rand(2, 3, 32, 32, generator=g)
    sr = (gt + 0.1 * torch.randn(gt.shape, generator=g)).clamp(0, 1)
    return sr, gt


def test_loads_hub_file_and_cuts_at_conv5_4(hub_file, vgg_file, images):
    loss = VGGLoss()
    state = torch.load(vgg_file, weights_only=True)
    assert len(loss.vgg) == 35  # indices 0..34: ends at conv5_4, before its ReLU
    assert isinstance(loss.vgg[34], torch.nn.Conv2d)
    for i in CONVS:
        assert torch.equal(loss.vgg[i].weight, state[f"features.{i}.weight"])
    feats = loss.features(images[1])
    assert feats.shape == (2, 512, 2, 2)  # (B, 512, H/16, W/16)
    assert feats.min() < 0  # before the ReLU
    after = VGGLoss(after_relu=True)
    assert len(after.vgg) == 36 and isinstance(after.vgg[35], torch.nn.ReLU)
    assert after.features(images[1]).min() >= 0
    assert torch.allclose(after.features(images[1]), feats.clamp(min=0))


def test_other_layer_and_bad_layer(hub_file, images):
    loss = VGGLoss(layer="conv2_2")
    assert len(loss.vgg) == 8 and loss.features(images[1]).shape == (2, 128, 16, 16)
    with pytest.raises(UserError, match="conv5_4"):
        VGGLoss(layer="conv6_1")


def test_zero_for_identical_positive_otherwise(hub_file, images):
    sr, gt = images
    loss = VGGLoss()
    assert loss(gt, gt).item() == 0
    value = loss(sr, gt)
    assert value.ndim == 0 and value.item() > 0
    torch.testing.assert_close(value, reference_vgg54(sr, gt))
    assert torch.allclose(VGGLoss(weight=2.0)(sr, gt), 2 * value)


def test_gradients_reach_sr_not_vgg(hub_file, images):
    loss = VGGLoss()
    loss.train()
    assert not loss.vgg.training
    assert not any(p.requires_grad for p in loss.parameters())
    sr = images[0].clone().requires_grad_(True)
    loss(sr, images[1]).backward()
    assert sr.grad is not None and sr.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss.parameters())


def test_moves_with_to(hub_file, images):
    loss = VGGLoss().to(torch.float64)
    assert loss.vgg[0].weight.dtype == torch.float64 and loss.mean.dtype == torch.float64
    assert loss(images[0].double(), images[1].double()).dtype == torch.float64


def test_one_channel_is_repeated(hub_file, images):
    sr, gt = images[0][:, :1], images[1][:, :1]
    loss = VGGLoss()
    assert torch.allclose(loss(sr, gt), loss(sr.repeat(1, 3, 1, 1), gt.repeat(1, 3, 1, 1)))


def test_tags_name_file_and_sha256(hub_file, vgg_file):
    tags = VGGLoss().tags
    assert tags["loss.vgg_sha256"] == hashlib.sha256(vgg_file.read_bytes()).hexdigest()
    assert tags["loss.vgg_weights"] == str(hub_file)


def test_weights_path(offline, vgg_file, images):
    assert not offline.exists()  # hub empty: only the given path can work
    loss = VGGLoss(weights=str(vgg_file))
    assert loss.tags["loss.vgg_weights"] == str(vgg_file)
    torch.testing.assert_close(loss(*images), reference_vgg54(*images))  # those weights
    with pytest.raises(UserError, match="no such file"):
        VGGLoss(weights=str(vgg_file.parent / "nope.pth"))


def test_missing_weights_one_line_user_error(offline):
    with pytest.raises(UserError) as err:
        VGGLoss()
    msg = str(err.value)
    assert "\n" not in msg
    assert str(offline / FILE) in msg and "loss.weights=" in msg
    assert not (offline / FILE).exists()  # nothing downloaded, no random fallback
    with pytest.raises(UserError, match="loss.vgg_weights="):
        WeightedSum(l2=1.0, vgg54=0.006)


def test_wrong_state_dict(tmp_path):
    wrong = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, wrong)
    with pytest.raises(UserError, match="resnet.pth"):
        VGGLoss(weights=str(wrong))
    state = fake_vgg19_state()
    state["features.34.weight"] = torch.zeros(512, 256, 3, 3)
    shape = tmp_path / "shape.pth"
    torch.save(state, shape)
    with pytest.raises(UserError, match="features.34.weight"):
        VGGLoss(weights=str(shape))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="junk.pth"):
        VGGLoss(weights=str(junk))


def test_features_module_matches_torchvision_indices():
    net = VGG19Features(depth=37)
    assert {i for i, m in enumerate(net) if isinstance(m, torch.nn.Conv2d)} == set(CONVS)
    assert [i for i, m in enumerate(net) if isinstance(m, torch.nn.MaxPool2d)] == [
        4, 9, 18, 27, 36]
    assert {f"{k}" for k in net.state_dict()} == {
        f"{i}.{p}" for i in CONVS for p in ("weight", "bias")}


def test_weighted_sum(hub_file, images):
    sr, gt = images
    total = WeightedSum(l2=1.0, l1=0.5, vgg54=0.006)
    want = F.mse_loss(sr, gt) + 0.5 * F.l1_loss(sr, gt) + 0.006 * VGGLoss()(sr, gt)
    assert torch.allclose(total(sr, gt), want)
    assert set(total.last_terms) == {"l2", "l1", "vgg54"}
    assert not any(v.requires_grad for v in total.last_terms.values())
    assert total.tags == VGGLoss().tags
    pixel = WeightedSum(l2=1.0)
    assert pixel.vgg is None and pixel.tags == {}
    assert torch.allclose(pixel(sr, gt), F.mse_loss(sr, gt))
    with pytest.raises(ValueError):
        WeightedSum()


@pytest.mark.parametrize("option", ["vgg54", "l2_vgg54"])
def test_config_instantiates(hub_file, compose, option, images):
    cfg = compose([f"loss={option}"])
    check(cfg)
    loss = instantiate(cfg.loss)
    assert isinstance(loss, VGGLoss if option == "vgg54" else WeightedSum)
    assert loss.tags["loss.vgg_weights"] == str(hub_file)
    vgg = reference_vgg54(*images)  # conf/loss: vgg54 alone; l2_vgg54 = MSE + 0.006 x VGG54
    want = vgg if option == "vgg54" else F.mse_loss(*images) + 0.006 * vgg
    torch.testing.assert_close(loss(*images), want)
