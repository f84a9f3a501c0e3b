"""The report's figures (PNG: charts by ``report.figures``, crop grid here) and ``index.html``.

Figures per table: validation PSNR and training loss against step (mean line over seeds,
band = min..max), PSNR against each numeric factor (e.g. block count) one line per model
family, PSNR against parameters / GFLOPs / ms per frame with the Pareto front marked (all
with the bicubic level dashed and 95% CI error bars where n >= 2), and a grid of the same
zoomed crop: HR, bicubic, then every variant's output.
"""
from __future__ import annotations

import base64
import html
import math
import string
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from sr_ablate.report import artifacts
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
        out["pareto"] = rp.pareto_plot(table, costs, psnr)
    tiles = crop_tiles(source, runs, labels)
    if tiles:
        out["crops"] = crop_grid(tiles)
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


def crop_tiles(source: Source, runs: list[pd.DataFrame], labels: list[str]
               ) -> list[tuple[str, np.ndarray]]:
    """HR, bicubic, then each variant's SR tile of the same centre crop, from each variant's
    first run's ``comparison.png`` (bicubic | SR | HR); HR and bicubic from the first colour
    one, so that a gray (older Y-model) image does not make them gray."""
    found = artifacts.comparisons(source, runs, labels)
    if not found:
        return []
    ref = next((img for _, img in found if img.ndim == 3), found[0][1])
    w = ref.shape[1] // 3
    tiles = [("HR", ref[:, 2 * w:]), ("bicubic", ref[:, :w])]
    return tiles + [(label, img[:, img.shape[1] // 3: 2 * (img.shape[1] // 3)])
                    for label, img in found]


def crop_grid(tiles: list[tuple[str, np.ndarray]], tile_in: float = 2.2,
              max_lines: int = 3) -> Figure:
    """The same crop side by side (uint8 (h, w) or (h, w, 3) each), zoomed without
    smoothing; titles wrapped to their tile's width, or, when that takes more than
    ``max_lines`` lines, letters A, B... with a key below the tiles."""
    fig = Figure(figsize=(tile_in * len(tiles), tile_in + 0.6), layout="constrained")
    axes = fig.subplots(1, len(tiles), squeeze=False)[0]
    for ax, (_, tile) in zip(axes, tiles):
        ax.imshow(tile, cmap="gray" if tile.ndim == 2 else None, interpolation="nearest",
                  vmin=0, vmax=255)
        ax.axis("off")
    # a first guess from the average glyph width, narrowed until every title fits its tile
    width = math.floor(tile_in * 72 / (0.55 * rp.FONT))
    while width >= 8:
        titles = [textwrap.fill(label, width) for label, _ in tiles]
        if max(t.count("\n") + 1 for t in titles) > max_lines:
            break
        for ax, t in zip(axes, titles):
            ax.set_title(t, fontsize=rp.FONT)
        fig.draw_without_rendering()
        if all(ax.title.get_window_extent().width <= ax.get_window_extent().width
               for ax in axes):
            return fig
        width -= 4
    keys = iter(string.ascii_uppercase + string.ascii_lowercase)
    key = {label: (label if label in ("HR", "bicubic") else next(keys, "?"))
           for label, _ in tiles}
    for ax, (label, _) in zip(axes, tiles):
        ax.set_title(key[label], fontsize=rp.FONT)
    # a legend without handles is the key's caption
    rp.legend_below(fig, [], {f"{k}: {textwrap.fill(label, 80)}": Patch(visible=False)
                              for label, k in key.items() if k != label},
                    handlelength=0, handletextpad=0)
    return fig


STYLE = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;font-size:13px;margin:1em 0}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right;white-space:nowrap}
th{background:#f0f0f0}img{max-width:100%;display:block;margin:1em 0}
p.note{max-width:60em}"""


def page(name: str, intro: str, sections: list[dict], out_dir: Path) -> str:
    """A self-contained HTML page: tables inline, plots embedded as data URIs."""
    esc = html.escape
    parts = [(f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(name)}</title>"
              f"<style>{STYLE}</style></head><body><h1>{esc(name)}</h1>")]
    if intro:
        parts.append(f"<p class='note'>{esc(intro)}</p>")
    for sec in sections:
        parts.append(f"<h2>{esc(sec['title'])}</h2><p class='note'>{esc(sec['text'])}</p>")
        if sec["table"] is not None:
            parts.append("<div style='overflow-x:auto'>" + sec["table"].to_html(
                index=False, escape=True, na_rep="") + "</div>")
        if sec.get("lines"):  # the verdicts: one per comparison with the baseline
            parts.append("<ul class='verdicts'>" + "".join(
                f"<li>{esc(line)}</li>" for line in sec["lines"]) + "</ul>")
        for rel in sec["images"]:
            data = base64.b64encode((out_dir / rel).read_bytes()).decode()
            parts.append(f"<img alt='{esc(Path(rel).stem)}' src='data:image/png;base64,{data}'>")
    return "\n".join(parts + ["</body></html>"])
