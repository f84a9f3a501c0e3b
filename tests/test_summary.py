"""What a run and a sweep say when they end: a run's PSNR against bicubic in one stdout line,
a sweep's table of jobs, the reused runs listed on the sweep's parent, the default baseline
of a plain ``-m`` grid, and trainer=quick announcing itself as a pipeline check."""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import TINY, cli, free_port
from mlflow.tracking import MlflowClient

from sr_ablate import tracking
from sr_ablate.report.build import baseline_of
from sr_ablate.sweeps import grid
from sr_ablate.training import summary

METRICS = {"val/psnr": 32.37, "val/ssim": 0.9, "val/bicubic_psnr": 32.93,
           "set5/psnr": 34.70, "set5/bicubic_psnr": 33.68,
           "val_x3/psnr": 29.5, "val_x3/bicubic_psnr": 29.5, "model/params": 1e6}
RUN_LINE = re.compile(r"^sr_ablate: run ([0-9a-f]{32}) finished: val (\d+\.\d\d) dB vs bicubic "
                      r"(\d+\.\d\d) \(([+-]\d+\.\d\d)\)(: below bicubic)?(; look next: .*)?$")


def test_run_line_gives_every_set_against_bicubic_and_says_below():
    line = summary.run_line("3f2c9a1b", METRICS)
    assert line == ("sr_ablate: run 3f2c9a1b finished: val 32.37 dB vs bicubic 32.93 (-0.56): "
                    "below bicubic; set5 34.70 dB vs bicubic 33.68 (+1.02); val_x3 29.50 dB vs "
                    "bicubic 29.50 (+0.00); look next: mlflow ui, sr-ablate report")


def test_run_line_above_bicubic_and_in_a_sweep():
    line = summary.run_line("ab", {"val/psnr": 33.0, "val/bicubic_psnr": 32.5}, hint=False)
    assert line == "sr_ablate: run ab finished: val 33.00 dB vs bicubic 32.50 (+0.50)"
    assert summary.run_line("ab", {"train/loss": 0.1}, hint=False).endswith("no PSNR logged")


def test_quick_budget_says_it_is_a_pipeline_check(compose):
    """What is known at the start (the budget), never how the run will end: with overrides
    (model=srcnn model.residual=true trainer.steps=300 ...) a quick run ended +0.70 dB above
    bicubic under an earlier notice that said its models stay below it."""
    notice = summary.budget_notice(compose([]).trainer)  # quick is the default budget
    assert notice == ("sr_ablate: trainer=quick is a short budget (150 steps) for checking the "
                      "pipeline, not for comparing designs; the last line says how the model "
                      "did against bicubic. For a study: trainer=cpu on a CPU, trainer=paper "
                      "on a GPU")
    longer = summary.budget_notice(compose(["trainer.steps=300", "model=srcnn"]).trainer)
    assert "(300 steps)" in longer and "bicubic:" not in longer and "below" not in longer
    assert summary.budget_notice(compose(["trainer=smoke"]).trainer) is None
    assert summary.budget_notice(compose(["trainer=paper"]).trainer) is None


def test_sweep_table_one_row_per_job_in_job_order():
    jobs = [
        {"outcome": "failed", "num": 2, "overrides": ["model.blocks=24", "trainer=smoke"],
         "job": "", "run_id": "", "message": "NonFiniteLoss: loss is nan\nat step 2"},
        {"outcome": "skipped", "num": 1, "overrides": ["model.blocks=16", "trainer=smoke"],
         "job": "", "run_id": "b" * 32, "metrics": {"val/psnr": 33.1, "val/bicubic_psnr": 32.9}},
        {"outcome": "ran", "num": 0, "overrides": ["model.blocks=8", "trainer=smoke"],
         "job": "", "run_id": "a" * 32, "metrics": METRICS},
    ]
    lines = summary.sweep_table(jobs, "0a1b2c3d4e5f").splitlines()
    assert lines[0] == "sr_ablate: sweep 0a1b2c3d4e5f ended, 3 job(s):"
    assert lines[1].split() == ["job", "status", "PSNR", "dB", "vs", "bicubic", "run", "id"]
    assert lines[2].split() == ["model.blocks=8", "ran", "val", "32.37", "-0.56", "a" * 32]
    assert lines[3].split()[:6] == ["model.blocks=16", "skipped-reused", "val", "33.10",
                                    "+0.20", "b" * 32]
    assert lines[3].endswith("(same config hash: this FINISHED run is reused)")
    assert lines[4].split()[:5] == ["model.blocks=24", "failed", "-", "-", "-"]
    assert lines[4].endswith("(NonFiniteLoss: loss is nan at step 2)")
    assert lines[5] == "look next: mlflow ui, sr-ablate report 0a1b2c3d4e5f"
    variant = summary.job_labels([["+study_variant=base", "trainer=smoke"],
                                  ["+study_variant=vgg54", "trainer=smoke"]])
    assert variant == ["variant=base", "variant=vgg54"]


def test_plain_grid_records_the_default_as_its_baseline():
    text = grid.definition(["-m", "model.blocks=8,12,24", "trainer=smoke"], None)
    assert yaml.safe_load(text) == {"command": "-m model.blocks=8,12,24 trainer=smoke",
                                    "baseline": {"model.blocks": 16}}  # not swept: still said
    groups = grid.definition(["-m", "model=srresnet,vdsr", "seed=0,1"], None)
    assert baseline_of(None, [groups]) == {"model": "srresnet"}  # seeds are repeats, not factors
    fixed = grid.definition(["-m", "model=espcn", "model.channels=16,32"], None)
    assert baseline_of(None, [fixed]) == {"model.channels": 64}  # espcn's default, not srresnet's


def test_a_sweep_file_keeps_its_baseline_and_a_grid_file_without_one_gets_the_default():
    argv, spec, tmp = grid.expand(["sweep=srresnet_blocks", "trainer=smoke"])
    assert grid.definition(argv, spec) == Path(spec["path"]).read_text()
    tmp.cleanup()
    argv, spec, tmp = grid.expand(["sweep=live_sr", "trainer=smoke"])
    text = grid.definition(argv, spec)
    tmp.cleanup()
    assert text.startswith(Path(spec["path"]).read_text().rstrip("\n"))
    assert baseline_of(None, [text]) == {"model.channels": 64, "model.act": "tanh"}


@pytest.mark.slow  # ~37 s here (2 busy cores), as test_cli's single run
def test_a_run_ends_with_its_psnr_against_bicubic_on_stdout(tmp_path):
    out = cli(TINY, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    last = out.stdout.strip().splitlines()[-1]
    m = RUN_LINE.match(last)
    assert m and m.group(6) == "; look next: mlflow ui, sr-ablate report", last
    assert "trainer=quick" not in out.stderr  # smoke is not announced
    r = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(m.group(1))
    assert r.info.status == "FINISHED"  # the line comes after the run ended
    psnr, bicubic = r.data.metrics["val/psnr"], r.data.metrics["val/bicubic_psnr"]
    assert (m.group(2), m.group(3)) == (f"{psnr:.2f}", f"{bicubic:.2f}")
    assert (m.group(5) is not None) == (psnr < bicubic)


def test_quick_notice_comes_first(tmp_path):
    """trainer=quick announced before anything runs (here a tracking server that is not
    there stops the run before its first step)."""
    out = cli(["trainer=quick", f"tracking.uri=http://127.0.0.1:{free_port()}"], tmp_path)
    assert out.returncode == 2
    lines = out.stderr.splitlines()
    assert lines[0].startswith("sr_ablate: trainer=quick is a short budget (150 steps)")
    assert "trainer=cpu" in lines[0] and lines[-1].startswith("error: MLflow tracking")


@pytest.fixture(scope="module")
def launched_twice(tmp_path_factory):
    """The same 2-job grid launched twice in one directory: the second launch reuses both."""
    cwd = tmp_path_factory.mktemp("twice")
    argv = ["-m", "model.blocks=1,2", *TINY[:1], "model.channels=8", "trainer.progress=false"]
    first, second = cli(argv, cwd), cli(argv, cwd)
    assert first.returncode == 0, first.stderr[-3000:]
    assert second.returncode == 0, second.stderr[-3000:]
    uri = f"sqlite:///{cwd / 'mlflow.db'}"
    frame = tracking.runs_frame(uri, parents=True).sort_values("start_time")
    return uri, frame, first.stdout, second.stdout


def _table(stdout: str) -> list[list[str]]:
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(r"sr_ablate: sweep \w+ ended", line))
    return [line.split() for line in lines[start + 2:start + 4]]


@pytest.mark.slow
def test_sweep_ends_with_its_table_and_records_the_default_baseline(launched_twice):
    _, frame, stdout, _ = launched_twice
    parent = frame[frame["tag:sr_ablate.role"] == "sweep"].iloc[0]
    children = frame[frame["tag:sr_ablate.role"] != "sweep"]
    assert baseline_of(None, [parent["tag:sr_ablate.sweep"]]) == {"model.blocks": 16}
    assert "model.blocks=1,2" in parent["tag:sr_ablate.sweep"]
    job_lines = [line for line in stdout.splitlines() if RUN_LINE.match(line)]
    assert len(job_lines) == 2 and not any("look next" in line for line in job_lines)
    rows = _table(stdout)
    by_blocks = {c["model.blocks"]: c for _, c in children.iterrows()}
    for row, blocks in zip(rows, ("1", "2")):
        run = by_blocks[blocks]
        assert row == [f"model.blocks={blocks}", "ran", "val", f"{run['val/psnr']:.2f}",
                       f"{run['val/psnr'] - run['val/bicubic_psnr']:+.2f}", run["run_id"]]
    assert stdout.rstrip().endswith(f"sr-ablate report {parent['tag:sr_ablate.sweep_id']}")


@pytest.mark.slow
def test_a_sweep_launched_again_lists_the_runs_it_reused(launched_twice):
    uri, frame, first, second = launched_twice
    parents = frame[frame["tag:sr_ablate.role"] == "sweep"]
    children = frame[frame["tag:sr_ablate.role"] != "sweep"]
    assert len(parents) == 2 and len(children) == 2  # nothing ran again
    assert pd.isna(parents.iloc[0]["tag:sr_ablate.reused_run_ids"])  # the first reused none
    # the second lists the two runs the first launch made (found by their parent run): each
    # once. The order is the order the jobs' outcome files are read in, not the job order.
    made = {c["model.blocks"]: c["run_id"] for _, c in children.iterrows()
            if c["tag:mlflow.parentRunId"] == parents.iloc[0]["run_id"]}
    assert sorted(made) == ["1", "2"]
    reused = parents.iloc[1]["tag:sr_ablate.reused_run_ids"].split(" ")
    assert len(reused) == 2 and set(reused) == {made["1"], made["2"]}
    again = _table(second)
    assert [r[:2] for r in again] == [["model.blocks=1", "skipped-reused"],
                                      ["model.blocks=2", "skipped-reused"]]
    # the reused runs' own PSNR, Δ and ids, fetched from MLflow
    assert [r[2:6] for r in again] == [r[2:6] for r in _table(first)]
    assert "tag:sr_ablate.reused_run_ids" not in tracking.runs_frame(uri).columns
