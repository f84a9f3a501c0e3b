"""``sr-ablate upscale`` (``python -m sr_ablate upscale``): apply a trained model to your
own pictures, folders of pictures and videos.

    sr-ablate upscale model=<run id | runs:/<id> | models:/<name>@<alias> |
                             models:/<name>/<version> | path/to/final.pt | file.onnx>
                      input=<image | folder | video> output=<file | folder | video>

Scale, colour mode and architecture come from the run (an .onnx file from ``sr-ablate
export`` runs with onnxruntime instead of torch). A Y-channel model upscales the luma;
the chroma is the bicubic upscale (as SR papers show results); gray stays gray; alpha is
upscaled bicubically; EXIF orientation is applied; the output's extension picks its format.

Options (key=value):
  scale=S           refuse a model trained for another scale (default: the model's)
  tile=auto|0|N     auto: tiles only when the whole image would not fit in memory (the
                    same output to float rounding: about 1 pixel value in 100,000 may land
                    one level apart); 0: whole image; N: tiles of N input pixels
  overlap=N         context per tile side (default: the model's measured receptive radius)
  precision=fp32|bf16|fp16   fp16 needs CUDA (default fp32)
  device=auto|cpu|cuda       auto: CUDA when there is one (default)
  overwrite=false   an existing output is never replaced unless true
  batch=auto|N      video frames per forward pass (auto: up to 8, fewer for large frames)
  progress=true     progress bar for folders and video
  tracking.uri=...  the MLflow store of run ids and models:/ names (default:
                    $MLFLOW_TRACKING_URI, else sqlite:///$PWD/mlflow.db)

A folder: every image in it (not its subfolders) goes to the output folder under the same
name; an unreadable file gets one line and the rest go on (exit 1 if any failed).
A video (.mp4 .mkv .mov .avi .webm .m4v; needs the video extra: pip install
'sr_ablate[video]'): decoded, upscaled in batches, encoded as H.264 at the same frame rate,
audio copied where the container allows; prints frames per second, ms per frame and seconds
per 30 frames.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from sr_ablate import UserError
from sr_ablate.cli.args import key_values, run
from sr_ablate.data.images import IMAGE_SUFFIXES
from sr_ablate.inference import files, video
from sr_ablate.inference.trained import check_scale
from sr_ablate.inference.upscale import check_precision, choose_tile, upscale_array

KEYS = {"model": None, "input": None, "output": None, "scale": None, "tile": "auto",
        "overlap": None, "precision": "fp32", "device": "auto", "overwrite": "false",
        "batch": "auto", "progress": "true", "tracking.uri": None}
EXAMPLE = "model=<run id> input=photo.png output=photo_x2.png"


def parse(argv: list[str]) -> dict:
    """key=value arguments -> {key: str}, defaults filled in; UserError for an unknown key or
    a missing one."""
    args = {**KEYS, **key_values(argv, KEYS, "upscale", EXAMPLE)}
    for key in ("input", "output"):
        if not args[key]:
            raise UserError(f"say {key}=...; e.g. sr-ablate upscale {EXAMPLE}")
    return args


def _flag(args: dict, key: str) -> bool:
    value = args[key].lower()
    if value not in ("true", "false"):
        raise UserError(f"{key}={args[key]} is not true or false")
    return value == "true"


def _int(args: dict, key: str, low: int) -> int | None:
    if args[key] in (None, "auto"):
        return None
    try:
        value = int(args[key])
    except ValueError:
        value = low - 1
    if value < low:
        raise UserError(f"{key}={args[key]} is not a whole number >= {low}")
    return value


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda but torch sees no CUDA device here; use device=cpu")
    if name not in ("cpu", "cuda"):
        raise UserError(f"device={name} is not auto, cpu or cuda")
    return torch.device(name)


def options(args: dict) -> dict:
    """The checked options, before anything is loaded or read."""
    device = _device(args["device"])
    check_precision(args["precision"], device)
    scale = None
    if args["scale"] is not None:
        try:
            scale = float(args["scale"])
        except ValueError:
            raise UserError(f"scale={args['scale']} is not a number") from None
    return {"device": device, "precision": args["precision"], "scale": scale,
            "tile": _int(args, "tile", 0), "overlap": _int(args, "overlap", 0),
            "batch": _int(args, "batch", 1), "overwrite": _flag(args, "overwrite"),
            "progress": _flag(args, "progress")}


def main(argv: list[str] | None = None) -> int:
    return run(__doc__, argv, lambda a: _upscale(parse(a)))


def _upscale(args: dict) -> int:
    opt = options(args)
    src, dst = Path(args["input"]).expanduser(), Path(args["output"]).expanduser()
    if not src.exists():
        raise UserError(f"input {src} does not exist; give an image, a folder of images or a "
                        "video")
    kind = "folder" if src.is_dir() else "video" if video.is_video(src) else "image"
    if kind == "folder":
        if dst.exists() and not dst.is_dir():
            raise UserError(f"output {dst} is a file; for a folder input give an output folder")
        files.writable_folder(dst if dst.exists() else dst.parent)  # a new one is made in it
    elif kind == "image":
        files.image_format(dst)
        if dst.exists() and not opt["overwrite"]:
            raise UserError(f"{dst} exists; pass overwrite=true to replace it")
        files.writable_folder(dst.parent)
    trained = _load(args, opt)
    if kind == "folder":
        dst.mkdir(exist_ok=True)  # once the model loaded: a failed start leaves no folder
    if kind == "video":
        stats = video.upscale_video(trained, src, dst, batch=opt["batch"], tile=opt["tile"],
                                    precision=opt["precision"], progress=opt["progress"],
                                    overwrite=opt["overwrite"])
        print(f"{dst}: {stats['frames']} frames {stats['width']}x{stats['height']} -> "
              f"{stats['out_width']}x{stats['out_height']} at {stats['rate']:.3g} frames/s "
              f"(x{trained.scale:g}, {trained.color} model) in {stats['seconds']:.2f} s: "
              f"{stats['fps']:.2f} frames/s processed, {stats['ms_per_frame']:.1f} ms per "
              f"frame, {stats['s_per_30_frames']:.2f} s per 30 frames")
        return 0
    if kind == "image":
        print(_one(trained, src, dst, opt))
        return 0
    return _folder(trained, src, dst, opt)


def _load(args: dict, opt: dict):
    # MLflow (seconds to import) only once the arguments are known to be good
    from sr_ablate import tracking
    trained = tracking.load_trained(args["model"], tracking.store_uri(args["tracking.uri"]))
    check_scale(trained, opt["scale"])
    return trained.to(opt["device"])


def _one(trained, src: Path, dst: Path, opt: dict) -> str:
    """Upscale one file; returns the line that says what was done."""
    img = files.read_picture(src)
    t0 = time.perf_counter()
    tile = (choose_tile(trained, *img.shape[:2], overlap=opt["overlap"]) if opt["tile"] is None
            else opt["tile"])
    out = upscale_array(trained, img, tile, opt["overlap"], opt["precision"])
    seconds = time.perf_counter() - t0
    note = files.write_picture(out, dst, opt["overwrite"])
    how = f"in tiles of {tile} px" if tile else "whole"
    line = (f"{dst}: {img.shape[1]}x{img.shape[0]} -> {out.shape[1]}x{out.shape[0]} "
            f"(x{trained.scale:g}, {trained.color} model, {how}) in {seconds:.2f} s")
    return line + (f"; {note}" if note else "")


def _folder(trained, src: Path, dst: Path, opt: dict) -> int:
    names = sorted(p for p in src.iterdir() if p.is_file() and not p.name.startswith("."))
    images = [p for p in names if p.suffix.lower() in IMAGE_SUFFIXES]
    if not images:
        raise UserError(f"{src} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    done = skipped = failed = 0
    bar = tqdm(images, unit="img", disable=not opt["progress"], file=sys.stderr)
    for path in bar:
        out = dst / path.name
        if out.exists() and not opt["overwrite"]:
            tqdm.write(f"{out}: exists, skipped (overwrite=true to replace)")
            skipped += 1
            continue
        try:
            tqdm.write(_one(trained, path, out, opt))
            done += 1
        except UserError as e:
            tqdm.write(f"error: {e}", file=sys.stderr)
            failed += 1
    print(f"{dst}: {done} upscaled, {skipped} skipped, {failed} failed of {len(images)} "
          f"images (x{trained.scale:g}, {trained.color} model from {trained.source})")
    return 1 if failed else 0
