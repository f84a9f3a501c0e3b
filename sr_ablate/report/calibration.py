"""The verdicts calibrated by simulation: studies drawn from a model whose truth is known.

    python -m sr_ablate.report.calibration [--studies 500]

prints the share of false *better*/*worse* verdicts on null studies (no variant differs from
the baseline) per seed count and seed spread, for the procedure the report uses and for the
one it used before (a test over images of seed-averaged PSNR only), and the power table of
docs/protocol.md (share of real differences called in the right direction).

The model of one study: per-image PSNR of variant v, run (seed) r, image i on set k =
image level (normal, sd 2 dB) + the variant's true effect + a run offset shared by every image
and set of that run (normal, sd ``seed_sd``: training luck) + image x run noise (normal, sd
``noise_sd``). Runs lose their per-image results, images go missing from a run and PSNR
values turn NaN or +inf at the given rates. Every comparison goes through the report's own
code (``compare.from_arrays``, ``compare.family``, ``verdicts.judge``); only the study is
made up.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np

from sr_ablate.report.compare import family, from_arrays
from sr_ablate.report.stats import holm, min_p
from sr_ablate.report.verdicts import judge

ALPHA = 0.05
SETTLED = {"s/dpsnr_bicubic": 1.0, "val_rise": 0.0}  # above bicubic and converged


@dataclass
class Design:
    """One kind of study: ``seeds`` runs per variant, ``images`` per set, ``variants`` besides
    the baseline, ``sets``; ``effect`` (dB) of every variant, ``seed_sd`` and ``noise_sd``
    (dB); rates of runs without per-image results, missing images and non-finite values."""
    seeds: int = 3
    images: int = 8
    variants: int = 1
    sets: int = 1
    effect: float = 0.0
    seed_sd: float = 0.1
    noise_sd: float = 0.05
    lost_runs: float = 0.0
    missing: float = 0.0
    nonfinite: float = 0.0
    shared: bool = True  # False: the baseline ran other seeds (two samples, Welch)


def _runs(rng, d: Design, effect: float, levels: list[np.ndarray]
          ) -> tuple[list[np.ndarray], np.ndarray]:
    """One variant's per-image PSNR, per set runs x images, and which runs lost their
    per-image results."""
    offsets = rng.normal(0, d.seed_sd, d.seeds)
    lost = rng.random(d.seeds) < d.lost_runs
    out = []
    for lv in levels:
        x = lv + effect + offsets[:, None] + rng.normal(0, d.noise_sd, (d.seeds, len(lv)))
        bad = rng.random(x.shape) < d.nonfinite
        x[bad] = np.where(rng.random(bad.sum()) < 0.5, np.nan, np.inf)
        out.append(np.where(lost[:, None], np.nan, x))
    return out, lost


def study(rng, d: Design) -> list[tuple[str, str]]:
    """(verdict now, verdict of the former procedure) of every comparison of one study. A
    better/worse now is a claim about the design only where both sides kept 2 runs; with
    one run left on a side it speaks of the trained models (the report says so) and is
    returned as "better (models)" / "worse (models)"."""
    levels = [rng.normal(30, 2, d.images) for _ in range(d.sets)]
    base, base_lost = _runs(rng, d, 0.0, levels)
    comps, before = [], []
    for _ in range(d.variants):
        mine, lost = _runs(rng, d, d.effect, levels)
        for k in range(d.sets):
            present = rng.random(d.images) >= d.missing
            keep_a, keep_b = ~lost, ~base_lost
            shared = keep_a & keep_b  # seeds 0..n-1 on both sides, when shared
            paired = d.shared and shared.sum() >= 2
            xa = mine[k][shared if paired else keep_a]
            xb = base[k][shared if paired else keep_b]
            if not len(xa) or not len(xb):
                comps.append(from_arrays(np.empty((0, 0)), np.empty((0, 0)), False))
                continue
            comps.append(from_arrays(xa, xb, paired, present))
    rows = family(comps, ALPHA)
    now = [judge({f"s/{c}": v for c, v in row.items()} | SETTLED, SETTLED, "s", ALPHA)[0]
           + ("" if c.level == "runs" else " (models)") for row, c in zip(rows, comps)]
    # the former procedure: the signed-rank test over images of seed-averaged PSNR, Holm
    ps = [c.p_images for c in comps]
    adjusted = holm(ps)
    for c, p in zip(comps, adjusted):
        if np.isnan(p) or min_p(c.n_images) >= ALPHA or p >= ALPHA:
            before.append("other")
        else:
            before.append("better" if c.delta > 0 else "worse")
    return list(zip(now, before))


def false_rate(rng, d: Design, studies: int) -> tuple[float, float, float]:
    """Over ``studies`` null studies of design ``d`` (its effect forced to 0): the share with
    at least one better/worse verdict (family-wise), now and before, and the share of single
    comparisons called better/worse now."""
    d = Design(**{**d.__dict__, "effect": 0.0})
    any_now = any_before = calls = total = 0
    for _ in range(studies):
        out = study(rng, d)
        words = [w for w, _ in out]
        any_now += any(w in ("better", "worse") for w in words)
        any_before += any(b in ("better", "worse") for _, b in out)
        calls += sum(w in ("better", "worse") for w in words)
        total += len(words)
    return any_now / studies, any_before / studies, calls / max(total, 1)


def power(rng, d: Design, studies: int) -> float:
    """Share of comparisons of design ``d`` (a real effect) called in the right direction."""
    right = total = 0
    want = "better" if d.effect > 0 else "worse"
    for _ in range(studies):
        words = [w for w, _ in study(rng, d)]
        right += sum(w == want for w in words)
        total += len(words)
    return right / total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sr_ablate.report.calibration",
                                 description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--studies", type=int, default=500)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(2026)
    print("## False better/worse verdicts on null studies (family-wise share; 8 images, "
          "1 variant x 1 set, image x run noise 0.05 dB)\n")
    print("| seeds | seed sd (dB) | now | before |\n|---|---|---|---|")
    for seeds in (2, 3, 5):
        for sd in (0.02, 0.1, 0.3):
            now, before, _ = false_rate(rng, Design(seeds=seeds, seed_sd=sd), args.studies)
            print(f"| {seeds} | {sd} | {now:.3f} | {before:.3f} |")
    print("\n## Power: share of real differences called in the right direction (14 images, "
          "1 variant x 1 set, image x run noise 0.05 dB)\n")
    effects = (0.1, 0.3, 1.0)
    print("| seeds | seed sd (dB) | " + " | ".join(f"Δ = {e} dB" for e in effects) + " |")
    print("|---|---|" + "---|" * len(effects))
    for seeds in (2, 3, 5):
        for sd in (0.02, 0.1, 0.3):
            cells = [power(rng, Design(seeds=seeds, images=14, seed_sd=sd, effect=e),
                           args.studies) for e in effects]
            print(f"| {seeds} | {sd} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
