"""The result table as people read it: small tables a paper could print, made from one
``table.results_table`` (whose every column ``results.csv`` keeps).

Per group of runs: one table of the variants (their factors and costs), then one per
evaluation set: ``n`` (seeds pooled), PSNR and SSIM as mean ± 95% CI over seeds, Δ PSNR
against bicubic and against the baseline, and the verdict of the comparison. What is the
same in every row (the set's bicubic PSNR/SSIM, a cost every variant shares) is said once
above its table instead of repeated in a column; derived columns (seconds per 30 frames =
30 × ms per frame) are left to the CSV. A column's best mean is bold only where the verdicts
say it beats every other variant (``best``), never for being the highest number.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import pandas as pd

# verdict marks (``verdicts.MARKS``) that claim a difference in the design (not "(1 seed)")
BETTER, WORSE = {"better"}, {"worse", "worse (budget)"}
COSTS = {"model/params": ("{:,.0f}", "Params"), "model/gflops": ("{:.3g}", "GFLOPs"),
         "model/ms_per_frame": ("{:.1f}", "ms/frame"), "train/loss": ("{:.4g}", None),
         "wall_s": ("{:.0f}", None)}  # header None: not printed in LaTeX (machine-bound)


@dataclass
class Shown:
    """One table as people read it. ``frame``: cells as text, columns named as in
    ``results.csv``; ``bold``: (row position, column) printed bold; ``left``: text columns
    (the others are numbers, right-aligned); ``tex``: the LaTeX header of each column that
    LaTeX prints (text, or math between ``$``); ``note``: what is the same in every row;
    ``caption``: the LaTeX caption."""
    title: str
    frame: pd.DataFrame
    note: str = ""
    caption: str = ""
    bold: set = field(default_factory=set)
    left: set = field(default_factory=set)
    tex: dict = field(default_factory=dict)


def id_columns(table: pd.DataFrame, keys: list[str]) -> list[str]:
    """What names a row: the sweep file's ``variant`` where there is one, else the factors."""
    return ["variant"] if "variant" in keys else [k for k in keys if k in table]


def _text(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _pm(v: float, ci: float, digits: int) -> str:
    if pd.isna(v):
        return ""
    return f"{v:.{digits}f}" + ("" if pd.isna(ci) else f" ± {ci:.{digits}f}")


def _numeric(cells) -> bool:
    """Whether a column holds numbers (its first word, once separators are gone)."""
    words = [c.split(" ")[0].replace(",", "") for c in cells if c]
    return bool(words) and all(re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?", w)
                               for w in words)


def variants(table: pd.DataFrame, keys: list[str]) -> Shown:
    """The variants: what names them, their other factors, cost (parameters, GFLOPs, ms per
    frame), final training loss, wall time and run ids; a cost every variant shares goes
    to the note."""
    ids = id_columns(table, keys)
    cols = {k: table[k].map(_text) for k in ids + [k for k in keys if k not in ids]}
    notes = []
    for c, (fmt, _) in COSTS.items():
        if c not in table or table[c].isna().all():
            continue
        cells = table[c].map(lambda v, f=fmt: "" if pd.isna(v) else f.format(v))
        if len(table) > 1 and cells.nunique() == 1:
            notes.append(f"{c} {cells.iloc[0]}")
        else:
            cols[c] = cells
    cols["run_id"] = table["run_id"]
    frame = pd.DataFrame(cols).reset_index(drop=True)
    tex = {c: "Variant" if c == "variant" else c for c in keys if c in frame}
    tex.update({c: COSTS[c][1] for c in COSTS if c in frame and COSTS[c][1]})
    note = ("The same for every variant: " + ", ".join(notes) + ".") if notes else ""
    return Shown("Variants", frame, note, "Variants: factors and cost.", set(),
                 {c for c in frame if not _numeric(frame[c])}, tex)


def set_table(table: pd.DataFrame, s: str, keys: list[str], scale=None,
              baseline: str = "") -> Shown:
    """The table of evaluation set ``s``: ids, ``n``, ``<s>/psnr``, ``<s>/ssim`` (mean ± 95%
    CI over seeds), ``<s>/dpsnr_bicubic``, and with a baseline ``<s>/dpsnr_baseline`` and
    ``<s>/verdict``; bicubic PSNR/SSIM in the note when every row has the same (as they do:
    one set, one protocol). ``scale``: the scale every run used, said in the note;
    ``baseline``: the baseline's name, for the caption."""
    ids = id_columns(table, keys)
    cols = {k: table[k].map(_text) for k in ids}
    cols["n"] = table["n"].map(_text)
    cols[f"{s}/psnr"] = [_pm(v, c, 2) for v, c in zip(table[f"{s}/psnr"], table[f"{s}/psnr_ci"])]
    cols[f"{s}/ssim"] = [_pm(v, c, 4) for v, c in zip(table[f"{s}/ssim"], table[f"{s}/ssim_ci"])]
    bic = {m: table[f"{s}/bicubic_{m}"].map(lambda v, d=d: "" if pd.isna(v) else f"{v:.{d}f}")
           for m, d in (("psnr", 2), ("ssim", 4))}
    constant = all(b.nunique() == 1 and b.iloc[0] for b in bic.values())
    if not constant:
        cols.update({f"{s}/bicubic_{m}": b for m, b in bic.items()})
    cols[f"{s}/dpsnr_bicubic"] = table[f"{s}/dpsnr_bicubic"].map(
        lambda v: "" if pd.isna(v) else f"{v:+.2f}" + (" below bicubic" if v < 0 else ""))
    compared = f"{s}/verdict" in table
    if compared:
        cols[f"{s}/dpsnr_baseline"] = [
            "" if b or pd.isna(d) else f"{d:+.2f}"
            for d, b in zip(table[f"{s}/dpsnr_baseline"], table["baseline"])]
        cols[f"{s}/verdict"] = ["baseline" if b else (v if isinstance(v, str) else "")
                                for v, b in zip(table[f"{s}/verdict"], table["baseline"])]
    frame = pd.DataFrame(cols).reset_index(drop=True)
    best = _best(table.reset_index(drop=True), s) if compared else None
    bold = {(best, f"{s}/psnr")} if best is not None else set()

    images = _images(table, s)
    what = [x for x in (f"{images} images" if images else "",
                        f"scale ×{_text(scale)}" if scale is not None else "") if x]
    note = ", ".join(what)
    note = (note[:1].upper() + note[1:] + ". ") if note else ""
    if constant:
        note += (f"The same in every row: {s}/bicubic_psnr {bic['psnr'].iloc[0]} dB, "
                 f"{s}/bicubic_ssim {bic['ssim'].iloc[0]}.")
    caption = (f"{s}: PSNR (dB) and SSIM, mean ± 95% CI over the n seeds of each variant"
               + (f" ({', '.join(what)})" if what else "")
               + (f"; bicubic {bic['psnr'].iloc[0]} dB / {bic['ssim'].iloc[0]}" if constant
                  else "")
               + ". Δ: PSNR difference from bicubic" + (
                   f" and from the baseline ({baseline}); verdict: the report's tests over "
                   "images and over training runs, Holm-corrected" if compared else "") + "."
               + (" Bold: the best mean, where the verdicts show it beats every other variant."
                  if bold else ""))
    tex = {c: "Variant" if c == "variant" else c for c in ids}
    tex.update({"n": "$n$", f"{s}/psnr": "PSNR (dB)", f"{s}/ssim": "SSIM",
                f"{s}/bicubic_psnr": "Bicubic PSNR", f"{s}/bicubic_ssim": "Bicubic SSIM",
                f"{s}/dpsnr_bicubic": "Δ bicubic", f"{s}/dpsnr_baseline": "Δ baseline",
                f"{s}/verdict": "Verdict"})
    tex = {c: h for c, h in tex.items() if c in frame}
    left = {c for c in frame if c == f"{s}/verdict" or (c in ids and not _numeric(frame[c]))}
    return Shown(s, frame, note, caption, bold, left, tex)


def _images(table: pd.DataFrame, s: str) -> int | None:
    """The images of set ``s`` the comparisons scored (None without comparisons)."""
    col = f"{s}/images_total"
    if col not in table or table[col].isna().all():
        return None
    return int(table[col].max())


def _best(table: pd.DataFrame, s: str) -> int | None:
    """The row whose mean PSNR on ``s`` is highest, when the verdicts say it beats every
    other row: a variant judged better than the baseline while every other variant is
    judged worse than it, or the baseline when every variant is judged worse. Only the
    comparisons with the baseline are tested, so nothing else can support it."""
    psnr = table[f"{s}/psnr"]
    if psnr.isna().all() or len(table) < 2:
        return None
    top = int(psnr.idxmax())
    marks = table[f"{s}/verdict"].fillna("")
    others = [i for i in range(len(table)) if i != top and not table["baseline"].iloc[i]]
    if not table["baseline"].iloc[top] and marks.iloc[top] not in BETTER:
        return None
    return top if all(marks.iloc[i] in WORSE for i in others) else None
