"""upscale_video on real short clips that the tests encode themselves with PyAV: frame count,
size, timing and audio kept; pixels as upscale_frames gives them; atomic writes; bad input."""
from __future__ import annotations

import importlib
import os
import sys
from fractions import Fraction

import numpy as np
import pytest
import torch
from torch import nn

from sr_ablate import UserError
from sr_ablate.inference.trained import Trained, from_checkpoint
from sr_ablate.inference.upscale import upscale_frames
from sr_ablate.models import ESPCN

av = pytest.importorskip("av")
from sr_ablate.inference.video import is_video, upscale_video  # noqa: E402

W, H, N = 64, 48, 12


def make_clip(path, w=W, h=H, n=N, fps=24, audio=None, pix="yuv420p", rotation=0):
    """An H.264 clip of a moving colour gradient; ``audio``: an encoder name (aac,
    pcm_mulaw...) for a 440 Hz mono tone as long as the video; ``rotation``: the display
    rotation a phone records (degrees counter-clockwise)."""
    out = av.open(str(path), "w")
    v = out.add_stream("libx264", rate=fps)
    v.width, v.height, v.pix_fmt = w, h, pix
    if rotation:
        v.set_display_rotation(rotation)
    a = out.add_stream(audio, rate=8000, layout="mono") if audio else None
    y, x = np.mgrid[0:h, 0:w]
    for i in range(n):
        img = np.stack([x * 4 + i * 8, y * 5, (x + y) * 2 + i * 3], -1) % 256
        frame = av.VideoFrame.from_ndarray(img.astype(np.uint8), format="rgb24")
        frame.pts = i
        out.mux(v.encode(frame))
    out.mux(v.encode())
    if a is not None:
        fmt, size = a.codec_context.codec.audio_formats[0].name, a.codec_context.frame_size
        for t in range(0, int(8000 * n / fps), size or 1024):
            tone = np.sin(2 * np.pi * 440 * np.arange(t, t + (size or 1024)) / 8000)
            arr = ((tone * 0.2).astype(np.float32) if fmt.startswith("flt")
                   else (tone * 6000).astype(np.int16))
            frame = av.AudioFrame.from_ndarray(arr[None], format=fmt, layout="mono")
            frame.sample_rate, frame.pts = 8000, t
            out.mux(a.encode(frame))
        out.mux(a.encode())
    out.close()
    return path


def frames_of(path):
    """[(time in s, (H, W, 3) uint8 RGB)] of every video frame."""
    with av.open(str(path)) as c:
        return [(f.time, f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """dB between two uint8 pictures."""
    mse = np.mean((a.astype(float) - b.astype(float)) ** 2)
    return 10 * np.log10(255 ** 2 / max(mse, 1e-10))


def streams_of(path):
    with av.open(str(path)) as c:
        return [s.type for s in c.streams], c.streams.video[0].average_rate, c.duration


def first_audio_time(path):
    with av.open(str(path)) as c:
        return next((float(p.pts * p.time_base) for p in c.demux(audio=0)), None) \
            if c.streams.audio else None


def assert_same_timing(out, src):
    """Same frame rate, frame times, and audio-to-video offset. Times are taken from the
    first frame: Matroska has no negative timestamps, so where AAC's priming packet starts
    before 0 the muxer shifts every stream by the same amount (sync kept)."""
    rate, src_rate = streams_of(out)[1], streams_of(src)[1]
    assert rate == src_rate
    times, src_times = [t for t, _ in frames_of(out)], [t for t, _ in frames_of(src)]
    # to 1 ms: Matroska stores milliseconds
    assert np.subtract(times, times[0]) == pytest.approx(np.subtract(src_times, src_times[0]),
                                                         abs=1e-3)
    if first_audio_time(src) is not None:
        assert first_audio_time(out) - times[0] == pytest.approx(
            first_audio_time(src) - src_times[0], abs=1e-3)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    return {"plain": make_clip(d / "plain.mp4"),
            "ntsc": make_clip(d / "ntsc.mp4", fps=Fraction(30000, 1001)),
            "aac": make_clip(d / "aac.mp4", audio="aac"),
            "mulaw": make_clip(d / "mulaw.mov", audio="pcm_mulaw"),
            "odd": make_clip(d / "odd.mkv", w=63, h=47, pix="yuv444p"),  # x264 high 4:4:4
            "x66": make_clip(d / "x66.mp4", w=66, h=46),
            "portrait": make_clip(d / "portrait.mp4", rotation=90)}


@pytest.fixture(scope="module")
def x2(trained_run):
    return from_checkpoint(trained_run.weights)


def espcn15(model=None):
    """x1.5 RGB ESPCN with random weights: enough for sizes and formats."""
    return Trained(model=(model or ESPCN(scale=1.5)).eval(), scale=1.5, channels=3,
                   upsampled_input=False, source="test")


def test_x2_keeps_frames_timing_and_pixels(x2, clips, tmp_path):
    dst = tmp_path / "out.mp4"
    r = upscale_video(x2, clips["plain"], dst, batch=5, progress=False)  # 5+5+2 frames
    assert (r["frames"], r["width"], r["height"]) == (N, W, H)
    assert (r["out_width"], r["out_height"], r["rate"]) == (2 * W, 2 * H, 24.0)
    assert r["ms_per_frame"] == pytest.approx(1000 * r["seconds"] / N)
    assert r["s_per_30_frames"] == pytest.approx(30 * r["seconds"] / N)
    src, out = frames_of(clips["plain"]), frames_of(dst)
    assert len(out) == N and out[0][1].shape == (2 * H, 2 * W, 3)
    assert_same_timing(dst, clips["plain"])
    assert streams_of(dst)[2] == streams_of(clips["plain"])[2]  # duration, in microseconds
    # H.264 is lossy even at crf 18: the frame written is the model's output up to the
    # encoder's error (~39 dB here). This tiny model's output has little structure, so
    # test_pixels_are_the_models checks that a wrong frame would fail.
    assert psnr(out[0][1], upscale_frames(x2, src[0][1][None])[0]) > 30
    assert os.listdir(tmp_path) == ["out.mp4"]  # no temporary file left beside it


class Nearest(nn.Module):
    """x2 nearest-neighbour "model": its output is the input's picture, so a frame that
    is not the right one, mirrored or shifted, lands far from it."""
    scale, upsampled_input = 2, False

    def __init__(self):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(()))  # upscale looks up the device of a weight

    def forward(self, x):  # (B, 3, h, w) -> (B, 3, 2h, 2w), in [0, 1]
        return nn.functional.interpolate(x, scale_factor=2, mode="nearest") * self.gain


def test_pixels_are_the_models(clips, tmp_path):
    nearest = Trained(model=Nearest(), scale=2, channels=3, upsampled_input=False,
                      source="test")
    upscale_video(nearest, clips["plain"], tmp_path / "o.mp4", progress=False)
    src, out = frames_of(clips["plain"]), frames_of(tmp_path / "o.mp4")
    for (_, got), (_, frame) in zip(out, src, strict=True):
        want = upscale_frames(nearest, frame[None])[0]
        # H.264's loss leaves ~40 dB; the next frame, a mirror image or a one-pixel shift
        # are at 25 dB or less, so 30 dB tells the right frame from wrong ones
        assert psnr(got, want) > 30
        assert psnr(got, want[::-1]) < 30 and psnr(got, np.roll(want, 1, axis=1)) < 30
    assert psnr(out[0][1], upscale_frames(nearest, src[1][1][None])[0]) < 30


def test_x2_odd_input_sides_and_mkv(x2, clips, tmp_path):
    r = upscale_video(x2, clips["odd"], tmp_path / "odd.mkv", progress=False)
    assert (r["frames"], r["out_width"], r["out_height"]) == (N, 126, 94)
    assert len(frames_of(tmp_path / "odd.mkv")) == N


def test_ntsc_rate_kept_in_mov(clips, tmp_path):
    r = upscale_video(espcn15(), clips["ntsc"], tmp_path / "o.mov", progress=False)
    assert r["rate"] == pytest.approx(30000 / 1001)
    assert_same_timing(tmp_path / "o.mov", clips["ntsc"])


def test_x15_espcn_size_and_progress_bar(clips, tmp_path, capsys):
    r = upscale_video(espcn15(), clips["plain"], tmp_path / "o.m4v")
    assert (r["out_width"], r["out_height"]) == (96, 72)
    assert frames_of(tmp_path / "o.m4v")[0][1].shape == (72, 96, 3)
    bar = capsys.readouterr().err
    assert "12/12" in bar and "frame/s" in bar


def test_display_rotation_kept(clips, tmp_path):
    upscale_video(espcn15(), clips["portrait"], tmp_path / "o.mp4", progress=False)
    for path in (clips["portrait"], tmp_path / "o.mp4"):
        with av.open(str(path)) as c:
            assert next(c.decode(video=0)).rotation == 90, path


def test_odd_output_cropped_with_one_line(clips, tmp_path, capsys):
    r = upscale_video(espcn15(), clips["x66"], tmp_path / "o.mp4", progress=False)
    assert (r["out_width"], r["out_height"]) == (98, 68)  # 99x69 less a column and a row
    assert frames_of(tmp_path / "o.mp4")[0][1].shape == (68, 98, 3)
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert "99x69" in line and "98x68" in line


def test_audio_copied(clips, tmp_path):
    for ext in (".mp4", ".mkv", ".mov"):
        dst = tmp_path / f"o{ext}"
        upscale_video(espcn15(), clips["aac"], dst, progress=False)
        assert streams_of(dst)[0] == ["video", "audio"]
        assert_same_timing(dst, clips["aac"])
        with av.open(str(dst)) as c:
            assert c.streams.audio[0].codec.name == "aac"


def test_audio_the_container_refuses_is_dropped_with_one_line(clips, tmp_path, capsys):
    upscale_video(espcn15(), clips["mulaw"], tmp_path / "o.mp4", progress=False)
    assert streams_of(tmp_path / "o.mp4")[0] == ["video"]
    assert len(frames_of(tmp_path / "o.mp4")) == N
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert "pcm_mulaw" in line and "without audio" in line
    assert os.listdir(tmp_path) == ["o.mp4"]


class Boom(ESPCN):
    """x1.5 ESPCN that raises ``exc`` at its second batch of video frames (the tiling
    probe, a 24x24 input, passes)."""

    def __init__(self, exc: BaseException):
        super().__init__(scale=1.5)
        self.exc, self.calls = exc, 0

    def forward(self, x):
        if tuple(x.shape[-2:]) == (H, W):
            self.calls += 1
            if self.calls > 1:
                raise self.exc
        return super().forward(x)


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_failure_mid_video_leaves_no_file(clips, tmp_path, exc):
    with pytest.raises(type(exc)):
        upscale_video(espcn15(Boom(exc)), clips["aac"], tmp_path / "o.mp4", batch=4,
                      progress=False)
    assert os.listdir(tmp_path) == []
    # an existing output that overwrite=true would replace stays as it was
    (tmp_path / "o.mp4").write_bytes(b"old")
    with pytest.raises(type(exc)):
        upscale_video(espcn15(Boom(exc)), clips["plain"], tmp_path / "o.mp4", batch=4,
                      progress=False, overwrite=True)
    assert os.listdir(tmp_path) == ["o.mp4"]
    assert (tmp_path / "o.mp4").read_bytes() == b"old"


def undecodable(path, codec):
    """An MKV whose video stream is ``codec`` with packets of noise."""
    out = av.open(str(path), "w")
    s = out.add_mux_stream(codec, rate=24, width=W, height=H)
    s.time_base = Fraction(1, 1000)
    rng = np.random.default_rng(0)
    for i in range(4):
        p = av.Packet(rng.integers(0, 256, 500, dtype=np.uint8).tobytes())
        p.stream, p.pts, p.dts, p.time_base = s, i * 40, i * 40, s.time_base
        out.mux(p)
    out.close()
    return path


def bad_sources(d, clips):
    """(source, words its error must contain) for each way a source can be wrong."""
    from PIL import Image
    (d / "text.mp4").write_text("not a video\n")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(d / "image.png")
    os.replace(d / "image.png", d / "image.mp4")
    out = av.open(str(d / "sound.m4a"), "w")
    a = out.add_stream("aac", rate=8000, layout="mono")
    frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp",
                                       layout="mono")
    frame.sample_rate, frame.pts = 8000, 0
    out.mux(a.encode(frame))
    out.mux(a.encode())
    out.close()
    return [(d / "missing.mp4", "does not exist"),
            (d / "text.mp4", "not a readable video"),
            (d / "image.mp4", "an image, not a video"),
            (d / "sound.m4a", "has no video stream"),
            (undecodable(d / "avs3.mkv", "avs3"), "cannot be decoded"),  # no decoder here
            (undecodable(d / "noise.mkv", "mjpeg"), "cannot be decoded"),  # decoder fails
            (clips["odd"], "multiples of 2")]  # x1.5 on 63x47


def test_bad_sources_one_line_no_file(clips, tmp_path):
    srcs = tmp_path / "srcs"
    srcs.mkdir()
    for src, words in bad_sources(srcs, clips):
        out = tmp_path / "out"
        out.mkdir()
        with pytest.raises(UserError) as e:
            upscale_video(espcn15(), src, out / "o.mp4", progress=False)
        assert words in str(e.value) and "\n" not in str(e.value), src
        assert os.listdir(out) == [], src
        out.rmdir()


def test_bad_outputs_one_line_before_decoding(clips, tmp_path, monkeypatch):
    opened = []
    monkeypatch.setattr(av, "open", lambda *a, **k: opened.append(a))  # nothing decoded
    (tmp_path / "taken.mp4").write_bytes(b"mine")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.geteuid() == 0:  # root writes anywhere: make the check see what a user would
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, m: real(p, m) and str(p) != str(locked))
    cases = [(tmp_path / "o.webm", ".mp4, .mkv, .mov or .m4v"),
             (tmp_path / "o.avi", ".mp4, .mkv, .mov or .m4v"),
             (tmp_path / "taken.mp4", "exists; pass overwrite=true to replace it"),
             (tmp_path / "nowhere" / "o.mp4", "does not exist; create it first"),
             (locked / "o.mp4", "not writable")]
    for dst, words in cases:
        with pytest.raises(UserError) as e:
            upscale_video(espcn15(), clips["plain"], dst, progress=False)
        assert words in str(e.value) and "\n" not in str(e.value), dst
    with pytest.raises(UserError, match="batch=0"):
        upscale_video(espcn15(), clips["plain"], tmp_path / "o.mp4", batch=0)
    assert opened == [] and (tmp_path / "taken.mp4").read_bytes() == b"mine"
    assert sorted(os.listdir(tmp_path)) == ["locked", "taken.mp4"]
    assert os.listdir(locked) == []


def test_without_pyav_import_works_and_use_says_how_to_install(clips, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` raises ImportError
    monkeypatch.delitem(sys.modules, "sr_ablate.inference.video")
    video = importlib.import_module("sr_ablate.inference.video")
    assert video.is_video("a.MP4")
    with pytest.raises(UserError, match=r"^video needs PyAV: pip install 'sr_ablate\[video\]'$"):
        video.upscale_video(espcn15(), clips["plain"], tmp_path / "o.mp4")
    assert os.listdir(tmp_path) == []


def test_is_video():
    for name in ("a.mp4", "b.MKV", "c.mov", "d.avi", "e.webm", "f.m4v", "/x/y.Mp4"):
        assert is_video(name), name
    for name in ("a.png", "b.jpg", "mp4", "c.mp4.txt", "folder"):
        assert not is_video(name), name


@pytest.mark.slow  # default run under 10 min on 2 cores; CI's slow pass runs it
def test_the_upscale_command_takes_a_video_from_a_run_id(trained_run, clips, tmp_path):
    from conftest import cli
    dst = tmp_path / "clip_x2.mp4"
    out = cli([f"model={trained_run.run_id}", f"input={clips['aac']}", f"output={dst}",
               "progress=false", "batch=4"], trained_run.cwd, command="upscale")
    assert out.returncode == 0, out.stderr
    assert (f"{dst}: {N} frames {W}x{H} -> {2 * W}x{2 * H} at 24 frames/s (x2, rgb model) "
            "in ") in out.stdout
    assert "ms per frame" in out.stdout and "s per 30 frames" in out.stdout
    assert len(frames_of(dst)) == N and streams_of(dst)[0] == ["video", "audio"]
    again = cli([f"model={trained_run.run_id}", f"input={clips['aac']}", f"output={dst}"],
                trained_run.cwd, command="upscale")
    assert again.returncode == 2 and "exists; pass overwrite=true" in again.stderr


def test_auto_batch_takes_up_to_8_small_frames_and_one_720p_frame():
    from sr_ablate.inference.video import auto_batch
    assert auto_batch(W, H) == 8 and auto_batch(1280, 720) == 1 and auto_batch(640, 360) == 2
