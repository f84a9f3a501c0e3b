"""The report as text: its tables (``layout.Shown``) as Markdown and LaTeX, the Markdown
document, the explanation under its tables, and the names of variants in sentences."""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from sr_ablate.report.layout import Shown
from sr_ablate.report.table import ALPHA
from sr_ablate.report.verdicts import RULE

TEX_PREAMBLE = ("% Needs \\usepackage{booktabs} in the preamble (\\toprule, \\midrule, "
                "\\bottomrule).")


def to_markdown(shown: Shown) -> str:
    """A GitHub-flavoured Markdown table: numbers right-aligned, bold cells in ``**``."""
    cols = list(shown.frame.columns)

    def cell(i: int, c: str) -> str:
        text = str(shown.frame.iloc[i][c]).replace("|", "\\|")
        return f"**{text}**" if (i, c) in shown.bold and text else text
    lines = ["| " + " | ".join(cols) + " |",
             "|" + "|".join("---" if c in shown.left else "--:" for c in cols) + "|"]
    lines += ["| " + " | ".join(cell(i, c) for c in cols) + " |"
              for i in range(len(shown.frame))]
    return "\n".join(lines) + "\n"


TEX = {"\\": r"\textbackslash{}", "_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#",
       "$": r"\$", "{": r"\{", "}": r"\}", "~": r"\~{}", "^": r"\^{}", "±": r"$\pm$",
       "Δ": r"$\Delta$", "×": r"$\times$", "α": r"$\alpha$", "◆": r"$\diamond$"}


def tex(text) -> str:
    """Text escaped for LaTeX (one pass: an escape is never escaped again); ±, Δ, × and a
    number's sign in math mode."""
    text = "" if pd.isna(text) else str(text)
    text = re.sub("|".join(map(re.escape, TEX)), lambda m: TEX[m.group()], text)
    # a sign before a number, not a hyphen: +0.53, -0.32 (at the start or after a space)
    return re.sub(r"(^|(?<= ))([+-])(?=\d)", r"$\2$", text)


def _header(text: str) -> str:
    return text if len(text) > 1 and text[0] == text[-1] == "$" else tex(text)


def to_latex(shown: Shown, label: str) -> str:
    """A ``table`` float in the form papers use: booktabs rules, text columns left and
    numbers right-aligned, bold cells in ``\\textbf``, the caption under it. Only the columns
    with a LaTeX header (``shown.tex``) are printed."""
    cols = [c for c in shown.frame.columns if c in shown.tex]

    def cell(i: int, c: str) -> str:
        text = tex(shown.frame.iloc[i][c])
        return f"\\textbf{{{text}}}" if (i, c) in shown.bold and text else text
    spec = "".join("l" if c in shown.left else "r" for c in cols)
    lines = ["\\begin{table}[t]", "\\centering", f"\\begin{{tabular}}{{{spec}}}", "\\toprule",
             " & ".join(_header(shown.tex[c]) for c in cols) + r" \\", "\\midrule"]
    lines += [" & ".join(cell(i, c) for c in cols) + r" \\" for i in range(len(shown.frame))]
    lines += ["\\bottomrule", "\\end{tabular}", f"\\caption{{{tex(shown.caption)}}}",
              f"\\label{{{re.sub(r'[^A-Za-z0-9:_.-]', '-', label)}}}", "\\end{table}"]
    return "\n".join(lines) + "\n"


def variant_label(row, keys: list[str]) -> str:
    """A variant's name in a sentence: its sweep-file name, else its factor values."""
    if "variant" in keys and isinstance(row.get("variant"), str):
        return row["variant"]
    return " ".join(f"{k}={row[k]}" for k in keys if not pd.isna(row.get(k))) or "all runs"


def how_to_read(compared: bool) -> list[str]:
    """The explanation under the tables, one paragraph per point (``compared``: some table
    has comparisons with a baseline)."""
    out = [
        "**n**: the runs pooled into a variant, one per seed (runs that differ only in "
        "`seed` are repeats). **psnr / ssim**: mean ± 95% confidence interval (t) over those "
        "runs of each run's mean over the set's images; PSNR in dB.",
        "**dpsnr_bicubic**: the variant's PSNR minus bicubic interpolation's on the same "
        "images; *below bicubic* means the model has not yet learned super-resolution. What "
        "is the same in every row (the set's bicubic PSNR/SSIM, a cost every variant shares) "
        "is said once above its table. **wall_s**: seconds from a run's start to its end on "
        "the machine that ran it, comparable only between runs on one otherwise idle machine "
        "(python -m sr_ablate bench measures speed). results.csv keeps every column, derived "
        "ones too (model/s_per_30_frames = 30 × model/ms_per_frame).",
    ]
    if compared:
        out += [
            "**dpsnr_baseline**: the mean difference from the baseline over the images and "
            "runs the comparison uses. Each verdict line under a table adds the signed-rank "
            "shift (Hodges–Lehmann) and two 95% intervals: over images (exact signed-rank "
            "interval of the shift of the seed-averaged per-image PSNR) and over runs "
            "(t-interval of the difference of per-seed set means: paired over shared seeds, "
            "else Welch).",
            "**verdict**: a design is called better or worse only when both tests reject (p "
            "of the claim = the larger p), Holm-corrected over every comparison of its table, "
            f"at α={ALPHA}; with one seed on a side only the images are tested and the verdict "
            "speaks of the trained models (1 seed). Verdicts withhold a conclusion (cannot "
            f"tell) for a model below bicubic, one not converged or unstable ({RULE}), or a "
            "comparison that could not reach α in its family (underpowered).",
            "**Bold**: a column's best mean, only where the verdicts show that variant beats "
            "every other one (better than the baseline while every other variant is worse "
            "than the baseline, or the baseline when every variant is worse, at this budget "
            "included); never for the highest number alone. SSIM has no verdict and is never "
            "bold.",
        ]
    return out


def markdown(name: str, intro: str, missing: list[str], sections: list[dict],
             how: list[str]) -> str:
    """results.md: the title, what is missing, per section its lead, tables (each with what
    is the same in every row above it), verdict lines, notes and plots; then how to read."""
    md = [f"# {name}\n"] + ([intro + "\n"] if intro else [])
    if missing:
        md += ["Missing (asked for by the sweep, no finished run):\n",
               *[f"- {m}" for m in missing], ""]
    for sec in sections:
        md.append(f"## {sec['title']}\n")
        md += [sec["text"] + "\n"] if sec["text"] else []
        for t in sec.get("tables", []):
            md.append(f"### {t.title}\n")
            md += [t.note + "\n"] if t.note else []
            md.append(to_markdown(t))
        if sec["lines"]:
            md += ["### Verdicts\n", *[f"- {line}" for line in sec["lines"]], ""]
        md += [sec["notes"] + "\n"] if sec.get("notes") else []
        md += [f"![{Path(p).stem}]({p})\n" for p in sec["images"]]
    md += ["## How to read these tables\n", *[p + "\n" for p in how]]
    return "\n".join(md)
