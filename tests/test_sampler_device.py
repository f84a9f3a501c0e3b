"""data.on_device: patches cut on the training device give the host sampler's batches, bit for
bit (on the CPU here: two code paths, the host's per-patch slices and the device's one gather);
``auto`` decides by free memory; a run records the choice and computes the same numbers."""
from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch
from conftest import TINY
from mlflow.tracking import MlflowClient

from sr_ablate import UserError, data
from sr_ablate.config.hashing import config_hash
from sr_ablate.data import resident
from sr_ablate.data.pairs import Pair
from sr_ablate.data.resident import GIB, SHARE, decide, host_order, place
from sr_ablate.training import checkpoint
from sr_ablate.training.job import run_job
from sr_ablate.training.loop import Interrupted


def random_pair(h: int, w: int, scale: float, g, upsampled=False, dtype=torch.uint8,
                channels=3) -> Pair:
    """Noise images: every pixel differs, so any misplaced, misflipped or swapped pixel shows.
    Sizes differ per pair and are not square, so a swapped height/width shows too."""
    gt = torch.randint(0, 256, (channels, h, w), generator=g, dtype=torch.uint8)
    size = (h, w) if upsampled else (int(h / scale), int(w / scale))
    lq = torch.randint(0, 256, (channels, *size), generator=g, dtype=torch.uint8)
    return Pair("noise", gt, lq.to(dtype), scale)


def noise_pairs(case: str) -> dict[float, list[Pair]]:
    g = torch.Generator().manual_seed(7)
    if case == "x2":
        return {2: [random_pair(40, 58, 2, g), random_pair(64, 48, 2, g),
                    random_pair(33, 33, 2, g)]}
    if case == "x3 float lq":  # degradation.quantize=false keeps the LR in float
        return {3: [random_pair(45, 60, 3, g, dtype=torch.float32),
                    random_pair(63, 39, 3, g, dtype=torch.float32)]}
    if case == "x1.5":  # corners on every 2nd LR / 3rd HR pixel
        return {1.5: [random_pair(45, 60, 1.5, g), random_pair(63, 48, 1.5, g)]}
    if case == "pre-upsampled":
        return {2: [random_pair(40, 58, 2, g, True), random_pair(50, 36, 2, g, True)]}
    if case == "multi-scale":  # VDSR's trainer.scales: a scale drawn per batch
        return {2: [random_pair(40, 58, 2, g, True), random_pair(36, 50, 2, g, True)],
                3: [random_pair(45, 57, 3, g, True)],
                1.5: [random_pair(39, 60, 1.5, g, True), random_pair(48, 45, 1.5, g, True)]}
    if case == "y channel":
        return {4: [random_pair(64, 72, 4, g, channels=1), random_pair(48, 100, 4, g, channels=1)]}
    raise KeyError(case)


CASES = ["x2", "x3 float lq", "x1.5", "pre-upsampled", "multi-scale", "y channel"]


def sampler_pair(pairs, on_device: bool, augment=True, seed=11, batch_size=24, patch_size=8):
    return data.batches(pairs, patch_size=patch_size, batch_size=batch_size, seed=seed,
                        augment=augment, device="cpu", on_device=on_device)


def assert_same(a: dict, b: dict) -> None:
    assert a["scale"] == b["scale"]
    for key in ("lq", "gt"):
        assert a[key].dtype == b[key].dtype == torch.float32
        assert a[key].shape == b[key].shape and torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("augment", [True, False])
@pytest.mark.parametrize("case", CASES)
def test_device_side_batches_equal_host_side(case, augment):
    pairs = noise_pairs(case)
    host, device = sampler_pair(pairs, False, augment), sampler_pair(pairs, True, augment)
    assert host.resident is None and device.resident is not None
    scales = set()
    for _ in range(40):
        a, b = next(host), next(device)
        assert_same(a, b)
        scales.add(a["scale"])
    assert scales == set(pairs)  # multi-scale: every scale was drawn


def test_device_side_batches_equal_host_side_on_real_pairs():
    """Built-in photographs degraded as training does: x2 and pre-upsampled x1.5."""
    train, _ = data.training_files(type("Node", (), {"name": "builtin"}))
    for scale, upsampled in ((2, False), (1.5, True)):
        pairs = data.training_pairs(train, scales=[scale], patch_size=12, upsampled=upsampled)
        host = sampler_pair(pairs, False, patch_size=12, batch_size=16)
        device = sampler_pair(pairs, True, patch_size=12, batch_size=16)
        for _ in range(5):
            assert_same(next(host), next(device))


@pytest.mark.parametrize("case", ["x2", "multi-scale"])
def test_a_state_dict_round_trip_resumes_either_way(case):
    """A checkpoint's sampler state taken on one side goes on identically on the other (a run
    resumed on a machine that decides otherwise)."""
    pairs = noise_pairs(case)
    host = sampler_pair(pairs, False)
    for _ in range(7):
        next(host)
    state = host.state_dict()
    device = sampler_pair(pairs, True, seed=999)  # its own seed is overwritten by the state
    device.load_state_dict(state)
    ahead = [next(host) for _ in range(10)]
    for a in ahead:
        assert_same(a, next(device))
    back = sampler_pair(pairs, False, seed=999)
    back.load_state_dict(device.state_dict())
    assert_same(next(back), next(device))


def test_host_order_groups_by_flips_in_first_seen_order():
    flips = torch.tensor([[1, 0, 0], [0, 0, 1], [1, 0, 1], [0, 1, 0], [0, 0, 0], [1, 1, 1]])
    # groups (1,0): 0, 2; (0,0): 1, 4; (0,1): 3; (1,1): 5
    assert host_order(flips).tolist() == [0, 2, 1, 4, 3, 5]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("case", ["x2", "x1.5", "multi-scale"])
def test_on_a_gpu_both_paths_give_the_same_batches(case):
    pairs = noise_pairs(case)
    host = data.batches(pairs, patch_size=8, batch_size=24, seed=3, device="cuda")
    device = data.batches(pairs, patch_size=8, batch_size=24, seed=3, device="cuda",
                          on_device=True)
    assert device.resident.gt[next(iter(pairs))].data.is_cuda
    for _ in range(20):
        a, b = next(host), next(device)
        assert a["gt"].is_cuda and b["gt"].is_cuda
        assert_same(a, b)


# ----------------------------------------------------------------------------- auto

def test_auto_keeps_the_host_path_on_the_cpu():
    pairs = noise_pairs("x2")
    p = place("auto", torch.device("cpu"), pairs)
    assert not p.on and "CPU" in p.why
    assert place(True, torch.device("cpu"), pairs).on
    assert not place(False, torch.device("cpu"), pairs).on
    assert p.tags() == {"sr_ablate.on_device": "false", "sr_ablate.on_device_reason": p.why}


def test_pairs_bytes_count_every_scale_and_side():
    pairs = noise_pairs("multi-scale")
    assert resident.nbytes(pairs) == sum(p.gt.numel() + p.lq.numel()
                                         for group in pairs.values() for p in group)


def test_cuda_rule_keeps_the_pairs_within_a_quarter_of_free_memory():
    assert SHARE == 0.25
    free = 40 * GIB
    on = decide("auto", "cuda", needed=10 * GIB, free=free)
    assert on.on and "within 25% of the 40.00 GiB free" in on.why
    off = decide("auto", "cuda", needed=10 * GIB + 1, free=free)
    assert not off.on and "more than 25%" in off.why
    assert not decide("auto", "cuda", needed=1, free=0).on
    assert not decide("auto", "mps", needed=1, free=None).on  # no free-memory count there
    # explicit values are used as given, up to all of the free memory
    assert decide(True, "cuda", needed=30 * GIB, free=free).on
    assert not decide(False, "cuda", needed=1, free=free).on


def test_true_with_pairs_larger_than_the_gpu_is_refused_in_one_line():
    with pytest.raises(UserError) as e:
        decide(True, "cuda", needed=50 * GIB, free=40 * GIB)
    message = str(e.value)
    assert "\n" not in message and "data.on_device=true" in message
    assert "50.00 GiB" in message and "data.on_device=auto" in message


def test_the_choice_is_said_once_and_not_for_the_cpus_host_path(capsys, monkeypatch):
    monkeypatch.setattr(resident, "_said", set())
    cpu = torch.device("cpu")
    resident.say_once(decide("auto", "cpu", 1, None), cpu)
    assert capsys.readouterr().err == ""  # nothing differs on the CPU: the tag says it
    for _ in range(2):
        resident.say_once(decide(True, "cpu", 1, None), cpu)
    assert capsys.readouterr().err == ("sr_ablate: training pairs on cpu: patches cut there "
                                       "(data.on_device=true)\n")


# ----------------------------------------------------------------------------- a run

def test_the_setting_leaves_the_config_hash_alone(compose):
    hashes = {config_hash(compose([f"data.on_device={v}"])) for v in ("auto", "true", "false")}
    assert len(hashes) == 1


def test_a_tiny_run_computes_the_same_with_pairs_on_the_device(store, compose, tmp_path):
    out, ids = {}, []
    for value in ("true", "false"):
        overrides = TINY + [f"data.on_device={value}", "tracking.checkpoint=false"]
        out[value] = run_job(compose(overrides), cwd=str(tmp_path), on_start=ids.append)
    kept = [k for k in out["true"] if k.endswith(("/loss", "/psnr", "/ssim"))]
    assert "train/loss" in kept and "val/psnr" in kept
    assert {k: out["true"][k] for k in kept} == {k: out["false"][k] for k in kept}
    client = MlflowClient(store)
    on, off = (client.get_run(i).data for i in ids)
    assert on.tags["sr_ablate.on_device"] == "true"
    assert on.tags["sr_ablate.on_device_reason"] == "data.on_device=true"
    assert off.tags["sr_ablate.on_device"] == "false"
    assert on.params["data.on_device"] == "True" and off.params["data.on_device"] == "False"
    assert on.tags["sr_ablate.config_hash"] == off.tags["sr_ablate.config_hash"]


def test_a_run_stopped_on_the_host_resumes_on_the_device_to_the_same_end(store, compose,
                                                                          tmp_path, monkeypatch):
    """The checkpoint's sampler state carries over: stopped with data.on_device=false and
    resumed with true, a run ends as an uninterrupted one; its tags say what it resumed with."""
    short = [*TINY, "tracking.checkpoint=false", "trainer.steps=6"]
    whole = run_job(compose([*short, "data.on_device=false"]), cwd=str(tmp_path / "whole"))

    @contextmanager
    def stop_at_once():
        yield lambda: True  # as if SIGTERM came during the first step
    real = checkpoint.stop_on_signals
    monkeypatch.setattr(checkpoint, "stop_on_signals", stop_at_once)
    ids = []
    with pytest.raises(Interrupted):
        run_job(compose([*short, "data.on_device=false"]), cwd=str(tmp_path), on_start=ids.append)
    monkeypatch.setattr(checkpoint, "stop_on_signals", real)
    resumed = run_job(compose([*short, "data.on_device=true", "resume=true"]), cwd=str(tmp_path))
    assert resumed["train/loss"] == whole["train/loss"]
    assert resumed["val/psnr"] == whole["val/psnr"]
    tags = MlflowClient(store).get_run(ids[0]).data.tags
    assert tags["sr_ablate.resumed"] == "true" and tags["sr_ablate.on_device"] == "true"
