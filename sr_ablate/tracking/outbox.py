"""Metrics on their way to a tracking server that may stop answering.

They are sent in order from a background thread, so training never waits on the network,
and kept (never dropped) while the server does not answer: sending is retried until it
does. What is still unsent can be read at any time (checkpoints keep it) and is reported
when a run ends; nothing is lost silently. No MLflow here: ``send`` and ``transient`` are
given by ``tracking``.
"""
from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable


class Outbox:
    """``put(items)``; a thread calls ``send(batch)`` (at most ``max_batch`` items, oldest
    first). A send failing with an error that ``transient(error)`` accepts (server down,
    timeout) is retried every ``retry_s`` seconds; any other error is raised by the next
    ``put`` or ``flush``."""

    def __init__(self, send: Callable[[list], None], transient: Callable[[Exception], bool],
                 where: str, retry_s: float = 5.0, max_batch: int = 1000):
        self._send, self._transient, self.where = send, transient, where
        self.retry_s, self.max_batch = retry_s, max_batch
        self._items: list = []
        self._busy = False  # a batch is being sent: it is still in _items until it went
        self._error: Exception | None = None
        self._closed = False
        self.down_since: float | None = None  # when the server stopped answering
        # what reaching the server cost: items and batches sent, failed sends retried, the
        # slowest send that arrived (seconds; MLflow's own HTTP retries are inside it)
        self.stats = {"writes": 0, "batches": 0, "retries": 0, "slowest_s": 0.0}
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="sr_ablate-outbox", daemon=True)
        self._thread.start()

    def put(self, items: list) -> None:
        with self._cond:
            self._raise()
            self._items.extend(items)
            self._cond.notify_all()

    def unsent(self) -> list:
        """Items not yet known to have arrived (the batch in flight included)."""
        with self._cond:
            return list(self._items)

    def flush(self, timeout: float | None = None) -> list:
        """Wait until everything was sent, or ``timeout`` seconds; returns what is unsent."""
        end = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._items and self._error is None:
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._cond.wait(left if left is not None else 1.0)
            self._raise()
            return list(self._items)

    def close(self) -> None:
        """Stop the thread (what is unsent stays readable through ``unsent``)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _raise(self) -> None:
        if self._error is not None:  # sticky: the thread has stopped, nothing more is sent
            raise self._error

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._items and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                batch = self._items[:self.max_batch]
            began = time.monotonic()
            try:
                self._send(batch)
            except Exception as e:
                if not self._transient(e):  # refused, not unreachable: the run must fail
                    with self._cond:
                        self._error = e
                        self._cond.notify_all()
                    return
                self.stats["retries"] += 1
                self._went_down(e)
                with self._cond:
                    self._cond.wait(self.retry_s)
                continue
            took = time.monotonic() - began
            with self._cond:
                self.stats["writes"] += len(batch)
                self.stats["batches"] += 1
                self.stats["slowest_s"] = max(self.stats["slowest_s"], took)
                del self._items[:len(batch)]
                left = len(self._items)
                self._cond.notify_all()
            if self.down_since is not None:
                self.down_since = None
                print(f"sr_ablate: {self.where} answers again; kept metrics sent "
                      f"({left} still queued)", file=sys.stderr)

    def _went_down(self, error: Exception) -> None:
        if self.down_since is None:
            self.down_since = time.monotonic()
            reason = " ".join(str(error).split())[:200]
            print(f"sr_ablate: {self.where} does not answer ({reason}); training goes on and "
                  "its metrics are kept until it does", file=sys.stderr)
