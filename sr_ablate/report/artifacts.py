"""What the report fetches besides the runs table: per-image metrics, metric histories and
the comparison crops each run logged, from a ``report.source.Source`` (the MLflow store or an
export folder)."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from sr_ablate.report.source import Source


def fetch_per_image(source: Source, runs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """``per_image.csv`` of every FINISHED run (set, image, psnr, ssim...), by run id."""
    out = {}
    for run_id in runs.loc[runs["status"] == "FINISHED", "run_id"]:
        rows = source.per_image(run_id)
        if rows is not None:
            out[run_id] = rows
    return out


def histories(source: Source, run_ids, key: str) -> list[dict[int, float]]:
    """{step: value} of metric ``key`` for each run in ``run_ids``."""
    return [dict(source.metric_history(r, key)) for r in run_ids]


def comparisons(source: Source, runs: list[pd.DataFrame], labels: list[str]
                ) -> list[tuple[str, pd.Series, np.ndarray]]:
    """(label, the variant's first run (its row of the runs frame), that run's
    ``comparison.png`` as an array) for each variant that has one."""
    found = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, r) in enumerate(zip(labels, runs)):
            if r.empty:
                continue
            p = source.artifact(r["run_id"].iloc[0], "comparison.png", Path(tmp) / str(i))
            if p is not None:
                found.append((label, r.iloc[0], np.asarray(Image.open(p))))
    return found
