"""Data: HR images -> modcrop -> MATLAB bicubic LR -> random aligned patch pairs.

Images are held as uint8 tensors (C, H, W); batches are float32 in [0, 1] with keys
``lq`` (B, C, p, p) and ``gt`` (B, C, p*s, p*s).
"""
from __future__ import annotations

import importlib.util
import math
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from sr_ablate import UserError
from sr_ablate.degrade import bicubic_up, downscale, modcrop
from sr_ablate.download import data_root
from sr_ablate.metrics import rgb_to_y

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}

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
# `python -m sr_ablate.download NAME` puts them there.
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
                        f"{' or '.join(BENCHMARKS[key])}); run `python -m sr_ablate.download "
                        f"{key}` or set eval.root=<folder holding it>")
    path = Path(name).expanduser()
    if not path.is_dir():
        raise UserError(f"eval set {name!r} is neither a known set ({', '.join(BENCHMARKS)}) "
                        "nor a folder; fix the name in eval.sets")
    # MLflow metric keys allow letters, digits, _ - . / and spaces
    return re.sub(r"[^A-Za-z0-9_.-]", "_", path.resolve().name), list_images(path, f"eval set {name}")


@dataclass
class Pair:
    """One HR image ``gt`` (C, H, W) uint8 and its model input ``lq``: the LR (C, H/s, W/s)
    or, for pre-upsampling models, the bicubic-enlarged LR (C, H, W); uint8 or float."""
    name: str
    gt: torch.Tensor
    lq: torch.Tensor
    scale: float = 2


def builtin_dir() -> Path:
    spec = importlib.util.find_spec("skimage")  # find the wheel's data without importing it
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the built-in images need scikit-image: pip install scikit-image, "
                        "or use data=folder data.root=<folder of HR images>")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


_decoded: dict[tuple, torch.Tensor] = {}


def _not_8bit(im: Image.Image) -> str | None:
    """'16-bit RGB', 'float gray' ... for a file (opened, not yet loaded) whose samples are
    not 8-bit, else None. Pillow opens 16-bit RGB(A) PNG, TIFF and PPM files as 8-bit RGB(A),
    dropping the low byte without a word; the undecoded tiles still say so."""
    if im.mode == "F":
        return "float gray"
    for tile in im.tile:
        args = tile[3] if isinstance(tile[3], tuple) else (tile[3],)
        raw = args[0] if args and isinstance(args[0], str) else ""
        if re.search(r";16[BLN]", raw) or (tile[0] == "ppm" and len(args) > 1 and args[1] > 255):
            return "16-bit " + ("gray" if raw.startswith("I") else raw.split(";")[0])
    if im.mode == "I" or im.mode.startswith("I;16"):
        return f"{16 if '16' in im.mode else 32}-bit gray"
    return None


def read_image(path: Path, color: str = "rgb") -> torch.Tensor:
    """Decode an 8-bit image file to uint8 (C, H, W): C = 3 for ``rgb``, 1 for ``y``.

    Gray files give 3 equal channels in ``rgb``; ``y`` is BT.601 luma rounded to uint8
    (MATLAB ``rgb2ycbcr`` on uint8), gray files keep their gray values; ``native`` keeps
    gray files 1-channel and colour files RGB (for evaluation). Alpha is dropped (not
    composited), palette and CMYK files become RGB. 16-bit, 32-bit and float files, files
    over Pillow's decompression-bomb limit and unreadable files raise UserError (one line).
    Cached per process.
    """
    path = Path(path)
    try:
        key = (str(path), path.stat().st_mtime_ns, color)
        if key in _decoded:
            return _decoded[key]
        with Image.open(path) as im:
            deep = _not_8bit(im)
            if deep:
                raise UserError(f"{path} is a {deep} image and sr_ablate reads 8-bit images "
                                "only; convert it to 8-bit RGB or gray, or remove it from the "
                                "folder")
            im.load()
            im = im.convert("L" if im.mode in ("L", "LA", "1") else "RGB")
            data = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
            img = data.view(im.height, im.width, -1).permute(2, 0, 1).contiguous()
    except PermissionError:
        raise UserError(f"{path} cannot be read (permission denied); make it readable "
                        f"(chmod a+r {path}) or remove it from the folder") from None
    except Image.DecompressionBombError:  # Pillow's limit is kept: a tiny file can hold 10 Gpx
        raise UserError(f"{path} has over {2 * Image.MAX_IMAGE_PIXELS} pixels, Pillow's "
                        "decompression-bomb limit; crop or downscale it, or remove it from the "
                        "folder") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise UserError(f"{path} is not a readable image ({e.__class__.__name__}); "
                        "remove it from the folder or replace it with a valid image") from None
    if color == "y":
        img = img if img.shape[0] == 1 else rgb_to_y(img).round().to(torch.uint8)
    elif color == "rgb" and img.shape[0] == 1:
        img = img.expand(3, -1, -1).contiguous()
    _decoded[key] = img
    return img


def list_images(root: str | Path, what: str = "data.root") -> list[Path]:
    """Image files directly in ``root``, sorted by name; UserError if there are none."""
    if root is None or str(root).strip() == "":
        raise UserError(f"{what} is not set; pass {what}=<folder of HR images>")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"{what}={root} is not a folder; pass {what}=<folder of HR images>")
    try:
        files = sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
    except PermissionError:
        raise UserError(f"{what}={root} cannot be read (permission denied); make it readable "
                        f"(chmod a+rx {root}) or point {what} at another folder") from None
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    if not images:
        raise UserError(f"{what}={root} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))}); "
                        f"point {what} at a folder of HR images")
    return images


def load_images(paths: list[Path], scale: float, color: str, min_size: float = 0,
                why: str = "", fix: str = "remove the image") -> list[tuple[str, torch.Tensor]]:
    """(name, HR uint8 (C, H, W)) per file, modcropped for ``scale``.

    ``min_size``: smallest HR side allowed; smaller images are refused (UserError naming the
    file and its size), ``why`` says what needs that size and ``fix`` what to do.
    """
    images = []
    for p in paths:
        img = read_image(p, color)
        gt = modcrop(img, scale)
        h, w = gt.shape[-2:]
        if h < min_size or w < min_size:
            need = math.ceil(min_size)
            was = "" if gt.shape == img.shape else f" ({img.shape[-1]}x{img.shape[-2]} before)"
            raise UserError(f"{p} is {w}x{h} after modcrop{was}, smaller than the {need}x{need} "
                            f"needed for {why}; {fix}")
        images.append((p.stem, gt))
    return images


def make_pairs(images: list[tuple[str, torch.Tensor]], scale: float, kernel: str = "bicubic",
               quantize: bool = True, upsampled: bool = False,
               device: str | torch.device = "cpu") -> list[Pair]:
    """Degrade each HR image once (MATLAB ``imresize`` with ``kernel``, design notes section 2).

    ``upsampled``: for pre-upsampling models (SRCNN, VDSR) the input is the LR image enlarged
    back to HR size with MATLAB bicubic, computed on the whole image (no patch-border effects).
    ``device``: where the resizing runs (the training GPU: a large folder degrades in seconds);
    the pairs are kept on the CPU, where patches are cut.
    """
    pairs = []
    for name, gt in images:
        lq = downscale(gt.to(device), scale, kernel, quantize)
        if upsampled:
            lq = bicubic_up(lq, scale).clamp(0, 255)
            lq = lq.round() if quantize else lq
        lq = lq.to(torch.uint8) if quantize else lq.float()
        pairs.append(Pair(name, gt, lq.cpu(), scale))
    return pairs


_pairs: dict[tuple, list[Pair]] = {}


def memo(cache: dict, key: tuple, make, keep: int = 8):
    """``cache[key]``, made by ``make()`` on a miss. Images are decoded and degraded once
    per process, so the next jobs of a sweep start without that cost; at most ``keep``
    entries (a sweep over scales or degradations holds a few)."""
    if key not in cache:
        if len(cache) >= keep:
            cache.pop(next(iter(cache)))
        cache[key] = make()
    return cache[key]


def files_key(paths: list[Path]) -> tuple:
    """Identifies a list of files as they are now (a changed file is a new key)."""
    return tuple((str(p), p.stat().st_mtime_ns) for p in paths)


def build(data_cfg, *, scales: list[float], patch_size: int, color: str = "rgb",
          kernel: str = "bicubic", quantize: bool = True, upsampled: bool = False,
          device: str | torch.device = "cpu"):
    """Training pairs per scale {scale: [Pair]} and the validation files (evaluation loads
    them, per scale), from ``data_cfg`` (the ``data`` config node). ``color``: rgb | y for
    the training images."""
    if data_cfg.name == "builtin":
        d = builtin_dir()
        train, val = [d / n for n in BUILTIN_TRAIN], [d / n for n in BUILTIN_VAL]
    else:
        train = list_images(data_cfg.root, "data.root")
        if data_cfg.val_root:
            val = list_images(data_cfg.val_root, "data.val_root")
        else:
            if len(train) < 2:
                raise UserError(f"data.root={data_cfg.root} has one image: need at least 2 "
                                "(one held out for validation) or set data.val_root")
            n = max(1, min(data_cfg.val_count, len(train) // 2))
            train, val = train[:-n], train[-n:]
    pairs = {}
    for scale in scales:
        if (patch_size * scale) % 1:
            raise UserError(f"trainer.patch_size={patch_size} x scale={scale} is not a whole "
                            "number of HR pixels; use an even trainer.patch_size")
        hr = load_images(train, scale, color, min_size=int(patch_size * scale),
                         why=f"a training patch (trainer.patch_size={patch_size} x "
                             f"scale={scale:g})", fix="lower trainer.patch_size or remove the "
                             "image")
        key = (files_key(train), scale, color, kernel, quantize, upsampled)
        pairs[scale] = memo(_pairs, key, lambda: make_pairs(hr, scale, kernel, quantize,
                                                            upsampled, device))
    return pairs, val


def load_eval_images(paths: list[Path], scale: int) -> list[tuple[str, torch.Tensor]]:
    """Evaluation images: native channels (gray stays gray), modcropped, big enough for SSIM."""
    # SSIM's 11x11 window must fit after `scale` pixels are shaved from each edge.
    return load_images(paths, scale, "native", min_size=11 + 2 * scale,
                       why=f"evaluation (11x11 SSIM window + a {scale:g}-pixel border each "
                           "side)", fix="remove the image from the set or use a larger one")


def batches(pairs: dict[float, list[Pair]], *, patch_size: int, batch_size: int, seed: int,
            augment: bool = True, device: str | torch.device = "cpu") -> "Batches":
    """Endless random aligned patch pairs with flips/rot90, float32 in [0, 1].

    Each batch draws one scale from ``pairs`` (multi-scale training, VDSR) and yields
    {"lq": (B, C, p, p) or, for pre-upsampled pairs, (B, C, p*s, p*s), "gt": (B, C, p*s, p*s),
    "scale": s} on ``device``; p = ``patch_size`` LR pixels. Deterministic for a seed; the
    iterator's ``state_dict()`` / ``load_state_dict()`` save and restore its position.
    Random numbers are drawn once per batch and flips applied once per group of patches that
    share them (per-patch draws and flips cost an ESPCN step 3% of its time, now 2%).
    """
    return Batches(pairs, patch_size, batch_size, seed, augment, torch.device(device))


class Batches:
    """The iterator ``batches`` returns; its position is its generator's state."""

    def __init__(self, pairs, patch_size, batch_size, seed, augment, device):
        self.pairs, self.patch_size, self.batch_size = pairs, patch_size, batch_size
        self.augment, self.device = augment, device
        self.g = torch.Generator().manual_seed(seed)

    def state_dict(self) -> dict:
        return {"rng": self.g.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.g.set_state(state["rng"])

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        g, pairs, patch_size, batch_size = self.g, self.pairs, self.patch_size, self.batch_size
        augment, device = self.augment, self.device
        pin = device.type == "cuda"  # page-locked host memory: the copy overlaps the GPU's work
        scales = list(pairs)
        scale = scales[torch.randint(len(scales), (1,), generator=g).item()] if len(scales) > 1 \
            else scales[0]
        group = pairs[scale]
        ps = int(patch_size * scale)
        # Patch corners on a grid where LR and HR pixels align (every 2 LR px for x1.5).
        step = Fraction(scale).limit_denominator(64).denominator
        hr_step = int(step * scale)
        which = torch.randint(len(group), (batch_size,), generator=g).tolist()
        corners = torch.rand(batch_size, 2, generator=g, dtype=torch.float64).tolist()
        flips = (torch.randint(2, (batch_size, 3), generator=g) if augment
                 else torch.zeros(batch_size, 3, dtype=torch.long)).tolist()
        groups: dict[tuple, tuple[list, list]] = {}  # (hflip, vflip) -> (lq, gt) patches
        for i, (u, v), (hflip, vflip, rot) in zip(which, corners, flips):
            pair = group[i]
            h, w = pair.gt.shape[-2:]
            y = int(u * ((h - ps) // hr_step + 1))
            x = int(v * ((w - ps) // hr_step + 1))
            y_hr, x_hr = y * hr_step, x * hr_step
            gt = pair.gt[:, y_hr:y_hr + ps, x_hr:x_hr + ps]
            if pair.lq.shape[-1] == pair.gt.shape[-1]:  # pre-upsampled input: same window
                lq = pair.lq[:, y_hr:y_hr + ps, x_hr:x_hr + ps]
            else:
                lq = pair.lq[:, y * step:y * step + patch_size, x * step:x * step + patch_size]
            if rot:  # transpose (with the flips: all 8 rotations/reflections): a view
                lq, gt = lq.transpose(-1, -2), gt.transpose(-1, -2)
            lqs, gts = groups.setdefault((hflip, vflip), ([], []))
            lqs.append(lq)
            gts.append(gt)
        # Flips once per group of patches that share them: far cheaper than per patch.
        # The batch comes out ordered by group, which changes nothing for training.
        out = []
        for (hflip, vflip), pieces in groups.items():
            dims = [d for d, f in ((-1, hflip), (-2, vflip)) if f]
            out.append([torch.stack(p).flip(dims) if dims else torch.stack(p) for p in pieces])
        lq = torch.cat([o[0] for o in out]) if len(out) > 1 else out[0][0]
        gt = torch.cat([o[1] for o in out]) if len(out) > 1 else out[0][1]
        if pin:
            lq, gt = lq.pin_memory(), gt.pin_memory()
        # uint8 crosses to the device (4x fewer bytes than float32), converted there
        lq = lq.to(device, non_blocking=True).float().div_(255)
        gt = gt.to(device, non_blocking=True).float().div_(255)
        return {"lq": lq, "gt": gt, "scale": scale}
