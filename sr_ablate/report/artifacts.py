"""What the report fetches from MLflow besides the runs table: per-image metrics, metric
histories and the comparison crops each run logged."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from sr_ablate import tracking


def fetch_per_image(uri: str, runs: pd.DataFrame, tmp: Path) -> dict[str, pd.DataFrame]:
    """``per_image.csv`` of every FINISHED run (set, image, psnr, ssim...), by run id."""
    out = {}
    for run_id in runs.loc[runs["status"] == "FINISHED", "run_id"]:
        path = tracking.fetch_artifact(uri, run_id, "per_image.csv", tmp / run_id)
        if path is not None:
            out[run_id] = pd.read_csv(path)
    return out


def histories(uri: str, run_ids, key: str) -> list[dict[int, float]]:
    """{step: value} of metric ``key`` for each run in ``run_ids``."""
    return [dict(tracking.metric_history(uri, r, key)) for r in run_ids]


def comparisons(uri: str, runs: list[pd.DataFrame], labels: list[str]
                ) -> list[tuple[str, np.ndarray]]:
    """(label, ``comparison.png`` of the variant's first run as an array) for each variant
    that has one."""
    found = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, r) in enumerate(zip(labels, runs)):
            if r.empty:
                continue
            p = tracking.fetch_artifact(uri, r["run_id"].iloc[0], "comparison.png",
                                        Path(tmp) / str(i))
            if p is not None:
                found.append((label, np.asarray(Image.open(p))))
    return found
