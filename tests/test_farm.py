"""Two `mailplan serve` nodes on one plan, each with its own queue, both delivering over
LMTP to one Dovecot (docs/scaling.md), on loopback: node A on 127.0.0.2, node B on
127.0.0.3, the same port, the same plan file built once (`mailplan build`), each node's
served digest read from its log line.

Mail goes to both, as senders spread it over equal-preference MX hosts (and a sender
whose node does not answer tries the other one). While Dovecot is down for a while,
node A is killed with SIGKILL in the middle of the load: B keeps accepting. When
Dovecot and A are back, every message that got a 250 from either node arrives exactly
once. `mailplan dns` publishes both hosts at equal preference.

Interop (tests/interop.py): Dovecot with its LMTP server.
"""

from __future__ import annotations

import imaplib
import os
import pwd
import random
import re
import shutil
import signal
import smtplib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from serverkit import LOOPBACK, MailServer, free_ports, mailplan, wait_until
from test_dovecot import Dovecot, unverified

from mailplan.runtime.serve import devtls

NODES = ("127.0.0.2", "127.0.0.3")
HOSTNAME = "mx1.example.com"
PASSWORD = "farm secret"
TIMEOUT = 30.0
MAIL_USER = "nobody"
SITE = """\
server:
  hostname: {hostname}
  main_domain: example.com
  client_ips: |
    127.0.0.1
listeners:
  smtp:  {{port: {smtp}, bind: [0.0.0.0]}}        # each node: serve --bind ITS_ADDRESS
  imaps: {{port: {imaps}, bind: [{loopback}]}}    # Dovecot's
tls: {{certificate: {tls}/dev.crt, key: {tls}/dev.key}}
queue: {{directory: var/queue, mail_directory: var/mail, retry: [1h]}}
receiving:
  return_path: {{scope: nobody}}
  spf: {{scope: nobody}}
delivery:
  local: {{via: lmtp, to: ["{loopback}:{lmtp}"]}}
domains:
  example.com:
    mx:
      - {{host: mx1.example.com, priority: 10, ipv4: [{a}]}}
      - {{host: mx2.example.com, priority: 10, ipv4: [{b}]}}
    accounts:
      alice: {{password: "{hash}"}}
"""


class Node(MailServer):
    """`mailplan serve --plan PLAN --bind ADDRESS --root ROOT`: one node of the farm."""

    def __init__(self, plan: Path, root: Path, address: str, port: int) -> None:
        super().__init__(plan, root, [(address, port)], extra_arguments=["--bind", address])
        self.address = address

    def command(self) -> list[str]:
        command = super().command()
        at = command.index(str(self.site))
        return [*command[:at], "--plan", str(self.site), *command[at + 1 :]]

    def digests(self) -> list[str]:
        return re.findall(r"serving plan (sha256:[0-9a-f]{64})", self.log())


@dataclass
class Farm:
    root: Path
    ports: dict[str, int]
    plan: Path
    digest: str
    nodes: list[Node]
    dovecot: Dovecot

    def subjects(self) -> list[str]:
        client = imaplib.IMAP4_SSL(
            LOOPBACK, self.ports["imaps"], ssl_context=unverified(), timeout=TIMEOUT
        )
        try:
            client.login("alice@example.com", PASSWORD)
            client.select("INBOX", readonly=True)
            _, found = client.search(None, "ALL")
            subjects = []
            for number in found[0].split():
                _, data = client.fetch(number, "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
                part = data[0]
                assert isinstance(part, tuple)
                subjects.append(part[1].decode().partition(":")[2].strip())
            return subjects
        finally:
            client.logout()


@pytest.fixture
def farm() -> Iterator[Farm]:
    root = Path(tempfile.mkdtemp(prefix="mailplan-farm-"))
    os.chmod(root, 0o711)
    try:
        yield from _farm(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _farm(root: Path) -> Iterator[Farm]:
    ports = dict(zip(("smtp", "imaps", "lmtp"), free_ports(3), strict=True))
    devtls.ensure(root / "tls", HOSTNAME)
    site = root / "site"
    site.mkdir()
    text = SITE.format(
        hostname=HOSTNAME, loopback=LOOPBACK, hash=PasswordHasher().hash(PASSWORD),
        a=NODES[0], b=NODES[1], tls=root / "tls", **ports,
    )  # fmt: skip
    (site / "site.yaml").write_text(text, encoding="utf-8")
    plan = root / "plan.json"  # built once, served by every node
    built = mailplan("build", site, "-o", plan)
    assert built.returncode == 0, built.stderr
    digest = re.findall(r"sha256:[0-9a-f]{64}", plan.read_text())[-1]
    mail = root / "var" / "mail"
    mail.mkdir(parents=True)
    if os.geteuid() == 0:
        entry = pwd.getpwnam(MAIL_USER)
        os.chown(mail, entry.pw_uid, entry.pw_gid)
    output = root / "dovecot"
    written = mailplan("dovecot", "--plan", plan, "-o", output, "--root", root, "--user", MAIL_USER)
    assert written.returncode == 0, written.stderr
    dovecot = Dovecot.under(output, root, [ports["imaps"], ports["lmtp"]])
    nodes = [Node(plan, root / f"node-{a}", a, ports["smtp"]) for a in NODES]
    dovecot.start()
    try:
        for node in nodes:
            node.start()
        yield Farm(root, ports, plan, digest, nodes, dovecot)
    finally:
        for node in nodes:
            node.stop()
        dovecot.stop()


def send(address: str, port: int, subject: str) -> bool:
    """Whether the node at `address` said 250 to the message."""
    message = f"From: <s@remote.test>\r\nSubject: {subject}\r\n\r\nhello\r\n".encode()
    try:
        with smtplib.SMTP(address, port, timeout=10, source_address=("127.0.0.9", 0)) as client:
            client.sendmail("s@remote.test", ["alice@example.com"], message)
            return True
    except (OSError, smtplib.SMTPException):
        return False


def spread(farm: Farm, count: int, start: int, acked: list[str], refused: list[str]) -> None:
    """Send `count` messages, each to a node picked at random and, when that one does
    not take it, to the other (as a sender tries the next MX host)."""
    port = farm.ports["smtp"]
    for number in range(start, start + count):
        first = random.choice(NODES)
        for address in (first, *(a for a in NODES if a != first)):
            subject = f"m{number} via {address}"
            if send(address, port, subject):
                acked.append(subject)
                break
            refused.append(subject)


@pytest.mark.interop("dovecot", "lmtp")
def test_two_nodes_one_plan_a_killed_node_loses_nothing(farm: Farm) -> None:
    node_a, node_b = farm.nodes
    for node in farm.nodes:  # each node says which plan it serves: the same one
        assert wait_until(lambda node=node: node.digests() == [farm.digest]), node.log()
    acked: list[str] = []
    refused: list[str] = []
    spread(farm, 20, 0, acked, refused)  # both nodes deliver as it comes
    assert wait_until(lambda: len(farm.subjects()) >= len(acked), TIMEOUT)
    farm.dovecot.stop()  # the mailbox server away for a while: the nodes' queues fill
    spread(farm, 20, 20, acked, refused)
    waiting_on_a = list((node_a.root / "var" / "queue").glob("*.msg"))
    node_a.signal(signal.SIGKILL)  # mid-load: it had mail acknowledged and not delivered
    node_a.kill()
    spread(farm, 20, 40, acked, refused)  # B keeps accepting; A's senders go to B
    assert all("via 127.0.0.3" in subject for subject in acked[-20:])
    assert waiting_on_a, "node A held nothing when it was killed: the test proves nothing"
    farm.dovecot.start()
    node_a.start()  # its queue is its own: what it acknowledged is delivered now
    assert wait_until(lambda: node_a.digests() == [farm.digest] * 2), node_a.log()
    for node in farm.nodes:
        flushed = mailplan("queue", "flush", "--plan", farm.plan, "--root", node.root)
        assert flushed.returncode == 0, flushed.stderr
    assert wait_until(lambda: len(farm.subjects()) >= len(acked), TIMEOUT), (
        node_a.log() + node_b.log()
    )
    arrived = farm.subjects()
    assert sorted(arrived) == sorted(set(arrived)), "a message arrived twice"
    assert set(acked) <= set(arrived)  # every 250 kept
    assert set(arrived) <= set(acked) | set(refused)
    for node in farm.nodes:  # both queues empty
        assert wait_until(lambda node=node: not list((node.root / "var/queue").glob("*.msg")))


def test_mailplan_dns_publishes_both_nodes_at_equal_preference(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    text = SITE.format(
        hostname=HOSTNAME, loopback=LOOPBACK, hash=PasswordHasher().hash(PASSWORD),
        a="192.0.2.10", b="192.0.2.11", smtp=25, imaps=993, lmtp=24, tls=tmp_path / "tls",
    )  # fmt: skip
    (site / "site.yaml").write_text(text, encoding="utf-8")
    (tmp_path / "tls").mkdir()
    result = mailplan("dns", site)
    assert result.returncode == 0, result.stderr
    records = [" ".join(line.partition(";")[0].split()) for line in result.stdout.splitlines()]
    assert "@ IN MX 10 mx1.example.com." in records, records
    assert "@ IN MX 10 mx2.example.com." in records, records
    assert "mx1 IN A 192.0.2.10" in records and "mx2 IN A 192.0.2.11" in records, records


def test_serve_bind_takes_ip_addresses_only(tmp_path: Path) -> None:
    """`--bind` is checked before anything starts: one line, no traceback."""
    result = mailplan("serve", tmp_path, "--bind", "mx1.example.com")
    assert result.returncode == 2
    assert "argument --bind: not an IP address: 'mx1.example.com'" in result.stderr
    assert "Traceback" not in result.stderr
