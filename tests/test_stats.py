"""sr_ablate.report.stats and .compare against SciPy and against cases worked by hand: the
image is the unit of the test over images and seeds never add pairs there; the runs are the
unit of the test over runs; the signed-rank interval and the test agree; Holm and what can
still be reached run over the whole family; one source for every number of a comparison."""
from __future__ import annotations

import math
from itertools import product

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from sr_ablate.report.compare import compare
from sr_ablate.report.stats import (
    holm,
    mean_ci,
    min_p,
    paired_p,
    reachable_holm,
    run_test,
    seeds_needed,
    signed_rank,
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
    # what the report did once: every (seed, image) pair counted -> 15 pairs
    pooled = paired_p(pd.concat(a).to_numpy(), pd.concat(b).to_numpy())
    assert pooled == pytest.approx(2 / 2 ** 15)  # 6.1e-05, significance bought with seeds
    c = compare(dict(enumerate(a)), dict(enumerate(b)))
    assert c.n_images == 5 and c.p_images == pytest.approx(min_p(5)) == pytest.approx(0.0625)
    # the runs are the unit of the other level: 3 seeds paired
    assert c.level == "runs" and c.paired and (c.runs_a, c.runs_b) == (3, 3)


def test_comparison_by_hand():
    """Two seeds a side on three images, worked out by hand."""
    images = ["x", "y", "z"]
    a = {"0": pd.Series([31.0, 32.0, 33.0], images), "1": pd.Series([31.2, 32.4, 33.2], images)}
    b = {"0": pd.Series([30.0, 31.5, 32.5], images), "1": pd.Series([30.4, 31.7, 32.7], images)}
    c = compare(a, b)
    # seed-averaged per image: a = 31.1, 32.2, 33.1; b = 30.2, 31.6, 32.6; d = 0.9, 0.6, 0.5
    assert c.delta == pytest.approx((0.9 + 0.6 + 0.5) / 3)
    # Walsh averages of (0.5, 0.6, 0.9): 0.5, 0.55, 0.6, 0.7, 0.75, 0.9 -> median 0.65
    assert c.shift == pytest.approx(0.65)
    assert c.p_images == pytest.approx(0.25)  # 3 pairs, all positive: 2/2^3
    # per-seed set means: a 32.0, 32.2667; b 31.3333, 31.6: differences 0.6667, 0.6667
    assert c.paired and c.sd_diff == pytest.approx(0.0, abs=1e-12)
    assert c.p_runs == 0.0  # no spread between the runs' differences
    assert c.p == pytest.approx(0.25)  # the claim needs both: the larger p
    # the seed spread of a's set mean: sd of (32.0, 32.2667) = 0.2667 / sqrt(2)
    assert c.sd_a == pytest.approx((96.8 / 3 - 32.0) / math.sqrt(2))


def test_one_source_for_every_number():
    """Images missing from a run, NaN and +inf PSNR and runs without per-image results are
    left out of both sides and counted; Δ, shift, both intervals and both p come from what is
    left."""
    rng = np.random.default_rng(5)
    images = [f"i{k}" for k in range(14)]
    level = rng.uniform(28, 34, 14)
    a = {str(s): pd.Series(level + 0.3 + rng.normal(0, 0.02, 14), images) for s in range(3)}
    b = {str(s): pd.Series(level + rng.normal(0, 0.02, 14), images) for s in range(3)}
    a["0"]["i3"] = np.nan          # a NaN the run logged
    b["2"]["i7"] = np.inf          # identical pictures
    b["1"] = b["1"].drop("i9")     # an image the run did not score
    c = compare(a, b, missing_a=1)
    assert (c.n_images, c.images_total, c.nonfinite, c.incomplete) == (11, 14, 2, 1)
    assert c.runs_left_out == ["1 run(s) without per-image results"]
    keep = [i for i in images if i not in ("i3", "i7", "i9")]
    d = pd.DataFrame(a).loc[keep].mean(axis=1) - pd.DataFrame(b).loc[keep].mean(axis=1)
    assert c.delta == pytest.approx(d.mean()) and math.isfinite(c.delta)
    assert c.delta > 0 and c.shift > 0 and c.images_lo > 0 and c.runs_lo > 0
    # a seed only one side ran is left out of both sides when seeds are paired
    c2 = compare({**a, "9": a["0"]}, b)
    assert c2.runs_a == 3 and c2.runs_left_out == ["1 run(s) whose seed the other side lacks"]


def test_two_samples_when_seeds_are_not_shared():
    a, b = five_images_three_seeds()
    c = compare({f"a{k}": s for k, s in enumerate(a)}, {f"b{k}": s for k, s in enumerate(b)})
    assert not c.paired and c.level == "runs"
    ma = [s.mean() for s in a]
    mb = [s.mean() for s in b]
    assert c.p_runs == pytest.approx(sps.ttest_ind(ma, mb, equal_var=False).pvalue)


@pytest.mark.parametrize("n", [2, 3, 5, 6, 8, 12])
def test_smallest_reachable_p_is_two_over_two_to_the_n(n):
    d = np.arange(1, n + 1) * 0.1  # all positive, distinct: the most extreme ranking
    assert paired_p(d, np.zeros(n)) == pytest.approx(2 / 2 ** n)
    assert min_p(n) == pytest.approx(2 / 2 ** n)


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


def test_mean_ci_by_hand():
    mean, half = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(sps.t.ppf(0.975, 2) * 1 / math.sqrt(3))
    assert math.isnan(mean_ci([5.0])[1])


def test_signed_rank_by_hand_and_against_scipy():
    # 0.1 .. 0.6, all positive: p = 2/2^6; 6 pairs: the interval is [min, max] of the Walsh
    # averages (P(T <= 0) = 1/64 <= 0.025 < P(T <= 1) = 2/64); their median is 0.35
    p, shift, lo, hi = signed_rank(np.arange(1, 7) * 0.1)
    assert (p, shift, lo, hi) == pytest.approx((2 / 64, 0.35, 0.1, 0.6))
    # 5 pairs can never reach 95%: no interval
    assert all(math.isnan(v) for v in signed_rank(np.arange(1, 6) * 0.1)[2:])
    rng = np.random.default_rng(2)
    for n in (6, 9, 20, 40):
        d = rng.normal(0.1, 0.3, n)
        assert signed_rank(d)[0] == pytest.approx(sps.wilcoxon(d, method="exact").pvalue)


def test_one_image_does_not_carry_the_shift():
    """The differences of the issue's example: the mean (+2.22 dB) is carried by one image
    (8.71); the signed-rank test's own estimate is the Hodges-Lehmann shift (+1.57)."""
    d = np.array([-0.39, 1.29, 2.16, 0.9, 8.71, 3.6, 0.32, 1.13])
    p, shift, lo, hi = signed_rank(d)
    assert d.mean() == pytest.approx(2.215)
    assert shift == pytest.approx(1.5675) and lo == pytest.approx(0.32) and hi == 5.0
    assert p == pytest.approx(6 / 256)  # rank sum of the negatives = 2: P(T <= 2) = 3/256


def test_interval_and_test_always_agree():
    rng = np.random.default_rng(1)
    for _ in range(2000):
        n = int(rng.integers(6, 30))
        p, _, lo, hi = signed_rank(rng.normal(rng.normal(0, 0.1), 0.2, n))
        assert (p < 0.05) == (lo > 0 or hi < 0)


def test_run_test_against_scipy():
    a, b = [32.1, 32.4, 32.2], [32.0, 32.1, 32.25]
    p, lo, hi = run_test(a, b, paired=True)
    ref = sps.ttest_rel(a, b)
    assert p == pytest.approx(ref.pvalue)
    assert (lo, hi) == pytest.approx(tuple(ref.confidence_interval()))
    p, lo, hi = run_test(a, b, paired=False)
    ref = sps.ttest_ind(a, b, equal_var=False)
    assert p == pytest.approx(ref.pvalue)
    assert (lo, hi) == pytest.approx(tuple(ref.confidence_interval()))
    assert all(math.isnan(v) for v in run_test([1.0], [2.0], paired=True))
    assert run_test([1.0, 2.0], [0.5, 1.5], paired=True)[0] == 0.0  # differences all 0.5


def test_seeds_needed_matches_the_textbook():
    """Standardised effect 1, alpha 0.05 two-sided, power 0.8: a paired t-test needs 10
    pairs, a two-sample one 17 per group (the tables of Cohen; G*Power gives the same)."""
    assert seeds_needed(1.0, 1.0, 0.05, paired=True) == 10
    assert seeds_needed(0.1, 0.1, 0.05, paired=True) == 10
    assert seeds_needed(1.0, 1.0, 0.05, paired=False) == 17
    assert seeds_needed(0.1, 0.03, 0.05, paired=True) is None  # more than 50
    assert seeds_needed(0.1, 0.0, 0.05, paired=True) is None


def test_reachable_holm_by_hand():
    """The worked example's val: 8 images in a family of 20 with seven smaller p ahead. Even
    its best p, 2/2^8 = 0.0078, ranks 8th: x 13 = 0.10, not below 0.05."""
    family = [0.001] * 7 + [0.3] + [0.5] * 12
    assert reachable_holm(family, 7, min_p(8)) == pytest.approx(13 * 2 / 256)
    # alone, 8 images could reach 0.0078
    assert reachable_holm([0.3], 0, min_p(8)) == pytest.approx(2 / 256)
    # a p already below the best reachable keeps its own
    assert reachable_holm([0.001], 0, min_p(8)) == pytest.approx(0.001)


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
