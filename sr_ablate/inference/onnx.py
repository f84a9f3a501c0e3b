"""A trained model as an ONNX file, and onnxruntime running it.

The file holds the network alone: input ``lr`` (batch, channels, height, width) float32 in
[0, 1] -> output ``sr`` (batch, channels, height*s, width*s), batch, height and width
dynamic (one file serves every picture size). Pre- and post-processing stay with the caller,
as in ``inference.upscale``: a Y-channel model takes the BT.601 luma, a pre-upsampling model
(SRCNN, VDSR) the MATLAB-bicubic enlarged image (``lr`` is then already h*s x w*s and so is
``sr``), and the output is neither clamped nor rounded. ESPCN at a rational scale p/q needs
height and width that are multiples of q (2 for x1.5).

onnx and onnxruntime are the ``export`` extra, imported only when asked for.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import uuid
import warnings
from pathlib import Path

import numpy as np
import torch

from sr_ablate import UserError
from sr_ablate.core.degrade import to_uint8, upsampled_input
from sr_ablate.core.fp32 import exact_fp32
from sr_ablate.core.metrics import rgb_to_y
from sr_ablate.inference.trained import Trained

MISSING = "export needs onnx and onnxruntime: pip install 'sr_ablate[export]'"
# The example input's sides (the trace runs on fake tensors: no compute at this size):
# multiples of every fold q <= 8 (lcm(1..8) = 840), and unequal, so that the exporter gives
# height and width two symbols, not one.
EXAMPLE_SIDES = (840, 1680)
DIM_NAMES = ("batch", None, "height", "width")  # the input's symbolic dims, as the file says


def require() -> tuple:
    """(onnx, onnxruntime), or UserError naming the extra to install."""
    try:
        import onnx
        import onnxruntime
        import onnxscript  # noqa: F401  (torch's exporter builds the graph with it)
    except ImportError:
        raise UserError(MISSING) from None
    return onnx, onnxruntime


def side_multiple(trained: Trained) -> int:
    """What input height and width must be multiples of: q for ESPCN at p/q, else 1."""
    return int(getattr(trained.model, "q", 1))


def export_onnx(trained: Trained, path: str | Path, opset: int | None = None) -> Path:
    """Write ``trained``'s network to ``path`` (one .onnx file, weights inside) with dynamic
    batch, height and width; atomically (a temporary name in the same folder, then a rename).
    ``opset``: the ONNX opset (None: torch's default). Returns ``path``."""
    onnx, _ = require()
    path = Path(path)
    model = trained.model
    device = next(model.parameters()).device
    x = torch.zeros(1, trained.channels, *EXAMPLE_SIDES, device=device)
    dynamic = {0: torch.export.Dim.DYNAMIC, 2: torch.export.Dim.DYNAMIC,
               3: torch.export.Dim.DYNAMIC}
    with _quiet():
        program = torch.onnx.export(model, (x,), None, dynamo=True, verbose=False,
                                    input_names=["lr"], output_names=["sr"],
                                    opset_version=opset, dynamic_shapes=(dynamic,))
    proto = program.model_proto
    got = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    if opset is not None and got != opset:  # the exporter keeps its own opset when it cannot
        raise UserError(f"torch cannot export this model at opset={opset} (it gave opset "
                        f"{got}); use opset 18 to {onnx.defs.onnx_opset_version()}, or leave "
                        "opset= out")
    _name_dims(proto)
    # what ``from_onnx`` needs to upscale pictures with the file alone
    for key, value in (("scale", trained.scale), ("channels", trained.channels),
                       ("upsampled_input", int(trained.upsampled_input)),
                       ("side_multiple", side_multiple(trained)), ("source", trained.source)):
        entry = proto.metadata_props.add()
        entry.key, entry.value = f"sr_ablate.{key}", str(value)
    # not mkstemp: its 0600 mode would stay on the file; this one gets the umask's mode
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        # SR networks weigh a few MB, far below protobuf's 2 GB: no external data file
        onnx.save_model(proto, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


@contextlib.contextmanager
def _quiet():
    """Silence the exporter's progress lines, its notes about torchvision's ops and the
    opset converter's tracebacks (a wrong opset is checked and reported instead)."""
    logs = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript")]
    levels = [log.level for log in logs]
    for log in logs:
        log.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for log, level in zip(logs, levels):
            log.setLevel(level)


def _name_dims(proto) -> None:
    """Rename the exporter's shape symbols (s77, s53, ...) to batch, height and width wherever
    they occur, so that the output reads ``2*height`` in any ONNX viewer."""
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    names = {d.dim_param: n for d, n in zip(dims, DIM_NAMES) if n and d.dim_param}
    if not names:
        return
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, names)) + r")\b")
    for value in (*proto.graph.input, *proto.graph.output, *proto.graph.value_info):
        for d in value.type.tensor_type.shape.dim:
            if d.dim_param:
                d.dim_param = pattern.sub(lambda m: names[m.group(1)], d.dim_param)


def ort_session(path: str | Path | bytes, threads: int | None = None):
    """An onnxruntime CPU session of the file at ``path`` (or of a serialised model);
    ``threads``: intra-op threads (None: onnxruntime's choice, one per physical core)."""
    _, ort = require()
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors come back as exceptions; no second copy on stderr
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(path if isinstance(path, bytes) else str(path), options,
                                providers=["CPUExecutionProvider"])


def run_onnx(session, lr: np.ndarray) -> np.ndarray:
    """The session on ``lr`` (B, C, h, w) float32 in [0, 1] -> ``sr`` (B, C, h*s, w*s)."""
    return session.run(["sr"], {"lr": np.ascontiguousarray(lr, dtype=np.float32)})[0]


def model_input(trained: Trained, image: np.ndarray) -> torch.Tensor:
    """What the network takes for an RGB picture (H, W, 3) uint8: (1, channels, H, W) float32
    in [0, 1]; the luma for a Y model, the MATLAB-bicubic enlargement (H*s, W*s, rounded to
    uint8) for a pre-upsampling model, as ``inference.upscale`` feeds it."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise UserError(f"the check image must be RGB uint8 (H, W, 3); got {image.dtype} "
                        f"{tuple(image.shape)}")
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).to(torch.float64)
    if trained.channels == 1:
        x = to_uint8(rgb_to_y(x))
    if trained.upsampled_input:
        x = upsampled_input(x, trained.scale, quantize=True)
    return (x / 255).float()[None]


def parity(trained: Trained, onnx_path: str | Path, image: np.ndarray,
           session=None) -> float:
    """The largest |torch - onnxruntime| (values in [0, 1]) over the network's output for
    ``image`` (H, W, 3) uint8, H and W multiples of ``side_multiple``. Torch runs on the
    model's device, in IEEE float32 (no TF32); ``session``: an open ``ort_session`` of
    ``onnx_path``."""
    x = model_input(trained, image)
    session = session or ort_session(onnx_path)
    device = next(trained.model.parameters()).device
    with torch.no_grad(), exact_fp32():
        want = trained.model(x.to(device)).float().cpu().numpy()
    got = run_onnx(session, x.numpy())
    if got.shape != want.shape:
        raise UserError(f"{onnx_path} gives {got.shape[-2:]} for {x.shape[-2:]}, torch "
                        f"{want.shape[-2:]}; export the model again")
    return float(np.abs(got - want).max())


class OrtNet(torch.nn.Module):
    """An exported file run by onnxruntime, in the place of the torch network: (B, C, h, w)
    float in [0, 1] -> (B, C, h*s, w*s) float32, on the CPU. ``inference.upscale`` and
    ``inference.video`` use it as they use a torch model. ``opaque``: torch sees no layers
    and no gradients inside, so ``core.tiling`` asks it for its tensors' sizes
    (``tensor_nbytes``) and finds its receptive radius by perturbing input pixels."""
    opaque = True

    def __init__(self, session, path: str | Path, scale: float, channels: int,
                 upsampled_input: bool, q: int):
        super().__init__()
        self.session, self.path, self.scale, self.in_channels = session, path, scale, channels
        self.upsampled_input, self.q = upsampled_input, q
        self.anchor = torch.nn.Parameter(torch.zeros(0), requires_grad=False)  # the device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(run_onnx(self.session, x.detach().float().cpu().numpy()))

    def tensor_nbytes(self, x: torch.Tensor) -> list[int]:
        """Bytes of every tensor one pass over ``x`` (B, C, h, w) makes, the output last.

        Why this way: the file is run once more with every node's output made a graph
        output, so these are the tensors onnxruntime makes, and ``core.tiling`` applies the
        rule it applies to a torch model's module outputs to them. ONNX shape inference
        cannot follow ESPCN's fold (Shape/Div/Concat into Reshape); onnxruntime's peak memory
        cannot be read apart from the rest of the process (its arena keeps what it grew);
        and the file alone holds no torch model. Constants (weights) are left out, as they
        are from the torch count."""
        onnx, _ = require()
        proto = onnx.load(str(self.path))
        graph = proto.graph
        known = {o.name for o in graph.output}
        for node in graph.node:
            for name in node.output if node.op_type != "Constant" else ():
                if name and name not in known:
                    graph.output.add().name = name  # its type left for onnxruntime to infer
                    known.add(name)
        session = ort_session(proto.SerializeToString(), threads=1)
        names = [o.name for o in session.get_outputs()]
        arrays = dict(zip(names, session.run(None, {"lr": x.float().cpu().numpy()})))
        return [a.nbytes for name, a in arrays.items() if name != "sr"] + [arrays["sr"].nbytes]


def from_onnx(path: str | Path, threads: int | None = None) -> Trained:
    """A file written by ``export_onnx`` as a ``Trained`` whose network is onnxruntime's."""
    onnx, _ = require()
    try:
        meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False)
                .metadata_props}
        scale, channels = float(meta["sr_ablate.scale"]), int(meta["sr_ablate.channels"])
    except Exception as e:
        raise UserError(f"{path} is not an ONNX file written by sr-ablate export "
                        f"({e.__class__.__name__}); export the run again") from None
    upsampled = meta.get("sr_ablate.upsampled_input") == "1"
    net = OrtNet(ort_session(path, threads), path, scale, channels, upsampled,
                 int(meta.get("sr_ablate.side_multiple", 1)))
    return Trained.of(net.eval(), scale, str(path))
