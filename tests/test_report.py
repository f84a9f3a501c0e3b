"""Reports from real runs in a real MLflow store: seeds are repeats, not a design factor; every
file is written; the numbers are the MLflow metrics (means, CIs and paired tests recomputed
here); the HTML renders in headless Chromium."""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
from conftest import TINY, cli, read_results
from mlflow.tracking import MlflowClient
from PIL import Image

from sr_ablate import tracking
from sr_ablate.report.build import factors, results_table
from sr_ablate.training.job import run_job


def test_seeds_are_pooled_as_repeats(store, compose, tmp_path):
    tiny = [a for a in TINY if not a.startswith("model.blocks")] + ["tracking.checkpoint=false"]
    for blocks in (1, 2):
        for seed in (0, 1):
            run_job(compose([*tiny, f"model.blocks={blocks}", f"seed={seed}"]), cwd=str(tmp_path))
    runs = tracking.runs_frame(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert factors(runs[runs["status"] == "FINISHED"]) == ["model.blocks"]
    table = results_table(runs)
    assert list(table["model.blocks"]) == [1, 2]
    assert list(table["n"]) == [2, 2] and list(table["seed"]) == ["0,1", "0,1"]
    for _, row in table.iterrows():
        mine = runs[runs["model.blocks"] == str(row["model.blocks"])]
        assert row["val/psnr"] == pytest.approx(mine["val/psnr"].mean())
        assert row["train/loss"] == pytest.approx(mine["train/loss"].mean())
        assert sorted(row["run_id"].split()) == sorted(mine["run_id"].str[:8])


def test_every_file_is_written(reported):
    _, rep = reported
    for name in ("results.md", "results.csv", "results.tex", "index.html", "plots/curves.png",
                 "plots/psnr_vs_model_blocks.png", "plots/pareto.png", "plots/crops.png"):
        assert (rep / name).is_file() and (rep / name).stat().st_size > 0, name
    html = (rep / "index.html").read_text()
    assert html.count("data:image/png;base64,") == 4 and "<table" in html
    assert "plots/" not in html  # self-contained: nothing to fetch next to it
    tex = (rep / "results.tex").read_text()
    assert r"\begin{tabular}" in tex and r"$\pm$" in tex and "PSNR (dB)" in tex
    md = (rep / "results.md").read_text()
    assert "![curves](plots/curves.png)" in md
    assert "Baseline: variant=b2 (named by the sweep file)." in md


def test_table_numbers_equal_the_mlflow_metrics(reported):
    from scipy import stats
    cwd, rep = reported
    table = read_results(rep / "results.csv")
    client = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
    exp = client.get_experiment_by_name("rep")
    runs = [r for r in client.search_runs([exp.experiment_id])
            if r.data.tags.get("sr_ablate.role") != "sweep"]
    assert "seed" not in factors(tracking.runs_frame(f"sqlite:///{cwd / 'mlflow.db'}"))
    assert list(table["variant"]) == ["b1", "b2"] and list(table["n"]) == [2, 2]
    assert list(table["baseline"]) == [False, True]
    per_image = {}
    for r in runs:
        path = client.download_artifacts(r.info.run_id, "per_image.csv", str(cwd / r.info.run_id))
        per_image[r.info.run_id] = pd.read_csv(path)
    mine = {v: [r for r in runs if r.data.params["variant"] == v] for v in ("b1", "b2")}
    for _, row in table.iterrows():
        members = mine[row["variant"]]
        assert sorted(row["run_id"].split()) == sorted(r.info.run_id[:8] for r in members)
        for key in ("val/psnr", "val/ssim"):
            x = np.array([r.data.metrics[key] for r in members])
            half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
            assert row[key] == pytest.approx(x.mean(), rel=1e-12)
            assert row[f"{key}_ci"] == pytest.approx(half, rel=1e-9)
        for key in ("val/bicubic_psnr", "train/loss", "model/params", "model/gflops"):
            assert row[key] == pytest.approx(np.mean([r.data.metrics[key] for r in members]))
        assert row["val/dpsnr_bicubic"] == pytest.approx(row["val/psnr"] - row["val/bicubic_psnr"])
    b1, b2 = table.iloc[0], table.iloc[1]
    assert b1["val/dpsnr_baseline"] == pytest.approx(b1["val/psnr"] - b2["val/psnr"])
    assert b2["val/dpsnr_baseline"] == 0 and np.isnan(b2["val/p_baseline"])

    def psnr(run):  # per image, ordered by image name
        rows = per_image[run.info.run_id]
        return rows[rows["set"] == "val"].sort_values("image")["psnr"].to_numpy()
    # over images: each variant's per-image PSNR averaged over its 2 seeds first
    a = np.mean([psnr(r) for r in mine["b1"]], axis=0)
    b = np.mean([psnr(r) for r in mine["b2"]], axis=0)
    assert len(a) == 8  # the built-in validation photographs
    p_images = stats.wilcoxon(a - b, method="exact").pvalue
    assert b1["val/p_images"] == pytest.approx(p_images)
    assert b1["val/n_images"] == 8
    d = a - b
    # the signed-rank interval of 8 pairs: P(T <= 3) = 5/256 <= 0.025 < P(T <= 4) = 7/256, so
    # it runs from the 4th smallest to the 4th largest of the 36 Walsh averages
    walsh = np.sort([(d[i] + d[j]) / 2 for i in range(8) for j in range(i, 8)])
    assert (b1["val/dpsnr_lo"], b1["val/dpsnr_hi"]) == pytest.approx((walsh[3], walsh[-4]))
    assert b1["val/dpsnr_shift"] == pytest.approx(np.median(walsh))
    assert b1["val/dpsnr_baseline"] == pytest.approx(d.mean())
    # over runs: the per-seed set means, paired by seed (both variants ran seeds 0 and 1)
    by_seed = {v: sorted(mine[v], key=lambda r: r.data.params["seed"]) for v in mine}
    ma, mb = ([psnr(r).mean() for r in by_seed[v]] for v in ("b1", "b2"))
    p_runs = stats.ttest_rel(ma, mb).pvalue
    assert b1["val/p_runs"] == pytest.approx(p_runs) and b1["val/paired"]
    # the claim "over images and over runs" is tested by the larger p; one comparison: Holm
    # changes nothing
    assert b1["val/p_baseline"] == pytest.approx(max(p_images, p_runs))
    assert b1["val/p_holm"] == pytest.approx(max(p_images, p_runs))


def test_make_report_skips_experiments_without_new_runs(reported):
    cwd, _ = reported
    out = cli([], cwd, command="report")
    assert out.returncode == 0 and "reports/rep: up to date" in out.stdout


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(not CHROMIUM, reason="needs Debian's chromium (apt-get install chromium; "
                    ".ci/run installs it)")
def test_html_opens_in_headless_chromium_with_table_and_plot(reported, tmp_path):
    _, rep = reported
    shot = tmp_path / "shot.png"
    out = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                          "--hide-scrollbars", f"--screenshot={shot}", "--window-size=1400,2600",
                          (rep / "index.html").as_uri()], capture_output=True, text=True,
                         timeout=120)
    assert shot.is_file(), out.stderr[-2000:]
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    top = img[:500]  # title and table: dark text on white, table borders
    assert (top.sum(axis=2) < 200).sum() > 2000
    # a plot: matplotlib's first colour (tab:blue, 31/119/180) drawn below the table
    blue = (abs(img[..., 0] - 31) < 30) & (abs(img[..., 1] - 119) < 30) & \
        (abs(img[..., 2] - 180) < 30)
    assert blue[400:].sum() > 500


@pytest.mark.slow  # default run under 10 min on 2 cores; CI's slow pass runs it
def test_report_of_one_sweep_by_its_id(reported):
    cwd, _ = reported
    runs = tracking.runs_frame(f"sqlite:///{cwd / 'mlflow.db'}")
    (sweep_id,) = runs["tag:sr_ablate.sweep_id"].unique()
    out = cli([sweep_id, "--out", str(cwd / "by_id")], cwd, command="report")
    assert out.returncode == 0, out.stderr[-2000:]
    # named after the experiment (here the study's) and the sweep, not a bare hex id
    assert [p.name for p in (cwd / "by_id").iterdir()] == [f"rep-sweep-{sweep_id}"]
    folder = cwd / "by_id" / f"rep-sweep-{sweep_id}"
    table = read_results(folder / "results.csv")
    assert list(table["n"]) == [2, 2]
    assert (folder / "results.md").read_text().startswith(f"# rep-sweep-{sweep_id}\n")
    bad = cli(["no_such_thing"], cwd, command="report")
    assert bad.returncode == 2 and "neither an experiment nor a sweep id" in bad.stderr
