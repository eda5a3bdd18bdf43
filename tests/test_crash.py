"""Crash safety over real sockets: what the server acknowledged survives a SIGKILL.

A real `mailplan serve` runs on loopback; client threads send messages at once, the
server is killed with SIGKILL while they do, and is started again on the same root.
Every message that got its 250 must then be in the Maildirs (zero loss); messages
delivered twice are allowed (at-least-once) and counted. A queue file that cannot be
read must not stop the server.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import re
import smtplib
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from serverkit import MailServer, accepts, free_port, wait_until
from sitekit import plain, write_site

from mailplan.runtime.store.intake import Intake
from mailplan.runtime.store.spool import Envelope, Spool, new_id

PROJECT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
ACCOUNTS = ("alice", "bob", "carol", "dave")
THREADS = 8
PER_THREAD = 25
KILL_AFTER = 60  # acknowledged messages before the SIGKILL
TOKEN = re.compile(rb"^Token: (\S+)\r?$", re.MULTILINE)


def write_crash_site(directory: Path, port: int, rules: bool = False) -> Path:
    """The crash site; with `rules`, every account has domain rules (they change the
    message) and `team@example.com` is a list of alice and bob: mail is processed by
    rules and goes through a queue file after its 250."""
    if not rules:
        return write_site(
            directory, hostname="mail.crash.test", listeners={"smtp": plain(port)},
            accounts=ACCOUNTS,
        )  # fmt: skip
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "domain.rules").write_text(
        'rule "Tag" priority 5\n  if   Subject is "crash test*"\n  then Tag Subject "[crash]"\n',
        encoding="utf-8",
    )
    members = ["alice@example.com", "bob@example.com"]
    team = {"owner": "alice", "members": members, "posting": "anyone"}
    domain = {"rules": "domain.rules", "lists": {"team": team}}
    return write_site(
        directory, hostname="mail.crash.test", listeners={"smtp": plain(port)},
        accounts=ACCOUNTS, domains={"example.com": domain},
    )  # fmt: skip


@pytest.fixture
def servers() -> Iterator[list[MailServer]]:
    started: list[MailServer] = []
    yield started
    for server in started:
        server.stop()


def queue_files(root: Path, suffix: str) -> list[Path]:
    directory = root / "var" / "queue"
    return sorted(directory.glob(f"*{suffix}")) if directory.is_dir() else []


def maildir_tokens(root: Path) -> tuple[collections.Counter[tuple[str, str]], list[Path]]:
    """(token, account) -> how many copies in new/; and the files that hold no token."""
    found: collections.Counter[tuple[str, str]] = collections.Counter()
    broken = []
    for path in sorted((root / "var" / "mail" / "example.com").glob("*/new/*")):
        data = path.read_bytes()
        match = TOKEN.search(data)
        if match is None or not data.endswith(b"END\r\n"):
            broken.append(path)
            continue
        found[(match.group(1).decode(), path.parent.parent.name)] += 1
    return found, broken


def message(token: str, recipients: list[str]) -> bytes:
    return (
        f"From: sender@remote.test\r\n"
        f"To: {', '.join(recipients)}\r\n"
        f"Subject: crash test {token}\r\n"
        f"Message-ID: <{token}@crash.test>\r\n"
        f"\r\n"
        f"Token: {token}\r\n"
        f"{'padding ' * 50}\r\n"
        f"END\r\n"
    ).encode()


def earlier(recipients: tuple[str, ...]) -> Envelope:
    """The envelope of a message queued before the server started."""
    return Envelope(
        id=new_id(),
        arrived=time.time(),
        plan="sha256:earlier",
        listener="smtp",
        client="127.0.0.1",
        helo="before.test",
        tls="none",
        auth="-",
        sender="sender@remote.test",
        recipients=recipients,
    )


def addressed(number: int, team: bool) -> tuple[list[str], list[str]]:
    """The accounts a message reaches and its recipients: alice and one other, or with
    `team` that other and the list `team` (alice and bob)."""
    accounts = ["alice", ACCOUNTS[1 + number % (len(ACCOUNTS) - 1)]]
    recipients = [f"{name}@example.com" for name in accounts]
    if team:
        accounts = ["alice", "bob"] if accounts[1] == "bob" else [*accounts, "bob"]
        recipients = [recipients[1], "team@example.com"]
    return accounts, recipients


def send_one(port: int, token: str, recipients: list[str]) -> None:
    with smtplib.SMTP(HOST, port, timeout=10) as client:
        refused = client.sendmail("sender@remote.test", recipients, message(token, recipients))
        assert refused == {}


def gone(port: int) -> bool:
    """Nothing listens on the port any more (workers die a moment after their supervisor)."""
    return bool(wait_until(lambda: not accepts(HOST, port), timeout=10))


@pytest.mark.parametrize(
    ("workers", "rules"),
    [("1", False), ("2", False), ("1", True), ("2", True)],
    ids=["one-process", "two-workers", "rules-and-lists", "rules-and-lists-two-workers"],
)
def test_acknowledged_messages_survive_sigkill(
    tmp_path: Path, servers: list[MailServer], workers: str, rules: bool
) -> None:
    """With `rules`, every message goes through account rules after its 250, and every
    third goes to a list (a queue file written in a batch, then list copies)."""
    port = free_port()
    site = write_crash_site(tmp_path / "site", port, rules)
    root = tmp_path / "root"
    root.mkdir()
    server = MailServer(site, root, [port], extra_arguments=["--workers", workers])
    servers.append(server)
    server.start()

    lock = threading.Lock()
    acknowledged: dict[str, list[str]] = {}  # token -> the accounts it was sent to
    attempted: dict[str, list[str]] = {}
    errors: list[str] = []
    killed = threading.Event()

    def client(number: int) -> None:
        try:
            connection = smtplib.SMTP(HOST, port, timeout=10)
        except OSError as exc:
            with lock:
                errors.append(f"thread {number}: connect: {exc!r}")
            return
        try:
            for i in range(PER_THREAD):
                token = f"T{number:02d}-{i:03d}-{uuid.uuid4().hex}"
                accounts, recipients = addressed(number + i, rules and i % 3 == 0)
                with lock:
                    attempted[token] = accounts
                try:
                    refused = connection.sendmail(
                        "sender@remote.test", recipients, message(token, recipients)
                    )
                except (smtplib.SMTPException, OSError) as exc:
                    with lock:
                        errors.append(f"thread {number}: {type(exc).__name__}")
                    return
                with lock:
                    if refused:
                        errors.append(f"thread {number}: refused {refused}")
                        continue
                    acknowledged[token] = accounts
                    if len(acknowledged) == KILL_AFTER and not killed.is_set():
                        killed.set()
                        server.kill()  # in the middle: the other threads are mid-transaction
        finally:
            with contextlib.suppress(OSError):
                connection.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(THREADS)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads), "a client thread hung"
    sending = time.monotonic() - started

    assert killed.is_set(), f"the server was never killed: {len(acknowledged)} acknowledged"
    assert not server.running
    assert len(acknowledged) < THREADS * PER_THREAD, "the kill came after everything was sent"
    left_msg = len(queue_files(root, ".msg"))
    left_tmp = len(queue_files(root, ".tmp"))
    left_done = len(queue_files(root, ".done"))
    left_journal = len(list((root / "var" / "queue" / "intake").glob("*.log")))

    assert gone(port)
    restarted = MailServer(site, root, [port], extra_arguments=["--workers", workers])
    servers.append(restarted)
    restarted.start()
    # And the restarted server takes new mail as before.
    send_one(port, "after-restart", ["alice@example.com"])
    acknowledged["after-restart"] = ["alice"]
    expected = {(token, name) for token, names in acknowledged.items() for name in names}

    def delivered() -> bool:
        return not queue_files(root, ".msg") and expected <= set(maildir_tokens(root)[0])

    drained = wait_until(delivered, timeout=20)
    found, broken = maildir_tokens(root)
    lost = sorted(expected - set(found))
    duplicates = sum(count - 1 for count in found.values() if count > 1)
    copies = sum(found.values())
    unacknowledged_delivered = {
        token for (token, _) in found if token not in acknowledged and token in attempted
    }
    maildir_tmp = list((root / "var" / "mail").glob("*/*/tmp/*"))
    summary = (
        f"\ncrash test: {len(attempted)} attempted, {len(acknowledged)} acknowledged "
        f"({len(expected)} acknowledged deliveries), killed after {KILL_AFTER} "
        f"in {sending:.2f} s of sending\n"
        f"  queue at the kill: {left_msg} .msg, {left_done} .done, {left_tmp} .tmp, "
        f"{left_journal} intake journal segments\n"
        f"  delivered: {copies} copies of {len(found)} (message, mailbox) pairs; "
        f"lost: {len(lost)}; duplicates: {duplicates}; "
        f"unacknowledged but delivered: {len(unacknowledged_delivered)} messages; "
        f"broken files: {len(broken)}; leftovers in Maildir tmp/: {len(maildir_tmp)}\n"
        f"  client errors: {collections.Counter(e.split(': ')[-1] for e in errors)}"
    )
    assert drained, f"the queue did not drain: {queue_files(root, '.msg')}{summary}"
    assert lost == [], f"{len(lost)} acknowledged deliveries lost: {lost[:10]}{summary}"
    assert broken == [], f"partial messages in new/: {broken[:10]}{summary}"
    assert not queue_files(root, ".bad"), "a crash must not leave unreadable queue files"
    assert not queue_files(root, ".tmp"), "leftover .tmp files are removed at start"
    assert not queue_files(root, ".done"), "no .done without its .msg"
    assert restarted.running, restarted.log()[-20000:]
    assert "Traceback" not in restarted.log(), restarted.log()[-20000:]


def test_corrupt_queue_file_does_not_stop_the_server(
    tmp_path: Path, servers: list[MailServer]
) -> None:
    port = free_port()
    site = write_crash_site(tmp_path / "site", port)
    root = tmp_path / "root"
    spool = Spool(root / "var" / "queue")
    garbage = b"\x00\xffthis is not a queue file\n\nat all\n" * 20
    (spool.directory / "XYZ.msg").write_bytes(garbage)
    (spool.directory / "EMPTY.msg").write_bytes(b"")
    (spool.directory / "LEFT.tmp").write_bytes(b"never acknowledged")
    spool.store(earlier(("bob@example.com",)), message("queued-before-start", ["bob@example.com"]))
    (spool.directory / "ZZZ.msg").write_bytes(b"MAILPLAN-QUEUE 1\nId: ZZZ\n")  # truncated

    server = MailServer(site, root, [port])
    servers.append(server)
    server.start()
    send_one(port, "sent-after-start", ["alice@example.com", "carol@example.com"])
    assert wait_until(lambda: not queue_files(root, ".msg"), timeout=10), queue_files(root, ".msg")
    assert wait_until(lambda: len(maildir_tokens(root)[0]) == 3, timeout=10)

    found, broken = maildir_tokens(root)
    assert found == {
        ("queued-before-start", "bob"): 1,
        ("sent-after-start", "alice"): 1,
        ("sent-after-start", "carol"): 1,
    }
    assert broken == []
    assert (spool.directory / "XYZ.bad").read_bytes() == garbage
    assert (spool.directory / "EMPTY.bad").read_bytes() == b""
    assert (spool.directory / "ZZZ.bad").read_bytes() == b"MAILPLAN-QUEUE 1\nId: ZZZ\n"
    assert not (spool.directory / "LEFT.tmp").exists()
    assert server.running
    log = server.log()
    assert "XYZ.msg is unreadable" in log
    assert "Traceback" not in log


@pytest.mark.parametrize("workers", ["1", "2"], ids=["one-process", "two-workers"])
def test_killed_while_the_queue_is_processed(
    tmp_path: Path, servers: list[MailServer], workers: str
) -> None:
    """A crash in the middle of delivery (not of acceptance): nothing queued is lost.
    With two workers each recovers the queue ids it owns, and together they recover all."""
    port = free_port()
    site = write_crash_site(tmp_path / "site", port)
    root = tmp_path / "root"
    spool = Spool(root / "var" / "queue")
    total = 400
    expected: set[tuple[str, str]] = set()
    for i in range(total):
        token = f"Q{i:04d}-{uuid.uuid4().hex}"
        accounts = ["alice", ACCOUNTS[1 + i % (len(ACCOUNTS) - 1)]]
        recipients = tuple(f"{name}@example.com" for name in accounts)
        spool.store(earlier(recipients), message(token, list(recipients)))
        expected.update((token, name) for name in accounts)

    server = MailServer(site, root, [port], extra_arguments=["--workers", workers])
    servers.append(server)
    server.ports = []  # do not wait for it to listen
    server.start()
    assert wait_until(lambda: len(queue_files(root, ".msg")) < total - 40, 20, 0.002)
    server.kill()
    remaining = len(queue_files(root, ".msg"))

    assert gone(port)
    restarted = MailServer(site, root, [port], extra_arguments=["--workers", workers])
    servers.append(restarted)
    restarted.start()
    drained = wait_until(lambda: not queue_files(root, ".msg"), timeout=20)
    found, broken = maildir_tokens(root)
    lost = sorted(expected - set(found))
    duplicates = sum(count - 1 for count in found.values() if count > 1)
    summary = (
        f"\nkilled while delivering: {total} queued ({len(expected)} deliveries), "
        f"{remaining} .msg left at the kill; delivered {sum(found.values())} copies, "
        f"lost {len(lost)}, duplicates {duplicates}"
    )
    assert remaining > 0, "the kill came after the queue was done" + summary
    assert drained, f"the queue did not drain: {queue_files(root, '.msg')[:5]}{summary}"
    assert lost == [], f"{len(lost)} queued deliveries lost: {lost[:10]}{summary}"
    assert broken == [], summary
    assert set(found) == expected, summary
    assert not queue_files(root, ".bad")
    assert not queue_files(root, ".done")


def test_recovery_skips_a_journal_record_whose_queue_file_exists(
    tmp_path: Path, servers: list[MailServer]
) -> None:
    """A process killed after a batch was committed but before its settled marks were
    written: the queue file holds what still waits, and the Maildir copies are in place
    (the queue file is named last), so recovery must not deliver the journal's copy again.
    A record without a queue file is recovered in full."""
    port = free_port()
    site = write_crash_site(tmp_path / "site", port)
    root = tmp_path / "root"
    spool = Spool(root / "var" / "queue")
    committed = earlier(("alice@example.com", "bob@example.com"))
    unprocessed = earlier(("carol@example.com", "dave@example.com"))

    async def crash() -> None:  # two records, never settled; the process "dies"
        intake = Intake(spool.directory / "intake")
        intake.open()
        await intake.write(committed, message("committed", ["alice@example.com"]))
        await intake.write(unprocessed, message("unprocessed", ["carol@example.com"]))
        for segment in list(intake._segments):
            os.close(segment.descriptor)  # its lock goes with it, as with a SIGKILL
        intake._thread.shutdown()

    asyncio.run(crash())
    # the batch of `committed` delivered alice's copy and staged bob's as a queue file
    spool.store(replace(committed, recipients=("bob@example.com",)), message("committed", []))
    server = MailServer(site, root, [port])
    servers.append(server)
    server.start()
    expected = {
        ("committed", "bob"): 1,
        ("unprocessed", "carol"): 1,
        ("unprocessed", "dave"): 1,
    }
    assert wait_until(lambda: maildir_tokens(root)[0] == expected, timeout=10), maildir_tokens(root)
    assert wait_until(lambda: not queue_files(root, ".msg"), timeout=10)
    assert re.search(r"intake: 1 message\(s\) of \S+ queued again", server.log())
    assert re.search(r"intake: 1 message\(s\) of \S+ were queued already", server.log())
    assert "Traceback" not in server.log()
