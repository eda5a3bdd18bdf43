"""The LMTP client (runtime/delivery/lmtp.py) against a scripted LMTP server on loopback,
and the pure part (runtime/decide/lmtp.py): which queue, which RCPT address.

The server answers each RCPT and each recipient's reply after DATA as the test says, so
every case of RFC 2033's per-recipient replies is exercised; Dovecot itself is in
tests/test_lmtp_dovecot.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from serverkit import LOOPBACK, free_port

from mailplan.compiler.pipeline import compile_site
from mailplan.plan.model import LocalDelivery
from mailplan.runtime.decide import lmtp as decide
from mailplan.runtime.delivery import lmtp
from mailplan.runtime.delivery.outbound import Fate, Parcel

SETTINGS = lmtp.LmtpSettings("mx.example.com", timeout=5.0)


@dataclass
class Script:
    """What the fake server says: a reply per RCPT and per recipient after DATA (250 when
    not named), and whether it hangs up after `cut_after` replies to the data."""

    rcpt: dict[str, str] = field(default_factory=dict)
    after_data: dict[str, str] = field(default_factory=dict)
    cut_after: int | None = None
    greeting: str = "220 lmtp.test LMTP ready"
    seen: list[str] = field(default_factory=list)  # the commands, in order
    messages: list[bytes] = field(default_factory=list)


SIMPLE = {
    "LHLO": "250-lmtp.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE",
    "MAIL": "250 2.1.0 OK",
    "RSET": "250 2.0.0 OK",
    "QUIT": "221 2.0.0 Bye",
}


async def _serve(
    script: Script, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    def say(line: str) -> None:
        writer.write(line.encode() + b"\r\n")

    say(script.greeting)
    accepted: list[str] = []
    try:
        while line := await reader.readline():
            command = line.decode().rstrip("\r\n")
            script.seen.append(command)
            verb = command.split(" ", 1)[0].split(":", 1)[0].upper()
            if verb in SIMPLE:
                say(SIMPLE[verb])
                accepted = [] if verb == "MAIL" else accepted
            elif verb == "RCPT":
                address = command.split("<", 1)[1].rstrip(">")
                reply = script.rcpt.get(address, "250 2.1.5 OK")
                if reply.startswith("2"):
                    accepted.append(address)
                say(reply)
            elif verb == "DATA":
                say("354 go ahead")
                await writer.drain()
                script.messages.append(await reader.readuntil(b"\r\n.\r\n"))
                if not await _replies(script, accepted, say, writer):
                    return
            else:
                say("500 5.5.1 unknown command")
            await writer.drain()
            if verb == "QUIT":
                break
    finally:
        writer.close()


async def _replies(
    script: Script, accepted: list[str], say: Callable[[str], None], writer: asyncio.StreamWriter
) -> bool:
    """The replies after the data, one per accepted recipient; False: it hung up."""
    for number, address in enumerate(accepted):
        if script.cut_after is not None and number >= script.cut_after:
            await writer.drain()
            writer.close()
            return False
        say(script.after_data.get(address, f"250 2.0.0 <{address}> Saved"))
    return True


@contextlib.asynccontextmanager
async def server(script: Script, path: Path | None = None) -> AsyncIterator[str]:
    def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Awaitable[None]:
        return _serve(script, reader, writer)

    if path is not None:
        running = await asyncio.start_unix_server(handle, str(path))
        address = f"unix:{path}"
    else:
        running = await asyncio.start_server(handle, LOOPBACK, 0)
        address = f"{LOOPBACK}:{running.sockets[0].getsockname()[1]}"
    async with running:
        yield address


def parcel(*recipients: str, message: bytes = b"Subject: hi\r\n\r\nhello\r\n") -> Parcel:
    return Parcel("Q1", "sender@remote.test", recipients, message)


def deliver(script: Script, *parcels: Parcel, before: tuple[str, ...] = ()) -> list[Fate]:
    async def run() -> list[Fate]:
        async with server(script) as address:
            return await lmtp.deliver((*before, address), list(parcels), SETTINGS)

    return asyncio.run(run())


def test_each_recipient_gets_its_own_reply_after_the_data() -> None:
    script = Script(
        rcpt={"gone@example.com": "550 5.1.1 <gone@example.com> User doesn't exist"},
        after_data={"full@example.com": "452 4.2.2 <full@example.com> Quota exceeded"},
    )
    outcomes = deliver(
        script, parcel("a@example.com", "gone@example.com", "full@example.com", "b@example.com")
    )
    by = {o.recipient: o for o in outcomes}
    assert [by[r].kind for r in ("a@example.com", "b@example.com")] == ["delivered"] * 2
    assert (by["gone@example.com"].kind, by["gone@example.com"].status) == ("permanent", "5.1.1")
    assert (by["full@example.com"].kind, by["full@example.com"].status) == ("temporary", "4.2.2")
    assert by["full@example.com"].text == "452 4.2.2 <full@example.com> Quota exceeded"
    assert script.seen[0] == "LHLO mx.example.com"
    assert script.seen[1] == "MAIL FROM:<sender@remote.test> SIZE=22"
    assert script.seen[-1] == "QUIT"
    assert len(script.messages) == 1


def test_a_connection_lost_among_the_replies_leaves_the_rest_temporary() -> None:
    script = Script(cut_after=1)
    outcomes = deliver(
        script,
        parcel("a@example.com", "b@example.com"),
        Parcel("Q2", "", ("c@example.com",), b"Subject: x\r\n\r\n"),
    )
    by = {(o.queue_id, o.recipient): o for o in outcomes}
    assert by[("Q1", "a@example.com")].kind == "delivered"
    assert by[("Q1", "b@example.com")].kind == "temporary"
    assert by[("Q1", "b@example.com")].status == "4.4.2"
    assert by[("Q2", "c@example.com")].kind == "temporary"  # never tried: tried again
    assert len(outcomes) == 3


def test_the_next_server_is_tried_and_none_is_temporary() -> None:
    refused = f"{LOOPBACK}:{free_port()}"
    outcomes = deliver(Script(), parcel("a@example.com"), before=(refused,))
    assert [o.kind for o in outcomes] == ["delivered"]
    outcomes = asyncio.run(lmtp.deliver((refused,), [parcel("a@example.com")], SETTINGS))
    (only,) = outcomes
    assert (only.kind, only.status) == ("temporary", "4.4.1")
    assert only.text.startswith(f"no LMTP server took the connection ({refused}: ")


def test_a_server_that_is_not_lmtp_is_passed_over() -> None:
    outcomes = deliver(Script(greeting="554 5.3.2 go away"), parcel("a@example.com"))
    (only,) = outcomes
    assert (only.kind, only.status) == ("temporary", "4.4.1")
    assert "greeting 554 5.3.2 go away" in only.text


def test_a_unix_socket_server(tmp_path: Path) -> None:
    script = Script()

    async def run() -> list[Fate]:
        async with server(script, tmp_path / "lmtp") as address:
            return await lmtp.deliver((address,), [parcel("a@example.com")], SETTINGS)

    assert [o.kind for o in asyncio.run(run())] == ["delivered"]


def test_data_is_dot_stuffed_with_crlf_line_ends() -> None:
    assert lmtp.stuffed(b".a\n..b\r\nc") == b"..a\r\n...b\r\nc\r\n"
    script = Script()
    deliver(script, parcel("a@example.com", message=b"Subject: x\r\n\r\n.\r\n"))
    assert script.messages == [b"Subject: x\r\n\r\n..\r\n.\r\n"]


def test_an_address_that_is_not_ascii_needs_smtputf8() -> None:
    outcomes = deliver(Script(), parcel("jörg@example.com"))
    (only,) = outcomes
    assert (only.kind, only.status) == ("permanent", "5.6.7")


@pytest.mark.parametrize(
    ("folder", "address"),
    [
        ("INBOX", "alice@example.com"),
        ("inbox", "alice@example.com"),
        ("Junk", "alice+Junk@example.com"),
        ("Invoices/Attachments", "alice+Invoices.Attachments@example.com"),
        ("My Folder", '"alice+My Folder"@example.com'),
        ('a"b', '"alice+a\\"b"@example.com'),
        ("Ärger", "alice@example.com"),
    ],
    ids=["inbox", "inbox-any-case", "folder", "subfolder", "space", "quote", "not-ascii"],
)
def test_a_folder_travels_as_the_detail(folder: str, address: str) -> None:
    assert decide.rcpt("alice@example.com", folder) == address


def test_a_domains_own_way_wins_over_the_sites(example_site: Path) -> None:
    unit = compile_site(example_site)
    assert unit.plan is not None
    site = LocalDelivery("lmtp", ("127.0.0.1:24", "unix:/run/dovecot/lmtp"))
    plan = replace(unit.plan, local=site)
    first, *rest = plan.domains
    plan = replace(plan, domains=(replace(first, local=LocalDelivery("maildir")), *rest))
    assert not decide.over_lmtp(plan, f"someone@{first.name}")
    assert rest and decide.local_delivery(plan, f"someone@{rest[0].name}") == site
    assert decide.servers(" ".join(site.to)) == site.to
