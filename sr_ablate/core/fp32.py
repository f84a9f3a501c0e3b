"""Exact fp32 for evaluation and measurement: ``exact_fp32()`` turns TF32 off, and
``describe()`` says what training runs with (the tag ``sr_ablate.tf32``).

On CUDA GPUs of compute capability >= 8.0 PyTorch may run float32 matrix products (cuBLAS)
and convolutions (cuDNN) in TF32, a 10-bit mantissa; cuDNN's default allows it. oneDNN on
the CPU may be allowed bf16 or TF32 the same way. Evaluation promises fp32 (and tiled ==
whole-image inference to a few float32 ulps, docs/protocol.md#tiling), so inside
``exact_fp32()`` all of them compute in IEEE float32, and the caller's settings are back
afterwards, however the block ends. Training keeps the user's setting.

Two APIs hold these settings. The legacy one (``torch.set_float32_matmul_precision``,
``torch.backends.cudnn.allow_tf32``) is all torch < 2.9 has. torch >= 2.9 adds a tree of
precisions, "ieee" | "tf32" | "bf16" | "none" (= the parent's): generic -> cuda | mkldnn ->
matmul | conv | rnn (``torch.backends.cuda.matmul.fp32_precision``,
``torch.backends.cudnn.conv.fp32_precision``...). Its getters answer with what a node
inherits, not with what it holds, and cuDNN's conv and rnn start at an internal "default"
(tf32 unless a parent is set) that no setter can restore. So ``exact_fp32`` reads what each
node holds (``_held``), switches TF32 off from the top (generic and backends "ieee", leaves
only where they hold a value of their own) and writes back exactly what it read. The legacy
matmul flag is set to "highest" too (where torch lets it be read): cuBLAS refuses to run
while it disagrees with the new API. The legacy cuDNN flag is left alone (setting it
overwrites conv's "default"), so inside the block torch refuses to read
``torch.backends.cudnn.allow_tf32`` (RuntimeError, "mix of the legacy and new APIs"), as it
does after ``torch.backends.fp32_precision = "ieee"``; cuDNN's kernels read the per-op ones.

The settings are process-wide: not for two threads at once (sr_ablate evaluates on one).
"""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

GENERIC = ("generic", "all")
BACKENDS = (("cuda", "all"), ("mkldnn", "all"))
LEAVES = (("cuda", "matmul"), ("cuda", "conv"), ("cuda", "rnn"),
          ("mkldnn", "matmul"), ("mkldnn", "conv"), ("mkldnn", "rnn"))
DEFAULT = "default"  # what cuDNN conv/rnn hold until set: tf32 unless a parent is set
_DESCRIBED = {("cuda", "matmul"): "cuda.matmul", ("cuda", "conv"): "cudnn.conv",
              ("mkldnn", "matmul"): "mkldnn.matmul", ("mkldnn", "conv"): "mkldnn.conv"}
# torch.backends' own accessors call these; used directly because torch 2.13's
# torch.backends.mkldnn.fp32_precision setter writes the generic node instead of mkldnn's
NEW_API = hasattr(torch._C, "_get_fp32_precision_getter")


def _get(node: tuple[str, str]) -> str:
    return torch._C._get_fp32_precision_getter(*node)


def _set(node: tuple[str, str], value: str) -> None:
    torch._C._set_fp32_precision_setter(*node, value)


@contextlib.contextmanager
def _legacy() -> Iterator[None]:
    """The legacy API without torch 2.9's one-time advice to use the new one: sr_ablate sets
    the legacy matmul flag only to keep it in agreement with the new one."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Please use the new API settings")
        yield


def _matmul_precision() -> str | None:
    """``torch.get_float32_matmul_precision()``; None where torch refuses to read it (the
    user set the two APIs apart): then it is neither written nor restored."""
    try:
        with _legacy():
            return torch.get_float32_matmul_precision()
    except RuntimeError:
        return None


def _held() -> dict[tuple[str, str], str]:
    """What every node of the new API's tree holds ("none", a precision, or DEFAULT).

    A getter answers with the first of node, backend, generic that is set, so: the generic
    node as read; each backend read under generic "none"; each leaf read under "none"
    parents ("tf32" then is its own, or DEFAULT); a "tf32" that turns "ieee" under a generic
    "ieee" is DEFAULT. The parents are put back as they were."""
    held = {GENERIC: _get(GENERIC)}
    try:
        _set(GENERIC, "none")
        held.update((b, _get(b)) for b in BACKENDS)
        try:
            for b in BACKENDS:
                _set(b, "none")
            held.update((leaf, _get(leaf)) for leaf in LEAVES)
            _set(GENERIC, "ieee")
            for leaf in LEAVES:
                if held[leaf] == "tf32" and _get(leaf) == "ieee":
                    held[leaf] = DEFAULT
        finally:
            for b in BACKENDS:
                _set(b, held[b])
    finally:
        _set(GENERIC, held[GENERIC])
    return held


@dataclass(frozen=True)
class Settings:
    """This process's float32 settings as ``current()`` read them; ``restore`` puts them
    back. ``matmul``: the legacy ``torch.get_float32_matmul_precision()`` (None: unreadable);
    ``cudnn``: the legacy ``torch.backends.cudnn.allow_tf32`` (torch < 2.9 only; later it
    is left alone); ``held``: what each node of the new API holds (torch >= 2.9)."""
    matmul: str | None
    cudnn: bool | None = None
    held: dict[tuple[str, str], str] = field(default_factory=dict)


def current() -> Settings:
    """The settings in force, complete enough for ``restore`` to make them so again."""
    if NEW_API:
        return Settings(_matmul_precision(), None, _held())
    return Settings(torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32)


def restore(s: Settings) -> None:
    """Put back what ``current()`` read. The legacy matmul flag first: it writes the cuda and
    mkldnn matmul nodes, which then get theirs. A DEFAULT node is not written (no setter
    can): it still is DEFAULT unless something set it since."""
    with _legacy():
        if s.matmul is not None:
            torch.set_float32_matmul_precision(s.matmul)
        if s.cudnn is not None:
            torch.backends.cudnn.allow_tf32 = s.cudnn
    for node in (*LEAVES, *BACKENDS, GENERIC):
        if node in s.held and s.held[node] != DEFAULT:
            _set(node, s.held[node])


def _switch_off(s: Settings) -> None:
    """IEEE float32 everywhere, from the settings ``s`` in force: the legacy flags it could
    read, then the new API from the top (the leaves that inherit need nothing)."""
    with _legacy():
        if s.matmul is not None:  # cuBLAS refuses to run while the two APIs disagree
            torch.set_float32_matmul_precision("highest")
        if s.cudnn is not None:
            torch.backends.cudnn.allow_tf32 = False
    if s.held:
        for node in (GENERIC, *BACKENDS):
            _set(node, "ieee")
        for leaf in LEAVES:
            if s.held[leaf] not in ("none", DEFAULT):
                _set(leaf, "ieee")


@contextlib.contextmanager
def exact_fp32() -> Iterator[None]:
    """IEEE float32 for matmuls and convolutions inside (cuBLAS, cuDNN, oneDNN: no TF32, no
    bf16); the caller's exact settings back afterwards, also when the block raises. Settings
    changed inside are undone too (but a legacy matmul flag torch refused to read before).
    Nests. Also a decorator: ``@exact_fp32()``. Autocast is another switch:
    ``torch.autocast(..., enabled=False)`` where fp32 is promised inside an autocast region."""
    before = current()
    try:
        _switch_off(before)
        yield
    finally:
        restore(before)


def _effective(leaf: tuple[str, str]) -> str:
    """What ``leaf`` computes float32 in: its own precision, else its backend's, else the
    generic one (the getter already answers so on torch 2.13); "none" all the way is IEEE,
    and so is "bf16" for CUDA, which has no bf16 mode."""
    for node in (leaf, (leaf[0], "all"), GENERIC):
        value = _get(node)
        if value != "none":
            break
    return "ieee" if value == "none" or (leaf[0] == "cuda" and value == "bf16") else value


def describe() -> str:
    """The float32 precision in force, e.g. ``cuda.matmul=ieee, cudnn.conv=tf32,
    mkldnn.matmul=ieee, mkldnn.conv=ieee`` (torch's default): what is allowed, whether or not
    the hardware has TF32. torch < 2.9: ``cuda.matmul=..., cudnn.conv=...`` only."""
    if NEW_API:
        return ", ".join(f"{name}={_effective(leaf)}" for leaf, name in _DESCRIBED.items())
    matmul = torch.backends.cuda.matmul.allow_tf32
    conv = torch.backends.cudnn.allow_tf32
    return f"cuda.matmul={'tf32' if matmul else 'ieee'}, cudnn.conv={'tf32' if conv else 'ieee'}"
