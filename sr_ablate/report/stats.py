"""The statistics of a report: tests over images, tests over training runs, Holm.

Two kinds of noise separate two variants' numbers: images differ, and training runs (seeds)
differ. A comparison therefore has two levels of evidence (docs/protocol.md#statistics):

- over **images**: each variant's per-image PSNR averaged over its seeds, the differences
  tested with the Wilcoxon signed-rank test (exact without ties), the shift estimated by
  Hodges-Lehmann with its exact interval (``signed_rank``); seeds never add pairs, so 5
  images can never give p below 2/2^5 = 0.0625;
- over **runs**: the per-seed set means of the two variants, paired over shared seeds (a
  one-sample t-test of the per-seed differences) or, without two shared seeds, Welch's
  two-sample t-test (``run_test``).

SciPy does the distributions; what is decided here is which numbers are paired and how the
p-values of one table (its family) are corrected (Holm).
"""
from __future__ import annotations

import math
from functools import cache

import numpy as np
from scipy import special, stats


def mean_ci(values, level: float = 0.95) -> tuple[float, float]:
    """(mean, half-width of the ``level`` confidence interval) of ``values``, by Student's t.
    One value: half-width NaN (no spread to estimate)."""

    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if len(x) == 0:
        return math.nan, math.nan
    if len(x) == 1:
        return float(x[0]), math.nan
    sem = x.std(ddof=1) / math.sqrt(len(x))
    return float(x.mean()), float(stats.t.ppf((1 + level) / 2, len(x) - 1) * sem)


def paired_p(a, b) -> float:
    """Two-sided p-value that paired samples ``a`` and ``b`` differ: one value per image
    (already averaged over seeds), Wilcoxon signed-rank, exact for up to 50 pairs without
    ties or zero differences (SciPy's choice). 1.0 when every difference is zero, NaN with
    fewer than 2 pairs."""

    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if len(d) < 2:
        return math.nan
    if np.all(d == 0):
        return 1.0
    return float(stats.wilcoxon(d, zero_method="zsplit").pvalue)


def min_p(n: int) -> float:
    """The smallest two-sided p-value an exact signed-rank test over ``n`` pairs can give:
    every difference of one sign, 2 / 2^n (1.0 for n = 0)."""
    return min(1.0, 2.0 / 2 ** n)


def holm(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values over the whole list (NaN stays NaN and does not
    count); a test is significant if its adjusted p < alpha."""
    idx = [i for i, p in enumerate(pvalues) if not math.isnan(p)]
    order = sorted(idx, key=lambda i: pvalues[i])
    out = [math.nan] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * pvalues[i]))
        out[i] = running
    return out


@cache
def _rank_sum_cdf(n: int) -> np.ndarray:
    """P(T <= t) for t = 0 .. n(n+1)/2, T the sum of the ranks with a positive sign among n
    untied non-zero differences whose signs are fair coins (the null distribution)."""
    counts = np.zeros(n * (n + 1) // 2 + 1)
    counts[0] = 1.0
    for k in range(1, n + 1):  # add rank k with sign + (shift by k) or - (stay)
        counts[k:] = counts[k:] + counts[:-k].copy()
    return np.cumsum(counts) / 2.0 ** n


def signed_rank(d, level: float = 0.95) -> tuple[float, float, float, float]:
    """(p, Hodges-Lehmann shift, low, high) of the paired differences ``d`` (dB, 1-D).

    p: two-sided Wilcoxon signed-rank test, exact from the null distribution when the |d| are
    untied and non-zero (what the smallest reachable p = 2/2^n assumes), else SciPy's with
    zeros split between the signs. The shift is the median of the Walsh averages
    (d_i + d_j)/2, i <= j, the estimate that belongs to this test (the mean can be carried by
    one image); its interval holds the Walsh averages between the order statistics the exact
    distribution puts at (1 - level)/2 from each end, so it excludes 0 exactly when the
    exact test rejects at 1 - level. Fewer than 6 pairs cannot reach 95% (no outcome of the
    test rejects): the bounds are then NaN. NaN everything with fewer than 2 pairs."""
    d = np.asarray(d, dtype=float)
    n = len(d)
    if n < 2:
        return (math.nan,) * 4
    i, j = np.triu_indices(n)
    walsh = np.sort((d[i] + d[j]) / 2)
    hl = float(np.median(walsh))
    cdf = _rank_sum_cdf(n)
    # the test rejects theta when at most c Walsh averages lie on one side of it, c the
    # largest rank sum with P(T <= c) <= (1 - level)/2; k = c + 1 values of such c exist
    k = int(np.searchsorted(cdf, (1 - level) / 2, side="right"))
    lo, hi = (walsh[k - 1], walsh[-k]) if k > 0 else (math.nan, math.nan)
    if np.all(d == 0):
        return 1.0, hl, float(lo), float(hi)
    absd = np.abs(d)
    if np.any(d == 0) or len(np.unique(absd)) < n:
        return paired_p(d, np.zeros(n)), hl, float(lo), float(hi)
    ranks = np.argsort(np.argsort(absd)) + 1
    t = int(ranks[d > 0].sum())
    tail = cdf[min(t, len(cdf) - 1 - t)]  # the distribution is symmetric
    return float(min(1.0, 2 * tail)), hl, float(lo), float(hi)


def run_test(a, b, paired: bool, level: float = 0.95) -> tuple[float, float, float]:
    """(p, low, high) of the difference of two variants' per-seed set means ``a`` and ``b``
    (dB; one value per training run). ``paired`` (same seeds, same order): one-sample t-test
    of the differences a_i - b_i; otherwise Welch's two-sample t-test. The interval is the
    ``level`` t-interval of the mean difference. NaN with fewer than 2 values per side (or
    pairs). Differences without any spread give p = 0 (1 when they are all zero)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if paired:
        d = a - b
        if len(d) < 2:
            return (math.nan,) * 3
        mean, se, df = d.mean(), d.std(ddof=1) / math.sqrt(len(d)), len(d) - 1
    else:
        if len(a) < 2 or len(b) < 2:
            return (math.nan,) * 3
        va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
        mean, se = a.mean() - b.mean(), math.sqrt(va + vb)
        # Welch-Satterthwaite degrees of freedom
        df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1)) if se else 1
    if se == 0:
        return (1.0 if mean == 0 else 0.0), float(mean), float(mean)
    # scipy.special's t functions: the same values as stats.t, without its per-call overhead
    # (the calibration simulation runs this tens of thousands of times)
    p = 2 * special.stdtr(df, -abs(mean) / se)
    half = special.stdtrit(df, (1 + level) / 2) * se
    return float(p), float(mean - half), float(mean + half)


def seeds_needed(sd: float, effect: float, alpha: float, paired: bool, power: float = 0.8,
                 most: int = 50) -> int | None:
    """Seeds per variant at which ``run_test`` detects a true difference ``effect`` (dB) with
    probability ``power`` at level ``alpha``, when the per-seed differences (``paired``) or
    each variant's set means (two-sample, equal spreads) have standard deviation ``sd``:
    the non-central t power, smallest n from 2. None when more than ``most`` would be
    needed (or the effect is 0)."""
    if not (sd > 0) or not effect or math.isnan(effect):
        return None if not effect or math.isnan(effect) else 2
    # the normal approximation never asks for more than the t-test needs: start there
    z = special.ndtri(1 - alpha / 2) + special.ndtri(power)
    start = max(2, math.floor((z * sd / abs(effect)) ** 2 * (1 if paired else 2)))
    for n in range(start, most + 1):
        df = n - 1 if paired else 2 * n - 2
        ncp = abs(effect) / (sd / math.sqrt(n) if paired else sd * math.sqrt(2 / n))
        crit = special.stdtrit(df, 1 - alpha / 2)
        # P(|T| > crit) for T non-central t with df and ncp
        if 1 - special.nctdtr(df, ncp, crit) + special.nctdtr(df, ncp, -crit) >= power:
            return n
    return None


def reachable_holm(pvalues: list[float], i: int, best: float) -> float:
    """The Holm-adjusted p comparison ``i`` of a family would get if its own p were ``best``
    (the smallest it can reach) and every other p stayed as observed: when that is not below
    alpha, no outcome of comparison ``i`` could be significant in this family."""
    trial = list(pvalues)
    trial[i] = min(best, trial[i]) if not math.isnan(trial[i]) else best
    return holm(trial)[i]
