"""The content filter (runtime/smtp/contentfilter.py) in a real `mailplan serve`, against
an rspamd stand-in: an HTTP server in the test process that answers `/checkv2` as told
and keeps what it was sent. It covers what Debian's rspamd cannot be made to answer
without its Lua rules (greylist, soft reject), and rspamd failing: down, slow, an HTTP
error. tests/test_rspamd.py runs the real one.
"""

from __future__ import annotations

import json
import smtplib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from serverkit import LOOPBACK, Maildir, MailServer, free_port, free_ports
from sitekit import NO_SENDER_CHECKS, merged, plain, write_site

STRANGER = "127.0.0.9"  # not a Client IP: the filter's default scope checks its mail
MESSAGE = b"From: <sender@remote.test>\r\nSubject: hello\r\n\r\nhello\r\n"


@dataclass
class Fake:
    """What the stand-in answers, and what it was asked."""

    answer: dict[str, Any] = field(default_factory=lambda: {"action": "no action", "score": 0})
    status: int = 200
    delay: float = 0.0
    asked: list[tuple[str, list[tuple[str, str]], bytes]] = field(default_factory=list)


def _handler(fake: Fake) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            fake.asked.append((self.path, list(self.headers.items()), body))
            time.sleep(fake.delay)
            payload = json.dumps(fake.answer).encode()
            self.send_response(fake.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

    return Handler


class _Quiet(ThreadingHTTPServer):
    """Its answers all written (or failed) before it closes: a slow answer to a client
    that gave up must not be written during the next test."""

    daemon_threads = False
    block_on_close = True

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that gave up on a slow answer (the point of a test): not worth a trace."""


@pytest.fixture
def fake() -> Iterator[tuple[Fake, int]]:
    told = Fake()
    http = _Quiet((LOOPBACK, 0), _handler(told))
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    try:
        yield told, http.server_address[1]
    finally:
        http.shutdown()
        http.server_close()  # waits for the answers under way


def serve(tmp_path: Path, url: str, **setting: Any) -> tuple[MailServer, int]:
    (port,) = free_ports(1)
    content_filter = {"rspamd": url, "timeout": "2s"} | setting
    site = write_site(
        tmp_path / "site",
        listeners={"smtp": plain(port)},
        accounts=["alice"],
        extra=merged(NO_SENDER_CHECKS, {"receiving": {"content_filter": content_filter}}),
    )
    return MailServer(site, tmp_path, [port]), port


def send(port: int, recipients: tuple[str, ...] = ("alice@example.com",)) -> tuple[int, bytes]:
    """The reply to the message's data (DATA's, or the 250)."""
    with smtplib.SMTP(LOOPBACK, port, timeout=20, source_address=(STRANGER, 0)) as client:
        client.ehlo("client.remote.test")
        client.mail("sender@remote.test")
        for recipient in recipients:
            client.rcpt(recipient)
        return client.data(MESSAGE)


@pytest.mark.parametrize(
    ("answer", "reply"),
    [
        ({"action": "greylist", "score": 4}, "451 4.7.1 Greylisted, please try again later"),
        ({"action": "soft reject", "score": 9}, "451 4.7.1 Try again later"),
        (
            {"action": "reject", "score": 20, "messages": {"smtp_message": "Spam, go away"}},
            "550 5.7.1 Spam, go away",
        ),
    ],
    ids=["greylist", "soft-reject", "reject"],
)
def test_rspamds_action_is_the_reply_to_data(
    tmp_path: Path, fake: tuple[Fake, int], answer: dict[str, Any], reply: str
) -> None:
    told, http_port = fake
    told.answer = answer
    server, port = serve(tmp_path, f"http://{LOOPBACK}:{http_port}")
    with server:
        code, text = send(port, ("alice@example.com", "postmaster@example.com"))
        assert f"{code} {text.decode()}" == reply
    assert not list((tmp_path / "var" / "queue").glob("*.msg"))
    ((path, headers, body),) = told.asked
    assert path == "/checkv2"
    sent = [(name.lower(), value) for name, value in headers]
    assert ("ip", STRANGER) in sent
    assert ("helo", "client.remote.test") in sent
    assert ("from", "sender@remote.test") in sent
    assert [v for n, v in sent if n == "rcpt"] == ["alice@example.com", "postmaster@example.com"]
    assert ("mta-name", "mail.example.com") in sent
    assert body.endswith(MESSAGE)
    assert body.startswith(b"Received: from client.remote.test ([127.0.0.9])")


def test_an_accepted_message_carries_rspamds_headers(
    tmp_path: Path, fake: tuple[Fake, int]
) -> None:
    told, http_port = fake
    told.answer = {"action": "add header", "score": 7.25, "required_score": 15}
    server, port = serve(tmp_path, f"http://{LOOPBACK}:{http_port}")
    with server:
        code, _ = send(port)
        assert code == 250
        (stored,) = Maildir(tmp_path / "var" / "mail" / "example.com" / "alice").wait()
    assert b"\r\nX-Spam-Flag: YES\r\nX-Spam-Score: 7.25\r\nX-Spam-Action: add header\r\n" in stored
    assert b"rspamd: add header (score 7.25) from 127.0.0.9" in server.log().encode()


@pytest.mark.parametrize(
    ("trouble", "why"),
    [("status", "HTTPStatusError"), ("delay", "ReadTimeout")],
    ids=["http-error", "slow"],
)
def test_a_failing_rspamd_is_a_temporary_failure_by_default(
    tmp_path: Path, fake: tuple[Fake, int], trouble: str, why: str
) -> None:
    told, http_port = fake
    if trouble == "status":
        told.status = 500
    else:
        told.delay = 3.0  # past the site's 2 s
    server, port = serve(tmp_path, f"http://{LOOPBACK}:{http_port}")
    with server:
        code, text = send(port)
        assert (code, text.decode()) == (
            451,
            "4.7.1 The content filter is unavailable, please try again later",
        )
        assert server.wait_for_log("refused for now (on_failure: tempfail)")
    assert why in server.log()


def test_on_failure_accept_lets_mail_in_unchecked_and_says_so(tmp_path: Path) -> None:
    down = f"http://{LOOPBACK}:{free_port()}"  # nothing listens there
    server, port = serve(tmp_path, down, on_failure="accept")
    with server:
        code, _ = send(port)
        assert code == 250
        (stored,) = Maildir(tmp_path / "var" / "mail" / "example.com" / "alice").wait()
        assert server.wait_for_log("accepted unchecked (on_failure: accept)")
    assert b"X-Spam-Flag" not in stored
    assert f"rspamd at {down}/checkv2 failed (ConnectError" in server.log()


def test_a_client_is_not_checked_by_the_default_scope(
    tmp_path: Path, fake: tuple[Fake, int]
) -> None:
    told, http_port = fake
    told.answer = {"action": "reject", "score": 100}
    server, port = serve(tmp_path, f"http://{LOOPBACK}:{http_port}")
    with server, smtplib.SMTP(LOOPBACK, port, timeout=20) as client:  # from 127.0.0.1, a client
        assert client.sendmail("sender@remote.test", ["alice@example.com"], MESSAGE) == {}
    assert told.asked == []


def test_the_site_says_little_and_the_defaults_say_the_rest(tmp_path: Path) -> None:
    from mailplan.compiler.pipeline import compile_site
    from mailplan.plan.model import ContentFilter

    site = write_site(
        tmp_path / "site",
        listeners={"smtp": plain(25)},
        extra={"receiving": {"content_filter": {"rspamd": "http://127.0.0.1:11333/"}}},
    )
    unit = compile_site(site)
    assert unit.plan is not None, unit.diagnostics
    found = unit.plan.receiving.content_filter
    assert found is not None and found.source.file == "site.yaml"
    assert found == ContentFilter(
        found.source,
        "http://127.0.0.1:11333",
        "everybody-except-clients",
        20,
        "tempfail",
    )
    broken = write_site(
        tmp_path / "broken",
        listeners={"smtp": plain(25)},
        extra={"receiving": {"content_filter": {"rspamd": "127.0.0.1:11333"}}},
    )
    (problem,) = compile_site(broken).diagnostics
    assert problem.code == "MP103"
    assert problem.message.endswith(
        "rspamd is the URL of its normal worker (http://127.0.0.1:11333)"
    )
