"""``python -m sr_ablate export``: a trained run's network as an ONNX file, checked.

    python -m sr_ablate export model=<run id | runs:/<id> | models:/<name>@<alias> | final.pt> \
        output=<file>.onnx [format=onnx] [check=<image file>] [opset=<n>] [tracking.uri=<uri>]

The file maps ``lr`` (batch, C, height, width) float32 in [0, 1] to ``sr`` (batch, C,
height*s, width*s), any batch and size (a Y model: C = 1, the BT.601 luma; SRCNN and VDSR:
the bicubic-enlarged image in, the same size out; ESPCN x1.5: even height and width). Before
it is written, onnxruntime runs it at two picture sizes against torch on a real photograph
(``check=`` yours; default a built-in one); one line reports the file, its size, the largest
difference and the sizes. A difference over 1e-4 writes no file and exits 1.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from sr_ablate import UserError
from sr_ablate.cli.args import key_values, run
from sr_ablate.data import builtin_dir, read_image

KEYS = ("model", "format", "output", "check", "opset", "tracking.uri")
FORMATS = ("onnx",)
TOLERANCE = 1e-4  # of [0, 1]: 0.026 of one 8-bit level
CHECK_SIDES = ((96, 144), (64, 88))  # LR crops (height, width): two sizes, two aspect ratios
DEFAULT_CHECK = "chelsea.png"  # a built-in photograph (300 x 451), not a training image


class ParityError(Exception):
    """onnxruntime and torch disagree on the exported network (no file was written)."""


def parse(argv: list[str]) -> dict[str, str]:
    """key=value arguments -> {key: value}; UserError for anything else."""
    args = key_values(argv, KEYS, "export", "model=<run id> output=model.onnx")
    if args.setdefault("format", "onnx") not in FORMATS:
        raise UserError(f"format={args['format']} is not supported; use format=onnx")
    if not args.get("opset", "0").isdigit():
        raise UserError(f"opset={args['opset']} is not a whole number; give e.g. opset=18")
    return args


def check_output(value: str | None) -> Path:
    """The output path, once it ends with .onnx and its folder takes a new file."""
    if not value:
        raise UserError("say where to write the model: output=<file>.onnx")
    path = Path(value).expanduser()
    if path.suffix.lower() != ".onnx":
        raise UserError(f"output={value} does not end with .onnx; name the file <name>.onnx")
    folder = path.parent
    if not folder.is_dir():
        raise UserError(f"output folder {folder} does not exist (or is not a folder); create "
                        "it first or write elsewhere")
    if path.is_dir():
        raise UserError(f"output={value} is a folder; give a file name ending with .onnx")
    try:  # a real file, not os.access: root passes access() on read-only mounts too
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".sr_ablate-export-"):
            pass
    except OSError as e:
        raise UserError(f"output folder {folder} is not writable ({e.strerror}); write "
                        "elsewhere or fix its permissions") from None
    return path


def crops(image: np.ndarray, multiple: int) -> list[np.ndarray]:
    """Two centre crops of ``image`` (H, W, 3) of different sizes (CHECK_SIDES, or smaller
    for a small image), sides multiples of ``multiple``."""
    h, w = image.shape[:2]
    out = []
    for ch, cw in CHECK_SIDES:
        ch, cw = min(h, ch) // multiple * multiple, min(w, cw) // multiple * multiple
        if out and (ch, cw) == out[-1].shape[:2]:  # a small image: shrink the second crop
            ch, cw = ch - multiple, cw - multiple
        if ch < 1 or cw < 1:
            raise UserError(f"the check image is {h}x{w}, too small for two sizes; give "
                            f"check=<an image of at least {2 * multiple}x{2 * multiple}>")
        top, left = (h - ch) // 2, (w - cw) // 2
        out.append(image[top:top + ch, left:left + cw])
    return out


def export(args: dict[str, str]) -> str:
    """Export, check, then move into place; the report line. UserError on bad input,
    ParityError when onnxruntime and torch disagree."""
    from sr_ablate import tracking  # MLflow: seconds to import, once the arguments are good
    from sr_ablate.inference import onnx
    output = check_output(args.get("output"))
    check = Path(args["check"]) if args.get("check") else builtin_dir() / DEFAULT_CHECK
    if not check.is_file():
        raise UserError(f"check image {check} not found; give check=<an image file>")
    onnx.require()
    image = read_image(check, "rgb").permute(1, 2, 0).numpy()  # (H, W, 3) uint8
    trained = tracking.load_trained(args["model"], tracking.store_uri(args.get("tracking.uri")))
    pictures = crops(image, onnx.side_multiple(trained))
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=".sr_ablate-export-") as tmp:
        path = onnx.export_onnx(trained, Path(tmp) / output.name,
                                opset=int(args["opset"]) if args.get("opset") else None)
        session = onnx.ort_session(path)
        diff = max(onnx.parity(trained, path, p, session) for p in pictures)
        sizes = " and ".join(f"{p.shape[0]}x{p.shape[1]}" for p in pictures)
        if not diff <= TOLERANCE:  # NaN fails too
            raise ParityError(f"onnxruntime differs from torch by {diff:.2e} (> {TOLERANCE:g})"
                               f" on {check.name} at {sizes}; {output} was not written: the "
                               "export of an operator of this model is wrong, report it")
        os.replace(path, output)
    kb = output.stat().st_size / 1024
    return (f"wrote {output} ({kb:.1f} KB, {trained.source} x{trained.scale:g} "
            f"{trained.color}): max |onnxruntime - torch| = {diff:.1e} on {check.name} at "
            f"{sizes} (LR height x width; one file at both: dynamic shape)")


def main(argv: list[str] | None = None) -> int:
    return run(__doc__, argv, _main)


def _main(argv: list[str]) -> int:
    try:
        print(export(parse(argv)))
    except ParityError as e:  # no bad input: the exporter's fault, status 1
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
