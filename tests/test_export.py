"""ONNX export: every model config exports with dynamic height and width and onnxruntime
matches torch on a real photograph; ``sr-ablate export`` end to end and on bad input."""
from __future__ import annotations

import re
import sys

import numpy as np
import pytest
import yaml
from conftest import MODEL_CONFIGS, REPO, cli
from PIL import Image

from sr_ablate import UserError
from sr_ablate.cli import export as export_cli
from sr_ablate.cli.main import main
from sr_ablate.core.tiling import bytes_per_input_pixel, receptive_radius
from sr_ablate.data import builtin_dir, read_image
from sr_ablate.inference import onnx
from sr_ablate.inference.trained import Trained, from_checkpoint
from sr_ablate.inference.upscale import upscale_array
from sr_ablate.training.job import instantiate_node

TOLERANCE = 1e-4
SMALL = {"blocks": 2, "channels": 8, "mid_channels": 8}  # where a model has the key
CASES = [(name, 2, []) for name in MODEL_CONFIGS] + [
    ("espcn", 1.5, []),  # folds 2x2 blocks: even sides only
    ("srresnet", 2, ["model.upsampler=bicubic"]),  # F.interpolate in the graph
]


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A real photograph, (300, 451, 3) uint8."""
    return np.asarray(Image.open(builtin_dir() / "chelsea.png").convert("RGB"))


def two_sizes(photo: np.ndarray) -> list[np.ndarray]:
    """Two crops of different height, width and aspect ratio, sides even (ESPCN x1.5)."""
    return [photo[:64, :96], photo[100:148, 200:330]]


def tiny(compose, name: str, scale: float, extra: list[str]) -> Trained:
    keys = yaml.safe_load((REPO / "conf" / "model" / f"{name}.yaml").read_text())
    small = [f"model.{k}={v}" for k, v in SMALL.items() if k in keys]
    cfg = compose([f"model={name}", f"scale={scale}", *small, *extra])
    model = instantiate_node(cfg.model).eval()
    return Trained.of(model, scale, name)


IDS = [f"{n}-x{s:g}{'-' + e[0] if e else ''}" for n, s, e in CASES]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """case -> (Trained, its .onnx file), each exported once per module (seconds apiece)."""
    done = {}

    def get(compose, name: str, scale: float, extra: list[str]):
        key = (name, scale, tuple(extra))
        if key not in done:
            folder = tmp_path_factory.mktemp("onnx")
            trained = tiny(compose, name, scale, extra)
            done[key] = trained, onnx.export_onnx(trained, folder / "m.onnx")
        return done[key]
    return get


@pytest.mark.parametrize("name,scale,extra", CASES, ids=IDS)
def test_every_model_exports_and_onnxruntime_matches_torch(compose, photo, exported, name,
                                                           scale, extra):
    trained, path = exported(compose, name, scale, extra)
    assert [p.name for p in path.parent.iterdir()] == ["m.onnx"]  # one file: no external data
    session = onnx.ort_session(path)
    diffs = [onnx.parity(trained, path, img, session) for img in two_sizes(photo)]
    assert max(diffs) <= TOLERANCE, diffs


@pytest.mark.parametrize("name,scale,extra", CASES, ids=IDS)
def test_tiling_sees_in_the_onnx_file_the_network_torch_sees(compose, exported, name, scale,
                                                             extra):
    """The memory estimate and the receptive radius that size and pad tiles, from the file
    alone (onnxruntime's tensors; a probe that changes input pixels) against torch's (module
    outputs; gradients). Equal for every case here; the estimate may be 1.5x off, since
    another exporter may fuse or split ops. (Hooking the OrtNet module saw only its output:
    16x low for SRResNet-16.)"""
    trained, path = exported(compose, name, scale, extra)
    net, c = onnx.from_onnx(path).model, trained.channels
    ratio = bytes_per_input_pixel(net, c) / bytes_per_input_pixel(trained.model, c)
    assert 1 / 1.5 <= ratio <= 1.5, ratio
    assert receptive_radius(net, c) == receptive_radius(trained.model, c)


def test_one_file_serves_any_batch_height_and_width(compose, tmp_path):
    import onnx as onnx_lib
    import torch
    trained = tiny(compose, "espcn", 1.5, [])
    path = onnx.export_onnx(trained, tmp_path / "espcn.onnx")
    graph = onnx_lib.load(path).graph
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    session = onnx.ort_session(path)
    for shape in [(1, 3, 18, 40), (2, 3, 36, 12)]:
        x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
        got = onnx.run_onnx(session, x.numpy())
        with torch.no_grad():
            want = trained.model(x).numpy()
        assert got.shape == (shape[0], 3, shape[2] * 3 // 2, shape[3] * 3 // 2)
        assert np.abs(got - want).max() <= TOLERANCE


@pytest.mark.slow  # default run under 10 min on 2 cores; CI's slow pass runs it
def test_export_command_writes_the_file_and_reports_the_difference(trained_run, tmp_path):
    out = cli([f"model={trained_run.run_id}", "format=onnx", f"output={tmp_path / 'sr.onnx'}",
               f"tracking.uri={trained_run.uri}"], cwd=trained_run.cwd, command="export")
    assert out.returncode == 0, out.stderr[-2000:]
    (line,) = out.stdout.strip().splitlines()
    assert str(tmp_path / "sr.onnx") in line and " KB" in line, line
    diff = float(re.search(r"max \|onnxruntime - torch\| = (\S+) on", line).group(1))
    assert diff <= TOLERANCE
    assert re.search(r"at (\d+)x(\d+) and (\d+)x(\d+)", line), line
    assert [p.name for p in tmp_path.iterdir()] == ["sr.onnx"]  # no temporary left
    assert "Traceback" not in out.stderr
    # the file alone upscales pictures (onnxruntime in the place of torch), as the run does
    img = read_image(builtin_dir() / "chelsea.png", "rgb").permute(1, 2, 0).numpy()[:60, :90]
    Image.fromarray(img).save(tmp_path / "in.png")
    assert main(["upscale", f"model={tmp_path / 'sr.onnx'}", f"input={tmp_path / 'in.png'}",
                 f"output={tmp_path / 'out.png'}"]) == 0
    got = np.asarray(Image.open(tmp_path / "out.png")).astype(int)
    want = upscale_array(from_checkpoint(trained_run.weights), img).astype(int)
    assert got.shape == (120, 180, 3) and np.abs(got - want).max() <= 1  # 3e-7 from a half


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.mark.parametrize("args,says", [
    (["format=tflite", "output=OUT/m.onnx"], "use format=onnx"),
    (["output=OUT/m.txt"], "does not end with .onnx"),
    (["output=OUT/missing/m.onnx"], "does not exist"),
    (["output=OUT/a-file/m.onnx"], "does not exist (or is not a folder)"),
    (["output=OUT/m.onnx", "colour=y"], "unknown argument 'colour=y'"),
    (["output=OUT/m.onnx", "check=OUT/none.png"], "check image"),
    (["output=OUT/m.onnx", "opset=7"], "opset 18 to"),
])
def test_bad_input_is_one_line_and_leaves_no_file(trained_run, tmp_path, capsys, args, says):
    (tmp_path / "a-file").write_text("")
    argv = [f"model={trained_run.weights}",
            *(a.replace("OUT", str(tmp_path)) for a in args)]
    assert export_cli.main(argv) == 2
    assert says in one_error_line(capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


@pytest.mark.skipif(sys.platform == "win32" or __import__("os").geteuid() == 0,
                    reason="root writes into read-only folders")
def test_read_only_output_folder(trained_run, tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o500)
    assert export_cli.main([f"model={trained_run.weights}", f"output={folder}/m.onnx"]) == 2
    assert "not writable" in one_error_line(capsys.readouterr().err)


def test_unknown_model_through_the_command(trained_run, tmp_path):
    out = cli(["model=0123456789abcdef", f"output={tmp_path / 'm.onnx'}",
               f"tracking.uri={trained_run.uri}"], cwd=tmp_path, command="export")
    assert out.returncode == 2
    assert "0123456789abcdef" in one_error_line(out.stderr)
    assert not any(tmp_path.iterdir())


def test_a_failed_check_writes_nothing(trained_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(export_cli, "TOLERANCE", -1.0)  # any difference fails
    assert export_cli.main([f"model={trained_run.weights}", f"output={tmp_path}/m.onnx"]) == 1
    assert "was not written" in one_error_line(capsys.readouterr().err)
    assert not any(tmp_path.iterdir())


def test_missing_extra_names_the_install(trained_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    with pytest.raises(UserError, match=re.escape(onnx.MISSING)):
        onnx.ort_session(tmp_path / "m.onnx")
    assert export_cli.main([f"model={trained_run.weights}", f"output={tmp_path}/m.onnx"]) == 2
    assert one_error_line(capsys.readouterr().err) == f"error: {onnx.MISSING}"
    assert not any(tmp_path.iterdir())


def test_help_prints_the_usage(capsys):
    assert export_cli.main(["--help"]) == 0
    assert "output=<file>.onnx" in capsys.readouterr().out
