"""The statistics of a report: confidence intervals over seeds and paired tests over images.

The unit of a paired comparison is the evaluation *image*: each variant's per-image PSNR is
first averaged over its seeds, then the two variants are compared over the images they share
(Wilcoxon signed-rank, exact for small n). Seeds measure the spread between training runs
(the CI of a set mean over seeds); they never add pairs: 3 seeds of the same 5 images are
still 5 pieces of evidence, and the smallest two-sided p over 5 images is 2/2^5 = 0.0625.

SciPy does the distributions; what is decided here is which numbers are paired and how the
p-values of one table (its family) are corrected (Holm).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats


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


def seed_mean(per_seed: list[pd.Series]) -> pd.Series:
    """Per-image PSNR averaged over seeds: ``per_seed`` holds one Series (index = image name,
    values in dB) per run of a variant; images missing from a run are averaged over the rest."""
    if not per_seed:
        return pd.Series(dtype=float)
    return pd.concat(per_seed, axis=1).mean(axis=1)


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


def diff_ci(a, b, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of the per-image differences ``a - b`` in dB: the mean difference and
    its ``level`` t-interval over images (NaN bounds with fewer than 2 images)."""
    mean, half = mean_ci(np.asarray(a, dtype=float) - np.asarray(b, dtype=float), level)
    return mean, mean - half, mean + half


def min_p(n: int) -> float:
    """The smallest two-sided p-value an exact signed-rank test over ``n`` pairs can give:
    every difference of one sign, 2 / 2^n (1.0 for n = 0)."""
    return min(1.0, 2.0 / 2 ** n)


def pairs_needed(alpha: float) -> int:
    """The fewest pairs whose smallest reachable p is below ``alpha`` (6 for 0.05)."""
    n = 1
    while min_p(n) >= alpha:
        n += 1
    return n


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
