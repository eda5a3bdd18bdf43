"""Backpressure over real SMTP: past the soft limit a 250 waits, past the hard one DATA
hears 451 4.3.1, and nothing refused is stored.

The server runs in this test's process (`serve.server.Daemon`), with the limits made
small and the batches that process accepted mail held back, so that accepted mail
piles up as it would when delivery falls behind.
"""

from __future__ import annotations

import asyncio
import re
import smtplib
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from serverkit import LOOPBACK, Maildir, free_port
from sitekit import alice_plan

from mailplan.runtime.decide import replies
from mailplan.runtime.delivery.scheduler import Remote
from mailplan.runtime.queue import processor
from mailplan.runtime.serve import startup
from mailplan.runtime.serve.server import Daemon, Options

TIMEOUT = 15.0
FLOW_DELAY = 0.3


def send(port: int, number: int) -> tuple[int, bytes, float]:
    """One message over its own connection: the reply to DATA, and how long it took."""
    with smtplib.SMTP(LOOPBACK, port, timeout=TIMEOUT) as client:
        client.ehlo()
        client.mail("someone@outside.test")
        client.rcpt("alice@example.com")
        started = time.monotonic()
        code, text = client.data(f"Subject: {number}\r\n\r\nmessage {number}\r\n".encode())
        return code, text, time.monotonic() - started


def test_a_backlog_slows_then_refuses_new_mail_and_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(processor, "SOFT_LIMIT", 1)
    monkeypatch.setattr(processor, "HARD_LIMIT", 2)
    monkeypatch.setattr(processor, "FLOW_DELAY", FLOW_DELAY)
    held = threading.Event()  # batches wait for it: delivery has fallen behind
    deliver = processor.Processor._deliver_batch

    def behind(self: processor.Processor, *arguments: Any) -> Any:
        held.wait(TIMEOUT)
        return deliver(self, *arguments)

    monkeypatch.setattr(processor.Processor, "_deliver_batch", behind)
    port = free_port()
    plan = alice_plan(tmp_path / "site", port)
    options = Options(tmp_path, remote=Remote(), sockets=startup.bind(startup.served(plan, False)))
    replies_seen: list[tuple[int, bytes, float]] = []

    async def scenario() -> None:
        daemon = Daemon(lambda: plan, options, plan)
        serving = asyncio.create_task(daemon.run())
        for number in range(3):
            replies_seen.append(await asyncio.to_thread(send, port, number))
        assert daemon.processor.backlog == 2  # the third was refused, not stored
        held.set()
        box = Maildir(tmp_path / "var" / "mail" / "example.com" / "alice")
        await asyncio.to_thread(box.wait, 2, TIMEOUT)
        replies_seen.append(await asyncio.to_thread(send, port, 3))  # room again
        await asyncio.to_thread(box.wait, 3, TIMEOUT)
        await daemon.processor.drain()
        daemon.stopping.set()
        await asyncio.wait_for(serving, TIMEOUT)

    asyncio.run(scenario())
    codes = [code for code, _, _ in replies_seen]
    assert codes == [250, 250, 451, 250]
    assert replies_seen[2][1].decode() == replies.QUEUE_FULL[4:]
    assert replies_seen[1][2] >= FLOW_DELAY * 0.9  # held back, then accepted
    box = Maildir(tmp_path / "var" / "mail" / "example.com" / "alice")
    subjects = sorted(re.search(rb"Subject: (\S+)", message)[1] for message in box.messages())
    assert subjects == [b"0", b"1", b"3"]
