"""The report's matplotlib figures, drawn from a results table and returned unsaved.

Each chart function returns a ``Figure`` (constrained layout) so that its geometry can be
checked before ``report_html`` saves it. Conventions for all: every data line has markers;
a legend sits below the plots, outside every axes, and the figure grows to hold it; text is
sized for the page's width (``WIDTH_IN``, ``FONT``); the bicubic PSNR is a dashed line
labelled ``bicubic``; error bars (mean ± 95% CI over seeds) only where a variant has n ≥ 2
runs, and each axes' title says what its bars are.
"""
from __future__ import annotations

import textwrap

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

# Params naming the architecture: the config group choice (``srresnet``), else the class.
FAMILY_KEYS = ("tag:model.class", "model", "model._target_")
# The HTML page shows a figure at its own size (inches x DPI) or, on a narrower page, scaled
# to the page's width: text then shrinks by the figure's width. Figures are at most WIDTH_IN
# wide and their smallest text FONT pt, so on a page 900 px wide or more text is at least
# FONT * 900 / (72 * WIDTH_IN) = 11.25 px tall (axis labels and ticks: matplotlib's 10 pt).
WIDTH_IN = 10
FONT = 9
LABEL_WIDTH = 60  # characters per legend line; longer labels wrap
MARKERS = "osD^vP*X"  # one shape per variant: told apart without colour, too
DENSE = 40  # a curve with more points marks every k-th, about this many


def members(group: pd.DataFrame, table: pd.DataFrame) -> list[pd.DataFrame]:
    """The runs of ``group`` pooled into each table row (matched on the short run ids)."""
    return [group[group["run_id"].str[:8].isin(set(ids.split()))] for ids in table["run_id"]]


def row_families(runs_per_row: list[pd.DataFrame]) -> list[str]:
    """Model family of each table row: its runs' class (tag ``model.class``), else their
    ``model`` param, else ``model._target_``;
    '' when neither was recorded (then all rows count as one family)."""
    out = []
    for runs in runs_per_row:
        known = [runs[k].dropna() for k in FAMILY_KEYS if k in runs]
        out.append(next((str(v.iloc[0]) for v in known if len(v)), ""))
    return out


def _value(key: str, v) -> str:
    if key.endswith("_target_"):
        return str(v).rsplit(".", 1)[-1]  # the class name is enough to tell them apart
    if isinstance(v, float) and v.is_integer():
        return str(int(v))  # a column with NaN in it turns 3 into 3.0
    return str(v)


def _label(row: pd.Series, keys: list[str]) -> str:
    return " ".join(f"{k}={_value(k, row[k])}" for k in keys if not pd.isna(row[k]))


def variant_labels(table: pd.DataFrame, keys: list[str]) -> list[str]:
    """One short label per table row naming what differs between the rows, e.g.
    ``model.blocks=8``: keys with two or more distinct values (NaN skipped); keys that differ
    only by being missing join in when the rows could not be told apart otherwise."""
    keys = [k for k in keys if k in table]
    shown = [k for k in keys if table[k].dropna().map(str).nunique() > 1]
    if "model" in shown and "model._target_" in shown:
        shown.remove("model._target_")  # same information twice
    labels = [_label(row, shown) for _, row in table.iterrows()]
    if len(set(labels)) < len(labels):
        shown = [k for k in keys if table[k].map(str).nunique() > 1]
        labels = [_label(row, shown) for _, row in table.iterrows()]
    if len(table) == 1 and not labels[0]:
        return ["all runs"]
    return [textwrap.fill(t, LABEL_WIDTH) or f"variant {i + 1}" for i, t in enumerate(labels)]


def error_note(n: pd.Series) -> str:
    """What the error bars of points pooling ``n`` runs each are (none for n = 1)."""
    many = n[n >= 2]
    if many.empty:
        return "single run (n=1) per point, no error bar"
    lo, hi = int(many.min()), int(many.max())
    text = f"error bar: mean ± 95% CI over seeds (n={lo}" + (f"–{hi})" if hi > lo else ")")
    return text + ("; n=1 points: single run, no error bar" if (n < 2).any() else "")


def errorbars(ax, x, y, ci, n, color) -> None:
    """95% CI bars on the points pooling n >= 2 runs (plain markers are drawn elsewhere)."""
    ok = (np.asarray(n) >= 2) & np.isfinite(np.asarray(ci, dtype=float))
    if ok.any():
        ax.errorbar(np.asarray(x)[ok], np.asarray(y)[ok], yerr=np.asarray(ci, dtype=float)[ok],
                    fmt="none", ecolor=color, capsize=4)


def legend_below(fig: Figure, axes, entries: dict | None = None, **kw) -> object | None:
    """One legend for ``axes`` (labels once each; ``entries`` {label: handle} first) centred
    below them, outside every axes; the figure is made taller by the legend's height so the
    plots keep their size. ``kw`` go to ``Figure.legend``."""
    handles: dict[str, object] = dict(entries or {})
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    if not handles:
        return None
    w, h = fig.get_size_inches()
    for ncols in range(min(len(handles), 3), 0, -1):
        leg = fig.legend(list(handles.values()), list(handles), loc="outside lower center",
                         ncols=ncols, fontsize=FONT, **kw)
        fig.draw_without_rendering()
        box = leg.get_window_extent()
        if box.width <= 0.98 * fig.bbox.width or ncols == 1:
            break
        leg.remove()  # too wide for the figure: fewer columns
    fig.set_size_inches(w, h + box.height / fig.dpi + 0.1)
    return leg


def one_level(bicubic) -> float | None:
    """The bicubic PSNR when every variant shares it (NaN ignored), else None."""
    b = np.asarray(bicubic, dtype=float)
    b = b[np.isfinite(b)]
    return float(b[0]) if len(b) and np.ptp(b) < 1e-6 else None


def bicubic_line(ax, level: float, label: str = "bicubic", color="gray") -> None:
    if np.isfinite(level):  # axhline takes part in autoscaling: the y range includes it
        ax.axhline(level, ls="--", color=color, lw=1, label=label)


def curves(histories: list[tuple[str, list[dict], list[dict]]], bicubic: list[float],
           psnr_name: str) -> Figure:
    """PSNR and training loss against step per variant: mean over its runs, band min..max.

    ``histories``: (label, PSNR curves, loss curves) per variant, a curve = {step: value};
    ``bicubic``: the bicubic PSNR (dB) of each variant, drawn on the PSNR axes."""
    fig = Figure(figsize=(WIDTH_IN, 4), layout="constrained")
    axes = fig.subplots(1, 2)
    colors = []
    for i, (label, *per_key) in enumerate(histories):
        color = None
        for ax, runs in zip(axes, per_key):
            steps = sorted(set().union(*runs))
            if not steps:
                continue
            values = np.array([[c.get(s, np.nan) for s in steps] for c in runs])
            # markers always: a curve of two evaluations must not pass for a measured line
            line, = ax.plot(steps, np.nanmean(values, axis=0), color=color, label=label,
                            marker=MARKERS[i % len(MARKERS)], markersize=5,
                            markevery=max(1, len(steps) // DENSE))
            color = line.get_color()
            if len(runs) > 1:
                ax.fill_between(steps, np.nanmin(values, axis=0), np.nanmax(values, axis=0),
                                color=color, alpha=0.2)
        colors.append(color)
    level = one_level(bicubic)
    if level is not None:
        bicubic_line(axes[0], level)
    else:  # one level per variant (e.g. different scales), in its colour
        for (label, *_), b, c in zip(histories, bicubic, colors):
            bicubic_line(axes[0], b, f"bicubic ({label})", c or "gray")
    n = [len(h[1]) for h in histories]
    note = ("single run (n=1) per variant" if max(n) < 2 else
            "line: mean over seeds, band: min..max" + ("; n=1: single run" if min(n) < 2 else ""))
    for ax, name in zip(axes, (f"{psnr_name} PSNR (dB)", "training loss")):
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))  # no 2.25
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.set_title(note, fontsize=FONT)
    axes[1].set_yscale("log")
    legend_below(fig, axes)
    return fig


def _series(sub: pd.DataFrame, factor: str, keys: list[str]):
    """(label, rows) of one family split by the other factors that vary at a fixed value of
    ``factor`` (a blocks x channels grid: one line per channel count); a key naming every
    row on its own (``variant``) is a name, not a series."""
    split = []
    for k in keys:
        v = sub[k].map(str) if k in sub else None
        if k == factor or k in FAMILY_KEYS or v is None or v.nunique() == len(sub):
            continue
        if (v.groupby(sub[factor].map(str)).nunique() > 1).any():
            split.append(k)
    if not split:
        yield "", sub
        return
    for _, rows in sub.groupby(split, dropna=False, sort=True):
        yield _label(rows.iloc[0], split), rows


def factor_plot(table: pd.DataFrame, factor: str, psnr: str, family: list[str],
                keys: list[str]) -> Figure | None:
    """PSNR (column ``psnr``, dB) against a numeric factor, one line per model family (never
    joining two architectures); None when no family has two distinct values of it."""
    x = pd.to_numeric(table[factor], errors="coerce")
    fam = pd.Series(family, index=table.index)
    plotted = []
    for name in dict.fromkeys(family):
        rows = table[(fam == name) & x.notna()]
        if table.loc[fam == name, factor].notna().sum() > len(rows):
            continue  # some values are not numbers in this family: not a numeric factor
        if x[rows.index].nunique() >= 2:
            plotted += [(" ".join(filter(None, [name if len(set(family)) > 1 else "", s])), r)
                        for s, r in _series(rows, factor, keys)]
    if not plotted:
        return None
    fig = Figure(figsize=(5.5, 4), layout="constrained")
    ax = fig.subplots()
    set_name = psnr.split("/")[0]
    bic = f"{set_name}/bicubic_psnr"
    level = one_level(table[bic])
    for label, rows in plotted:
        rows = rows.assign(_x=x[rows.index]).sort_values("_x")
        # repeated x values (variants told apart only by name): points, no line
        style = "o" if rows["_x"].duplicated().any() else "o-"
        line, = ax.plot(rows["_x"], rows[psnr], style, label=label or f"{set_name} PSNR")
        errorbars(ax, rows["_x"], rows[psnr], rows[f"{psnr}_ci"], rows["n"], line.get_color())
        if level is None:  # e.g. the scale is the factor: bicubic changes along x
            ax.plot(rows["_x"], rows[bic], "--", color=line.get_color(), lw=1,
                    label=f"bicubic ({label})" if label else "bicubic")
    if level is not None:
        bicubic_line(ax, level)
    if all(float(v).is_integer() for v in x.dropna()):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(factor)
    ax.set_ylabel(f"{set_name} PSNR (dB)")
    ax.set_title(textwrap.fill(error_note(pd.concat([r["n"] for _, r in plotted])), 60),
                 fontsize=FONT)
    ax.grid(alpha=0.3)
    legend_below(fig, [ax])
    return fig
