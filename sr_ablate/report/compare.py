"""One comparison of a variant with the baseline on one evaluation set, from per-image PSNR.

Every number of a comparison comes from the same data: the runs both sides can use and the
images every one of those runs scored with a finite PSNR. Runs without per-image results,
runs whose seed the other side lacks (when seeds are paired) and images missing from a run
or without a finite PSNR (an identical picture scores +inf) are left out of *both* sides and
counted, so Δ, its sign, both intervals and both p-values never disagree because they were
computed from different rows (docs/protocol.md#statistics).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from sr_ablate.report.stats import (
    holm,
    min_p,
    reachable_holm,
    run_test,
    seeds_needed,
    signed_rank,
)


@dataclass
class Comparison:
    """Variant minus baseline on one set, in dB. ``level`` is "runs" when the training runs
    were compared too (at least 2 runs a side), else "images" (one seed: a statement about
    the trained models)."""
    delta: float = math.nan          # mean over images of the seed-averaged differences
    shift: float = math.nan          # Hodges-Lehmann shift of those differences
    images_lo: float = math.nan      # exact signed-rank interval of the shift
    images_hi: float = math.nan
    p_images: float = math.nan
    runs_lo: float = math.nan        # t-interval of the difference of per-seed set means
    runs_hi: float = math.nan
    p_runs: float = math.nan
    paired: bool = False             # runs paired by seed (else Welch, two samples)
    runs_a: int = 0                  # runs used per side
    runs_b: int = 0
    sd_a: float = math.nan           # seed spread: sd over runs of each side's set mean
    sd_b: float = math.nan
    sd_diff: float = math.nan        # sd of the per-seed differences (paired)
    n_images: int = 0                # images used
    images_total: int = 0            # images any used run scored
    nonfinite: int = 0               # images left out: a PSNR that is not finite
    incomplete: int = 0              # images left out: missing from some run
    runs_left_out: list[str] = field(default_factory=list)  # why, one phrase per reason

    @property
    def level(self) -> str:
        return "runs" if self.runs_a >= 2 and self.runs_b >= 2 else "images"

    @property
    def p(self) -> float:
        """The p of the claim: "over images AND over runs" is tested by the larger p (an
        intersection-union test: its level is at most alpha when each test's is)."""
        if self.level == "images":
            return self.p_images
        return max(self.p_images, self.p_runs)

    @property
    def sign(self) -> int:
        """+1 / -1 when every test this comparison reports points that way, 0 when they
        disagree (the signed-rank shift and the difference of run means)."""
        s_img = np.sign(self.shift) if not math.isnan(self.shift) else 0
        if self.level == "images":
            return int(s_img)
        return int(s_img) if s_img == np.sign(self.delta) else 0


def per_seed(runs: pd.DataFrame, per_image: dict | None, s: str) -> dict[str, pd.Series]:
    """{seed: per-image PSNR on set ``s``} of a variant's runs that have per-image results
    (a seed run twice, e.g. on two devices, keeps its newest run)."""
    out = {}
    order = runs.sort_values("start_time") if "start_time" in runs else runs
    for _, r in order.iterrows():
        rows = (per_image or {}).get(r["run_id"])
        if rows is None or "set" not in rows:
            continue
        rows = rows[rows["set"] == s]
        if rows.empty:
            continue
        out[str(r.get("seed", r["run_id"]))] = rows.set_index("image")["psnr"].astype(float)
    return out


def compare(a: dict[str, pd.Series], b: dict[str, pd.Series], missing_a: int = 0,
            missing_b: int = 0) -> Comparison:
    """Variant ``a`` against baseline ``b``: {seed: per-image PSNR (index = image)} each;
    ``missing_*``: runs of that side without per-image results (counted, left out).

    Runs: with at least 2 shared seeds, only those (paired); else every run (two samples).
    Images: those every used run scored with a finite PSNR."""
    left = [f"{missing_a + missing_b} run(s) without per-image results"] if (
        missing_a or missing_b) else []
    shared = [k for k in a if k in b]
    paired = len(shared) >= 2
    if paired:
        dropped = len(a) + len(b) - 2 * len(shared)
        if dropped:
            left.append(f"{dropped} run(s) whose seed the other side lacks")
        a, b = {k: a[k] for k in shared}, {k: b[k] for k in shared}
    if not a or not b:
        return Comparison(runs_left_out=left)
    every = pd.Index(sorted(set().union(*(x.index for x in [*a.values(), *b.values()]))))
    xa, xb = (np.stack([x.reindex(every).to_numpy(dtype=float) for x in side.values()])
              for side in (a, b))
    # an image a run did not score is "missing"; a NaN or inf it logged is "not finite"
    present = np.ones(len(every), bool)
    for x in [*a.values(), *b.values()]:
        present &= every.isin(x.index)
    return from_arrays(xa, xb, paired, present, left)


def from_arrays(xa: np.ndarray, xb: np.ndarray, paired: bool, present: np.ndarray | None = None,
                left: list[str] | None = None) -> Comparison:
    """The comparison of per-image PSNR arrays ``xa`` (runs x images, dB) and ``xb`` (runs x
    images, the same images in the same order; the same seeds in the same order when
    ``paired``). ``present[j]``: every run scored image j (False: missing from some run);
    images with a non-finite value in any run are left out too."""
    c = Comparison(paired=paired, runs_left_out=list(left or []))
    present = np.ones(xa.shape[1], bool) if present is None else present
    finite = np.isfinite(xa).all(axis=0) & np.isfinite(xb).all(axis=0)
    keep = present & finite
    c.images_total = xa.shape[1]
    c.incomplete = int((~present).sum())
    c.nonfinite = int((present & ~finite).sum())
    c.n_images = int(keep.sum())
    c.runs_a, c.runs_b = xa.shape[0], xb.shape[0]
    if not c.n_images:
        return c
    xa, xb = xa[:, keep], xb[:, keep]
    d = xa.mean(axis=0) - xb.mean(axis=0)   # per image, each side averaged over its seeds
    c.delta = float(d.mean())
    c.p_images, c.shift, c.images_lo, c.images_hi = signed_rank(d)
    ma, mb = xa.mean(axis=1), xb.mean(axis=1)  # per run: the set mean over the kept images
    if len(ma) >= 2:
        c.sd_a = float(ma.std(ddof=1))
    if len(mb) >= 2:
        c.sd_b = float(mb.std(ddof=1))
    if c.level == "runs":
        c.p_runs, c.runs_lo, c.runs_hi = run_test(ma, mb, c.paired)
        if c.paired:
            c.sd_diff = float((ma - mb).std(ddof=1))
    return c


# Columns of one comparison on a set s (``<s>/<name>``) and the Comparison field behind each
FIELDS = {"dpsnr_baseline": "delta", "dpsnr_shift": "shift", "dpsnr_lo": "images_lo",
          "dpsnr_hi": "images_hi", "p_images": "p_images", "runs_lo": "runs_lo",
          "runs_hi": "runs_hi", "p_runs": "p_runs", "p_baseline": "p", "level": "level",
          "paired": "paired", "runs_used": "runs_a", "base_runs_used": "runs_b",
          "seed_sd": "sd_a", "base_seed_sd": "sd_b", "seed_sd_diff": "sd_diff",
          "n_images": "n_images", "images_total": "images_total",
          "images_nonfinite": "nonfinite", "images_incomplete": "incomplete", "sign": "sign"}
COLUMNS = (*FIELDS, "runs_left_out", "p_holm", "p_reachable", "seeds_needed", "seeds_effect")


def family(comparisons: list[Comparison], alpha: float, effect: float | None = None
           ) -> list[dict]:
    """The columns (``COLUMNS``) of each comparison of one table's family: its own numbers,
    the Holm-adjusted p of its claim over the family (``p_holm``), the best Holm p it could
    still reach with the smallest p its images allow, the others as observed
    (``p_reachable``: underpowered when not below ``alpha``), and, where the test over runs
    is what leaves it undecided, the seeds per variant that would detect ``effect`` dB (the
    observed |Δ| by default) with 80% power at alpha/m, the strictest step of Holm over m
    comparisons (``seeds_needed``, inf when more than 50)."""
    ps = [c.p for c in comparisons]
    adjusted = holm(ps)
    m = sum(not math.isnan(p) for p in ps)
    out = []
    for k, (c, p) in enumerate(zip(comparisons, adjusted)):
        row = {col: getattr(c, attr) for col, attr in FIELDS.items()}
        row.update(runs_left_out="; ".join(c.runs_left_out), p_holm=p, p_reachable=math.nan,
                   seeds_needed=math.nan, seeds_effect=math.nan)
        if c.n_images and not math.isnan(c.p):
            row["p_reachable"] = reachable_holm(ps, k, min_p(c.n_images))
        if c.level == "runs" and c.p_runs >= alpha and c.p_runs >= c.p_images:
            size = effect if effect else abs(c.delta)
            sd = c.sd_diff if c.paired else math.sqrt((c.sd_a ** 2 + c.sd_b ** 2) / 2)
            n = seeds_needed(sd, size, alpha / m, c.paired)
            row.update(seeds_needed=math.inf if n is None else n, seeds_effect=size)
        out.append(row)
    return out
