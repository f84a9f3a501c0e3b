"""The statistics of a report: confidence intervals over seeds and paired tests over images.

SciPy does the distributions; what is decided here is which numbers are paired and how
the p-values of several variants are corrected (Holm).
"""
from __future__ import annotations

import math

import numpy as np


def mean_ci(values, level: float = 0.95) -> tuple[float, float]:
    """(mean, half-width of the ``level`` confidence interval) of ``values``, by Student's t.
    One value: half-width NaN (no spread to estimate)."""
    from scipy import stats

    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if len(x) == 0:
        return math.nan, math.nan
    if len(x) == 1:
        return float(x[0]), math.nan
    sem = x.std(ddof=1) / math.sqrt(len(x))
    return float(x.mean()), float(stats.t.ppf((1 + level) / 2, len(x) - 1) * sem)


def paired_p(a, b) -> float:
    """Two-sided p-value that paired samples ``a`` and ``b`` (e.g. per-image PSNR of a variant
    and of the baseline on the same images and seeds) differ: Wilcoxon signed-rank (exact for
    small samples). 1.0 when every difference is zero, NaN with fewer than 2 pairs."""
    from scipy import stats

    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if len(d) < 2:
        return math.nan
    if np.all(d == 0):
        return 1.0
    return float(stats.wilcoxon(d, zero_method="zsplit").pvalue)


def holm(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (NaN stays NaN); significant if adjusted < alpha."""
    idx = [i for i, p in enumerate(pvalues) if not math.isnan(p)]
    order = sorted(idx, key=lambda i: pvalues[i])
    out = [math.nan] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * pvalues[i]))
        out[i] = running
    return out
