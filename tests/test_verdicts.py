"""What a report concludes: each verdict rule on hand-made rows, sentences whose numbers all
come from one source, forced re-runs replaced not pooled, one table per model family,
missing variants named, and a real sweep of 5 images x 3 seeds whose paired test cannot go
below 2/2^5 = 0.0625."""
from __future__ import annotations

import math
import shutil

import pandas as pd
import pytest
from conftest import TINY, builtin_images, cli, read_results

from sr_ablate import tracking
from sr_ablate.report.build import write
from sr_ablate.report.verdicts import RISE_DB, judge, last_rise, sentence, verdict
from sr_ablate.training.job import run_job

QUIET = ["tracking.checkpoint=false", "trainer.progress=false"]


def row(**kw) -> pd.Series:
    """A variant on set ``s``, 3 seeds paired with the baseline's, 14 images: 0.3 dB over
    bicubic, +0.12 dB over the baseline (shift +0.11), significant over images (p 0.0004)
    and over runs (p 0.002), Holm 0.004; reachable 1e-4."""
    base = {"n": 3, "s/psnr": 31.0, "s/dpsnr_bicubic": 0.3, "s/dpsnr_baseline": 0.12,
            "s/dpsnr_shift": 0.11, "s/dpsnr_lo": 0.05, "s/dpsnr_hi": 0.19, "s/runs_lo": 0.08,
            "s/runs_hi": 0.16, "s/p_images": 0.0004, "s/p_runs": 0.002, "s/p_baseline": 0.002,
            "s/p_holm": 0.004, "s/p_reachable": 1e-4, "s/level": "runs", "s/paired": True,
            "s/runs_used": 3, "s/base_runs_used": 3, "s/seed_sd": 0.02, "s/base_seed_sd": 0.03,
            "s/n_images": 14, "s/images_total": 14, "s/images_nonfinite": 0,
            "s/images_incomplete": 0, "s/sign": 1, "s/runs_left_out": "",
            "s/seeds_needed": math.nan, "s/seeds_effect": math.nan, "val_rise": 0.01,
            "name": "24 blocks"}
    return pd.Series({**base, **kw})


BASE = row(**{"s/dpsnr_baseline": 0.0, "name": "16 blocks"})
WORSE = {"s/dpsnr_baseline": -0.12, "s/dpsnr_shift": -0.11, "s/sign": -1}


@pytest.mark.parametrize("variant,expected", [
    (row(), "better"),
    (row(**WORSE), "worse"),
    (row(**{"s/p_runs": 0.3, "s/p_baseline": 0.3, "s/p_holm": 0.6}), "no detectable difference"),
    (row(**{"s/dpsnr_bicubic": -0.5}), "cannot tell: below bicubic, undertrained"),
    (row(val_rise=0.3), "cannot tell: not converged (val PSNR +0.30 dB over its last evaluation)"),
    (row(val_rise=-0.98), "cannot tell: unstable (val PSNR -0.98 dB at its last evaluation)"),
    (row(**{"s/p_holm": math.nan, "s/p_reachable": math.nan}),
     "cannot tell: no per-image results to pair"),
])
def test_verdict_words(variant, expected):
    assert verdict(variant, BASE, "s", 0.05) == expected


def test_underpowered_is_judged_within_the_family():
    """8 images in a family of 20 with seven smaller p ahead: even p = 2/2^8 = 0.0078 would be
    multiplied by 13 by Holm (0.10): cannot tell, never 'no detectable difference'."""
    v = row(**{"s/n_images": 8, "s/images_total": 8, "s/p_holm": 1.0, "s/p_reachable": 0.1016})
    assert verdict(v, BASE, "s", 0.05) == (
        "cannot tell: underpowered (8 images: even the smallest p they can give, 0.0078, would "
        "be 0.1 after Holm over this table's family, not below α = 0.05; more images per set, "
        "or a smaller family (fewer sets or variants), would change that — more seeds would "
        "not)")


def test_worse_at_this_budget_when_only_the_variant_is_below_bicubic():
    slow = row(**{**WORSE, "s/dpsnr_bicubic": -0.4}, val_rise=0.2)
    word, text = judge(slow, BASE, "s", 0.05)
    assert word == "worse at this budget"
    assert text == ("worse at this budget: it has not yet learned to beat bicubic on s while the "
                    "baseline has (it trains slower); its converged quality is unknown")
    # not significant: cannot tell, as before
    assert judge(row(**{**WORSE, "s/dpsnr_bicubic": -0.4, "s/p_holm": 0.2}), BASE, "s",
                 0.05)[0] == "cannot tell"
    # both below bicubic, or the baseline below: cannot tell
    low_base = row(**{"s/dpsnr_bicubic": -1.0, "s/dpsnr_baseline": 0.0})
    assert judge(slow, low_base, "s", 0.05)[1] == (
        "cannot tell: below bicubic, undertrained; not converged (val PSNR +0.20 dB over its "
        "last evaluation); baseline below bicubic, undertrained")
    assert judge(row(), low_base, "s", 0.05)[1] == "cannot tell: baseline below bicubic, " \
        "undertrained"
    # a baseline still moving is not a settled reference either
    assert judge(slow, row(val_rise=0.2), "s", 0.05)[0] == "cannot tell"


def test_tests_pointing_different_ways_withhold_the_verdict():
    text = verdict(row(**{"s/sign": 0, "s/dpsnr_shift": -0.01}), BASE, "s", 0.05)
    assert text == ("cannot tell: the shift over images and the difference of run means point "
                    "in different directions")


def test_one_seed_speaks_of_the_trained_models_and_says_how_to_add_seeds():
    one = row(**{"s/level": "images", "s/runs_used": 1, "s/base_runs_used": 1}, n=1)
    text = verdict(one, BASE, "s", 0.05, lambda n: f"python -m sr_ablate sweep=x seed=1,{n - 1}")
    assert text == ("better (for these trained models: with one training run on a side the "
                    "spread between runs is unknown, so this says nothing about the design; add "
                    "seeds: python -m sr_ablate sweep=x seed=1,2)")


def test_seeds_needed_is_said_as_an_estimate_with_its_command():
    undecided = {"s/p_runs": 0.3, "s/p_baseline": 0.3, "s/p_holm": 0.6, "s/seeds_effect": 0.12}
    text = verdict(row(**undecided, **{"s/seeds_needed": 7}), BASE, "s", 0.05,
                   lambda n: f"python -m sr_ablate sweep=x seed=3,...,{n - 1}")
    assert text == ("no detectable difference; estimate from the observed seed spread: 7 seeds "
                    "per variant would detect 0.12 dB with 80% power (python -m sr_ablate "
                    "sweep=x seed=3,...,6)")
    text = verdict(row(**undecided, **{"s/seeds_needed": math.inf}), BASE, "s", 0.05)
    assert text.endswith("estimate: more than 50 seeds per variant would be needed to detect "
                         "0.12 dB with 80% power at this spread")


def test_reasons_add_up():
    v = row(**{"s/dpsnr_bicubic": -1.0, "s/n_images": 2, "s/p_reachable": 1.0}, val_rise=1.0)
    text = verdict(v, BASE, "s", 0.05)
    assert text.startswith("cannot tell: below bicubic") and "not converged" in text
    assert "underpowered (2 images: even the smallest p they can give, 0.5," in text


def test_sentence():
    text = sentence(row(**{"s/p_runs": 0.21, "s/p_baseline": 0.21, "s/p_holm": 0.63,
                           "s/runs_lo": -0.29, "s/runs_hi": 0.35, "s/seed_sd": 0.02,
                           "s/base_seed_sd": 0.10}), BASE, "s", lambda r: r["name"], 0.05)
    assert text == ("24 blocks vs 16 blocks on s: +0.12 dB (shift +0.11) [images +0.05, +0.19; "
                    "runs -0.29, +0.35] (14 images, 3 vs 3 seeds paired; seed sd 0.02 / 0.10 "
                    "dB), p images 0.0004, runs 0.21, Holm 0.63 — no detectable difference")


def test_sentence_counts_what_it_left_out():
    text = sentence(row(**{"s/n_images": 13, "s/images_nonfinite": 1, "s/level": "images",
                           "s/runs_used": 1, "s/base_runs_used": 3,
                           "s/runs_left_out": "2 run(s) without per-image results",
                           "s/dpsnr_lo": math.nan}),
                    BASE, "s", lambda r: r["name"], 0.05)
    assert ("[images no 95% interval below 6 images] (13 of 14 images: 1 without a finite "
            "PSNR, 1 seed vs 3 seeds; left out: 2 run(s) without per-image results), p = "
            "0.0004 (Holm 0.004)") in text


def test_last_rise():
    assert last_rise([(400, 30.0), (800, 31.0), (1200, 31.02)]) == pytest.approx(0.02)
    assert last_rise([(800, 31.0), (400, 30.0)]) == pytest.approx(1.0)  # sorted by step
    assert math.isnan(last_rise([(4, 30.0)]))
    # the rule's threshold, both ways: just over RISE_DB withholds the verdict, just under not
    over = verdict(row(val_rise=RISE_DB + 0.001), BASE, "s", 0.05)
    assert over.startswith("cannot tell: not converged")
    assert verdict(row(val_rise=RISE_DB - 0.001), BASE, "s", 0.05) == "better"
    assert verdict(row(val_rise=-RISE_DB - 0.001), BASE, "s", 0.05).startswith(
        "cannot tell: unstable")
    assert verdict(row(val_rise=-RISE_DB + 0.001), BASE, "s", 0.05) == "better"


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
    second = read_results(out / "results-2.csv")
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
    assert ("Missing (asked for by the sweep, no finished run):\n\n- model.blocks=4: failed: "
            "VGG19 weights not found; put them in X\n") in md
    write(runs, out, "e", expected=[{"model.blocks": 4}])
    assert "- model.blocks=4: no run recorded" in (out / "results.md").read_text()


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
    table = read_results(tmp_path / "reports" / "five" / "results.csv")
    assert list(table["n"]) == [3, 3]
    b1 = table[table["variant"] == "b1"].iloc[0]
    assert b1["five/n_images"] == 5
    assert b1["five/p_baseline"] >= 0.0625 and b1["five/p_holm"] >= 0.0625
    md = (tmp_path / "reports" / "five" / "results.md").read_text()
    assert "b1 vs b2 on five:" in md and "(5 images, 3 vs 3 seeds paired; seed sd" in md
    assert "cannot tell: below bicubic, undertrained" in md  # 4 smoke steps learn nothing
    assert "underpowered (5 images: even the smallest p they can give, 0.062," in md
