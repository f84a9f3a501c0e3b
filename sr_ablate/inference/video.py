"""Upscaling a video file: decoded with PyAV, upscaled in batches of frames, encoded as H.264.

The output keeps the input's frame count, timestamps and frame rate (so its duration), and
its audio as it is (packets remuxed, not re-encoded) where the output container can hold the
audio codec. It is written under a temporary name in the output's folder and renamed at the
end: an error or Ctrl-C never leaves a partial file under the final name. PyAV is imported
only when a video is asked for, so everything else works without it.
"""
from __future__ import annotations

import contextlib
import itertools
import os
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from sr_ablate import UserError
from sr_ablate.inference.files import writable_folder
from sr_ablate.inference.trained import Trained
from sr_ablate.inference.upscale import check_precision, upscale_frames

VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v")
# Output containers that hold H.264 (WebM holds only VP8/VP9/AV1, AVI no B-frames cleanly).
OUTPUT_FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}
ENCODERS = ("libx264", "h264", "libopenh264")  # first that this PyAV build has
# crf 18: visually lossless, so codec artefacts do not mask differences between models;
# veryfast: 5x faster than the default preset at 1080p on 2 CPU cores (24 vs 120 ms/frame
# on noise), for files a little larger at the same crf.
X264_OPTIONS = {"crf": "18", "preset": "veryfast"}
BATCH_PIXELS = 2 ** 19  # input pixels per forward pass when no batch= is given


def is_video(path: str | Path) -> bool:
    """True when ``path``'s extension is a video's (.mp4 .mkv .mov .avi .webm .m4v)."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def _av():
    try:
        import av
    except ImportError:
        raise UserError("video needs PyAV: pip install 'sr_ablate[video]'") from None
    return av


def _encoder(av) -> str:
    for name in ENCODERS:
        try:
            av.codec.Codec(name, "w")
            return name
        except ValueError:  # UnknownCodecError: not in this build
            continue
    raise UserError("this PyAV build has no H.264 encoder; pip install --force-reinstall av "
                    "(PyPI's wheels ship libx264)")


def _check_paths(src: Path, dst: Path, overwrite: bool) -> str:
    """Everything about the two paths that can fail, before any decoding; the output format."""
    if not src.is_file():
        wrong = "is a folder" if src.is_dir() else "does not exist"
        raise UserError(f"{src} {wrong}; give a video file (.mp4, .mkv, .mov, ...)")
    fmt = OUTPUT_FORMATS.get(dst.suffix.lower())
    if fmt is None:
        raise UserError(f"cannot write H.264 video to {dst.name!r}; end the output with "
                        ".mp4, .mkv, .mov or .m4v")
    if dst.is_dir():
        raise UserError(f"{dst} is a folder; give the output video's file name (.mp4...)")
    if dst.exists() and not overwrite:
        raise UserError(f"{dst} exists; pass overwrite=true to replace it")
    writable_folder(dst.parent)
    return fmt


def _open_input(av, src: Path):
    """(container, video stream, audio stream or None); UserError for anything not a video
    with a decodable video stream."""
    try:
        inp = av.open(str(src))
    except PermissionError:
        raise UserError(f"{src} cannot be read (permission denied); chmod a+r it") from None
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise UserError(f"{src} is not a readable video ({e.__class__.__name__}); give an "
                        "MP4, MKV, MOV, AVI or WebM file") from None
    # FFmpeg opens a still image whatever its name, as a one-frame "video" (png_pipe...)
    still = inp.format.name.endswith("_pipe") or inp.format.name.startswith("image2")
    if still or not inp.streams.video:
        inp.close()
        if still:
            raise UserError(f"{src} is an image, not a video; give it its image extension "
                            "(.png, .jpg...) to upscale it as an image")
        raise UserError(f"{src} has no video stream; give a video file (.mp4, .mkv, .mov...)")
    video = inp.streams.video[0]
    if video.codec_context is None:
        inp.close()
        raise UserError(f"{src}: its video codec cannot be decoded by this PyAV build (no "
                        "decoder for it); convert it to H.264 first")
    video.thread_type = "AUTO"  # frame and slice threads: decoding is not the bottleneck
    audio = inp.streams.audio[0] if inp.streams.audio else None
    return inp, video, audio


def _rate(video) -> Fraction:
    """Frames per second of a video stream (25, FFmpeg's default, when it says none)."""
    return Fraction(video.average_rate or video.guessed_rate or 25)


def _check_sides(trained: Trained, width: int, height: int) -> None:
    """A ratio scale p/q (1.5 = 3/2) needs sides that are multiples of q."""
    q = Fraction(trained.scale).limit_denominator(8).denominator
    if width % q or height % q:
        raise UserError(f"scale={trained.scale:g} needs a width and height that are multiples "
                        f"of {q}; the video is {width}x{height}: crop or pad it first")


class _Writer:
    """The output container under its temporary name, opened at the first upscaled frames
    (their size sets the encoder's); audio packets that come before are held until then."""

    def __init__(self, av, path: Path, fmt: str, video, audio, say):
        self.av, self.path, self.fmt, self.vin, self.ain, self.say = (av, path, fmt, video,
                                                                       audio, say)
        self.out = self.vout = self.aout = None
        self.held: list = []
        self.last_pts: int | None = None

    def _open(self, width: int, height: int, rotation: int, with_audio: bool) -> None:
        self.out = self.av.open(str(self.path), "w", format=self.fmt)
        self.vout = self.out.add_stream(_encoder(self.av), rate=_rate(self.vin))
        self.vout.width, self.vout.height, self.vout.pix_fmt = width, height, "yuv420p"
        # the input's time base, so every frame keeps its own timestamp (VFR stays VFR)
        self.vout.codec_context.time_base = self.vin.time_base or 1 / _rate(self.vin)
        if self.vout.codec_context.name == "libx264":
            self.vout.options = dict(X264_OPTIONS)
        if rotation:  # a phone's portrait video is stored sideways, with this to turn it
            self.vout.set_display_rotation(rotation)
        self.aout = None
        if with_audio:
            self.aout = self.out.add_stream_from_template(self.ain)
        self.out.start_encoding()  # the header: where a container refuses the audio codec

    def open(self, width: int, height: int, rotation: int) -> None:
        if self.ain is None:
            return self._open(width, height, rotation, False)
        try:
            return self._open(width, height, rotation, True)
        except (ValueError, self.av.error.FFmpegError):
            self.abandon()
        codec = self.ain.codec_context.name if self.ain.codec_context else "input's"
        self.say(f"{self.path.suffix.lstrip('.')} cannot hold the {codec} audio of the "
                 "input; the video is written without audio")
        self.held = []
        self._open(width, height, rotation, False)

    def audio(self, packet) -> None:
        if packet.dts is None:  # the demuxer's empty flush packet
            return
        if self.out is None:
            self.held.append(packet)
        elif self.aout is not None:
            packet.stream = self.aout
            self.out.mux(packet)

    def video(self, frames: np.ndarray, pts: list[int | None], rotation: int = 0) -> None:
        """``frames``: (B, H, W, 3) uint8 RGB, even H and W; ``pts`` in the input's time
        base; ``rotation``: the input's display rotation (degrees counter-clockwise)."""
        if self.out is None:
            self.open(frames.shape[2], frames.shape[1], rotation)
            for packet in self.held:
                self.audio(packet)
            self.held = []
        tb = self.vout.codec_context.time_base
        step = max(1, round(1 / (_rate(self.vin) * tb)))
        for arr, p in zip(frames, pts, strict=True):
            # a missing or repeated timestamp would stop the encoder: one frame later instead
            if p is None or (self.last_pts is not None and p <= self.last_pts):
                p = 0 if self.last_pts is None else self.last_pts + step
            self.last_pts = p
            frame = self.av.VideoFrame.from_ndarray(arr, format="rgb24")
            frame.pts, frame.time_base = p, tb
            self.out.mux(self.vout.encode(frame))

    def close(self) -> None:
        if self.vout is not None:
            self.out.mux(self.vout.encode(None))  # flush the encoder's delayed frames
        if self.out is not None:
            self.out.close()

    def abandon(self) -> None:
        """Close without caring how (the file is half written) and delete it."""
        with contextlib.suppress(Exception):
            if self.out is not None:
                self.out.close()
        self.out = self.vout = self.aout = None
        self.path.unlink(missing_ok=True)


def _frames(av, inp, video, audio, writer: _Writer, src: Path):
    """The video's frames in display order; audio packets go to ``writer`` on the way.
    UserError for what FFmpeg cannot read or decode (errors of the writer pass as they are)."""
    packets = inp.demux(video, *([audio] if audio is not None else []))
    n = 0
    while True:
        try:
            packet = next(packets, None)
            if packet is None:
                return
            is_audio = audio is not None and packet.stream_index == audio.index
            decoded = [] if is_audio else packet.decode()
        except av.error.FFmpegError as e:
            raise UserError(f"{src}: frame {n + 1} cannot be decoded ({e.__class__.__name__});"
                            f" the file is damaged or its {video.codec_context.name} video is "
                            "not supported here: convert it to H.264 first") from None
        if is_audio:
            writer.audio(packet)
        n += len(decoded)
        yield from decoded


def upscale_video(trained: Trained, src: str | Path, dst: str | Path, *,
                  batch: int | None = None,
                  tile: int | None = None, precision: str = "fp32", progress: bool = True,
                  overwrite: bool = False, device: str | torch.device | None = None) -> dict:
    """Upscale every frame of the video ``src`` with ``trained`` and write H.264 (yuv420p)
    to ``dst`` in the container of its extension (.mp4, .m4v, .mov, .mkv).

    Frames are decoded as RGB24 uint8 (H, W, 3), upscaled ``batch`` at a time (one forward
    pass per batch, None: ``auto_batch``; ``tile`` and ``precision`` as in
    ``upscale_frames``) to (H*s, W*s, 3),
    and encoded with the input's timestamps and frame rate, so frame count and duration are
    the input's. An odd output side is cropped by one row/column (yuv420p needs even sides);
    audio is copied where the container takes its codec, else dropped; each is said in one
    printed line. ``device``: where the model runs (None: where it is; "auto": CUDA if any).

    Returns {"frames", "seconds", "fps", "ms_per_frame", "s_per_30_frames", "rate", "width",
    "height", "out_width", "out_height"}: ``seconds`` is the wall time of the whole job,
    decode + upscale + encode (and mux), from opening ``src`` to the finished file; ``fps``
    the frames processed per second of it; ``rate`` the video's frame rate (input =
    output); sizes are the input's and the written ones.
    UserError (one line) for bad input, checked before anything is decoded where it can be.
    """
    av = _av()
    src, dst = Path(src), Path(dst)
    fmt = _check_paths(src, dst, overwrite)
    _encoder(av)
    if batch is not None and batch < 1:
        raise UserError(f"batch={batch}: give a number of frames >= 1")
    if device is not None:
        auto = "cuda" if torch.cuda.is_available() else "cpu"
        trained.to(torch.device(auto if device == "auto" else device))
    check_precision(precision, next(trained.model.parameters()).device)
    tmp = dst.with_name(f".{dst.stem}.partial{dst.suffix}")
    start = time.perf_counter()
    inp, video, audio = _open_input(av, src)
    writer = _Writer(av, tmp, fmt, video, audio, tqdm.write)
    bar = tqdm(total=video.frames or None, unit="frame", desc=src.name, disable=not progress,
               dynamic_ncols=True)
    try:
        width, height = video.codec_context.width, video.codec_context.height
        _check_sides(trained, width, height)
        batch = batch or auto_batch(width, height)
        n, size = 0, None
        frames = _frames(av, inp, video, audio, writer, src)
        while chunk := tuple(itertools.islice(frames, batch)):  # itertools.batched: 3.12
            size = _upscale_batch(trained, chunk, tile, precision, writer)
            n += len(chunk)
            bar.update(len(chunk))
        if n == 0:
            raise UserError(f"{src} has a video stream but not one frame could be decoded; "
                            "the file is damaged: re-encode it")
        writer.close()
        os.replace(tmp, dst)
    except BaseException:  # KeyboardInterrupt too: never a partial file under any name
        writer.abandon()
        raise
    finally:
        bar.close()
        inp.close()
    seconds = time.perf_counter() - start
    return {"frames": n, "seconds": seconds, "fps": n / seconds, "rate": float(_rate(video)),
            "ms_per_frame": 1000 * seconds / n, "s_per_30_frames": 30 * seconds / n,
            "width": width, "height": height, "out_width": size[0], "out_height": size[1]}


def auto_batch(width: int, height: int) -> int:
    """Frames per forward pass: up to 8, as many as make BATCH_PIXELS input pixels. Batches
    help small frames; at 720p one frame at a time was faster on a 2-core CPU (266 against
    300-324 ms per frame at 8), the activations of 8 frames falling out of the caches."""
    return max(1, min(8, BATCH_PIXELS // (width * height)))


def _upscale_batch(trained: Trained, frames: tuple, tile: int | None, precision: str,
                   writer: _Writer) -> tuple[int, int]:
    """Upscale and encode one batch of decoded frames; the (width, height) written."""
    rgb = np.stack([f.to_ndarray(format="rgb24") for f in frames])  # (B, H, W, 3) uint8
    out = upscale_frames(trained, rgb, tile, precision)  # (B, H*s, W*s, 3) uint8
    h, w = out.shape[1] - out.shape[1] % 2, out.shape[2] - out.shape[2] % 2
    if (h, w) != out.shape[1:3]:
        if writer.out is None:  # once, at the first batch
            writer.say(f"the upscaled video is {out.shape[2]}x{out.shape[1]}; H.264 yuv420p "
                       f"needs even sides: written as {w}x{h} (last row/column cropped)")
        out = out[:, :h, :w]
    writer.video(out, [f.pts for f in frames], frames[0].rotation)
    return w, h
