"""The report's figures (PNG: drawn by ``report.figures``, ``.pareto``, ``.crops``) and
``index.html``.

Figures per table: validation PSNR and training loss against step (mean line over seeds,
band = min..max), PSNR against each numeric factor (e.g. block count) one line per model
family, PSNR against parameters / GFLOPs / ms per frame with the Pareto front marked (all
with the bicubic level dashed and 95% CI error bars where n >= 2), and a strip of the same
zoomed crop: HR, bicubic, then every variant's output, each with its PSNR.
"""
from __future__ import annotations

import base64
import html
import re
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from sr_ablate.report import artifacts, crops, pareto
from sr_ablate.report import figures as rp
from sr_ablate.report.source import Source
from sr_ablate.report.table import factors

DPI = 110


def psnr_column(table: pd.DataFrame) -> str:
    """The first set's PSNR column (``val/psnr``): what the figures plot."""
    return next(c for c in table.columns if c.endswith("/psnr") and "bicubic" not in c)


def draw(source: Source, group: pd.DataFrame, table: pd.DataFrame) -> dict[str, Figure]:
    """The figures of one table, unsaved: {file stem: matplotlib Figure}, e.g. ``curves``,
    ``psnr_vs_model_blocks``, ``pareto``, ``crops`` (a figure with nothing to show is left out);
    histories and crops read from ``source``."""
    done = group[group["status"] == "FINISHED"]
    keys = [k for k in factors(done) if k in table]
    labels = rp.variant_labels(table, keys)
    runs = rp.members(done, table)
    psnr = psnr_column(table)
    set_name = psnr.split("/")[0]
    out: dict[str, Figure] = {}

    histories = [(label, artifacts.histories(source, r["run_id"], psnr),
                  artifacts.histories(source, r["run_id"], "train/loss"))
                 for label, r in zip(labels, runs)]
    out["curves"] = rp.curves(histories, list(table[f"{set_name}/bicubic_psnr"]), set_name)

    family, seen = rp.row_families(runs), []
    for k in keys:
        column = list(table[k].map(str))
        if k in rp.FAMILY_KEYS or column in seen:  # e.g. scale and model.scale: one plot
            continue
        fig = rp.factor_plot(table, k, psnr, family, keys)
        if fig is not None:
            out[f"psnr_vs_{k.replace('.', '_')}"] = fig
            seen.append(column)

    costs = [c for c in ("model/params", "model/gflops", "model/ms_per_frame")
             if c in table and table[c].notna().any()]
    if costs:
        out["pareto"] = pareto.plot(table, costs, psnr, labels)
    tiles, caption = crops.tiles(source, runs, labels)
    if tiles:
        out["crops"] = crops.strip(tiles, caption)
    return out


def figures(source: Source, group: pd.DataFrame, table: pd.DataFrame, out_dir: Path,
            suffix: str) -> list[str]:
    """Draw the plots of one table into ``out_dir/plots``; their paths relative to ``out_dir``."""
    plots = out_dir / "plots"
    plots.mkdir(exist_ok=True)
    written = []
    for stem, fig in draw(source, group, table).items():
        path = plots / f"{stem}{suffix}.png"
        # tight: whatever was drawn outside the axes (legends, keys) is kept, not cropped
        fig.savefig(path, dpi=DPI, bbox_inches="tight")
        written.append(str(path.relative_to(out_dir)))
    return written


STYLE = """body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:80em}
table{border-collapse:collapse;font-size:13px;margin:.5em 0 1.2em}
th,td{border:1px solid #ccc;padding:3px 8px;white-space:nowrap;text-align:right}
th{background:#f0f0f0;font-weight:600}td.l,th.l{text-align:left}
td.ids{white-space:normal;font-family:monospace;font-size:12px;max-width:24em}
h3{margin:1.4em 0 .2em;font-size:1.05em}p.set{margin:.2em 0;color:#555}
img{max-width:100%;display:block;margin:1em 0}p,li{max-width:60em;line-height:1.4}
ul.verdicts li{margin:.3em 0}code{font-size:.95em}
.how{border-top:1px solid #ccc;margin-top:2em;color:#333}"""


def table(shown) -> str:
    """A ``layout.Shown`` as an HTML table: text columns left, numbers right, bold cells."""
    esc = html.escape
    left = [c in shown.left for c in shown.frame.columns]

    def cls(c: str, is_left: bool) -> str:
        names = (["l"] if is_left else []) + (["ids"] if c == "run_id" else [])
        return f" class='{' '.join(names)}'" if names else ""
    head = "".join(f"<th{cls(c, lf)}>{esc(str(c))}</th>"
                   for c, lf in zip(shown.frame.columns, left))
    rows = []
    for i in range(len(shown.frame)):
        cells = []
        for c, lf in zip(shown.frame.columns, left):
            text = esc(str(shown.frame.iloc[i][c]))
            cells.append(f"<td{cls(c, lf)}>" + (f"<b>{text}</b>" if (i, c) in shown.bold
                                               else text) + "</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _md(text: str) -> str:
    """Escaped text with the Markdown emphasis the report's own prose uses (**, *, `)."""
    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    text = re.sub(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])", r"<i>\1</i>", text)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", text)


def page(name: str, intro: str, sections: list[dict], out_dir: Path,
         missing: list[str] = (), how: list[str] = ()) -> str:
    """A self-contained HTML page, as results.md reads: the variants a sweep asked for that
    did not finish, per section its lead, tables (``layout.Shown``; a hand-made section's
    ``table``: a DataFrame), verdicts, notes and plots (embedded as data URIs); then ``how``,
    the explanation of the tables. Fits a 1400-pixel-wide window without scrolling sideways."""
    esc = html.escape
    parts = [(f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(name)}</title>"
              f"<style>{STYLE}</style></head><body><h1>{esc(name)}</h1>")]
    if intro:
        parts.append(f"<p>{esc(intro)}</p>")
    if missing:
        parts.append("<p>Missing (asked for by the sweep, no finished run):</p><ul>" + "".join(
            f"<li>{esc(m)}</li>" for m in missing) + "</ul>")
    for sec in sections:
        parts.append(f"<h2>{esc(sec['title'])}</h2>" + (f"<p>{esc(sec['text'])}</p>"
                                                        if sec["text"] else ""))
        if sec.get("table") is not None:
            parts.append(sec["table"].to_html(index=False, escape=True, na_rep=""))
        for t in sec.get("tables", []):
            parts.append(f"<h3>{esc(t.title)}</h3>"
                         + (f"<p class='set'>{esc(t.note)}</p>" if t.note else "") + table(t))
        if sec.get("lines"):  # the verdicts: one per comparison with the baseline
            parts.append("<h3>Verdicts</h3><ul class='verdicts'>" + "".join(
                f"<li>{esc(line)}</li>" for line in sec["lines"]) + "</ul>")
        if sec.get("notes"):
            parts.append(f"<p>{esc(sec['notes'])}</p>")
        for rel in sec["images"]:
            data = base64.b64encode((out_dir / rel).read_bytes()).decode()
            parts.append(f"<img alt='{esc(Path(rel).stem)}' src='data:image/png;base64,{data}'>")
    if how:
        parts.append("<div class='how'><h2>How to read these tables</h2>"
                     + "".join(f"<p>{_md(p)}</p>" for p in how) + "</div>")
    return "\n".join(parts + ["</body></html>"])
