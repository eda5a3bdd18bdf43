"""The server's modes: IPv4 and IPv6 listeners on one port, and development mode (`make run`)."""

from __future__ import annotations

import re
import smtplib
import ssl
from pathlib import Path

from serverkit import Maildir, MailServer, free_port

from tests.conftest import EXAMPLE

SITE = """\
server:
  hostname: mail.example.com
  main_domain: example.com
  client_ips: |
    127.0.0.1
    ::1
listeners:
  smtp: {{port: {port}, bind: ["127.0.0.1", "::1"], tls: none, auth: none}}
queue: {{directory: var/queue, mail_directory: var/mail}}
domains:
  example.com:
    accounts:
      alice: {{}}
"""


def test_one_listener_serves_ipv4_and_ipv6(tmp_path: Path) -> None:
    port = free_port()
    site = tmp_path / "site"
    site.mkdir()
    (site / "site.yaml").write_text(SITE.format(port=port))
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


def test_development_mode_moves_listeners_and_makes_a_certificate(tmp_path: Path) -> None:
    with MailServer(EXAMPLE, tmp_path, [2525, 2587, 2465], extra_arguments=["--dev"]) as server:
        assert (tmp_path / "var/tls/dev.crt").exists()
        assert (tmp_path / "var/tls/dev.key").stat().st_mode & 0o077 == 0
        with smtplib.SMTP("127.0.0.1", 2525, timeout=10) as client:
            client.sendmail(
                "you@remote.test", ["postmaster@example.com"], "Subject: hi\r\n\r\nhello"
            )
        context = ssl.create_default_context()
        context.load_verify_locations(tmp_path / "var/tls/dev.crt")
        context.check_hostname = False
        with smtplib.SMTP_SSL("127.0.0.1", 2465, context=context, timeout=10) as client:
            code, _ = client.ehlo()
            assert code == 250 and client.has_extn("auth")
        (message,) = Maildir(tmp_path / "var/mail/example.com/postmaster").wait(1)
    assert message.startswith(b"Return-Path: <you@remote.test>\r\nReceived: from ")
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
    assert re.search(
        rf"(?m)^{stamp} mailplan.server INFO serving plan sha256:[0-9a-f]{{64}}$", server.log()
    )
    delivered = rf"(?m)^{stamp} mailplan.queue INFO \w+ <postmaster@example.com> delivered to "
    assert re.search(delivered, server.log())
    assert message.endswith(b"\r\n\r\nhello\r\n")
