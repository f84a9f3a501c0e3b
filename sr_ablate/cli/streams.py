"""stdout and stderr that outlive their reader: ``python -m sr_ablate ... | tee log``, Ctrl-C.

Ctrl-C reaches ``tee`` (or ``less``, ``head``) too. Python ignores SIGPIPE, so the next write
to the pipe, e.g. the SIGINT handler's own "stopping after this step" line or the progress
bar, raises ``BrokenPipeError``, and a run that was stopping cleanly (checkpoint, KILLED)
would end FAILED instead. ``guarded()`` puts streams in place whose writes cannot raise it:
once a stream's reader is gone its file descriptor is pointed at ``/dev/null``, so that what
follows, from Python, C code or the interpreter's last flush at exit, goes nowhere quietly
(no "Exception ignored ... BrokenPipeError" at shutdown, no retry loop).
"""
from __future__ import annotations

import io
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager


class _PipeSafeRaw(io.RawIOBase):
    """A raw writer over file descriptor ``fd`` that, on EPIPE, sends the fd to /dev/null."""

    def __init__(self, fd: int):
        super().__init__()
        self.fd = fd

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self.fd

    def isatty(self) -> bool:
        return os.isatty(self.fd)

    def write(self, data) -> int | None:
        try:
            return os.write(self.fd, data)
        except BlockingIOError:  # a non-blocking fd that is full: BufferedWriter retries
            return None
        except BrokenPipeError:
            drop(self.fd)
            return len(data)  # counted as written: the reader that would have read it is gone


class _WriteThrough(io.BufferedWriter):
    """For ``python -u`` (``PYTHONUNBUFFERED``): every write reaches the fd at once."""

    def write(self, data) -> int:
        n = super().write(data)
        self.flush()
        return n


def drop(fd: int) -> None:
    """Point ``fd`` at /dev/null: every later write to it succeeds and goes nowhere."""
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, fd)
    finally:
        os.close(null)


def _safe(stream):
    """A text stream like ``stream`` (encoding, buffering) over ``_PipeSafeRaw``, or None
    when ``stream`` has no file descriptor of its own (e.g. a test's captured output)."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None
    raw = _PipeSafeRaw(fd)  # its close() leaves the fd open, unlike FileIO's
    buffered = (_WriteThrough if stream.write_through else io.BufferedWriter)(raw)
    return io.TextIOWrapper(buffered, encoding=stream.encoding, errors=stream.errors,
                            newline="\n", line_buffering=stream.line_buffering,
                            write_through=stream.write_through)


@contextmanager
def guarded() -> Iterator[None]:
    """``sys.stdout`` and ``sys.stderr`` replaced, for the block, by streams that drop what
    they cannot deliver instead of raising ``BrokenPipeError``; the originals come back
    after it (already pointed at /dev/null if their reader went away)."""
    before = sys.stdout, sys.stderr
    safe = []
    for name, stream in (("stdout", sys.stdout), ("stderr", sys.stderr)):
        if stream is None or not hasattr(stream, "write_through") or isinstance(
                getattr(getattr(stream, "buffer", None), "raw", None), _PipeSafeRaw):
            continue  # not a text file, or guarded already (a sweep's job inside main)
        try:
            stream.flush()  # what it holds goes first, in order
        except BrokenPipeError:
            drop(stream.fileno())
        new = _safe(stream)
        if new is not None:
            setattr(sys, name, new)
            safe.append(new)
    try:
        yield
    finally:
        for new in safe:
            new.flush()
            new.detach()  # leaves the fd open: it is still the process's stdout/stderr
        sys.stdout, sys.stderr = before
