"""Pictures on disk for ``upscale``: decoded as the camera meant them (EXIF orientation
applied), written by the output's extension, atomically (a temporary name, then a rename: an
interrupted write never leaves a partial file under the final name)."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from sr_ablate import UserError
from sr_ablate.data.images import IMAGE_SUFFIXES, not_8bit


def read_picture(path: Path) -> np.ndarray:
    """An 8-bit image file as uint8 (H, W) gray, (H, W, 2) gray + alpha, (H, W, 3) RGB or
    (H, W, 4) RGBA, turned upright by its EXIF orientation. Palette images become RGB(A),
    CMYK RGB. UserError (one line) for anything else."""
    try:
        with Image.open(path) as im:
            deep = not_8bit(im)
            if deep:
                raise UserError(f"{path} is a {deep} image; upscale reads 8-bit images only: "
                                "convert it to 8-bit first")
            im = ImageOps.exif_transpose(im)
            if im.mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif im.mode == "1":
                im = im.convert("L")
            elif im.mode not in ("L", "LA", "RGB", "RGBA"):
                im = im.convert("RGBA" if "A" in im.mode else "RGB")
            return np.asarray(im).copy()
    except FileNotFoundError:
        raise UserError(f"{path} does not exist; give an image, a folder of images or a "
                        "video") from None
    except PermissionError:
        raise UserError(f"{path} cannot be read (permission denied); chmod a+r it") from None
    except Image.DecompressionBombError:
        raise UserError(f"{path} has more pixels than Pillow's decompression-bomb limit; "
                        "crop it first") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise UserError(f"{path} is not a readable image ({e.__class__.__name__}); give a "
                        "PNG, JPEG, BMP, TIFF or WebP file (or a video)") from None


def image_format(path: Path) -> str:
    """Pillow's format for the output's extension; UserError for one it cannot write."""
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if path.suffix.lower() not in IMAGE_SUFFIXES or fmt is None:
        raise UserError(f"cannot tell an image format from {path.name!r}; end the output "
                        "with .png, .jpg, .bmp, .tif or .webp")
    return fmt


def writable_folder(folder: Path) -> None:
    """UserError (one line) unless files can be created in ``folder``."""
    if not folder.is_dir():
        raise UserError(f"output folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"output folder {folder} is not writable; choose another output or "
                        "chmod u+w it")


def write_picture(img: np.ndarray, path: Path, overwrite: bool = False) -> str | None:
    """Save uint8 ``img`` (as ``read_picture`` gives) to ``path`` in the format of its
    extension, through a temporary file in the same folder. JPEG has no alpha: it is dropped,
    and the returned note says so (else None)."""
    fmt = image_format(path)
    if path.exists() and not overwrite:
        raise UserError(f"{path} exists; pass overwrite=true to replace it")
    writable_folder(path.parent)
    note = None
    if fmt == "JPEG" and img.ndim == 3 and img.shape[-1] in (2, 4):
        img, note = img[..., :-1], f"{path.name}: JPEG has no alpha channel; alpha dropped"
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    tmp = path.with_name(f".{path.name}.partial")
    try:
        Image.fromarray(img).save(tmp, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
        os.replace(tmp, path)
    except OSError as e:
        fix = "free disk space" if e.errno == errno.ENOSPC else "choose another output"
        raise UserError(f"cannot write {path} ({e.strerror or e}); {fix}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return note
