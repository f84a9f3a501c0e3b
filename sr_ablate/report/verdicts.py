"""What a report may conclude: one sentence per comparison of a variant with the baseline.

A verdict is *better*, *worse*, *worse at this budget*, *no detectable difference*, or
*cannot tell* with its reason (docs/protocol.md#verdicts):

- **below bicubic**: a model whose PSNR on a set is below bicubic interpolation's has not
  learned super-resolution yet; ranking two such models ranks optimisation noise. When only
  the variant is below bicubic and the baseline is above it and settled, a significant
  difference is a statement about training speed: *worse at this budget*;
- **not converged** / **unstable**: validation PSNR rose / fell by more than ``RISE_DB`` at the
  last evaluation;
- **underpowered**: even the smallest p its images can give would not be below alpha after
  Holm over this table's family (the other comparisons' p as observed);
- **the tests disagree**: the shift over images and the difference of run means point in
  different directions.

Otherwise the claim's Holm-adjusted p decides: it is the larger of the test over images and
the test over training runs, so *better*/*worse* says the difference both generalises over
pictures and beats the run-to-run spread. With one run per variant only the images are
tested, and the verdict speaks of the two trained models, not the design.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import pandas as pd

# A run is "not converged" ("unstable") when its validation PSNR rose (fell) by more than
# this between its last two evaluations. 0.05 dB is a fixed threshold, set before any study
# was run and not tuned to one; it is not a measured seed spread.
RISE_DB = 0.05
RULE = (f"not converged / unstable = validation PSNR rose / fell by more than {RISE_DB} dB "
        "between the last two evaluations (mean over seeds)")
# The mark a table shows for each verdict (never a bare significance star)
MARKS = {"better": "better", "worse": "worse", "worse at this budget": "worse (budget)",
         "no detectable difference": "no difference", "cannot tell": "cannot tell"}


def last_rise(history: list[tuple[int, float]]) -> float:
    """dB gained between the last two evaluations of a PSNR curve [(step, dB)...] (negative:
    lost); NaN with fewer than two evaluations."""
    points = sorted(history)
    if len(points) < 2:
        return math.nan
    return points[-1][1] - points[-2][1]


def _get(row: pd.Series, key: str, default=math.nan):
    v = row.get(key, default)
    return default if v is None or (isinstance(v, float) and math.isnan(v)) else v


def reasons(row: pd.Series, s: str) -> list[str]:
    """Why a row's numbers on set ``s`` cannot support a conclusion (empty if they can)."""
    out = []
    if _get(row, f"{s}/dpsnr_bicubic") < 0:
        out.append("below bicubic, undertrained")
    rise = _get(row, "val_rise")
    if rise > RISE_DB:
        out.append(f"not converged (val PSNR +{rise:.2f} dB over its last evaluation)")
    elif rise < -RISE_DB:
        out.append(f"unstable (val PSNR {rise:.2f} dB at its last evaluation)")
    return out


def _underpowered(row: pd.Series, s: str, alpha: float) -> str:
    n = int(_get(row, f"{s}/n_images", 0))
    best = 2.0 / 2 ** n
    reach = _get(row, f"{s}/p_reachable")
    return (f"underpowered ({n} images: even the smallest p they can give, {best:.2g}, "
            f"would be {reach:.2g} after Holm over this table's family, not below α = "
            f"{alpha:g}; more images per set, or a smaller family (fewer sets or variants), "
            "would change that — more seeds would not)")


def judge(variant: pd.Series, base: pd.Series, s: str, alpha: float,
          add_seeds: Callable[[int], str] | None = None) -> tuple[str, str]:
    """(verdict word, the verdict as the sentence ends it) of ``variant`` against ``base`` on
    set ``s``; ``add_seeds(n)``: the command that brings every variant to n seeds."""
    mine, theirs = reasons(variant, s), reasons(base, s)
    p, sign = _get(variant, f"{s}/p_holm"), int(_get(variant, f"{s}/sign", 0))
    significant = p < alpha and sign != 0
    one_seed = _get(variant, f"{s}/level", "images") == "images"
    caveat = (" (for these trained models: with one training run on a side the spread "
              "between runs is unknown, so this says nothing about the design"
              + (f"; add seeds: {add_seeds(3)}" if add_seeds else "") + ")") if one_seed else ""
    if (not theirs and mine and mine[0].startswith("below bicubic") and significant
            and sign < 0):
        return "worse at this budget", (
            f"worse at this budget: it has not yet learned to beat bicubic on {s} while the "
            "baseline has (it trains slower); its converged quality is unknown" + caveat)
    why = mine + [f"baseline {r}" for r in theirs]
    if math.isnan(p):
        why.append("no per-image results to pair")
    elif _get(variant, f"{s}/p_reachable") >= alpha:
        why.append(_underpowered(variant, s, alpha))
    if not why and p < alpha and sign == 0:
        why.append("the shift over images and the difference of run means point in "
                   "different directions")
    if why:
        return "cannot tell", "cannot tell: " + "; ".join(why)
    if significant:
        word = "better" if sign > 0 else "worse"
        return word, word + caveat
    return "no detectable difference", "no detectable difference" + _more_seeds(
        variant, s, add_seeds)


def _more_seeds(row: pd.Series, s: str, add_seeds) -> str:
    """Where the test over runs is what left a comparison undecided: how many seeds would
    decide it, labelled as the estimate it is."""
    effect = _get(row, f"{s}/seeds_effect")
    if math.isnan(effect):
        return ""
    n = _get(row, f"{s}/seeds_needed")
    if not effect:
        return "; the runs' means are equal: no number of seeds would separate them"
    if math.isinf(n):
        return (f"; estimate: more than 50 seeds per variant would be needed to detect "
                f"{effect:.2f} dB with 80% power at this spread")
    return (f"; estimate from the observed seed spread: {int(n)} seeds per variant would "
            f"detect {effect:.2f} dB with 80% power"
            + (f" ({add_seeds(int(n))})" if add_seeds else ""))


def verdict(variant: pd.Series, base: pd.Series, s: str, alpha: float, add_seeds=None) -> str:
    """The verdict as a sentence ends it (see ``judge``)."""
    return judge(variant, base, s, alpha, add_seeds)[1]


def _seeds(n: int) -> str:
    return f"{n} seed{'s' if n != 1 else ''}"


def _images(row: pd.Series, s: str) -> str:
    n, total = int(_get(row, f"{s}/n_images", 0)), int(_get(row, f"{s}/images_total", 0))
    if n == total:
        return f"{n} images"
    left = [f"{k} {what}" for k, what in (
        (int(_get(row, f"{s}/images_nonfinite", 0)), "without a finite PSNR"),
        (int(_get(row, f"{s}/images_incomplete", 0)), "missing from a run")) if k]
    return f"{n} of {total} images: {', '.join(left)}"


def sentence(variant: pd.Series, base: pd.Series, s: str, label, alpha: float,
             add_seeds=None) -> str:
    """``blocks24 vs base on set14: +0.03 dB (shift +0.02) [images +0.01, +0.06; runs −0.29,
    +0.35] (14 images, 3 vs 3 seeds paired; seed sd 0.02 / 0.10 dB), p images 0.016, runs
    0.62, Holm 1 — no detectable difference``; ``label(row)`` names a variant."""
    head = f"{label(variant)} vs {label(base)} on {s}: "
    d = _get(variant, f"{s}/dpsnr_baseline")
    if math.isnan(d):
        return head + "no paired images — " + verdict(variant, base, s, alpha, add_seeds)
    f = "{:+.2f}".format
    lo, hi = _get(variant, f"{s}/dpsnr_lo"), _get(variant, f"{s}/dpsnr_hi")
    parts = ["images " + ("no 95% interval below 6 images" if math.isnan(lo)
                          else f"{f(lo)}, {f(hi)}")]
    runs_a = int(_get(variant, f"{s}/runs_used", 0))
    runs_b = int(_get(variant, f"{s}/base_runs_used", 0))
    level = _get(variant, f"{s}/level", "images")
    if level == "runs":
        parts.append(f"runs {f(_get(variant, f'{s}/runs_lo'))}, "
                     f"{f(_get(variant, f'{s}/runs_hi'))}")
        paired = bool(_get(variant, f"{s}/paired", False))
        seeds = (f"{runs_a} vs {runs_b} seeds" + (" paired" if paired else ", unpaired")
                 + f"; seed sd {_get(variant, f'{s}/seed_sd'):.2f} / "
                 f"{_get(variant, f'{s}/base_seed_sd'):.2f} dB")
        ptext = (f"p images {_get(variant, f'{s}/p_images'):.2g}, runs "
                 f"{_get(variant, f'{s}/p_runs'):.2g}, Holm {_get(variant, f'{s}/p_holm'):.2g}")
    else:
        seeds = _seeds(runs_a) if runs_a == runs_b else f"{_seeds(runs_a)} vs {_seeds(runs_b)}"
        ptext = (f"p = {_get(variant, f'{s}/p_images'):.2g} "
                 f"(Holm {_get(variant, f'{s}/p_holm'):.2g})")
    left = _get(variant, f"{s}/runs_left_out", "")
    seeds += f"; left out: {left}" if left else ""
    return (f"{head}{f(d)} dB (shift {f(_get(variant, f'{s}/dpsnr_shift'))}) "
            f"[{'; '.join(parts)}] ({_images(variant, s)}, {seeds}), {ptext} — "
            f"{verdict(variant, base, s, alpha, add_seeds)}")


def lines(table: pd.DataFrame, sets: list[str], label, alpha: float, add_seeds=None
          ) -> list[str]:
    """One sentence per (variant, set) comparison with the table's baseline row."""
    if "baseline" not in table or not table["baseline"].any():
        return []
    base = table[table["baseline"]].iloc[0]
    return [sentence(row, base, s, label, alpha, add_seeds) for s in sets
            for _, row in table[~table["baseline"]].iterrows()]


def mark(table: pd.DataFrame, sets: list[str], alpha: float) -> None:
    """Add ``<set>/verdict`` to every row of ``table`` (the table mark of its verdict against
    the baseline row; empty for the baseline), so every format shows the verdict the
    sentence gives instead of a significance star."""
    if "baseline" not in table or not table["baseline"].any():
        return
    base = table[table["baseline"]].iloc[0]
    for s in sets:
        if f"{s}/p_holm" not in table:
            continue
        table[f"{s}/verdict"] = ["" if row["baseline"] else _mark(row, base, s, alpha)
                                 for _, row in table.iterrows()]


def _mark(row: pd.Series, base: pd.Series, s: str, alpha: float) -> str:
    word = MARKS[judge(row, base, s, alpha)[0]]
    one_seed = _get(row, f"{s}/level", "images") == "images"
    # with one run on a side a better/worse is about two trained models, not the design
    return f"{word} (1 seed)" if one_seed and word.startswith(("better", "worse")) else word
