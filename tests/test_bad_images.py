"""Odd image files, each handled or refused with one line naming the problem and the fix:
real files written with Pillow (or byte by byte where Pillow cannot write them) in tmp_path."""
from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, cli
from PIL import Image

from sr_ablate import UserError, data
from sr_ablate.core.metrics import rgb_to_y


def photo(h: int = 24, w: int = 20) -> np.ndarray:
    """(h, w, 3) uint8 crop of a real photograph (scikit-image's astronaut)."""
    with Image.open(data.builtin_dir() / "astronaut.png") as im:
        return np.asarray(im.convert("RGB"))[100:100 + h, 200:200 + w].copy()


def write_png(path: Path, arr: np.ndarray, color_type: int, bit_depth: int = 8) -> Path:
    """A PNG written byte by byte (Pillow cannot write 16-bit colour): ``arr`` (h, w[, c]),
    color_type 0 gray, 2 RGB, 4 gray+alpha, 6 RGBA."""
    h, w = arr.shape[:2]
    rows = arr.reshape(h, -1).astype(">u2" if bit_depth == 16 else "u1")
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)  # filter type 0 on every row

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


def refused(path: Path, color: str = "rgb") -> str:
    with pytest.raises(UserError) as e:
        data.read_image(path, color)
    message = str(e.value)
    assert "\n" not in message and message.startswith(str(path)), message
    return message


def pixels(path: Path, color: str = "rgb") -> np.ndarray:
    return data.read_image(path, color).permute(1, 2, 0).numpy()


def test_16bit_gray_png_is_refused(tmp_path):
    path = tmp_path / "gray16.png"
    Image.fromarray(photo()[..., 0].astype(np.uint16) * 257).save(path)
    with Image.open(path) as im:
        assert im.mode == "I;16"
    assert "is a 16-bit gray image and sr_ablate reads 8-bit images only; convert it to 8-bit" \
        in refused(path)


def deep_file(tmp_path: Path, kind: str) -> Path:
    rgb16 = photo().astype(np.uint16) * 257 + 3  # low bytes that an 8-bit reading would lose
    if kind == "png-rgb":
        return write_png(tmp_path / "a.png", rgb16, 2, 16)
    if kind == "png-rgba":
        return write_png(tmp_path / "a.png", np.dstack([rgb16, rgb16[..., :1]]), 6, 16)
    if kind == "png-gray-alpha":
        return write_png(tmp_path / "a.png", np.dstack([rgb16[..., :1]] * 2), 4, 16)
    if kind == "skimage-png":  # a real 16-bit RGB PNG shipped in scikit-image's wheel
        return data.builtin_dir() / "chessboard_RGB.png"
    if kind == "ppm-rgb":
        path = tmp_path / "a.ppm"
        path.write_bytes(b"P6\n20 24\n65535\n" + rgb16.astype(">u2").tobytes())
        return path
    tifffile = pytest.importorskip("tifffile")
    tifffile.imwrite(tmp_path / "a.tif", rgb16, photometric="rgb")
    return tmp_path / "a.tif"


@pytest.mark.parametrize("kind,what", [("png-rgb", "16-bit RGB"), ("png-rgba", "16-bit RGBA"),
                                       ("png-gray-alpha", "16-bit LA"), ("ppm-rgb", "16-bit RGB"),
                                       ("tiff-rgb", "16-bit RGB"),
                                       ("skimage-png", "16-bit RGB")])
def test_16bit_colour_is_refused_not_cut_to_8_bits(tmp_path, kind, what):
    path = deep_file(tmp_path, kind)
    with Image.open(path) as im:  # why this matters: Pillow opens these as 8-bit, silently
        assert im.mode in ("RGB", "RGBA")
    message = refused(path)
    assert f"is a {what} image and sr_ablate reads 8-bit images only" in message
    assert "convert it to 8-bit RGB or gray, or remove it from the folder" in message


def test_rgba_png_drops_alpha(tmp_path):
    rgb = photo()
    alpha = np.arange(rgb.size // 3, dtype=np.uint8).reshape(rgb.shape[:2])  # 0..255 varying
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(tmp_path / "rgba.png")
    for color in ("rgb", "y", "native"):
        got = pixels(tmp_path / "rgba.png", color)
        np.testing.assert_array_equal(got, pixels(tmp_path / "rgb.png", color))
    np.testing.assert_array_equal(pixels(tmp_path / "rgba.png"), rgb)


@pytest.mark.parametrize("mode", ["L", "LA"])
def test_gray_png_gives_equal_channels_and_gray_y(tmp_path, mode):
    gray = photo()[..., 1]
    im = Image.fromarray(gray)
    if mode == "LA":
        im = Image.merge("LA", [im, Image.fromarray(255 - gray)])
    im.save(tmp_path / "g.png")
    rgb = pixels(tmp_path / "g.png", "rgb")
    assert rgb.shape == (*gray.shape, 3)
    for c in range(3):
        np.testing.assert_array_equal(rgb[..., c], gray)
    np.testing.assert_array_equal(pixels(tmp_path / "g.png", "y")[..., 0], gray)
    assert pixels(tmp_path / "g.png", "y").shape == (*gray.shape, 1)
    assert pixels(tmp_path / "g.png", "native").shape == (*gray.shape, 1)
    # a gray file's y is its gray values, not BT.601 luma of (g, g, g) (which is 16 + 219/255 g)
    assert not torch.equal(rgb_to_y(torch.from_numpy(rgb).permute(2, 0, 1)).round().byte()[0],
                           torch.from_numpy(gray))


@pytest.mark.parametrize("transparency", [False, True])
def test_palette_png_becomes_its_rgb_colours(tmp_path, transparency):
    rng = np.random.default_rng(0)
    palette = rng.integers(0, 256, (16, 3), dtype=np.uint8)
    index = rng.integers(0, 16, (24, 20), dtype=np.uint8)
    rgb = palette[index]
    im = Image.fromarray(index, "P")
    im.putpalette(palette.tobytes())
    im.save(tmp_path / "p.png", **({"transparency": 3} if transparency else {}))
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    with Image.open(tmp_path / "p.png") as check:
        assert check.mode == "P"
    np.testing.assert_array_equal(pixels(tmp_path / "p.png"), rgb)
    np.testing.assert_array_equal(pixels(tmp_path / "p.png", "y"),
                                  pixels(tmp_path / "rgb.png", "y"))


@pytest.mark.parametrize("dtype,what", [(np.float32, "float gray"), (np.int32, "32-bit gray")])
def test_float_and_32bit_tiff_are_refused(tmp_path, dtype, what):
    path = tmp_path / "depth.tif"
    Image.fromarray(photo()[..., 0].astype(dtype)).save(path)
    with Image.open(path) as im:
        assert im.mode == ("F" if dtype == np.float32 else "I")
    assert f"is a {what} image and sr_ablate reads 8-bit images only" in refused(path)


def deny(monkeypatch, path: Path, method: str) -> None:
    """Make ``path`` unreadable: chmod 000, or (as root, whom chmod does not stop) make the
    OS call on that one path raise PermissionError as it would for another user."""
    if os.geteuid() != 0:
        path.chmod(0)  # the test restores the mode
        return
    if method == "iterdir":
        real = Path.iterdir

        def iterdir(self):
            if self == path:
                raise PermissionError(13, "Permission denied", str(self))
            return real(self)
        monkeypatch.setattr(Path, "iterdir", iterdir)
    else:
        import builtins
        real_open = builtins.open

        def fake_open(file, *args, **kwargs):
            if isinstance(file, (str, Path)) and Path(file) == path:
                raise PermissionError(13, "Permission denied", str(file))
            return real_open(file, *args, **kwargs)
        monkeypatch.setattr(builtins, "open", fake_open)


def test_unreadable_folder(tmp_path, monkeypatch):
    root = tmp_path / "hr"
    root.mkdir()
    Image.fromarray(photo()).save(root / "a.png")
    deny(monkeypatch, root, "iterdir")
    try:
        with pytest.raises(UserError) as e:
            data.list_images(root)
    finally:
        root.chmod(0o755)
    assert str(e.value) == (f"data.root={root} cannot be read (permission denied); make it "
                            f"readable (chmod a+rx {root}) or point data.root at another folder")


def test_unreadable_image_file(tmp_path, monkeypatch):
    path = tmp_path / "a.png"
    Image.fromarray(photo()).save(path)
    deny(monkeypatch, path, "open")
    try:
        message = refused(path)
    finally:
        path.chmod(0o644)
    assert message == (f"{path} cannot be read (permission denied); make it readable "
                       f"(chmod a+r {path}) or remove it from the folder")


def test_validation_image_too_small_for_the_scale(tmp_path, compose):
    root = tmp_path / "hr"
    root.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(photo(40, 40)).save(root / name)
    Image.fromarray(photo(3, 3)).save(root / "z_tiny.png")  # sorts last: held out for validation
    cfg = compose([*TINY, "data=folder", f"data.root={root}", "data.val_count=1", "scale=4"])
    _, val = data.training_files(cfg.data)
    assert val == [root / "z_tiny.png"]
    with pytest.raises(UserError) as e:
        data.load_eval_images(val, 4)  # what job.build_evaluators does with eval.sets=[val]
    assert str(e.value) == (f"{root / 'z_tiny.png'} is 0x0 after modcrop (3x3 before), smaller "
                            "than the 19x19 needed for evaluation (11x11 SSIM window + a 4-pixel "
                            "border each side); remove the image from the set or use a larger one")


def test_eval_set_image_too_small(tmp_path):
    root = tmp_path / "myset"
    root.mkdir()
    Image.fromarray(photo(40, 40)).save(root / "a.png")
    Image.fromarray(photo(16, 30)).save(root / "b.png")
    _, files = data.eval_set_paths(str(root))
    assert len(data.load_eval_images(files, 1.5)) == 2  # 30x15 after modcrop >= 14x14: fine
    with pytest.raises(UserError, match=r"b\.png is 28x16 after modcrop \(30x16 before\), "
                                        r"smaller than the 19x19 needed for evaluation") as e:
        data.load_eval_images(files, 4)
    assert "\n" not in str(e.value)


def bomb_png(path: Path, side: int = 20000) -> Path:
    """A 1x1 PNG whose header then claims side x side pixels (20000: 400 Mpx, 1.2 GB as RGB)."""
    write_png(path, np.zeros((1, 1), np.uint8), 0)
    blob = bytearray(path.read_bytes())
    blob[16:24] = struct.pack(">II", side, side)  # IHDR width, height
    blob[29:33] = struct.pack(">I", zlib.crc32(bytes(blob[12:29])))
    path.write_bytes(bytes(blob))
    return path


def test_decompression_bomb_is_refused(tmp_path):
    path = bomb_png(tmp_path / "bomb.png")
    assert path.stat().st_size < 200
    limit = Image.MAX_IMAGE_PIXELS
    with pytest.raises(Image.DecompressionBombError):  # what Pillow itself does with it
        Image.open(path)
    assert refused(path) == (f"{path} has over {2 * limit} pixels, Pillow's decompression-bomb "
                             "limit; crop or downscale it, or remove it from the folder")
    assert Image.MAX_IMAGE_PIXELS == limit


@pytest.mark.slow  # default run under 10 min on 2 cores; CI's slow pass runs it
def test_16bit_image_through_the_command(tmp_path):
    root = tmp_path / "hr"
    root.mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(photo(40, 40)).save(root / name)
    write_png(root / "c16.png", photo(40, 40).astype(np.uint16) * 257, 2, 16)
    out = cli([*TINY, "data=folder", f"data.root={root}", "data.val_count=1"], tmp_path,
              timeout=180)
    assert out.returncode == 2, out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {root / 'c16.png'} is a 16-bit RGB image and sr_ablate reads "
                      "8-bit images only; convert it to 8-bit RGB or gray, or remove it from "
                      "the folder"], out.stderr[-2000:]
    assert "Traceback" not in out.stderr
