"""The server's modes: IPv4 and IPv6 listeners on one port, and development mode (`make run`).

Every listener here is on a port the kernel chose: never one of `make run`'s (2525...),
so the suite passes beside a running `make run`."""

from __future__ import annotations

import re
import shutil
import smtplib
import ssl
import urllib.request
from dataclasses import replace
from pathlib import Path

from serverkit import Maildir, MailServer, free_port, free_ports
from sitekit import listener, write_site

from mailplan.compiler.pipeline import compile_site
from mailplan.runtime.serve.startup import DEV_PORTS, development
from tests.conftest import EXAMPLE


def test_one_listener_serves_ipv4_and_ipv6(tmp_path: Path) -> None:
    port = free_port()
    both = ["127.0.0.1", "::1"]
    smtp = listener(port, bind=both, tls="none", auth="none")
    site = write_site(tmp_path / "site", listeners={"smtp": smtp}, client_ips=both)
    root = tmp_path / "root"
    with MailServer(site, root, [("127.0.0.1", port), ("::1", port)]):
        for host in ("127.0.0.1", "::1"):
            with smtplib.SMTP(host, port, timeout=10) as client:
                client.sendmail("a@remote.test", ["alice@example.com"], f"Subject: {host}\r\n\r\nx")
        messages = Maildir(root / "var/mail/example.com/alice").wait(2)
    subjects = sorted(m.split(b"Subject: ")[1].split(b"\r\n")[0] for m in messages)
    assert subjects == [b"127.0.0.1", b"::1"]
    clients = sorted(m.split(b"Received: from ")[1].split(b"\r\n")[0] for m in messages)
    assert [c.split(b" ")[1] for c in clients] == [b"([127.0.0.1])", b"([::1])"]


def test_development_moves_well_known_ports_high_and_onto_loopback() -> None:
    plan = compile_site(EXAMPLE).plan
    assert plan is not None
    moved = {x.port: development(x).port for x in plan.listeners}
    assert moved == {25: 2525, 587: 2587, 465: 2465, 110: 2110, 995: 2995, 143: 2143, 993: 2993}
    assert {development(x).bind for x in plan.listeners} == {("127.0.0.1",)}
    assert development(replace(plan.listeners[0], port=80)).port == 2080  # below 1024: +2000
    assert development(replace(plan.listeners[0], port=40025)).port == 40025  # high: stays


ADMIN = 9025  # the example's admin port


def dev_site(folder: Path) -> dict[int, int]:
    """The example site with its listeners on free high ports of an address that is not
    this machine's (192.0.2.10): `--dev` keeps high ports and moves them to loopback."""
    shutil.copytree(EXAMPLE, folder)
    picked = free_ports(len(DEV_PORTS) + 1)
    ports = dict(zip(DEV_PORTS, picked[:-1], strict=True))
    text = (folder / "site.yaml").read_text()
    for port, free in ports.items():
        text = text.replace(f"{{port: {port}}}", f"{{port: {free}, bind: [192.0.2.10]}}", 1)
    assert text.count("bind: [192.0.2.10]") == len(ports), text
    ports[ADMIN] = picked[-1]  # the admin listener: a high port, on loopback already
    assert f"  port: {ADMIN} " in text
    text = text.replace(f"  port: {ADMIN} ", f"  port: {ports[ADMIN]} ", 1)
    (folder / "site.yaml").write_text(text)
    return ports


def test_development_mode_moves_listeners_and_makes_a_certificate(tmp_path: Path) -> None:
    ports = dev_site(tmp_path / "site")
    smtp, smtps = ports[25], ports[465]
    root = tmp_path / "root"
    with MailServer(
        tmp_path / "site", root, [smtp, ports[587], smtps], extra_arguments=["--dev"]
    ) as server:
        assert (root / "var/tls/dev.crt").exists()
        with urllib.request.urlopen(f"http://127.0.0.1:{ports[ADMIN]}/healthz") as answer:
            assert answer.status == 200
        assert (root / "var/tls/dev.key").stat().st_mode & 0o077 == 0
        with smtplib.SMTP("127.0.0.1", smtp, timeout=10) as client:
            client.sendmail(
                "you@remote.test", ["postmaster@example.com"], "Subject: hi\r\n\r\nhello"
            )
        context = ssl.create_default_context()
        context.load_verify_locations(root / "var/tls/dev.crt")
        context.check_hostname = False
        with smtplib.SMTP_SSL("127.0.0.1", smtps, context=context, timeout=10) as client:
            code, _ = client.ehlo()
            assert code == 250 and client.has_extn("auth")
        (message,) = Maildir(root / "var/mail/example.com/postmaster").wait(1)
        with smtplib.SMTP("127.0.0.1", smtp, timeout=10) as client:  # a Client IP, our From
            client.sendmail(
                "alice@example.com",
                ["postmaster@example.com"],
                "From: alice@example.com\r\nSubject: signed\r\n\r\nhello",
            )
        signed = Maildir(root / "var/mail/example.com/postmaster").wait(2)
    assert message.startswith(b"Return-Path: <you@remote.test>\r\nReceived: from ")
    # --dev made the example's DKIM keys (docs/dkim.md) and signs with both
    assert (root / "var/dkim/ed2026.example.com.key").stat().st_mode & 0o077 == 0
    assert "(selector ed2026 of example.com) did not exist: --dev made a new pair" in server.log()
    assert "does not belong to" not in server.log()  # what was just made is said once
    (ours,) = [m for m in signed if b"Subject: signed" in m]
    assert ours.count(b"DKIM-Signature: ") == 2 and b"s=ed2026" in ours
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
    assert re.search(
        rf"(?m)^{stamp} mailplan.server INFO serving plan sha256:[0-9a-f]{{64}}$", server.log()
    )
    delivered = rf"(?m)^{stamp} mailplan.queue INFO \w+ <postmaster@example.com> delivered to "
    assert re.search(delivered, server.log())
    assert message.endswith(b"\r\n\r\nhello\r\n")
    assert f"  smtps        smtps       port {smtps}\n" in server.log()  # the banner
