"""Delivery beyond the mailbox, end to end: a real `mailplan serve` relays to SMTP servers
on loopback found through MX records served on loopback (tests/dnskit.py), runs pipes, expands
lists, retries on a short schedule and bounces into a local Maildir.

The remote servers are aiosmtpd sinks on 127.0.0.2 to 127.0.0.6, all on one port (the
server's `--smtp-port`): one accepts (and refuses local parts that start with `bad`),
one defers until told otherwise, one refuses, one drops the connection.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import smtplib
import stat
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import Envelope as SinkEnvelope
from aiosmtpd.smtp import Session as SinkSession
from dnskit import NameServer, zone_text
from serverkit import LOOPBACK, Maildir, MailServer, free_port, free_ports, mailplan, wait_until
from sitekit import plain, write_site

TIMEOUT = 15.0
HOSTS = {"accept": "127.0.0.2", "defer": "127.0.0.3", "refuse": "127.0.0.4", "drop": "127.0.0.5"}

ZONES = {
    "accept.test": "@ IN MX 10 mx\nmx IN A 127.0.0.2\n",
    "other.test": "@ IN MX 10 mx.accept.test.\n",
    "defer.test": "@ IN MX 10 mx\nmx IN A 127.0.0.3\n",
    "refuse.test": "@ IN MX 10 mx\nmx IN A 127.0.0.4\n",
    "drop.test": "@ IN MX 10 mx\nmx IN A 127.0.0.5\n",
    # The preferred exchanger has nothing listening: the second one takes the mail.
    "backup.test": "@ IN MX 5 dead\n@ IN MX 20 mx.accept.test.\ndead IN A 127.0.0.6\n",
    "nullmx.test": "@ IN MX 0 .\n",
    "nomx.test": "@ IN A 127.0.0.2\n",
}


@dataclass
class Sink:
    """What one loopback SMTP server saw, and how it answers."""

    mode: str
    lock: threading.Lock = field(default_factory=threading.Lock)
    connections: int = 0
    asked: int = 0  # RCPT commands
    messages: list[tuple[str, list[str], bytes]] = field(default_factory=list)

    async def handle_EHLO(
        self,
        server: SMTPServer,
        session: SinkSession,
        envelope: SinkEnvelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        with self.lock:
            self.connections += 1
        return responses

    async def handle_RCPT(
        self,
        server: SMTPServer,
        session: SinkSession,
        envelope: SinkEnvelope,
        address: str,
        options: list[str],
    ) -> str:
        with self.lock:
            self.asked += 1
        if self.mode == "defer":
            return "451 4.3.0 try again later"
        if self.mode == "refuse" or address.startswith("bad"):
            return "550 5.1.1 no such user here"
        if self.mode == "drop":
            assert server.transport is not None
            server.transport.close()
            return "250 OK"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(
        self, server: SMTPServer, session: SinkSession, envelope: SinkEnvelope
    ) -> str:
        content = envelope.original_content or b""
        if self.mode == "slow":  # a remote that takes its time over each message
            await asyncio.sleep(0.2)
        with self.lock:
            self.messages.append((envelope.mail_from or "", list(envelope.rcpt_tos), content))
        return "250 2.0.0 queued"

    def received(self, count: int = 1) -> list[tuple[str, list[str], bytes]]:
        wait_until(lambda: len(self.messages) >= count, TIMEOUT)
        with self.lock:
            return list(self.messages)


@dataclass
class World:
    """The DNS server and the remote SMTP servers, shared by the module's tests."""

    dns: NameServer
    port: int
    sinks: dict[str, Sink]

    def reset(self) -> None:
        for name, sink in self.sinks.items():
            sink.mode = name
            sink.connections = sink.asked = 0
            sink.messages.clear()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    zones = {name: zone_text(name, records) for name, records in ZONES.items()}
    port = free_port()
    sinks = {name: Sink(name) for name in HOSTS}
    controllers = [
        Controller(sinks[name], hostname=host, port=port, ready_timeout=10)
        for name, host in HOSTS.items()
    ]
    with NameServer(tmp_path_factory.mktemp("dns"), zones) as dns:
        for controller in controllers:
            controller.start()
        try:
            yield World(dns, port, sinks)
        finally:
            for controller in controllers:
                controller.stop()


@pytest.fixture
def sinks(world: World) -> dict[str, Sink]:
    world.reset()
    return world.sinks


PIPES = {
    "ok": 'cat > "$OUT/ok.$QUEUE_ID"; env > "$OUT/env.$QUEUE_ID"; echo "$@" > "$OUT/argv"',
    "later": "cat > /dev/null; exit 75",
    "broken": 'echo "spam filter: unknown verdict" >&2; exit 3',
}


LISTS = {
    "team": {
        "owner": "owner",
        "members": ["alice@example.com", "bob@example.com", "carol@accept.test", "bad@accept.test"],
        "posting": "members",
    },
    "news": {"owner": "owner", "members": ["bob@example.com"], "posting": "moderated"},
}


def write_relay_site(root: Path, port: int, queue: str, extra: str = "") -> Path:
    """The relay's site in `root`/site: `queue` is YAML for the inside of its `queue: {}`,
    `extra` more YAML; the programs of its pipes are in `root`/pipes."""
    pipes = root / "pipes"
    return write_site(
        root / "site",
        listeners={"smtp": plain(port)},
        accounts=["alice", "bob", "owner"],
        domains={"example.com": {"lists": LISTS}},
        queue=yaml.safe_load(f"{{{queue}}}"),
        extra={
            "pipes": {
                "ok": {"program": f"{pipes}/ok", "args": ["--from-site"]},
                "later": {"program": f"{pipes}/later"},
                "broken": {"program": f"{pipes}/broken"},
            },
            "routing": "router.cgr",
            **(yaml.safe_load(extra) or {}),
        },
    )


ROUTER = """\
<report@example.com> = "ok --learn"@pipe
<later@example.com> = "later"@pipe
<broken@example.com> = "broken"@pipe
"""

SCHEDULE = "retry: [1s], warn_after: 1h, give_up_after: 1h"


@dataclass
class Relay:
    """A site served by a real `mailplan serve` whose mail leaves through `world`."""

    directory: Path
    root: Path
    port: int
    server: MailServer

    def send(
        self, recipients: list[str], sender: str = "alice@example.com", subject: str = "hello"
    ) -> str:
        message = EmailMessage()
        message["From"] = sender or "nobody@example.com"
        message["To"] = ", ".join(recipients)
        message["Subject"] = subject
        message["Message-ID"] = f"<{subject.replace(' ', '.')}@example.com>"
        message.set_content(f"{subject}\n")
        with smtplib.SMTP(LOOPBACK, self.port, timeout=TIMEOUT) as client:
            client.ehlo("client.example.com")
            client.mail(sender)
            for recipient in recipients:
                assert client.rcpt(recipient)[0] == 250
            code, reply = client.data(message.as_bytes())
        assert code == 250, reply
        return reply.decode().rsplit(" ", 1)[-1]

    def maildir(self, account: str) -> Maildir:
        return Maildir(self.root / "var" / "mail" / "example.com" / account)

    def queue_files(self, suffix: str = "msg") -> list[Path]:
        return sorted((self.root / "var" / "queue").glob(f"*.{suffix}"))

    def wait_empty(self) -> None:
        assert wait_until(lambda: not self.queue_files(), TIMEOUT), self.server.log()

    def mailplan(self, *arguments: str) -> str:
        result = mailplan(*arguments, "--site", self.directory, "--root", self.root)
        assert result.returncode == 0, result.stderr
        return result.stdout


@pytest.fixture
def make_relay(world: World, tmp_path: Path) -> Iterator[Any]:
    started: list[MailServer] = []

    def make(queue: str = SCHEDULE, extra: str = "") -> Relay:
        pipes = tmp_path / "pipes"
        out = tmp_path / "out"
        pipes.mkdir(exist_ok=True)
        out.mkdir(exist_ok=True)
        for name, body in PIPES.items():
            script = pipes / name
            script.write_text(f'#!/bin/sh\nOUT="{out}"\n{body}\n')
            script.chmod(script.stat().st_mode | stat.S_IEXEC)
        (port,) = free_ports(1)
        directory = write_relay_site(tmp_path, port, queue, extra)
        (directory / "router.cgr").write_text(ROUTER)
        server = MailServer(
            directory, tmp_path, [port], resolver=world.dns.address, smtp_port=world.port
        )
        server.start()
        started.append(server)
        return Relay(directory, tmp_path, port, server)

    yield make
    for server in started:
        server.stop()


def parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def delivery_status(report: EmailMessage) -> list[dict[str, str]]:
    """The field blocks of a DSN's message/delivery-status part."""
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    text, status, headers = report.iter_parts()
    assert text.get_content_type() == "text/plain"
    assert headers.get_content_type() == "text/rfc822-headers"
    return [dict(block.items()) for block in status.get_payload()]


def bounces(relay: Relay, count: int = 1) -> list[EmailMessage]:
    return [parse(raw) for raw in relay.maildir("alice").wait(count, TIMEOUT)]


# --- SMTP --------------------------------------------------------------------------


def test_relayed_mail_reaches_the_mx_with_its_envelope(
    make_relay: Any, sinks: dict[str, Sink]
) -> None:
    relay = make_relay()
    relay.send(["carol@accept.test", "dave@accept.test"], subject="two recipients")
    ((sender, recipients, content),) = sinks["accept"].received()
    assert sender == "alice@example.com"
    assert recipients == ["carol@accept.test", "dave@accept.test"]  # one transaction
    assert b"Subject: two recipients" in content
    assert content.startswith(b"Received: from client.example.com")
    relay.wait_empty()


def test_mx_preference_and_fallback_to_address_records(
    make_relay: Any, sinks: dict[str, Sink]
) -> None:
    relay = make_relay()
    relay.send(["x@backup.test"], subject="backup")
    relay.send(["y@nomx.test"], subject="no mx")
    relay.send(["z@other.test"], subject="mx elsewhere")
    got = {tuple(recipients) for _, recipients, _ in sinks["accept"].received(3)}
    assert got == {("x@backup.test",), ("y@nomx.test",), ("z@other.test",)}
    relay.wait_empty()


def test_permanent_refusal_bounces_at_once_in_rfc3464_form(
    make_relay: Any, sinks: dict[str, Sink]
) -> None:
    relay = make_relay()
    queue_id = relay.send(["carol@accept.test", "bad@accept.test"], subject="half good")
    assert [r for _, r, _ in sinks["accept"].received()] == [["carol@accept.test"]]
    (report,) = bounces(relay)
    assert report["From"] == "Mail Delivery System <MAILER-DAEMON@mail.example.com>"
    assert report["To"] == "alice@example.com"
    assert report["Auto-Submitted"] == "auto-replied"
    message_fields, recipient = delivery_status(report)
    assert message_fields["Reporting-MTA"] == "dns; mail.example.com"
    assert message_fields["X-Mailplan-Queue-ID"] == queue_id
    assert recipient["Final-Recipient"] == "rfc822; bad@accept.test"
    assert recipient["Action"] == "failed"
    assert recipient["Status"] == "5.1.1"
    assert recipient["Remote-MTA"] == "dns; mx.accept.test"
    assert recipient["Diagnostic-Code"] == "smtp; 550 5.1.1 no such user here"
    original = list(report.iter_parts())[2].get_payload()
    assert "Subject: half good" in original and "half good\n" not in original.split("\n\n")[1:]
    raw = relay.maildir("alice").messages()[0]
    assert raw.startswith(b"Return-Path: <>\r\n")  # a DSN comes from the null sender
    relay.wait_empty()
    assert not list((relay.root / "var" / "queue").glob("*.tries"))  # never retried


def test_null_mx_and_unknown_domain_bounce(make_relay: Any, sinks: dict[str, Sink]) -> None:
    relay = make_relay()
    relay.send(["x@nullmx.test"], subject="null mx")
    relay.send(["x@nowhere.accept.test"], subject="no domain")
    statuses = sorted(delivery_status(report)[1]["Status"] for report in bounces(relay, 2))
    assert statuses == ["5.1.10", "5.1.2"]
    relay.wait_empty()


def test_temporary_failure_waits_then_many_messages_share_one_connection(
    make_relay: Any, sinks: dict[str, Sink]
) -> None:
    relay = make_relay(queue="retry: [1h], warn_after: 1h, give_up_after: 1d")
    sinks["accept"].mode = "defer"  # accept.test defers everything for now
    ids = [relay.send([f"m{n}@accept.test"], subject=f"batch {n}") for n in range(8)]
    tried = lambda: len(relay.queue_files("tries")) == len(ids)  # noqa: E731
    assert wait_until(tried, TIMEOUT), relay.server.log()
    shown = relay.mailplan("queue", "show", ids[0])
    assert "<m0@accept.test>  waits in SMTP(accept.test), 1 failed attempt(s)" in shown
    assert "451 4.3.0 try again later" in shown
    assert "SMTP(accept.test)" in relay.mailplan("queue")
    # The remote server is back: a flush sends everything now, over one connection.
    sinks["accept"].mode = "accept"
    sinks["accept"].connections = 0
    assert "8 message(s) to be tried again now" in relay.mailplan("queue", "flush", "accept.test")
    received = sinks["accept"].received(len(ids))
    assert sorted(r[0] for _, r, _ in received) == sorted(f"m{n}@accept.test" for n in range(8))
    # One connection at most: the one kept open since the deferrals, or a new one.
    assert sinks["accept"].connections <= 1
    relay.wait_empty()


def test_retries_on_schedule_warn_then_give_up(make_relay: Any, sinks: dict[str, Sink]) -> None:
    relay = make_relay(queue="retry: [1s], warn_after: 1s, give_up_after: 3s")
    queue_id = relay.send(["x@defer.test"], subject="doomed")
    warning, failure = bounces(relay, 2)
    (_, delayed) = delivery_status(warning)
    assert warning["Subject"] == "Delayed Mail (still trying)"
    assert delayed["Action"] == "delayed"
    assert delayed["Status"] == "4.3.0"
    assert "Will-Retry-Until" in delayed
    (_, failed) = delivery_status(failure)
    assert failed["Action"] == "failed"
    assert failed["Status"] == "4.4.7"
    assert "gave up after" in failed["Diagnostic-Code"]
    assert sinks["defer"].asked >= 2  # tried again on the schedule
    relay.wait_empty()
    assert queue_id in relay.server.log()


def test_a_reloaded_schedule_applies_to_mail_already_waiting(
    make_relay: Any, sinks: dict[str, Sink]
) -> None:
    relay = make_relay(queue="retry: [1h], warn_after: 1d, give_up_after: 1d")
    relay.send(["x@defer.test"], subject="waiting")
    assert wait_until(lambda: relay.queue_files("tries"), TIMEOUT), relay.server.log()
    write_relay_site(relay.root, relay.port, "retry: [1s], warn_after: 1d, give_up_after: 2s")
    relay.server.reload()
    (report,) = bounces(relay)
    assert delivery_status(report)[1]["Status"] == "4.4.7"
    relay.wait_empty()


def test_dropped_connection_is_temporary(make_relay: Any, sinks: dict[str, Sink]) -> None:
    relay = make_relay(queue="retry: [1h], warn_after: 1h, give_up_after: 1d")
    queue_id = relay.send(["x@drop.test"], subject="dropped")
    assert wait_until(lambda: relay.queue_files("tries"), TIMEOUT), relay.server.log()
    assert [p.stem for p in relay.queue_files()] == [queue_id]
    assert relay.maildir("alice").messages() == []  # no bounce for a temporary failure


def test_no_bounce_for_the_null_return_path(make_relay: Any, sinks: dict[str, Sink]) -> None:
    relay = make_relay()
    relay.send(["x@refuse.test"], sender="", subject="bounce of a bounce")
    # the queue file is made after the 250, so an empty queue alone proves nothing
    said = "no bounce for a message with the null return path"
    assert wait_until(lambda: said in relay.server.log(), TIMEOUT), relay.server.log()
    relay.wait_empty()
    assert relay.maildir("alice").messages() == []


def test_required_tls_defers_when_not_offered(make_relay: Any, sinks: dict[str, Sink]) -> None:
    relay = make_relay(
        queue="retry: [1h], warn_after: 1h, give_up_after: 1d",
        extra="outbound:\n  require_tls: [accept.test]\n",
    )
    queue_id = relay.send(["x@accept.test"], subject="secret")
    assert wait_until(lambda: relay.queue_files("tries"), TIMEOUT), relay.server.log()
    assert "TLS is required, but was not offered" in relay.mailplan("queue", "show", queue_id)
    assert sinks["accept"].messages == []


def test_a_stop_lets_the_batch_under_way_end_so_nothing_is_sent_twice(
    make_relay: Any, sinks: dict[str, Sink]
) -> None:
    """SIGTERM while a batch of relayed mail is on the wire: the batch ends first (what
    the remote accepted is recorded), so the restarted server sends only the rest."""
    sinks["accept"].mode = "slow"
    relay = make_relay()
    for n in range(12):
        relay.send([f"m{n}@accept.test"], subject=f"slow {n}")
    assert wait_until(lambda: len(sinks["accept"].messages) >= 3, TIMEOUT)
    assert relay.server.stop() == 0
    sinks["accept"].mode = "accept"
    relay.server.start()
    received = sinks["accept"].received(12)
    relay.wait_empty()
    subjects = Counter(parse(content)["Subject"] for _, _, content in received)
    assert subjects == Counter(f"slow {n}" for n in range(12)), relay.server.log()


# --- PIPE --------------------------------------------------------------------------


def test_pipe_delivers_with_envelope_in_environment(make_relay: Any, tmp_path: Path) -> None:
    relay = make_relay()
    queue_id = relay.send(["report@example.com"], subject="spam sample")
    argv = tmp_path / "out" / "argv"  # the pipe's last write
    assert wait_until(lambda: argv.exists() and argv.read_text().endswith("\n"), TIMEOUT)
    relay.wait_empty()
    content = (tmp_path / "out" / f"ok.{queue_id}").read_bytes()
    assert content.startswith(b"Return-Path: <alice@example.com>\r\n")
    assert b"Subject: spam sample" in content
    env = (tmp_path / "out" / f"env.{queue_id}").read_text()
    assert "SENDER=alice@example.com" in env.splitlines()
    assert "RECIPIENT=report@example.com" in env.splitlines()
    assert "CLIENT_ADDRESS=127.0.0.1" in env.splitlines()
    assert argv.read_text() == "--from-site --learn\n"


def test_pipe_exit_75_retries_and_other_status_bounces(make_relay: Any) -> None:
    relay = make_relay(queue="retry: [1h], warn_after: 1h, give_up_after: 1d")
    later = relay.send(["later@example.com"], subject="later")
    relay.send(["broken@example.com"], subject="broken")
    (report,) = bounces(relay)
    (_, failed) = delivery_status(report)
    assert failed["Final-Recipient"] == "rfc822; broken@example.com"
    assert failed["Status"] == "5.3.0"
    assert "spam filter: unknown verdict" in failed["Diagnostic-Code"]
    assert wait_until(lambda: relay.queue_files("tries"), TIMEOUT)
    assert [p.stem for p in relay.queue_files()] == [later]


# --- LIST --------------------------------------------------------------------------


def test_list_post_reaches_members_with_list_headers(
    make_relay: Any, sinks: dict[str, Sink]
) -> None:
    relay = make_relay()
    relay.send(["team@example.com"], subject="team news")
    (copy,) = relay.maildir("bob").wait(1, TIMEOUT)
    assert copy.startswith(b"Return-Path: <owner@example.com>\r\n")
    message = parse(copy)
    assert message["List-Id"] == "<team.example.com>"
    assert message["List-Post"] == "<mailto:team@example.com>"
    assert message["List-Unsubscribe"].startswith("<mailto:owner@example.com?")
    ((sender, recipients, _),) = sinks["accept"].received()
    assert (sender, recipients) == ("owner@example.com", ["carol@accept.test"])
    # bad@accept.test was refused: the bounce goes to the owner, not to the poster.
    (report,) = [parse(raw) for raw in relay.maildir("owner").wait(1, TIMEOUT)]
    assert delivery_status(report)[1]["Final-Recipient"] == "rfc822; bad@accept.test"
    assert [parse(raw)["Subject"] for raw in relay.maildir("alice").wait(1, TIMEOUT)] == [
        "team news"
    ]
    relay.wait_empty()


def test_list_posting_policies(make_relay: Any) -> None:
    relay = make_relay()
    relay.send(["team@example.com"], sender="owner@example.com", subject="not a member")
    relay.send(["news@example.com"], subject="moderated")
    (refused,) = [parse(raw) for raw in relay.maildir("owner").wait(1, TIMEOUT)]
    assert delivery_status(refused)[1]["Diagnostic-Code"] == (
        "x-mailplan; only members may post to list team@example.com"
    )
    (moderated,) = bounces(relay)
    assert delivery_status(moderated)[1]["Diagnostic-Code"] == (
        "x-mailplan; list news@example.com is moderated: it takes no direct posts"
    )
    relay.wait_empty()
    assert relay.maildir("bob").messages() == []
