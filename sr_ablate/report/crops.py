"""The crop strip: the same crop of one evaluation image as HR, bicubic and every variant's
output, side by side, zoomed without smoothing.

It says which image and which part of it (tags ``comparison.image``, ``comparison.box`` =
``x,y,w,h`` in HR pixels, recorded by each run with its ``comparison.png``) and, under each
crop, the crop's PSNR against HR as the run recorded it (``<set>/crop_psnr``,
``<set>/crop_bicubic_psnr``: scored as the evaluation scores whole images, same metric space
and border shave; ``training.outputs.crop_scores``). Runs from before these were recorded
get the crops without them.
"""
from __future__ import annotations

import math
import string
import textwrap
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from sr_ablate.report import artifacts
from sr_ablate.report.figures import FONT, legend_below
from sr_ablate.report.source import Source


@dataclass(frozen=True)
class Tile:
    """One panel: ``image`` uint8 (h, w) or (h, w, 3); ``psnr`` its crop's PSNR (dB) against
    HR, None for HR itself, NaN when not recorded; ``crop`` set when its crop differs from
    the strip's ('image x,y,w,h')."""
    label: str
    image: np.ndarray
    psnr: float | None = math.nan
    crop: str = ""


def _metric(run: pd.Series, suffix: str) -> float:
    """The run's value of the one metric ``<set>/<suffix>`` (NaN when it has none)."""
    cols = [c for c in run.index if c.endswith(f"/{suffix}") and not pd.isna(run[c])]
    return float(run[cols[0]]) if cols else math.nan


def _where(run: pd.Series) -> tuple[str, str] | None:
    """(image name, 'x,y,w,h') from the run's comparison tags, None when not recorded."""
    name, box = run.get("tag:comparison.image"), run.get("tag:comparison.box")
    return (name, box) if isinstance(name, str) and isinstance(box, str) else None


def caption(run: pd.Series) -> str:
    """What the strip shows, from the run whose HR and bicubic crops it shows."""
    where = _where(run)
    if where is None:
        return "Centre crop of the first evaluation image (its name and position were not "\
               "recorded by these runs), enlarged without smoothing."
    name, box = where
    x, y, w, h = box.split(",")
    space = {"y_bt601": "Y (BT.601)", "rgb": "RGB"}.get(run.get("tag:eval.color_space"))
    shave = math.ceil(float(run["scale"])) if not pd.isna(run.get("scale")) else None
    how = ", ".join(filter(None, [f"on {space}" if isinstance(space, str) else "",
                                  f"{shave} px shaved from its edges" if shave else ""]))
    return (f"Image {name}, crop x={x}, y={y}, w={w}, h={h} (HR pixels), enlarged without "
            f"smoothing. Under each crop: its PSNR against HR ({how}; as the evaluation "
            "scores whole images).")


def tiles(source: Source, runs: list[pd.DataFrame], labels: list[str]
          ) -> tuple[list[Tile], str]:
    """(HR, bicubic, then each variant's SR tile of the same crop; the caption), from each
    variant's first run's ``comparison.png`` (bicubic | SR | HR) and its crop PSNR. HR and
    bicubic come from the first colour one, so that a gray (older Y-model) image does not
    make them gray."""
    found = artifacts.comparisons(source, runs, labels)
    if not found:
        return [], ""
    _, ref_run, ref = next((f for f in found if f[2].ndim == 3), found[0])
    w = ref.shape[1] // 3
    out = [Tile("HR", ref[:, 2 * w:], None),
           Tile("bicubic", ref[:, :w], _metric(ref_run, "crop_bicubic_psnr"))]
    for label, run, img in found:
        w = img.shape[1] // 3
        where = _where(run)
        other = " ".join(where) if where is not None and where != _where(ref_run) else ""
        out.append(Tile(label, img[:, w:2 * w], _metric(run, "crop_psnr"), other))
    return out, caption(ref_run)


def _under(tile: Tile) -> str:
    if tile.psnr is None:
        return "reference"
    text = "PSNR not recorded" if math.isnan(tile.psnr) else f"{tile.psnr:.2f} dB"
    return text + (f"\n(crop {tile.crop})" if tile.crop else "")


def strip(panels: list[Tile], text: str = "", per_row: int = 4, tile_in: float = 2.4,
          max_lines: int = 3) -> Figure:
    """The crops, ``per_row`` to a row (at most ``per_row * tile_in`` inches wide), the
    caption ``text`` above, each crop's PSNR under it; titles wrapped to their tile's width,
    or, when that takes more than ``max_lines`` lines, letters A, B... with a key below."""
    rows = math.ceil(len(panels) / per_row)
    cols = math.ceil(len(panels) / rows)  # rows as full as they can be: 5 crops as 3 + 2
    fig = Figure(figsize=(tile_in * cols, (tile_in + 0.7) * rows + 0.5), layout="constrained")
    grid = fig.subplots(rows, cols, squeeze=False).ravel()
    axes = grid[:len(panels)]
    for ax in grid[len(panels):]:
        ax.remove()  # the last row's empty places
    for ax, tile in zip(axes, panels):
        ax.imshow(tile.image, cmap="gray" if tile.image.ndim == 2 else None,
                  interpolation="nearest", vmin=0, vmax=255)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.spines[:].set_visible(False)
        ax.set_xlabel(_under(tile), fontsize=FONT + 1)
    if text:
        fig.suptitle(textwrap.fill(text, math.floor(cols * tile_in * 72 / (0.6 * FONT))),
                     fontsize=FONT)
    # a first guess from the average glyph width, narrowed until every title fits its tile
    width = math.floor(tile_in * 72 / (0.55 * FONT))
    while width >= 8:
        titles = [textwrap.fill(t.label, width) for t in panels]
        if max(t.count("\n") + 1 for t in titles) > max_lines:
            break
        for ax, t in zip(axes, titles):
            ax.set_title(t, fontsize=FONT)
        fig.draw_without_rendering()
        if all(ax.title.get_window_extent().width <= ax.get_window_extent().width
               for ax in axes):
            return fig
        width -= 4
    keys = iter(string.ascii_uppercase + string.ascii_lowercase)
    key = {t.label: (t.label if t.label in ("HR", "bicubic") else next(keys, "?"))
           for t in panels}
    for ax, t in zip(axes, panels):
        ax.set_title(key[t.label], fontsize=FONT)
    # a legend without handles is the key's caption
    legend_below(fig, [], {f"{k}: {textwrap.fill(label, 80)}": Patch(visible=False)
                           for label, k in key.items() if k != label},
                 handlelength=0, handletextpad=0)
    return fig
