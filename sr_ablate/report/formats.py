"""The result table as people read it: Markdown, LaTeX and the cells of both."""
from __future__ import annotations

import pandas as pd


def display(table: pd.DataFrame) -> pd.DataFrame:
    """The table as people read it: ``mean ± ci``, Δ with sign and its interval over images,
    the Holm p and the verdict mark (better / worse / no difference / cannot tell),
    thousands separators; one column per quantity."""
    sets = [c[:-len("/psnr")] for c in table.columns if c.endswith("/psnr")
            and not c.endswith("bicubic_psnr")]
    keys = [c for c in table.columns if "/" not in c and c not in
            ("run_id", "n", "seed", "baseline", "wall_s", "val_rise")]
    out = pd.DataFrame({k: table[k] for k in keys})
    out["n"] = table["n"]
    if table["baseline"].any():
        out["baseline"] = table["baseline"].map(lambda b: "◆" if b else "")

    def pm(v, ci, digits):
        return "" if pd.isna(v) else f"{v:.{digits}f}" + ("" if pd.isna(ci) else
                                                           f" ± {ci:.{digits}f}")
    for s in sets:
        out[f"{s}/psnr"] = [pm(v, c, 2) for v, c in zip(table[f"{s}/psnr"],
                                                        table[f"{s}/psnr_ci"])]
        out[f"{s}/ssim"] = [pm(v, c, 4) for v, c in zip(table[f"{s}/ssim"],
                                                        table[f"{s}/ssim_ci"])]
        out[f"{s}/bicubic_psnr"] = table[f"{s}/bicubic_psnr"].map(lambda v: f"{v:.2f}")
        out[f"{s}/bicubic_ssim"] = table[f"{s}/bicubic_ssim"].map(lambda v: f"{v:.4f}")
        out[f"{s}/Δpsnr_bicubic"] = table[f"{s}/dpsnr_bicubic"].map(
            lambda v: "" if pd.isna(v) else f"{v:+.2f}" + (" below bicubic" if v < 0 else ""))
        if f"{s}/dpsnr_baseline" in table:
            # the interval over images belongs to the signed-rank shift, not to the mean
            out[f"{s}/Δpsnr_baseline"] = [
                "" if pd.isna(d) else f"{d:+.2f}" + ("" if pd.isna(sh) else f" (shift {sh:+.2f}"
                                                     + ("" if pd.isna(lo) else
                                                        f" [{lo:+.2f}, {hi:+.2f}]") + ")")
                for d, sh, lo, hi in zip(table[f"{s}/dpsnr_baseline"],
                                         table[f"{s}/dpsnr_shift"], table[f"{s}/dpsnr_lo"],
                                         table[f"{s}/dpsnr_hi"])]
            # the verdict, never a bare star: a small p under "cannot tell" is no finding
            out[f"{s}/p_holm"] = [("" if pd.isna(h) else f"{h:.3g}")
                                  for h in table[f"{s}/p_holm"]]
            if f"{s}/verdict" in table:
                out[f"{s}/verdict"] = table[f"{s}/verdict"].fillna("")
    fmt = {"train/loss": "{:.4g}", "model/params": "{:,.0f}", "model/gflops": "{:.3g}",
           "model/ms_per_frame": "{:.1f}", "model/s_per_30_frames": "{:.2f}", "wall_s": "{:.0f}"}
    for c, f in fmt.items():
        if c in table and table[c].notna().any():
            out[c] = table[c].map(lambda v, f=f: "" if pd.isna(v) else f.format(v))
    out["run_id"] = table["run_id"]
    return out


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table of a ``display`` table."""
    cols = list(table.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, row in table.iterrows():
        lines.append("| " + " | ".join("" if pd.isna(row[c]) else str(row[c]) for c in cols)
                     + " |")
    return "\n".join(lines) + "\n"


def to_latex(table: pd.DataFrame) -> str:
    """A ``tabular`` (booktabs) of a ``display`` table, ready for ``\\input``."""
    def tex(v) -> str:
        text = "" if pd.isna(v) else str(v)
        for a, b in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"),
                     ("#", r"\#"), ("±", r"$\pm$"), ("Δ", r"$\Delta$"), ("◆", r"$\bullet$")):
            text = text.replace(a, b)
        return text
    cols = list(table.columns)
    lines = [r"\begin{tabular}{" + "l" * len(cols) + "}", r"\toprule",
             " & ".join(tex(c) for c in cols) + r" \\", r"\midrule"]
    lines += [" & ".join(tex(row[c]) for c in cols) + r" \\" for _, row in table.iterrows()]
    return "\n".join(lines + [r"\bottomrule", r"\end{tabular}"]) + "\n"


def variant_label(row, keys: list[str]) -> str:
    """A variant's name in a sentence: its sweep-file name, else its factor values."""
    if "variant" in keys and isinstance(row.get("variant"), str):
        return row["variant"]
    return " ".join(f"{k}={row[k]}" for k in keys if not pd.isna(row.get(k))) or "all runs"
