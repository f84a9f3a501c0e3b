"""What a report may conclude: one sentence per comparison of a variant with the baseline.

A verdict is *better*, *worse*, *no detectable difference*, or *cannot tell* with its reason:

- **below bicubic**: a model whose PSNR on a set is below bicubic interpolation's has not
  learned super-resolution yet; ranking two such models ranks optimisation noise;
- **not converged**: validation PSNR still rising at the end (rule: ``RISE_DB``);
- **underpowered**: n image pairs can never give an exact two-sided p below 2/2^n; when that
  is not below alpha, no outcome of the test could be significant.

Only when none of these holds does the Holm-corrected p decide between better/worse (p < alpha,
by the sign of the difference) and no detectable difference. The test is over images: with a
single training run per variant, better/worse speaks of the two trained models, and the
verdict says so (seeds measure whether the design, not one run, makes the difference).
"""
from __future__ import annotations

import math

import pandas as pd

from sr_ablate.report.stats import min_p, pairs_needed

# A run is "not converged" when its validation PSNR rose by more than this between its last
# two evaluations. 0.05 dB is a fixed threshold, set before any study was run and not tuned
# to one; it is not a measured seed spread.
RISE_DB = 0.05
RULE = (f"not converged = validation PSNR rose by more than {RISE_DB} dB between the last two "
        "evaluations (mean curve over seeds)")


def last_rise(history: list[tuple[int, float]]) -> float:
    """dB gained between the last two evaluations of a PSNR curve [(step, dB)...]; NaN with
    fewer than two evaluations."""
    points = sorted(history)
    if len(points) < 2:
        return math.nan
    return points[-1][1] - points[-2][1]


def reasons(row: pd.Series, s: str) -> list[str]:
    """Why a row's numbers on set ``s`` cannot support a conclusion (empty if they can)."""
    out = []
    if row.get(f"{s}/dpsnr_bicubic", math.nan) < 0:
        out.append("below bicubic, undertrained")
    if row.get("val_rise", math.nan) > RISE_DB:
        out.append(f"not converged (val PSNR +{row['val_rise']:.2f} dB over its last "
                   "evaluation)")
    return out


def verdict(variant: pd.Series, base: pd.Series, s: str, alpha: float) -> str:
    """better | worse | no detectable difference | cannot tell: <reasons>."""
    why = reasons(variant, s) + [f"baseline {r}" for r in reasons(base, s)]
    n = variant.get(f"{s}/n_images", 0)
    n = 0 if pd.isna(n) else int(n)
    if n and min_p(n) >= alpha:
        why.append(f"underpowered ({n} images: smallest reachable p = {min_p(n):.3g} ≥ α = "
                   f"{alpha:g}; the test needs at least {pairs_needed(alpha)} images)")
    p = variant.get(f"{s}/p_holm", math.nan)
    if not why and pd.isna(p):
        why.append("no per-image results to pair")
    if why:
        return "cannot tell: " + "; ".join(why)
    lo, hi = variant.get(f"{s}/dpsnr_lo", math.nan), variant.get(f"{s}/dpsnr_hi", math.nan)
    if p < alpha and lo <= 0 <= hi:  # signed ranks and mean disagree: skewed differences
        return (f"cannot tell: the signed-rank test (Holm p = {p:.2g}) and the mean difference's "
                "95% interval, which holds 0, disagree (skewed per-image differences)")
    if p < alpha:
        word = "better" if variant[f"{s}/dpsnr_baseline"] > 0 else "worse"
        if min(variant["n"], base["n"]) < 2:  # the test sees images, not training noise
            word += (" (for these trained models: with one training run per variant the "
                     "spread between runs is unknown; repeat with seed=0,1,2 to test the "
                     "design)")
        return word
    return "no detectable difference"


def _seeds(row: pd.Series) -> str:
    n = int(row["n"])
    return f"{n} seed{'s' if n != 1 else ''}"


def sentence(variant: pd.Series, base: pd.Series, s: str, label, alpha: float) -> str:
    """``24 vs 16 blocks on set14: +0.12 dB [−0.05, +0.29] (14 images, 3 seeds), p = 0.21
    (Holm 0.63) — no detectable difference``; ``label(row)`` names a variant."""
    d, lo, hi = (variant.get(f"{s}/dpsnr_{k}", math.nan) for k in ("baseline", "lo", "hi"))
    ci = "" if pd.isna(lo) else f" [{lo:+.2f}, {hi:+.2f}]"
    n = variant.get(f"{s}/n_images", math.nan)
    images = "no paired images" if pd.isna(n) else f"{int(n)} images"
    seeds = _seeds(variant) if variant["n"] == base["n"] else \
        f"{_seeds(variant)} vs {_seeds(base)}"
    p, ph = variant.get(f"{s}/p_baseline", math.nan), variant.get(f"{s}/p_holm", math.nan)
    ptext = "p n/a" if pd.isna(p) else f"p = {p:.2g} (Holm {ph:.2g})"
    return (f"{label(variant)} vs {label(base)} on {s}: {d:+.2f} dB{ci} ({images}, {seeds}), "
            f"{ptext} — {verdict(variant, base, s, alpha)}")


def lines(table: pd.DataFrame, sets: list[str], label, alpha: float) -> list[str]:
    """One sentence per (variant, set) comparison with the table's baseline row."""
    if "baseline" not in table or not table["baseline"].any():
        return []
    base = table[table["baseline"]].iloc[0]
    return [sentence(row, base, s, label, alpha) for s in sets
            for _, row in table[~table["baseline"]].iterrows()]
