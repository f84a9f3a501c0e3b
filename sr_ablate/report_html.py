"""The report's figures (matplotlib, PNG) and its self-contained ``index.html``.

Figures per fingerprint group: validation PSNR and training loss against step (mean line over
seeds, band = min..max), PSNR against each numeric factor (e.g. block count) with 95% CI error
bars, PSNR against parameters / GFLOPs / ms per frame with the Pareto front marked, and a grid
of the same zoomed crop: HR, bicubic, then every variant's output.
"""
from __future__ import annotations

import base64
import html
from pathlib import Path

import numpy as np
import pandas as pd

from sr_ablate.report import factors

DPI = 110


def fetch_per_image(uri: str, runs: pd.DataFrame, tmp: Path) -> dict[str, pd.DataFrame]:
    """``per_image.csv`` of every FINISHED run (set, image, psnr, ssim...), by run id."""
    from sr_ablate import tracking

    out = {}
    for run_id in runs.loc[runs["status"] == "FINISHED", "run_id"]:
        path = tracking.fetch_artifact(uri, run_id, "per_image.csv", tmp / run_id)
        if path is not None:
            out[run_id] = pd.read_csv(path)
    return out


def _label(row: pd.Series, keys: list[str]) -> str:
    return " ".join(f"{k}={row[k]}" for k in keys) or "all runs"


def _members(group: pd.DataFrame, table: pd.DataFrame, keys: list[str]):
    """(label, runs of that variant) per table row."""
    for _, row in table.iterrows():
        short = set(row["run_id"].split())
        yield _label(row, keys), group[group["run_id"].str[:8].isin(short)]


def figures(uri: str, group: pd.DataFrame, table: pd.DataFrame, out_dir: Path,
            suffix: str) -> list[str]:
    """Draw the plots of one fingerprint group into ``out_dir/plots``; their relative paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sr_ablate import tracking

    plots = out_dir / "plots"
    plots.mkdir(exist_ok=True)
    done = group[group["status"] == "FINISHED"]
    keys = factors(done)
    written = []
    psnr = next(c for c in table.columns if c.endswith("/psnr") and "bicubic" not in c)
    first_set = psnr.split("/")[0]

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for label, runs in _members(done, table, keys):
        for ax, key in zip(axes, (psnr, "train/loss")):
            curves = [dict(tracking.metric_history(uri, r, key)) for r in runs["run_id"]]
            steps = sorted(set().union(*curves))
            values = np.array([[c.get(s, np.nan) for s in steps] for c in curves])
            line, = ax.plot(steps, np.nanmean(values, axis=0), label=label)
            if len(curves) > 1:
                ax.fill_between(steps, np.nanmin(values, axis=0), np.nanmax(values, axis=0),
                                color=line.get_color(), alpha=0.2)
    for ax, key in zip(axes, (f"{first_set} PSNR (dB)", "training loss")):
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=7)
    written.append(_save(fig, plots / f"curves{suffix}.png", out_dir))

    numeric = [k for k in keys if pd.api.types.is_numeric_dtype(table[k])]
    for k in numeric:
        fig, ax = plt.subplots(figsize=(5.5, 4))
        t = table.sort_values(k)
        ax.errorbar(t[k], t[psnr], yerr=t[f"{psnr}_ci"].fillna(0), marker="o", capsize=4)
        ax.set_xlabel(k)
        ax.set_ylabel(f"{first_set} PSNR (dB), mean ± 95% CI")
        ax.grid(alpha=0.3)
        written.append(_save(fig, plots / f"psnr_vs_{k.replace('.', '_')}{suffix}.png",
                             out_dir))

    costs = [c for c in ("model/params", "model/gflops", "model/ms_per_frame")
             if c in table and table[c].notna().any()]
    if costs:
        fig, axes = plt.subplots(1, len(costs), figsize=(5 * len(costs), 4), squeeze=False)
        for ax, c in zip(axes[0], costs):
            ax.errorbar(table[c], table[psnr], yerr=table[f"{psnr}_ci"].fillna(0),
                        fmt="o", capsize=3, color="tab:blue")
            front = pareto(table[c].to_numpy(), table[psnr].to_numpy())
            f = table.iloc[front].sort_values(c)
            ax.plot(f[c], f[psnr], "r--", marker="*", markersize=12, label="Pareto front")
            ax.set_xlabel(c)
            ax.set_ylabel(f"{first_set} PSNR (dB)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        written.append(_save(fig, plots / f"pareto{suffix}.png", out_dir))

    grid = image_grid(uri, done, table, keys, plots / f"crops{suffix}.png", out_dir)
    return written + ([grid] if grid else [])


def pareto(cost: np.ndarray, quality: np.ndarray) -> list[int]:
    """Indices of the points no other point beats: lower-or-equal cost and higher-or-equal
    quality, strictly better in one."""
    out = []
    for i in range(len(cost)):
        if not any(cost[j] <= cost[i] and quality[j] >= quality[i]
                   and (cost[j] < cost[i] or quality[j] > quality[i]) for j in range(len(cost))):
            out.append(i)
    return out


def image_grid(uri, done, table, keys, path: Path, out_dir: Path) -> str | None:
    """HR | bicubic | each variant's output, the same centre crop (from each variant's first
    run's ``comparison.png`` = bicubic | SR | HR), zoomed 2x without smoothing."""
    import tempfile

    import matplotlib.pyplot as plt
    from PIL import Image

    from sr_ablate import tracking

    tiles, hr = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for label, runs in _members(done, table, keys):
            p = tracking.fetch_artifact(uri, runs["run_id"].iloc[0], "comparison.png",
                                        Path(tmp) / label.replace("/", "_"))
            if p is None:
                continue
            img = np.asarray(Image.open(p))
            w = img.shape[1] // 3
            if hr is None:
                hr, bic = img[:, 2 * w:], img[:, :w]
                tiles += [("HR", hr), ("bicubic", bic)]
            tiles.append((label, img[:, w:2 * w]))
    if not tiles:
        return None
    fig, axes = plt.subplots(1, len(tiles), figsize=(2.2 * len(tiles), 2.6), squeeze=False)
    for ax, (label, tile) in zip(axes[0], tiles):
        ax.imshow(tile, cmap="gray" if tile.ndim == 2 else None, interpolation="nearest",
                  vmin=0, vmax=255)
        ax.set_title(label, fontsize=7)
        ax.axis("off")
    return _save(fig, path, out_dir)


def _save(fig, path: Path, out_dir: Path) -> str:
    import matplotlib.pyplot as plt
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return str(path.relative_to(out_dir))


STYLE = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;font-size:13px;margin:1em 0}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right;white-space:nowrap}
th{background:#f0f0f0}img{max-width:100%;display:block;margin:1em 0}
p.note{max-width:60em}"""


def page(name: str, intro: str, sections: list[dict], out_dir: Path) -> str:
    """A self-contained HTML page: tables inline, plots embedded as data URIs."""
    esc = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(name)}</title>"
             f"<style>{STYLE}</style></head><body><h1>{esc(name)}</h1>"]
    if intro:
        parts.append(f"<p class='note'>{esc(intro)}</p>")
    for sec in sections:
        parts.append(f"<h2>{esc(sec['title'])}</h2><p class='note'>{esc(sec['text'])}</p>")
        if sec["table"] is not None:
            parts.append("<div style='overflow-x:auto'>" + sec["table"].to_html(
                index=False, escape=True, na_rep="") + "</div>")
        for rel in sec["images"]:
            data = base64.b64encode((out_dir / rel).read_bytes()).decode()
            parts.append(f"<img alt='{esc(Path(rel).stem)}' src='data:image/png;base64,{data}'>")
    return "\n".join(parts + ["</body></html>"])
