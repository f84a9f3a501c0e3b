"""Reports from real runs in a real MLflow store: seeds are repeats, not a design factor."""
from __future__ import annotations

import pytest

from conftest import TINY
from sr_ablate import tracking
from sr_ablate.report import factors, results_table
from sr_ablate.run import run


def test_seeds_are_pooled_as_repeats(store, compose, tmp_path):
    tiny = [a for a in TINY if not a.startswith("model.blocks")] + ["tracking.checkpoint=false"]
    for blocks in (1, 2):
        for seed in (0, 1):
            run(compose([*tiny, f"model.blocks={blocks}", f"seed={seed}"]), cwd=str(tmp_path))
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
