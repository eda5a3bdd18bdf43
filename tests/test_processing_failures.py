"""A message whose processing fails (a bug it meets) fails alone.

Processing after the 250 runs in batches; one message that makes processing raise must
not send the rest of its batch through the queue a second time (their rules' copies
made twice), and must not be tried every minute forever: after GIVE_UP_FAILED failures
it is set aside as `.bad`, its bytes kept. The server runs in this test's process
(`serve.server.Daemon`); the bug is simulated by making processing raise for messages
whose text says "poison", since no message makes today's code fail on purpose.
"""

from __future__ import annotations

import asyncio
import smtplib
from pathlib import Path
from typing import Any

import pytest
from serverkit import LOOPBACK, Maildir, free_port, wait_until
from sitekit import alice_plan

from mailplan.runtime.queue import processor
from mailplan.runtime.rules import actions
from mailplan.runtime.serve import startup
from mailplan.runtime.serve.server import Daemon, Options

TIMEOUT = 15.0


def test_a_message_that_processing_fails_on_fails_alone_then_is_set_aside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    process = processor.process

    def buggy(spool: Any, queue_id: str, *arguments: Any) -> Any:
        fresh = arguments[3] if len(arguments) > 3 else None  # router, folder, digest, fresh
        if fresh is not None:
            message = fresh.message
        else:
            message = spool.load(queue_id)[1] if spool.exists(queue_id) else b""
        if b"poison" in message:
            raise RuntimeError("a bug")
        return process(spool, queue_id, *arguments)

    monkeypatch.setattr(processor, "process", buggy)
    monkeypatch.setattr(processor, "RETRY_FAILED", 0.1)
    port = free_port()
    plan = alice_plan(tmp_path / "site", port)
    options = Options(tmp_path, sockets=startup.bind(startup.served(plan, False)))
    box = Maildir(tmp_path / "var" / "mail" / "example.com" / "alice")
    queue = tmp_path / "var" / "queue"

    def send() -> None:
        with smtplib.SMTP(LOOPBACK, port, timeout=TIMEOUT) as client:
            for n in range(6):  # one session, one batch (or two)
                text = "poison" if n == 3 else f"message {n}"
                message = f"Subject: {text}\r\n\r\n{text}\r\n".encode()
                client.sendmail("someone@outside.test", ["alice@example.com"], message)

    async def scenario() -> None:
        daemon = Daemon(lambda: plan, options, plan)
        serving = asyncio.create_task(daemon.run())
        while not daemon.servers:
            await asyncio.sleep(0.01)
        await asyncio.to_thread(send)
        await asyncio.to_thread(box.wait, 5, TIMEOUT)
        bad = await asyncio.to_thread(wait_until, lambda: list(queue.glob("*.bad")), TIMEOUT)
        assert bad
        await daemon.processor.drain()
        daemon.stopping.set()
        await asyncio.wait_for(serving, TIMEOUT)

    asyncio.run(scenario())
    delivered = sorted(m.split(b"\r\n\r\n", 1)[1] for m in box.messages())
    assert delivered == [f"message {n}\r\n".encode() for n in (0, 1, 2, 4, 5)]  # each once
    (bad,) = queue.glob("*.bad")
    assert bad.read_bytes().endswith(b"\r\n\r\npoison\r\n")  # kept, not lost
    said = f"{bad.stem}.msg failed 3 times (RuntimeError: a bug): moved aside as {bad.stem}.bad"
    assert said in caplog.messages
    assert f"{bad.stem}: processing failed; queued" in caplog.messages  # in its batch
    assert list(queue.glob("*.msg")) == []


def test_attachments_of_a_structure_too_deep_to_take_apart_are_none() -> None:
    deep = b"Content-Type: multipart/mixed; boundary=b0\r\n\r\n"
    for n in range(1, 2000):
        deep += f"--b{n - 1}\r\nContent-Type: multipart/mixed; boundary=b{n}\r\n\r\n".encode()
    deep += b"--b1999\r\nContent-Disposition: attachment; filename=x\r\n\r\nx\r\n"
    assert actions.attachments(deep) is None
