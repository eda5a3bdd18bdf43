"""`mailplan queue hold/release/delete` with a server running on the queue: a held message is
not delivered until released, across restarts; each change is a line in the server's log."""

from __future__ import annotations

import smtplib
from pathlib import Path

from dnskit import NameServer, zone_text
from serverkit import LOOPBACK, Maildir, MailServer, free_port, mailplan
from sitekit import plain, write_site

from mailplan.runtime.store.spool import Envelope, Spool, new_id

TIMEOUT = 15.0


def queued(root: Path, recipient: str) -> str:
    """A message in the queue, as a server that stopped would have left it."""
    envelope = Envelope(
        new_id(), 1_700_000_000.0, "sha256:x", "smtp", "192.0.2.1", "client.test", "none",
        "-", "someone@remote.test", (recipient,),
    )  # fmt: skip
    Spool(root / "var/queue").store(envelope, b"Subject: held\r\n\r\nheld\r\n")
    return envelope.id


def queue(site: Path, root: Path, *arguments: str) -> str:
    done = mailplan("queue", *arguments, "--site", site, "--root", root)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_held_message_waits_across_restarts_until_released(tmp_path: Path) -> None:
    port = free_port()
    site = write_site(tmp_path / "site", listeners={"smtp": plain(port)}, accounts=["alice"])
    queue_id = queued(tmp_path, "alice@example.com")
    assert queue(site, tmp_path, "hold", queue_id).startswith(f"{queue_id}: on hold\n")
    server = MailServer(site, tmp_path, [port])
    mailbox = Maildir(tmp_path / "var/mail/example.com/alice")
    for start in range(2):
        begun = len(server.log())  # this start's line, not the last one's
        with server:
            on_hold = f"{queue_id} on hold: not delivered until released"
            assert server.wait_for_log(on_hold, after=begun)
            if start == 1:
                mark = len(server.log())
                assert queue(site, tmp_path, "release", queue_id).startswith(
                    f"{queue_id}: released\n"
                )
                assert server.wait_for_log(f"{queue_id} released from hold", after=mark)
                messages = mailbox.wait(2, TIMEOUT)  # the client's, and the held one
                assert sum(b"Subject: held" in message for message in messages) == 1
                assert server.wait_for_log(f"{queue_id} <alice@example.com> delivered")
            else:
                # a client's mail is delivered meanwhile: the held one is still not
                with smtplib.SMTP(LOOPBACK, port, timeout=TIMEOUT) as client:
                    client.sendmail("someone@remote.test", ["alice@example.com"], b"\r\nnew\r\n")
                assert mailbox.wait(1, TIMEOUT) == [mailbox.messages()[0]]
                assert b"new" in mailbox.messages()[0]
        if start == 0:
            assert len(mailbox.messages()) == 1  # the held one was not delivered
            assert Spool(tmp_path / "var/queue").is_held(queue_id)
    assert not Spool(tmp_path / "var/queue").exists(queue_id)


def test_hold_and_delete_a_waiting_message_under_workers(tmp_path: Path) -> None:
    port = free_port()
    site = write_site(tmp_path / "site", listeners={"smtp": plain(port)}, accounts=["alice"])
    # remote.example is nowhere in DNS: its mail waits for a retry
    with NameServer(tmp_path, {"test": zone_text("test", "")}) as dns:
        server = MailServer(
            site, tmp_path, [port], resolver=dns.address, extra_arguments=["--workers", "2"]
        )
        with server:
            with smtplib.SMTP(LOOPBACK, port, timeout=TIMEOUT) as client:
                client.ehlo("client.example.com")
                client.mail("alice@example.com")
                client.rcpt("x@remote.example")
                code, reply = client.data(b"Subject: waiting\r\n\r\nwaiting\r\n")
            assert code == 250
            queue_id = reply.decode().rpartition(" ")[2]
            assert server.wait_for_log(f"{queue_id} <x@remote.example> deferred")

            mark = len(server.log())
            assert queue(site, tmp_path, "hold", "--domain", "remote.example") == (
                f"{queue_id}: on hold\n1 message(s) on hold\n"
            )
            assert server.wait_for_log(
                f"{queue_id} on hold: not delivered until released", after=mark
            )
            assert f"1 of them on hold: {queue_id}\n" in queue(site, tmp_path, "list")

            mark = len(server.log())
            assert queue(site, tmp_path, "release", "--all").startswith(f"{queue_id}: released\n")
            assert server.wait_for_log(f"{queue_id} released from hold", after=mark)
            assert server.wait_for_log(f"{queue_id} <x@remote.example> queued in", after=mark)

            mark = len(server.log())
            assert queue(site, tmp_path, "delete", queue_id).startswith(f"{queue_id}: deleted\n")
            assert server.wait_for_log(f"{queue_id} deleted from the queue", after=mark)
            assert not list((tmp_path / "var/queue").glob(f"{queue_id}.*"))
        assert "DSN" not in server.log()[mark:]
