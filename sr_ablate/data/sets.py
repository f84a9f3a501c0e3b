"""Where images come from: the built-in photographs, a user's folder, the standard sets.

``training_files`` picks the training and validation files of the ``data`` config node;
``eval_set_paths`` resolves an ``eval.sets`` entry (a standard set's name or a folder).
"""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from sr_ablate import UserError
from sr_ablate.data.download import data_root
from sr_ablate.data.images import list_images

# Real photographs shipped inside scikit-image's wheel (skimage/data): an offline default.
BUILTIN_TRAIN = ["astronaut.png", "motorcycle_left.png", "motorcycle_right.png", "rocket.jpg",
                 "hubble_deep_field.jpg", "ihc.png"]
# Validation: every other natural photograph of the wheel, none of them a training image, so
# that a paired test over images can reach p < 0.05 (n images: smallest p = 2/2^n; 8 -> 0.008).
# Left out: drawings and synthetic images (color, logo, phantom, chessboard, horse), microscopy
# and medical scans (cell, retina, microaneurysms), text pages and the motion-blurred clock.
BUILTIN_VAL = ["chelsea.png", "coffee.png", "camera.png", "coins.png", "moon.png", "brick.png",
               "grass.png", "gravel.png"]

# Standard evaluation sets by name -> folder names under the data root (first found wins);
# `python -m sr_ablate download NAME` puts them there.
BENCHMARKS = {"set5": ["Set5"], "set14": ["Set14"], "b100": ["B100", "BSD100"],
              "urban100": ["Urban100"], "div2k_valid": ["DIV2K_valid_HR"]}


def eval_set_paths(name: str, root: str | None = None) -> tuple[str, list[Path]]:
    """(metric prefix, image files) of an evaluation set given by name or folder path."""
    key = name.lower()
    if key in BENCHMARKS:
        base = data_root(root)
        for folder in BENCHMARKS[key]:
            if (base / folder).is_dir():
                return key, list_images(base / folder, f"eval set {name}")
        raise UserError(f"eval set {name!r} not found in {base} (looked for "
                        f"{' or '.join(BENCHMARKS[key])}); run `python -m sr_ablate download "
                        f"{key}` or set eval.root=<folder holding it>")
    path = Path(name).expanduser()
    if not path.is_dir():
        raise UserError(f"eval set {name!r} is neither a known set ({', '.join(BENCHMARKS)}) "
                        "nor a folder; fix the name in eval.sets")
    # MLflow metric keys allow letters, digits, _ - . / and spaces
    prefix = re.sub(r"[^A-Za-z0-9_.-]", "_", path.resolve().name)
    return prefix, list_images(path, f"eval set {name}")


def builtin_dir() -> Path:
    spec = importlib.util.find_spec("skimage")  # find the wheel's data without importing it
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the built-in images need scikit-image: pip install scikit-image, "
                        "or use data=folder data.root=<folder of HR images>")
    return Path(list(spec.submodule_search_locations)[0]) / "data"



def training_files(data_cfg) -> tuple[list[Path], list[Path]]:
    """(training files, validation files) of the ``data`` config node: the built-in
    photographs, or ``data.root`` with ``data.val_root`` or its last ``data.val_count``
    files held out."""
    if data_cfg.name == "builtin":
        d = builtin_dir()
        return [d / n for n in BUILTIN_TRAIN], [d / n for n in BUILTIN_VAL]
    train = list_images(data_cfg.root, "data.root")
    if data_cfg.val_root:
        return train, list_images(data_cfg.val_root, "data.val_root")
    if len(train) < 2:
        raise UserError(f"data.root={data_cfg.root} has one image: need at least 2 "
                        "(one held out for validation) or set data.val_root")
    n = max(1, min(data_cfg.val_count, len(train) // 2))
    return train[:-n], train[-n:]


def check_present(cfg) -> None:
    """Every image folder a training run of ``cfg`` reads is on this machine: its training
    data and each evaluation set, final ones included. Checked before a run or a sweep starts,
    so a missing set costs one line instead of a failed job per variant. UserError if not."""
    training_files(cfg.data)
    for name in [*cfg.eval.sets, *cfg.eval.final_sets]:
        if name != "val":
            eval_set_paths(name, cfg.eval.root)
