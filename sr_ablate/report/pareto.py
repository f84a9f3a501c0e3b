"""PSNR against cost (parameters, GFLOPs, ms per frame), the Pareto front marked and every
point labelled with its variant.

A timing taken under load (``report.timings``) is drawn hollow and gray and never joins the
ms/frame front: a front is drawn only through timings of one state, those taken idle when
there are any, else those with no load figure (older runs), never through timings taken under
load.
"""
from __future__ import annotations

import textwrap

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from sr_ablate.report import timings
from sr_ablate.report.figures import (
    FONT,
    WIDTH_IN,
    bicubic_line,
    error_note,
    errorbars,
    legend_below,
    one_level,
)

# how each timing state is drawn: (label in the legend, marker face colour)
LOOK = {timings.UNDER_LOAD: ("measured under load, not comparable", "none"),
        timings.UNKNOWN: ("load not recorded", "none")}


def front(cost: np.ndarray, quality: np.ndarray) -> list[int]:
    """Indices of the points no other point beats: lower-or-equal cost and higher-or-equal
    quality, strictly better in one."""
    out = []
    for i in range(len(cost)):
        if not any(cost[j] <= cost[i] and quality[j] >= quality[i]
                   and (cost[j] < cost[i] or quality[j] > quality[i]) for j in range(len(cost))):
            out.append(i)
    return out


def point_names(table: pd.DataFrame, labels: list[str], longest: int = 18
                ) -> tuple[list[str], dict[str, str]]:
    """(a name per point, the key below the plot {letter: label}): the sweep file's variant
    names when every row has one, else the variants' labels (what differs between the rows);
    letters A, B... with a key when a name would be longer than ``longest`` characters."""
    if "variant" in table and table["variant"].notna().all() and table["variant"].is_unique:
        names = [str(v) for v in table["variant"]]
    else:
        names = [" ".join(label.split()) for label in labels]
    if max(map(len, names), default=0) <= longest:
        return names, {}
    letters = [chr(ord("A") + i) if i < 26 else f"V{i + 1}" for i in range(len(names))]
    return letters, dict(zip(letters, names))


def _name_points(ax, x, y, names) -> None:
    """Each point's name beside it, placed where it overlaps no name placed before and stays
    inside the axes (tried: right above, right below, left above, left below, then further
    up or down); the first place when none is free. Call once the layout is final."""
    box, placed = ax.get_window_extent(), []
    steps = [(dx, dy) for dy in (4, -4, 16, -16, 28, -28) for dx in (6, -6)]
    for xi, yi, name in sorted(zip(x, y, names), key=lambda p: (p[1], p[0])):
        a = ax.annotate(name, (xi, yi), xytext=steps[0], textcoords="offset points",
                        fontsize=FONT, color="0.2")
        a.set_in_layout(False)  # placed after the layout, inside the axes: it stays as it is
        for dx, dy in steps:
            a.set(x=dx, y=dy, ha="left" if dx > 0 else "right",
                  va="bottom" if dy > 0 else "top")
            ext = a.get_window_extent()
            inside = box.x0 <= ext.x0 and ext.x1 <= box.x1 and box.y0 <= ext.y0 \
                and ext.y1 <= box.y1
            if inside and not any(ext.overlaps(o) for o in placed):
                break
        else:
            a.set(x=steps[0][0], y=steps[0][1], ha="left", va="bottom")
        placed.append(a.get_window_extent())


def _states(t: pd.DataFrame, c: str) -> pd.Series:
    """Timing state of each row: ``timings.STATE`` for ms/frame, IDLE for every other cost."""
    if c == timings.MS and timings.STATE in t:
        return t[timings.STATE].fillna(timings.UNKNOWN)
    return pd.Series(timings.IDLE, index=t.index)


def plot(table: pd.DataFrame, costs: list[str], psnr: str, labels: list[str]) -> Figure:
    """PSNR (column ``psnr``, dB) against each cost column, one panel each; ``labels``: one
    per table row (``figures.variant_labels``)."""
    fig = Figure(figsize=(min(WIDTH_IN, 3.6 * len(costs)), 3.8), layout="constrained")
    axes = fig.subplots(1, len(costs), squeeze=False)[0]
    set_name = psnr.split("/")[0]
    names, key = point_names(table, labels)
    names = pd.Series(names, index=table.index)
    for ax, c in zip(axes, costs):
        t = table[table[c].notna()]
        state = _states(t, c)
        ok = state == timings.IDLE
        if not ok.any():  # no timing taken idle: older runs compare among themselves
            ok = state == timings.UNKNOWN
        ax.plot(t.loc[ok, c], t.loc[ok, psnr], "o", color="tab:blue", label="variant")
        for s, (label, face) in LOOK.items():
            off = ~ok & (state == s)
            if off.any():
                ax.plot(t.loc[off, c], t.loc[off, psnr], "o", mfc=face, mec="gray",
                        color="gray", label=label)
        errorbars(ax, t[c], t[psnr], t[f"{psnr}_ci"], t["n"], "tab:blue")
        f = t[ok].iloc[front(t.loc[ok, c].to_numpy(), t.loc[ok, psnr].to_numpy())]
        f = f.sort_values(c)
        ax.plot(f[c], f[psnr], "r--", marker="*", markersize=12, label="Pareto front")
        level = one_level(t[f"{set_name}/bicubic_psnr"])
        if level is not None:
            bicubic_line(ax, level)
        else:  # a level per variant: a dash at each variant's cost
            ax.plot(t[c], t[f"{set_name}/bicubic_psnr"], "_", color="gray", markersize=14,
                    label="bicubic")
        ax.set_xlabel(c)
        ax.set_ylabel(f"{set_name} PSNR (dB)")
        title = error_note(t["n"])
        if c == timings.MS and (~ok).any():
            title += (f"; front: {state[ok].iloc[0]} timings only" if ok.any() else
                      "; every timing taken under load: no front")
        elif c == timings.MS and (state == timings.UNKNOWN).all():
            title += "; load not recorded: timings taken at face value"
        ax.set_title(textwrap.fill(title, 40), fontsize=FONT)
        ax.margins(x=0.12, y=0.12)  # room for the names of the outermost points
        ax.grid(alpha=0.3)
    # a legend without handles is the key's caption; the last change of layout: the
    # points' names are placed after it
    legend_below(fig, axes, {f"{k}: {textwrap.fill(v, 80)}": Patch(visible=False)
                             for k, v in key.items()})
    for ax, c in zip(axes, costs):
        t = table[table[c].notna()]
        _name_points(ax, t[c].to_numpy(float), t[psnr].to_numpy(float), names[t.index])
    return fig
