"""Image files: listing a folder, decoding 8-bit images to uint8 tensors (C, H, W), and
refusing what cannot be used (16-bit, float, unreadable, too small) in one line each."""
from __future__ import annotations

import math
import re
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from sr_ablate import UserError
from sr_ablate.core.degrade import modcrop, to_uint8
from sr_ablate.core.metrics import rgb_to_y

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


_decoded: dict[tuple, torch.Tensor] = {}


def not_8bit(im: Image.Image) -> str | None:
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
            deep = not_8bit(im)
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
        img = img if img.shape[0] == 1 else to_uint8(rgb_to_y(img)).to(torch.uint8)
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
        kinds = ", ".join(sorted(IMAGE_SUFFIXES))
        raise UserError(f"{what}={root} holds no image files ({kinds}); "
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


def load_eval_images(paths: list[Path], scale: int) -> list[tuple[str, torch.Tensor]]:
    """Evaluation images: native channels (gray stays gray), modcropped, big enough for SSIM."""
    # SSIM's 11x11 window must fit after `scale` pixels are shaved from each edge.
    return load_images(paths, scale, "native", min_size=11 + 2 * scale,
                       why=f"evaluation (11x11 SSIM window + a {scale:g}-pixel border each "
                           "side)", fix="remove the image from the set or use a larger one")


