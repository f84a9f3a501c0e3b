"""The report's figures from real smoke runs in a real MLflow store, checked on matplotlib's
own layout: legends inside the figure and off every plot, labels naming only what differs,
PSNR-vs-factor lines only within one model family, the bicubic level drawn, error bars only
where seeds were pooled, crop titles that do not run into each other; and a Y-channel
model's comparison crops in colour."""
from __future__ import annotations

import io
import math
import os
from html import escape as html_escape

import numpy as np
import pytest
import torch
from conftest import TINY, read_results
from matplotlib.container import ErrorbarContainer
from matplotlib.legend import Legend
from matplotlib.text import Text
from PIL import Image
from test_complexity import spinners

from sr_ablate import tracking
from sr_ablate.report import crops, html, layout, timings
from sr_ablate.report.build import results_table
from sr_ablate.report.figures import DENSE, FONT, WIDTH_IN
from sr_ablate.report.source import StoreSource

# (model, blocks, seed): two SRResNet depths x two seeds, two VDSR (Y channel) depths.
RUNS = [("srresnet", 1, 0), ("srresnet", 1, 1), ("srresnet", 2, 0), ("srresnet", 2, 1),
        ("vdsr", 3, 0), ("vdsr", 4, 0)]
LOADED = RUNS[:2]  # run while 2 spin loops per core keep the machine busy: timed under load
ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "SR_ABLATE_PARENT_RUN_ID", "SR_ABLATE_SWEEP_ID")


@pytest.fixture(scope="module")
def smoke_store(tmp_path_factory):
    """The six runs of RUNS, launched as the CLI does (config group choices recorded);
    (uri, runs frame)."""
    from sr_ablate.config.validation import compose_job
    from sr_ablate.training.job import run_job

    cwd = tmp_path_factory.mktemp("figures")
    base = [a for a in TINY if not a.startswith("model.blocks")] + ["tracking.checkpoint=false"]
    with pytest.MonkeyPatch.context() as mp:
        for var in ENV:
            mp.delenv(var, raising=False)
        for model, blocks, seed in RUNS:
            typed = [f"model={model}", f"model.blocks={blocks}", f"seed={seed}"]
            cfg, choices = compose_job(typed + base)
            busy = (model, blocks, seed) in LOADED
            with spinners(2 * len(os.sched_getaffinity(0)) if busy else 0):
                run_job(cfg, cwd=str(cwd), overrides=typed, choices=choices)
    uri = f"sqlite:///{cwd / 'mlflow.db'}"
    return uri, tracking.runs_frame(uri)


def subset(runs, keep):
    """(group, its results table) of the runs whose (model, blocks, seed) is in ``keep``."""
    key = list(zip(runs["model"], runs["model.blocks"].astype(int), runs["seed"].astype(int)))
    group = runs[[k in keep for k in key]]
    return group, results_table(group)


def draw(smoke_store, keep):
    uri, runs = smoke_store
    group, table = subset(runs, keep)
    return html.draw(StoreSource(uri), group, table), table


def overlap(a, b, tol=0.5) -> bool:
    return a.x0 < b.x1 - tol and b.x0 < a.x1 - tol and a.y0 < b.y1 - tol and b.y0 < a.y1 - tol


def legends(fig) -> list[Legend]:
    return [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]


def data_lines(ax):
    """The plotted PSNR series: lines with markers (bicubic levels have none)."""
    return [ln for ln in ax.get_lines() if ln.get_marker() not in (None, "None", "")
            and not ln.get_label().startswith(("bicubic", "Pareto", "_"))]


def test_legends_lie_inside_the_figure_and_off_every_plot(smoke_store):
    figs, _ = draw(smoke_store, RUNS)
    assert {"curves", "psnr_vs_model_blocks", "pareto", "crops"} <= set(figs)
    for name, fig in figs.items():
        fig.draw_without_rendering()
        box = fig.bbox
        for leg in legends(fig):
            ext = leg.get_window_extent()
            assert box.x0 <= ext.x0 and ext.x1 <= box.x1 and box.y0 <= ext.y0 and \
                ext.y1 <= box.y1, (name, ext, box)
            for ax in fig.axes:  # neither the plotting area nor its tick labels and titles
                assert not overlap(ext, ax.get_tightbbox()), (name, ext, ax.get_tightbbox())


def test_labels_name_only_what_differs(smoke_store):
    figs, _ = draw(smoke_store, RUNS[:4])  # SRResNet only: the block count is all that differs
    (leg,) = figs["curves"].legends
    assert [t.get_text() for t in leg.get_texts()] == ["model.blocks=1", "model.blocks=2",
                                                       "bicubic"]
    figs, table = draw(smoke_store, RUNS)  # two families: params of one are NaN for the other
    labels = [t.get_text() for t in figs["curves"].legends[0].get_texts()]
    assert len(labels) == len(table) + 1 and "nan" not in " ".join(labels)
    assert labels[0].startswith("model=srresnet model.blocks=1")
    assert labels[3].startswith("model=vdsr model.blocks=4")
    assert not any("model.bn" in t or "model.residual" in t for t in labels)  # one value each


def test_factor_plot_only_within_one_family_with_two_values(smoke_store):
    figs, _ = draw(smoke_store, RUNS)
    assert "psnr_vs_model_in_channels" not in figs  # 3 for SRResNet, 1 for VDSR: one each
    assert "psnr_vs_model_head_kernel" not in figs  # SRResNet only, one value
    (ax,) = figs["psnr_vs_model_blocks"].axes
    lines = {ln.get_label(): sorted(ln.get_xdata()) for ln in data_lines(ax)}
    assert lines == {"SRResNet": [1, 2], "VDSR": [3, 4]}  # never 2 joined to 3
    figs, _ = draw(smoke_store, RUNS[:4] + RUNS[4:5])  # VDSR with one depth: no VDSR line
    (ax,) = figs["psnr_vs_model_blocks"].axes
    assert [sorted(ln.get_xdata()) for ln in data_lines(ax)] == [[1, 2]]
    figs, _ = draw(smoke_store, [RUNS[0], RUNS[4]])  # one depth per family: nothing to plot
    assert not any(k.startswith("psnr_vs_") for k in figs)


def test_bicubic_level_is_drawn_and_inside_the_y_range(smoke_store):
    figs, table = draw(smoke_store, RUNS[:4])
    level = table["val/bicubic_psnr"].iloc[0]
    assert table["val/bicubic_psnr"].nunique() == 1 and level > table["val/psnr"].max()
    for ax in (figs["curves"].axes[0], figs["psnr_vs_model_blocks"].axes[0],
               *figs["pareto"].axes):
        (line,) = [ln for ln in ax.get_lines() if ln.get_label() == "bicubic"]
        assert np.allclose(line.get_ydata(), level) and line.get_linestyle() == "--"
        lo, hi = ax.get_ylim()
        assert lo < level < hi


def errorbar_spans(ax) -> list[float]:
    """Heights of all error bars drawn on ``ax`` (each = 2 x the CI half-width)."""
    out = []
    for c in ax.containers:
        if isinstance(c, ErrorbarContainer):
            for coll in c.lines[2]:
                out += [abs(s[1][1] - s[0][1]) for s in coll.get_segments()]
    return out


def test_error_bars_only_where_seeds_were_pooled(smoke_store):
    single = [r for r in RUNS if r[2] == 0]
    figs, table = draw(smoke_store, single)
    assert set(table["n"]) == {1}
    for ax in (*figs["psnr_vs_model_blocks"].axes, *figs["pareto"].axes):
        assert errorbar_spans(ax) == [] and "single run (n=1)" in ax.get_title()
    assert "single run (n=1)" in figs["curves"].axes[0].get_title()

    figs, table = draw(smoke_store, RUNS)  # SRResNet n=2 per depth, VDSR n=1
    ci = table.loc[table["n"] == 2, "val/psnr_ci"].to_numpy()
    for ax in (*figs["psnr_vs_model_blocks"].axes, *figs["pareto"].axes):
        assert sorted(errorbar_spans(ax)) == pytest.approx(sorted(2 * ci))
        title = ax.get_title().replace("\n", " ")
        assert "mean ± 95% CI over seeds (n=2)" in title and "n=1 points: single run" in title


def title_boxes(fig):
    fig.draw_without_rendering()
    return [(ax.title.get_window_extent(), ax.get_window_extent()) for ax in fig.axes]


def test_crop_titles_do_not_run_into_each_other(smoke_store):
    figs, table = draw(smoke_store, RUNS)
    boxes = title_boxes(figs["crops"])
    assert len(boxes) == 2 + len(table)  # HR, bicubic, one per variant
    texts = [ax.get_title() for ax in figs["crops"].axes]
    assert texts[:2] == ["HR", "bicubic"] and all(texts)
    for i, (a, ax_a) in enumerate(boxes):
        assert a.width <= ax_a.width + 0.5  # wrapped to its tile
        assert not any(overlap(a, b) for b, _ in boxes[i + 1:])
    # labels too long to wrap in three lines: letters over the tiles, a key below them
    gray = np.zeros((8, 8), np.uint8)
    tiles = [crops.Tile("HR", gray, None), crops.Tile("bicubic", gray, 30.0)]
    tiles += [crops.Tile(" ".join([f"model.blocks={i}"] * 12), gray, 31.0) for i in range(3)]
    fig = crops.strip(tiles)
    boxes = title_boxes(fig)
    assert [ax.get_title() for ax in fig.axes] == ["HR", "bicubic", "A", "B", "C"]
    assert not any(overlap(a, b) for i, (a, _) in enumerate(boxes) for b, _ in boxes[i + 1:])
    (key,) = fig.legends
    assert key.get_texts()[0].get_text().startswith("A: model.blocks=0")
    assert all(not overlap(key.get_window_extent(), ax.get_tightbbox()) for ax in fig.axes)


def test_y_model_comparison_is_in_colour(smoke_store, tmp_path):
    uri, runs = smoke_store
    vdsr = runs[runs["model"] == "vdsr"]["run_id"].iloc[0]
    path = tracking.fetch_artifact(uri, vdsr, "comparison.png", tmp_path)
    img = np.asarray(Image.open(path)).astype(int)
    h = img.shape[0]
    assert img.shape == (h, 3 * h, 3)
    for tile in (img[:, :h], img[:, h:2 * h], img[:, 2 * h:]):  # bicubic, SR, HR
        assert (tile.max(axis=2) != tile.min(axis=2)).mean() > 0.5  # mostly not gray


def test_comparison_tiles_of_a_y_model():
    """SR tile = the model's Y with the bicubic's chroma; bicubic tile = MATLAB bicubic of the
    RGB LR; HR tile = the HR crop; each recomputed here from the library's own pieces."""
    from sr_ablate.core.degrade import bicubic_up, downscale
    from sr_ablate.core.degrade import to_uint8 as quantize
    from sr_ablate.core.evaluate import YCBCR, Evaluator, colorize_y
    from sr_ablate.core.metrics import rgb_to_y
    from sr_ablate.data import BUILTIN_VAL, builtin_dir, load_eval_images
    from sr_ablate.models import VDSR
    from sr_ablate.training.outputs import comparison_image

    model = VDSR(in_channels=1, channels=8, blocks=1)
    with torch.no_grad():  # output = bicubic Y + 5.1 levels: the SR Y differs from bicubic's
        model.body[0].weight.zero_()
        model.body[0].bias.fill_(0.02)
    ev = Evaluator(load_eval_images([builtin_dir() / BUILTIN_VAL[0]], 2), 2)  # a colour photo
    ev(model)
    out = comparison_image(ev, crop=48)
    assert out.shape == (3, 48, 144) and out.dtype == torch.uint8
    bic, sr, gt = (out[..., i * 48:(i + 1) * 48].double() for i in range(3))
    hr = ev.images[0][1]
    h, w = hr.shape[-2:]
    y, x = (h - 48) // 2, (w - 48) // 2

    def crop(t):
        return t[:, y:y + 48, x:x + 48]
    assert torch.equal(gt, crop(hr.double()))
    assert torch.equal(bic, crop(quantize(bicubic_up(downscale(hr.double(), 2), 2))))
    y_model = crop(quantize(ev.last_outputs[0]))
    assert (rgb_to_y(sr) - y_model).abs().median() <= 1  # up to rounding and clipping
    assert (rgb_to_y(sr) - rgb_to_y(bic)).median() == pytest.approx(5.1, abs=1)

    def chroma(t):
        return torch.einsum("ij,jhw->ihw", YCBCR[1:], t / 255)
    assert (chroma(sr) - chroma(bic)).abs().median() <= 1
    assert (sr[0] - sr[1]).abs().mean() > 1  # not gray
    rgb = crop(hr.double())  # Y with its own chroma gives the image back
    assert torch.allclose(colorize_y(rgb_to_y(rgb), rgb), rgb, atol=1e-9)


def test_figures_saves_what_it_draws(smoke_store, tmp_path):
    uri, runs = smoke_store
    group, table = subset(runs, RUNS)
    paths = html.figures(StoreSource(uri), group, table, tmp_path, "-fp")
    drawn = html.draw(StoreSource(uri), group, table)
    assert sorted(paths) == sorted(f"plots/{k}-fp.png" for k in drawn)
    for stem, fig in drawn.items():  # each file holds that figure's pixels, legends included
        buf = io.BytesIO()
        fig.savefig(buf, dpi=html.DPI, bbox_inches="tight")
        want = np.asarray(Image.open(buf))
        got = np.asarray(Image.open(tmp_path / f"plots/{stem}-fp.png"))
        assert got.shape == want.shape and np.array_equal(got, want), stem


def test_timings_taken_under_load_are_marked(smoke_store):
    """The runs timed while spin loops kept the machine busy recorded a load above the rule's
    threshold; their variant is marked under load in the table and drawn apart on the ms/frame
    panel, whose Pareto front joins only timings taken idle. Every other variant's mark is
    what the rule makes of its runs' recorded figures (this machine may be busy anyway)."""
    uri, runs = smoke_store
    group, table = subset(runs, RUNS)
    timings.mark(table, group)
    key = list(zip(runs["model"], runs["model.blocks"].astype(int), runs["seed"].astype(int)))
    loaded = runs[[k in LOADED for k in key]]
    assert (loaded[timings.LOAD_COL] > timings.LOAD).all()  # recorded in MLflow by the runs
    assert runs[timings.LOAD_COL].between(0, 1).all() and (runs[timings.SPREAD_COL] >= 0).all()
    assert table.loc[table["model.blocks"] == 1, timings.STATE].tolist() == [timings.UNDER_LOAD]
    for (_, row), members in zip(table.iterrows(), html.rp.members(group, table)):
        states = set(timings.run_states(members))
        assert row[timings.STATE] == (timings.IDLE if timings.IDLE in states else
                                      timings.UNDER_LOAD)
        assert row[timings.LOAD_COL] == members[timings.LOAD_COL].max()
        idle = members[timings.run_states(members) == timings.IDLE]
        want = (idle if len(idle) else members)[timings.MS].mean()
        assert row[timings.MS] == pytest.approx(want)

    shown = layout.variants(table, html.factors(group))
    timings.annotate(shown.frame, table)
    for cell, state in zip(shown.frame[timings.MS], table[timings.STATE]):
        assert cell.endswith("(under load)") == (state == timings.UNDER_LOAD)
    assert timings.RULE in timings.note(table)

    figs = html.draw(StoreSource(uri), group, table)
    (ms_ax,) = [ax for ax in figs["pareto"].axes if ax.get_xlabel() == timings.MS]
    lines = {ln.get_label(): ln for ln in ms_ax.get_lines()}
    under = table[table[timings.STATE] == timings.UNDER_LOAD]
    marked = lines["measured under load, not comparable"]
    assert sorted(marked.get_xdata()) == sorted(under[timings.MS])
    assert marked.get_markerfacecolor() == "none"  # hollow
    idle = table[table[timings.STATE] == timings.IDLE]
    front = lines["Pareto front"].get_xdata()
    assert set(front) <= set(idle[timings.MS])  # never through a timing taken under load
    if len(idle):
        assert len(front) >= 1
    else:
        assert len(front) == 0 and "no front" in ms_ax.get_title().replace("\n", " ")


def shown_labels(group, table) -> list[str]:
    """The variant labels the figures use, on one line each."""
    keys = [k for k in html.factors(group[group["status"] == "FINISHED"]) if k in table]
    return [" ".join(t.split()) for t in html.rp.variant_labels(table, keys)]


def test_pareto_points_are_named_after_their_variant(smoke_store):
    """Each point carries its variant's name, or a letter the key below spells out (names
    this long), beside the point and inside the axes."""
    figs, table = draw(smoke_store, RUNS)
    labels = shown_labels(subset(smoke_store[1], RUNS)[0], table)
    fig = figs["pareto"]
    key = dict(t.get_text().split(": ", 1) for t in fig.legends[0].get_texts()
               if ": " in t.get_text())
    fig.draw_without_rendering()
    for ax in fig.axes:
        c = ax.get_xlabel()
        where = {label: (x, y) for label, x, y in zip(labels, table[c], table["val/psnr"])}
        named = {" ".join(key.get(a.get_text(), a.get_text()).split()): a.xy for a in ax.texts}
        assert named.keys() == where.keys()
        for label, xy in where.items():
            assert named[label] == pytest.approx(xy)
        box = ax.get_window_extent()
        for a in ax.texts:
            ext = a.get_window_extent()
            assert box.x0 - 0.5 <= ext.x0 and ext.x1 <= box.x1 + 0.5, a.get_text()


def test_every_data_line_has_markers(smoke_store):
    """Smoke runs evaluate twice: two points a line without markers would pass off as a
    measured curve. Each variant's curves carry a marker on every point (up to DENSE points),
    and so do the factor and Pareto plots' lines."""
    figs, table = draw(smoke_store, RUNS)
    for ax in figs["curves"].axes:
        data = [ln for ln in ax.get_lines() if not ln.get_label().startswith("bicubic")]
        assert len(data) == len(table)
        for ln in data:
            assert ln.get_marker() not in (None, "None", "", " ")
            assert len(ln.get_xdata()) <= DENSE and ln.get_markevery() == 1
        assert any(len(ln.get_xdata()) == 2 for ln in data)  # the case the issue saw
    for name in ("psnr_vs_model_blocks", "pareto"):
        for ax in figs[name].axes:
            for ln in ax.get_lines():
                if not ln.get_label().startswith("bicubic") and len(ln.get_xdata()):
                    assert ln.get_marker() not in (None, "None", "", " "), (name, ln)


def test_text_is_readable_at_the_pages_width(smoke_store, tmp_path):
    """Saved as the report saves them, every figure is at most WIDTH_IN wide and every text
    at least 11 px tall when the page shows the PNG 900 px wide (or at its own size when it
    is narrower)."""
    uri, runs = smoke_store
    group, table = subset(runs, RUNS)
    for stem, fig in html.draw(StoreSource(uri), group, table).items():
        buf = io.BytesIO()
        fig.savefig(buf, dpi=html.DPI, bbox_inches="tight")
        width = Image.open(buf).size[0]
        assert width <= WIDTH_IN * html.DPI + 20, stem
        shrink = min(1.0, 900 / width)
        for t in fig.findobj(Text):
            if t.get_visible() and t.get_text().strip():
                px = t.get_fontsize() * html.DPI / 72 * shrink
                assert px >= 11, (stem, t.get_text(), px)
        assert FONT * 900 / (72 * WIDTH_IN) >= 11


def test_crop_psnr_is_the_metric_on_the_same_crop(smoke_store, tmp_path):
    """An RGB model's run records which image and box its comparison crop is, and the crop's
    PSNR for SR and bicubic; recomputed here from that image (loaded by name), the crop of
    the logged comparison.png and the metric functions (Y, ceil(scale) pixels shaved), they
    agree; the strip prints them under the crops and names the image and box above."""
    from sr_ablate.core.metrics import psnr, rgb_to_y, shave
    from sr_ablate.data import BUILTIN_VAL, builtin_dir, load_eval_images

    uri, runs = smoke_store
    run = runs[(runs["model"] == "srresnet") & (runs["model.blocks"].astype(int) == 2)].iloc[0]
    name, box = run["tag:comparison.image"], run["tag:comparison.box"]
    x, y, w, h = map(int, box.split(","))
    scale = int(run["scale"])
    (path,) = [builtin_dir() / f for f in BUILTIN_VAL if f.rsplit(".", 1)[0] == name]
    ((_, hr),) = load_eval_images([path], scale)
    hr_crop = hr[:, y:y + h, x:x + w].double()
    png = tracking.fetch_artifact(uri, run["run_id"], "comparison.png", tmp_path)
    img = torch.from_numpy(np.asarray(Image.open(png)).copy()).permute(2, 0, 1).double()
    bic, sr, gt = (img[:, :, i * w:(i + 1) * w] for i in range(3))
    assert torch.equal(gt, hr_crop)  # the box is where the HR tile came from

    def crop_psnr(t):
        return psnr(shave(rgb_to_y(t), math.ceil(scale)), shave(rgb_to_y(hr_crop), scale))
    assert run["val/crop_psnr"] == pytest.approx(crop_psnr(sr), abs=1e-9)
    assert run["val/crop_bicubic_psnr"] == pytest.approx(crop_psnr(bic), abs=1e-9)

    group, table = subset(runs, RUNS)
    fig = html.draw(StoreSource(uri), group, table)["crops"]
    under = {ax.get_title(): ax.get_xlabel() for ax in fig.axes[:2]}
    assert under["HR"] == "reference"
    caption = fig.get_suptitle().replace("\n", " ")
    ref = runs[runs["run_id"].str[:8] == table["run_id"].iloc[0].split()[0]].iloc[0]
    rx, ry, rw, rh = ref["tag:comparison.box"].split(",")
    assert f"Image {ref['tag:comparison.image']}, crop x={rx}, y={ry}, w={rw}, h={rh}" in caption
    assert under["bicubic"] == f"{ref['val/crop_bicubic_psnr']:.2f} dB"
    for ax, ids in zip(fig.axes[2:], table["run_id"]):  # the variants' crops, in table order
        first = runs[runs["run_id"].str[:8] == ids.split()[0]].iloc[0]
        assert ax.get_xlabel() == f"{first['val/crop_psnr']:.2f} dB"


def test_report_records_and_states_how_each_timing_was_taken(reported):
    """`sr-ablate report` from a real sweep: results.csv keeps each variant's worst recorded
    load and spread (the runs' MLflow metrics) and its mark by the rule; index.html states the
    rule and marks the ms/frame cells of variants timed only under load."""
    cwd, rep = reported
    runs = tracking.runs_frame(f"sqlite:///{cwd / 'mlflow.db'}")
    runs = runs[runs["experiment"] == "rep"].dropna(subset=[timings.MS])
    assert runs[timings.LOAD_COL].between(0, 1).all() and (runs[timings.SPREAD_COL] >= 0).all()
    table = read_results(rep / "results.csv")
    page = (rep / "index.html").read_text()
    assert html_escape(timings.RULE) in page
    for _, row in table.iterrows():
        mine = runs[runs["variant"] == row["variant"]]
        assert row[timings.LOAD_COL] == pytest.approx(mine[timings.LOAD_COL].max())
        assert row[timings.SPREAD_COL] == pytest.approx(mine[timings.SPREAD_COL].max())
        states = set(timings.run_states(mine))
        want = timings.IDLE if timings.IDLE in states else timings.UNDER_LOAD
        assert row[timings.STATE] == want
        cell = f">{row[timings.MS]:.1f} (under load)<"
        assert (cell in page) == (want == timings.UNDER_LOAD)
