"""The queue in a process of its own (runtime/serve/queueprocess.py): `mailplan serve`
accepts in one process and processes and delivers in another.

End to end with a real `mailplan serve` and smtplib: the back is the server's child,
delivers what the front accepted, follows a reload, is started again when it dies
(handed what it had not settled), and ends with the server. In-process, on a real
socket pair and a real spool: a message handed again whose batch was committed is
settled, not delivered twice.
"""

from __future__ import annotations

import asyncio
import os
import signal
import smtplib
import socket
import time
from pathlib import Path

import pytest

from mailplan.plan import codec
from mailplan.plan.model import Plan
from mailplan.runtime.decide.router import Router
from mailplan.runtime.delivery.scheduler import Remote
from mailplan.runtime.queue.arrival import Arrival
from mailplan.runtime.serve import queueprocess
from mailplan.runtime.store.intake import Intake
from mailplan.runtime.store.spool import Envelope, Share, Spool, new_id
from tests.serverkit import LOOPBACK, Maildir, MailServer, children, free_port, wait_until
from tests.sitekit import alice_plan, plain, write_site


def _send(port: int, count: int, subject: str = "hello", to: str = "alice@example.com") -> None:
    with smtplib.SMTP(LOOPBACK, port, timeout=10) as client:
        for number in range(count):
            message = f"Subject: {subject} {number}\r\n\r\nbody {number}\r\n"
            client.sendmail("sender@remote.test", [to], message)


def _back(server: MailServer) -> int:
    assert server.process is not None
    found = wait_until(lambda: children(server.process.pid), timeout=10)  # type: ignore[union-attr]
    assert found, server.log()
    return int(found[0])  # type: ignore[index]


def _server(tmp_path: Path, port: int, **settings: object) -> MailServer:
    site = write_site(tmp_path / "site", listeners={"smtp": plain(port)}, **settings)
    return MailServer(site, tmp_path / "root", [port])


def test_the_back_delivers_what_the_front_accepted(tmp_path: Path) -> None:
    port = free_port()
    with _server(tmp_path, port) as server:
        back = _back(server)
        assert "mailplan.runtime.serve.queueprocess" in Path(f"/proc/{back}/cmdline").read_text()
        _send(port, 5)
        mailbox = Maildir(server.path("var/mail/example.com/alice"))
        assert len(mailbox.wait(5)) == 5, server.log()
        assert server.wait_for_log("queue process on plan sha256:")
    assert server.returncode == 0
    assert not Path(f"/proc/{back}").exists() or "Z" in Path(f"/proc/{back}/stat").read_text()


def test_a_back_that_dies_is_started_again_and_handed_what_it_had_not_settled(
    tmp_path: Path,
) -> None:
    port = free_port()
    with _server(tmp_path, port) as server:
        back = _back(server)
        assert server.wait_for_log("INFO serving plan")  # the back is ready: the front serves
        os.kill(back, signal.SIGSTOP)  # it reads nothing: what is accepted waits in the front
        _send(port, 3, "while stopped")
        mailbox = Maildir(server.path("var/mail/example.com/alice"))
        assert mailbox.messages() == []
        os.kill(back, signal.SIGKILL)
        assert server.wait_for_log("the queue process was killed (signal 9); started again")
        assert len(mailbox.wait(3)) == 3, server.log()
        assert _back(server) != back
        _send(port, 1, "after")
        assert len(mailbox.wait(4)) == 4
    assert server.returncode == 0
    subjects = sorted(m.split(b"Subject: ")[1].split(b"\r\n")[0] for m in mailbox.messages())
    assert subjects == [b"after 0", b"while stopped 0", b"while stopped 1", b"while stopped 2"]


def test_a_back_that_cannot_use_its_mail_folder_says_so_in_one_line(tmp_path: Path) -> None:
    port = free_port()
    with _server(tmp_path, port) as server:
        back = _back(server)
        mail = server.path("var/mail")
        mail.rename(mail.with_name("mail.away"))
        mail.write_text("not a folder\n")  # an operator's mistake
        os.kill(back, signal.SIGKILL)
        said = f"ERROR the queue process cannot run: [Errno 17] File exists: '{mail}'\n"
        assert server.wait_for_log(said), server.log()
        _send(port, 1)  # the front still accepts, into the journal
        mail.unlink()
        mail.with_name("mail.away").rename(mail)
        assert len(Maildir(mail / "example.com/alice").wait(1, timeout=20)) == 1, server.log()
    assert "Traceback" not in server.log()


def test_the_back_follows_a_reload(tmp_path: Path) -> None:
    port = free_port()
    with _server(tmp_path, port) as server:
        assert server.wait_for_log("queue process on plan")
        write_site(
            tmp_path / "site",
            listeners={"smtp": plain(port)},
            accounts=("alice", "bob"),
        )
        at = len(server.log())
        server.reload()
        assert server.wait_for_log("reloaded: serving plan", after=at), server.log()
        digest = server.log()[at:].split("reloaded: serving plan ")[1].split()[0]
        assert server.wait_for_log(f"queue process on plan {digest}", after=at)
        _send(port, 1, to="bob@example.com")  # the old plan has no bob: it would bounce
        bob = Maildir(server.path("var/mail/example.com/bob"))
        assert len(bob.wait(1)) == 1, server.log()


def test_a_session_keeps_its_plan_through_a_reload_in_the_back_too(tmp_path: Path) -> None:
    """bob is removed by a reload while a session that started before it sends to him:
    the message got 250 under the plan with bob, and is delivered by that plan."""
    port = free_port()
    with _server(tmp_path, port, accounts=("alice", "bob")) as server:
        assert server.wait_for_log("INFO serving plan")
        with smtplib.SMTP(LOOPBACK, port, timeout=10) as client:
            client.ehlo()
            write_site(tmp_path / "site", listeners={"smtp": plain(port)}, accounts=("alice",))
            at = len(server.log())
            server.reload()
            assert server.wait_for_log("reloaded: serving plan", after=at), server.log()
            client.sendmail("sender@remote.test", ["bob@example.com"], "Subject: kept\r\n\r\nx")
        bob = Maildir(server.path("var/mail/example.com/bob"))
        assert len(bob.wait(1)) == 1, server.log()
        assert "unknown user" not in server.log()


def test_the_back_dies_with_the_front(tmp_path: Path) -> None:
    port = free_port()
    server = _server(tmp_path, port).start()
    try:
        back = _back(server)
    finally:
        server.kill()
    gone = wait_until(lambda: not Path(f"/proc/{back}").exists(), timeout=10)
    assert gone, "the queue process outlived a server killed with SIGKILL"


def test_one_process_serves_without_a_back(tmp_path: Path) -> None:
    port = free_port()
    site = write_site(tmp_path / "site", listeners={"smtp": plain(port)})
    with MailServer(site, tmp_path / "root", [port], extra_arguments=["--one-process"]) as server:
        _send(port, 2)
        assert len(Maildir(server.path("var/mail/example.com/alice")).wait(2)) == 2
        assert server.process is not None and children(server.process.pid) == []
    assert "queue process" not in server.log()


async def _frames(reader: asyncio.StreamReader, count: int) -> list[tuple[int, bytes]]:
    found = []
    for _ in range(count):
        frame = await asyncio.wait_for(queueprocess.read_frame(reader), 10)
        assert frame is not None
        found.append(frame)
    return found


def test_a_message_handed_again_after_its_batch_was_committed_is_not_delivered_twice(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    plan = alice_plan(tmp_path / "site", free_port())
    root = tmp_path / "root"
    spool = Spool(root / "var/queue")
    mailbox = Maildir(root / "var/mail/example.com/alice")

    def message(text: str) -> bytes:
        envelope = Envelope(
            new_id(), time.time(), "", "smtp", "127.0.0.1", "client.remote.test", "", "",
            "s@remote.test", ("alice@example.com",),
        )  # fmt: skip
        return envelope.header() + f"Subject: {text}\r\n\r\n{text}\r\n".encode()

    committed = message("committed")
    envelope, body = queueprocess.parse(committed)
    # a batch that was committed left a queue file for what still waits: the queue
    # delivers it from there, once; handed again, it is only settled
    spool.store(envelope, body)

    async def scenario() -> list[tuple[int, bytes]]:
        front, back = socket.socketpair()
        reader, writer = await asyncio.open_connection(sock=back)
        setup = queueprocess.Setup.of(
            spool.directory, root / "var/mail", Remote(resolver="127.0.0.1:9"), Share(),
            ("text", "info"),
        )  # fmt: skip
        task = asyncio.create_task(queueprocess._Back(setup, reader, writer).run())
        their_reader, their_writer = await asyncio.open_connection(sock=front)
        fresh = message("fresh")
        their_writer.write(
            queueprocess.frame(queueprocess.PLAN, codec.dumps(plan).encode())
            + queueprocess.frame(queueprocess.AGAIN, committed)
            + queueprocess.frame(queueprocess.MESSAGE, b"garbage")  # said, and skipped
            + queueprocess.frame(queueprocess.MESSAGE, fresh)
        )
        ready, *settled = await _frames(their_reader, 3)
        assert ready == (queueprocess.READY, b"")
        await asyncio.to_thread(mailbox.wait, 2)
        their_writer.close()  # the front stops: so does the back
        await asyncio.wait_for(task, 30)
        return settled

    settled = asyncio.run(scenario())
    cannot = "queue process: a message that cannot be read: not a mailplan queue file"
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [cannot]
    assert settled[0] == (queueprocess.SETTLED, envelope.id.encode())
    assert settled[1][0] == queueprocess.SETTLED
    subjects = sorted(m.split(b"Subject: ")[1].split(b"\r\n")[0] for m in mailbox.messages())
    assert subjects == [b"committed", b"fresh"]


def _impatient_feed(root: Path, plan: Plan) -> queueprocess.Feed:
    """A front's side on a real spool and intake journal under `root`, whose watchdog
    takes a back for hung after 1 s (call it in the event loop)."""
    spool = Spool(root / "var/queue")
    intake = Intake(spool.directory / "intake")
    intake.open()
    setup = queueprocess.Setup.of(
        spool.directory, root / "var/mail", Remote(resolver="127.0.0.1:9"), Share(),
        ("text", "info"),
    )  # fmt: skip
    return queueprocess.Feed(intake, setup, plan, patience=1.0)


def test_a_back_that_says_nothing_while_mail_waits_is_killed_and_started_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A back that is alive but hung (here: stopped) is not waited for forever: once it
    has said nothing, not even ALIVE, for `patience` seconds, the front kills it, and the
    next back is handed the message and delivers it. Neither an idle back nor a front
    that was itself held up counts as silence."""
    plan = alice_plan(tmp_path / "site", free_port())
    root = tmp_path / "root"
    mailbox = Maildir(root / "var/mail/example.com/alice")
    envelope = Envelope(
        new_id(), time.time(), "", "smtp", "127.0.0.1", "client.remote.test", "", "",
        "s@remote.test", ("alice@example.com",),
    )  # fmt: skip

    async def scenario() -> tuple[int, int]:
        feed = _impatient_feed(root, plan)
        await feed.start()
        assert feed._process is not None
        hung = feed._process.pid
        await asyncio.sleep(2.0)  # idle: it says ALIVE, so it is not hung
        assert feed._process.pid == hung
        time.sleep(1.5)  # the front itself is held up: the back's frames wait in the socket
        await asyncio.sleep(1.0)
        assert feed._process.pid == hung
        os.kill(hung, signal.SIGSTOP)
        arrival = Arrival(envelope, b"Subject: waits\r\n\r\nbody\r\n", "", Router(plan))
        await feed.accept(arrival)
        await asyncio.to_thread(mailbox.wait, 1, 20)
        assert feed._process is not None
        started = feed._process.pid
        await feed.stop()
        await feed.intake.close()
        return hung, started

    hung, started = asyncio.run(scenario())
    assert started != hung
    assert len(mailbox.messages()) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors[0].startswith(f"the queue process (pid {hung}) said nothing for ")
    assert errors[0].endswith(" s, 1 message(s) waiting: killed")
    assert errors[1] == "the queue process was killed (signal 9); started again in 1 s"


def test_a_back_that_is_not_ready_in_time_is_killed_and_started_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A back stopped as it starts (before it could load the plan and say READY) would
    keep the front from serving: past `patience` it is killed, and the next one serves."""
    plan = alice_plan(tmp_path / "site", free_port())
    root = tmp_path / "root"

    async def scenario() -> tuple[int, int]:
        feed = _impatient_feed(root, plan)
        starting = asyncio.create_task(feed.start())
        while feed._process is None:
            await asyncio.sleep(0.001)
        stuck = feed._process.pid
        os.kill(stuck, signal.SIGSTOP)  # long before it has read its plan
        await asyncio.wait_for(starting, 30)  # the front serves once the stuck one is gone

        async def the_next_is_ready() -> None:
            while feed._process is None or feed._process.pid == stuck or not feed._ready:
                await asyncio.sleep(0.05)

        await asyncio.wait_for(the_next_is_ready(), 30)
        assert feed._process is not None
        started = feed._process.pid
        await feed.stop()
        await feed.intake.close()
        return stuck, started

    stuck, started = asyncio.run(scenario())
    assert started != stuck
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors[0].startswith(f"the queue process (pid {stuck}) was not ready ")
    assert errors[0].endswith(" s after its start: killed")
