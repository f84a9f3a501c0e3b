"""What a report concludes: verdict words for each case, forced re-runs replaced not pooled,
one table per model family, missing variants named, and a real sweep of 5 images x 3 seeds
whose paired test cannot go below 2/2^5 = 0.0625."""
from __future__ import annotations

import math
import shutil

import pandas as pd
import pytest
from conftest import TINY, builtin_images, cli

from sr_ablate import tracking
from sr_ablate.report.build import write
from sr_ablate.report.verdicts import RISE_DB, last_rise, sentence, verdict
from sr_ablate.training.job import run_job

QUIET = ["tracking.checkpoint=false", "trainer.progress=false"]


def row(**kw) -> pd.Series:
    """A table row on set ``s``: 0.3 dB over bicubic, +0.12 dB [+0.05, +0.19] over the
    baseline, 14 images, 3 seeds, p (Holm) 0.001."""
    base = {"n": 3, "s/psnr": 31.0, "s/dpsnr_bicubic": 0.3, "s/dpsnr_baseline": 0.12,
            "s/dpsnr_lo": 0.05, "s/dpsnr_hi": 0.19, "s/n_images": 14, "s/p_baseline": 0.0004,
            "s/p_holm": 0.001, "val_rise": 0.01, "name": "24 blocks"}
    return pd.Series({**base, **kw})


BASE = row(**{"s/dpsnr_baseline": 0.0, "name": "16 blocks"})


@pytest.mark.parametrize("variant,expected", [
    (row(), "better"),
    (row(**{"s/dpsnr_baseline": -0.12, "s/dpsnr_lo": -0.19, "s/dpsnr_hi": -0.05}), "worse"),
    (row(**{"s/p_holm": 0.21}), "no detectable difference"),
    (row(**{"s/dpsnr_bicubic": -0.5}), "cannot tell: below bicubic, undertrained"),
    (row(val_rise=0.3), "cannot tell: not converged (val PSNR +0.30 dB over its last evaluation)"),
    (row(**{"s/n_images": 5, "s/p_holm": 0.0625}),
     "cannot tell: underpowered (5 images: smallest reachable p = 0.0625 ≥ α = 0.05; the "
     "test needs at least 6 images)"),
])
def test_verdict_words(variant, expected):
    assert verdict(variant, BASE, "s", 0.05) == expected


def test_rank_test_and_interval_that_disagree_withhold_the_verdict():
    text = verdict(row(**{"s/dpsnr_baseline": -0.01, "s/dpsnr_lo": -0.04, "s/dpsnr_hi": 0.03}),
                   BASE, "s", 0.05)
    assert text.startswith("cannot tell: the signed-rank test (Holm p = 0.001) and the mean")


def test_one_seed_each_says_what_better_means():
    text = verdict(row(n=1), row(n=1, **{"s/dpsnr_baseline": 0.0}), "s", 0.05)
    assert text.startswith("better (for these trained models: with one training run per "
                           "variant the spread between runs is unknown")


def test_an_undertrained_baseline_withholds_every_verdict():
    base = row(**{"s/dpsnr_bicubic": -3.4, "s/dpsnr_baseline": 0.0})
    assert verdict(row(), base, "s", 0.05) == "cannot tell: baseline below bicubic, undertrained"


def test_reasons_add_up():
    v = row(**{"s/dpsnr_bicubic": -1.0, "s/n_images": 2}, val_rise=1.0)
    text = verdict(v, BASE, "s", 0.05)
    assert text.startswith("cannot tell: below bicubic") and "not converged" in text
    assert "underpowered (2 images: smallest reachable p = 0.5" in text


def test_sentence():
    text = sentence(row(**{"s/p_baseline": 0.21, "s/p_holm": 0.63, "s/dpsnr_lo": -0.05,
                           "s/dpsnr_hi": 0.29}), BASE, "s",
                    lambda r: r["name"], 0.05)
    assert text == ("24 blocks vs 16 blocks on s: +0.12 dB [-0.05, +0.29] (14 images, 3 seeds), "
                    "p = 0.21 (Holm 0.63) — no detectable difference")


def test_last_rise():
    assert last_rise([(400, 30.0), (800, 31.0), (1200, 31.02)]) == pytest.approx(0.02)
    assert last_rise([(800, 31.0), (400, 30.0)]) == pytest.approx(1.0)  # sorted by step
    assert math.isnan(last_rise([(4, 30.0)]))
    # the rule's threshold: a rise just over RISE_DB withholds the verdict, just under does not
    over = verdict(row(val_rise=RISE_DB + 0.001), BASE, "s", 0.05)
    assert over.startswith("cannot tell: not converged")
    assert verdict(row(val_rise=RISE_DB - 0.001), BASE, "s", 0.05) == "better"


def _frame(tmp_path):
    runs = tracking.runs_frame(f"sqlite:///{tmp_path / 'mlflow.db'}", parents=True)
    return runs[runs.get("tag:sr_ablate.role", pd.Series(index=runs.index, dtype=str)) != "sweep"]


def test_forced_rerun_replaces_and_two_families_get_two_tables(store, compose, tmp_path):
    srresnet = compose(TINY + QUIET)
    run_job(srresnet, cwd=str(tmp_path))
    run_job(srresnet, cwd=str(tmp_path))  # the same configuration again: sweep.force=true
    run_job(compose(["model=espcn", "model.channels=8", "model.mid_channels=8", "trainer=smoke",
                     *QUIET]), cwd=str(tmp_path))
    runs = _frame(tmp_path)
    assert len(runs) == 3 and (runs["status"] == "FINISHED").all()
    out = tmp_path / "rep"
    first = write(runs, out, "e")
    md = (out / "results.md").read_text()
    assert "1 older run(s) of a configuration that was run again" in md
    assert md.count("## Fingerprint") == 2 and "model SRResNet" in md and "model ESPCN" in md
    second = pd.read_csv(out / "results-2.csv")
    assert list(first["n"]) == [1] and list(second["n"]) == [1]  # not pooled as 2 seeds
    older, newest = runs[runs["tag:model.class"] == "SRResNet"].sort_values("start_time")["run_id"]
    shown = {*first["run_id"], *second["run_id"]}
    assert newest[:8] in shown and older[:8] not in shown
    for t in (first, second):  # one family each: nothing is compared across families
        assert "model.channels" not in t.columns and len(t) == 1


def test_missing_variant_is_listed_with_its_error(store, compose, tmp_path):
    run_job(compose(TINY + QUIET), cwd=str(tmp_path))
    runs = _frame(tmp_path)
    out = tmp_path / "rep"
    write(runs, out, "e", expected=[{"model.blocks": 1}, {"model.blocks": 4}],
          failures=[["model.blocks=4 loss=vgg54", "VGG19 weights not found; put them in X"]])
    md = (out / "results.md").read_text()
    assert "Missing (asked for by the sweep, no finished run): model.blocks=4 (failed: VGG19 " \
           "weights not found; put them in X)." in md
    write(runs, out, "e", expected=[{"model.blocks": 4}])
    assert "model.blocks=4 (no run recorded" in (out / "results.md").read_text()


SWEEP = """
study: five
baseline: b2
overrides: [trainer=smoke, model.channels=8, trainer.progress=false, tracking.checkpoint=false,
            "eval.sets=[{folder}]"]
grid: {{seed: [0, 1, 2]}}
variants:
  b1: [model.blocks=1]
  b2: [model.blocks=2]
"""


@pytest.mark.slow
def test_five_images_three_seeds_cannot_reach_significance(tmp_path):
    """2 variants x 3 seeds on 5 images: before, the (seed, image) pairs gave 15 'pairs' and
    p as low as 6.1e-05; over the 5 images p cannot go below 0.0625."""
    folder = tmp_path / "five"
    folder.mkdir()
    for src in [p for p in builtin_images() if p.stem not in ("grass", "gravel", "brick")][:5]:
        shutil.copy(src, folder / src.name)
    (tmp_path / "five.yaml").write_text(SWEEP.format(folder=folder))
    out = cli([f"sweep={tmp_path / 'five.yaml'}"], tmp_path, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    out = cli(["five"], tmp_path, command="report")
    assert out.returncode == 0, out.stderr[-3000:]
    table = pd.read_csv(tmp_path / "reports" / "five" / "results.csv")
    assert list(table["n"]) == [3, 3]
    b1 = table[table["variant"] == "b1"].iloc[0]
    assert b1["five/n_images"] == 5
    assert b1["five/p_baseline"] >= 0.0625 and b1["five/p_holm"] >= 0.0625
    md = (tmp_path / "reports" / "five" / "results.md").read_text()
    assert "b1 vs b2 on five:" in md and "(5 images, 3 seeds)" in md
    assert "cannot tell: below bicubic, undertrained" in md  # 4 smoke steps learn nothing
    assert "underpowered (5 images: smallest reachable p = 0.0625" in md
