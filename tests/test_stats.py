"""sr_ablate.stats against SciPy and against cases worked by hand: the image is the unit of a
paired test, seeds never add pairs, Holm runs over the whole family."""
from __future__ import annotations

import math
from itertools import product

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from sr_ablate.report.stats import (
    diff_ci,
    holm,
    mean_ci,
    min_p,
    paired_p,
    pairs_needed,
    seed_mean,
)


def five_images_three_seeds():
    """Per-image PSNR of 2 variants x 3 seeds on 5 images; the variant is better on every
    (seed, image) pair, by a different amount each time (no ties)."""
    rng = np.random.default_rng(0)
    images = [f"img{i}" for i in range(5)]
    base_level = rng.uniform(28, 34, size=5)
    a, b = [], []
    for _seed in range(3):
        b.append(pd.Series(base_level + rng.normal(0, 0.01, 5), index=images))
        a.append(pd.Series(b[-1].to_numpy() + 0.1 + 0.05 * rng.random(5), index=images))
    return a, b


def test_seeds_do_not_multiply_the_pairs():
    a, b = five_images_three_seeds()
    # what the report did before: every (seed, image) pair counted -> 15 pairs
    pooled = paired_p(pd.concat(a).to_numpy(), pd.concat(b).to_numpy())
    assert pooled == pytest.approx(2 / 2 ** 15)  # 6.1e-05, significance bought with seeds
    p = paired_p(seed_mean(a).to_numpy(), seed_mean(b).to_numpy())
    assert p >= 0.0625 and p == pytest.approx(min_p(5)) == pytest.approx(0.0625)


def test_seed_mean_is_the_per_image_mean_over_runs():
    a, _ = five_images_three_seeds()
    m = seed_mean(a)
    assert list(m.index) == [f"img{i}" for i in range(5)]
    np.testing.assert_allclose(m.to_numpy(), np.mean([s.to_numpy() for s in a], axis=0))
    # an image a run lacks is averaged over the runs that have it
    short = [a[0], a[1].drop("img0")]
    assert seed_mean(short)["img0"] == a[0]["img0"]
    assert seed_mean([]).empty


@pytest.mark.parametrize("n", [2, 3, 5, 6, 8, 12])
def test_smallest_reachable_p_is_two_over_two_to_the_n(n):
    d = np.arange(1, n + 1) * 0.1  # all positive, distinct: the most extreme ranking
    assert paired_p(d, np.zeros(n)) == pytest.approx(2 / 2 ** n)
    assert min_p(n) == pytest.approx(2 / 2 ** n)


def test_pairs_needed():
    assert pairs_needed(0.05) == 6      # 5 images: 0.0625; 6: 0.031
    assert pairs_needed(0.01) == 8      # 7: 0.0156; 8: 0.0078
    assert min_p(pairs_needed(0.05)) < 0.05 <= min_p(pairs_needed(0.05) - 1)


def test_paired_p_equals_scipy_exact():
    rng = np.random.default_rng(1)
    for n in (4, 9, 20):
        a, b = rng.normal(30, 1, n), rng.normal(30.2, 1, n)
        expected = sps.wilcoxon(a - b, method="exact").pvalue
        assert paired_p(a, b) == pytest.approx(expected)


def test_paired_p_edge_cases():
    assert paired_p([1.0, 2.0], [1.0, 2.0]) == 1.0
    assert math.isnan(paired_p([1.0], [0.0]))


def test_holm_by_hand():
    # sorted p: 0.01 (x4 = 0.04), 0.02 (x3 = 0.06), 0.03 (x2 = 0.06, kept monotone), 0.5 (x1)
    assert holm([0.03, 0.01, 0.5, 0.02]) == pytest.approx([0.06, 0.04, 0.5, 0.06])
    # NaN is not a test: it neither counts in the family nor gets a value
    out = holm([0.01, math.nan, 0.04])
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.04)
    assert holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])  # capped at 1


def test_holm_over_a_family_of_variants_times_sets():
    # 3 variants x 2 sets = 6 tests: the smallest p is multiplied by 6, not by 3
    family = [0.009, 0.2, 0.03, 0.04, 0.5, 0.6]
    adjusted = holm(family)
    assert adjusted[0] == pytest.approx(0.054) and adjusted[0] > 0.05
    per_set = holm(family[0::2])  # the old way, per set: 0.009 x 3 = 0.027, "significant"
    assert per_set[0] < 0.05


def test_mean_ci_and_diff_ci_by_hand():
    mean, half = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(sps.t.ppf(0.975, 2) * 1 / math.sqrt(3))
    assert math.isnan(mean_ci([5.0])[1])
    m, lo, hi = diff_ci([31.0, 32.0, 33.5], [30.0, 31.5, 32.0])
    d = np.array([1.0, 0.5, 1.5])
    half = sps.t.ppf(0.975, 2) * d.std(ddof=1) / math.sqrt(3)
    assert (m, lo, hi) == pytest.approx((1.0, 1.0 - half, 1.0 + half))


@pytest.mark.parametrize("n,signs", [(n, s) for n in (3, 4) for s in product([1, -1], repeat=n)
                                     if s[0] == 1][:6])
def test_exact_p_enumerated_by_hand(n, signs):
    """The exact two-sided p is the share of the 2^n sign flips whose rank sum is at least as
    extreme: enumerate them and compare."""
    d = np.array(signs) * np.arange(1, n + 1)
    ranks = np.arange(1, n + 1)
    observed = min(ranks[d > 0].sum(), ranks[d < 0].sum())
    extreme = sum(1 for flips in product([0, 1], repeat=n)
                  if min(ranks[np.array(flips) == 1].sum(), ranks[np.array(flips) == 0].sum())
                  <= observed)
    assert paired_p(d, np.zeros(n)) == pytest.approx(min(1.0, extreme / 2 ** n))
