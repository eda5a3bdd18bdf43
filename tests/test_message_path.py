"""A message goes forward through the wings and each recipient is routed once.

The server runs in this test's process (`serve.server.Daemon`, on sockets bound by
`serve.startup`), so that the router can be counted: a message with a local recipient
and a relayed one, sent over SMTP, delivered into a Maildir and to an SMTP sink found
through MX on a DNS server on loopback, asks the router about each recipient once: at
RCPT. The routing is carried with the message (`queue.arrival.Arrival`) instead of
being asked for again when it is queued and processed.
"""

from __future__ import annotations

import asyncio
import smtplib
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from dnskit import NameServer, zone_text
from serverkit import LOOPBACK, Maildir, free_port
from sitekit import alice_plan

from mailplan.runtime.decide.router import Router, Routing
from mailplan.runtime.delivery.scheduler import Remote
from mailplan.runtime.serve import startup
from mailplan.runtime.serve.server import Daemon, Options

TIMEOUT = 15.0


class Sink:
    """An SMTP server that keeps what it is given."""

    def __init__(self) -> None:
        self.got: list[tuple[str, list[str]]] = []
        self.arrived = threading.Event()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.got.append((envelope.mail_from, list(envelope.rcpt_tos)))
        self.arrived.set()
        return "250 2.0.0 kept"


def test_each_recipient_is_routed_once_from_rcpt_to_delivery(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: Counter[str] = Counter()
    route = Router.route

    def counted(self: Router, address: str, kind: str = "mail") -> Routing:
        if kind == "mail":
            asked[address] += 1
        return route(self, address, kind)  # type: ignore[arg-type]

    monkeypatch.setattr(Router, "route", counted)
    sink = Sink()
    sink_port = free_port()
    controller = Controller(sink, hostname=LOOPBACK, port=sink_port, ready_timeout=10)
    controller.start()
    zones = {"remote.test": zone_text("remote.test", "@ IN MX 10 mx\nmx IN A 127.0.0.1\n")}
    try:
        with NameServer(tmp_path / "dns", zones) as dns:
            port = free_port()
            plan = alice_plan(tmp_path / "site", port)
            options = Options(
                tmp_path,
                remote=Remote(sink_port, dns.address, dns_timeout=5.0),
                sockets=startup.bind(startup.served(plan, False)),
            )

            async def scenario() -> None:
                daemon = Daemon(lambda: plan, options, plan)
                serving = asyncio.create_task(daemon.run())
                await asyncio.to_thread(send, port)
                await asyncio.to_thread(sink.arrived.wait, TIMEOUT)
                box = Maildir(tmp_path / "var" / "mail" / "example.com" / "alice")
                await asyncio.to_thread(box.wait, 1, TIMEOUT)
                await daemon.processor.drain()
                daemon.stopping.set()
                await asyncio.wait_for(serving, TIMEOUT)

            asyncio.run(scenario())
    finally:
        controller.stop()
    assert sink.got == [("someone@outside.test", ["bob@remote.test"])]
    # each recipient at RCPT, and the sender once at MAIL (whether its domain is ours)
    assert asked == {"alice@example.com": 1, "bob@remote.test": 1, "someone@outside.test": 1}


def send(port: int) -> None:
    with smtplib.SMTP(LOOPBACK, port, timeout=TIMEOUT) as client:
        client.sendmail(
            "someone@outside.test",
            ["alice@example.com", "bob@remote.test"],
            b"Subject: once\r\n\r\nrouted once\r\n",
        )
