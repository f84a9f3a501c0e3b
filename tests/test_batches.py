"""data.batches: patch pairs stay aligned through crops, flips and transposes; seeded."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sr_ablate import data


def builtin_pairs(scale, kernel="area", quantize=False, upsampled=False, patch=12):
    train, _ = data.training_files(type("Node", (), {"name": "builtin"}))
    return data.training_pairs(train, scales=[scale], patch_size=patch, kernel=kernel,
                               quantize=quantize, upsampled=upsampled)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_every_patch_pair_is_aligned_whatever_its_flips(scale):
    # The area kernel makes each LR pixel the exact mean of its s x s HR block, a relation
    # that flips and transposes keep: any misaligned or differently flipped pair breaks it.
    pairs = builtin_pairs(scale)
    it = data.batches(pairs, patch_size=12, batch_size=32, seed=3)
    for _ in range(3):
        b = next(it)
        assert b["lq"].shape == (32, 3, 12, 12) and b["gt"].shape == (32, 3, 12 * scale, 12 * scale)
        assert b["lq"].dtype == torch.float32 and 0 <= b["gt"].min() and b["gt"].max() <= 1
        torch.testing.assert_close(b["lq"], F.avg_pool2d(b["gt"].double(), scale).float(),
                                   atol=1e-5, rtol=0)


def test_flips_and_transposes_all_occur():
    # A patch and its un-augmented crop differ by one of the 8 rotations/reflections; with
    # 64 patches every one of them should be drawn (probability of missing one < 1e-3).
    pairs = builtin_pairs(2)
    b = next(data.batches(pairs, patch_size=12, batch_size=64, seed=0))
    plain = next(data.batches(pairs, patch_size=12, batch_size=64, seed=0, augment=False))
    assert not torch.equal(b["gt"], plain["gt"])
    # transposed patches are not square-symmetric in general: count distinct orientations
    # by matching each augmented patch against the 8 transforms of the un-augmented set
    cands = [plain["gt"]]
    cands += [plain["gt"].flip(-1), plain["gt"].flip(-2), plain["gt"].flip(-1, -2)]
    cands += [c.transpose(-1, -2) for c in cands]
    found = set()
    for patch in b["gt"]:
        for k, c in enumerate(cands):
            if (c == patch).all(dim=(1, 2, 3)).any():
                found.add(k)
                break
    assert len(found) == 8


def test_same_seed_same_batches_other_seed_other_batches():
    pairs = builtin_pairs(2, kernel="bicubic", quantize=True)
    a = [next(it) for it in [data.batches(pairs, patch_size=12, batch_size=8, seed=5)] * 3]
    b = [next(it) for it in [data.batches(pairs, patch_size=12, batch_size=8, seed=5)] * 3]
    c = next(data.batches(pairs, patch_size=12, batch_size=8, seed=6))
    for x, y in zip(a, b):
        assert torch.equal(x["lq"], y["lq"]) and torch.equal(x["gt"], y["gt"])
    assert not torch.equal(a[0]["gt"], c["gt"])


def test_pre_upsampled_pairs_share_the_window():
    pairs = builtin_pairs(2, kernel="bicubic", quantize=True, upsampled=True)
    b = next(data.batches(pairs, patch_size=12, batch_size=16, seed=1))
    assert b["lq"].shape == b["gt"].shape == (16, 3, 24, 24)
    # the bicubic-enlarged input is close to its own HR patch, never to another one
    err = (b["lq"][:, None] - b["gt"][None]).abs().mean(dim=(2, 3, 4))
    assert torch.equal(err.argmin(dim=1), torch.arange(16))
