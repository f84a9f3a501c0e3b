"""The Outbox keeps metrics while the server does not answer and sends them, in order, once
it does; a refusal reaches the caller. The "server" is a list behind a switch."""
from __future__ import annotations

import pytest

from sr_ablate.tracking.outbox import Outbox


class Down(ConnectionError):
    pass


class Refused(ValueError):
    pass


class Server:
    def __init__(self):
        self.stored, self.up, self.refuse = [], True, False

    def send(self, batch):
        if self.refuse:
            raise Refused("bad metric")
        if not self.up:
            raise Down("connection refused")
        self.stored.extend(batch)


def outbox(server, **kw):
    return Outbox(server.send, lambda e: isinstance(e, ConnectionError), "test server",
                  retry_s=0.05, **kw)


def test_order_kept_and_batches_bounded():
    server, batches = Server(), []
    box = Outbox(lambda b: (batches.append(len(b)), server.send(b)),
                 lambda e: False, "s", max_batch=3)
    for i in range(10):
        box.put([i])
    assert box.flush(10) == [] and server.stored == list(range(10))
    assert max(batches) <= 3
    box.close()


def test_outage_keeps_then_sends_everything_once(capsys):
    server = Server()
    box = outbox(server)
    box.put([0])
    assert box.flush(10) == []
    server.up = False
    box.put([1, 2])
    box.put([3])
    assert box.flush(0.3) == [1, 2, 3]  # still down: nothing dropped, nothing stored
    assert box.down_since is not None and server.stored == [0]
    server.up = True
    assert box.flush(10) == [] and server.stored == [0, 1, 2, 3]
    # its cost: every item counted once, the failed sends of the outage as retries
    assert box.stats["writes"] == 4 and box.stats["batches"] >= 2
    assert box.stats["retries"] >= 2 and box.stats["slowest_s"] >= 0
    err = capsys.readouterr().err
    assert err.count("does not answer (connection refused)") == 1  # once per outage
    assert "answers again" in err
    box.close()


def test_a_refusal_reaches_the_caller_and_keeps_the_metrics():
    server = Server()
    box = outbox(server)
    server.refuse = True
    box.put([7])
    with pytest.raises(Refused):
        box.flush(10)
    with pytest.raises(Refused):  # and stays: the run must fail, not go on half-logged
        box.put([8])
    assert box.unsent() == [7] and server.stored == []
    box.close()
