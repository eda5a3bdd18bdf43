"""LOCAL delivery over LMTP to Debian's Dovecot (`dovecot-lmtpd`), read back over IMAP.

A real `mailplan serve` with `delivery.local: {via: lmtp}` hands its LOCAL mail to a real
Dovecot on a loopback port; `mailplan dovecot` wrote Dovecot's files (the LMTP listener,
the userdb of every account). The tests read the mailboxes back with imaplib, or from
the Maildir Dovecot wrote for an account without a password. They prove: an account's
rules run before the hand-over and their folder reaches Dovecot (`name+Junk@domain`);
each recipient has its own LMTP outcome (one that Dovecot does not know bounces, the
others arrive); a stopped Dovecot makes deliveries wait and retry, and every message
that got 250 arrives exactly once when it is back.

Interop tests (tests/interop.py): skipped where Dovecot is not installed.
"""

from __future__ import annotations

import imaplib
import os
import pwd
import shutil
import smtplib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from serverkit import LOOPBACK, MailServer, free_ports, mailplan, wait_until
from test_dovecot import Dovecot, unverified

from mailplan.runtime.mailbox import dovecot
from mailplan.runtime.serve import devtls

HOSTNAME = "mail.example.com"
PASSWORD = "lmtp secret"
TIMEOUT = 20.0
MAIL_USER = "nobody"

SITE = """\
server:
  hostname: {hostname}
  main_domain: example.com
  client_ips: |
    127.0.0.1
listeners:
  smtp:  {{port: {smtp}, bind: [{loopback}]}}
  imaps: {{port: {imaps}, bind: [{loopback}]}}
tls: {{certificate: tls/dev.crt, key: tls/dev.key}}
queue: {{directory: var/queue, mail_directory: var/mail}}
delivery:
  local: {{via: lmtp, to: ["{loopback}:{lmtp}"]}}
domains:
  example.com:
    accounts:
      alice: {{password: "{hash}", aliases: [alicia]}}
      carol: {{password: "{hash}", rules: carol.rules, aliases: [caroline]}}
      bob: {{}}
      dave: {{}}
"""
CAROL_RULES = """\
rule "Offers to Junk" priority 5
  if   Subject is "*offer*"
  then Store in Junk

rule "No adverts" priority 6
  if   Subject is "*advert*"
  then Reject with "550 5.7.1 carol takes no adverts"
"""


@dataclass
class Farm:
    root: Path
    ports: dict[str, int]
    server: MailServer
    imap: Dovecot

    def send(self, recipients: list[str], subject: str) -> None:
        with smtplib.SMTP(LOOPBACK, self.ports["smtp"], timeout=TIMEOUT) as client:
            client.sendmail(
                "sender@remote.example",
                recipients,
                f"From: <sender@remote.example>\r\nSubject: {subject}\r\n\r\nhello\r\n".encode(),
            )

    def subjects(self, account: str, folder: str = "INBOX") -> list[str]:
        """The subjects in an account's folder, over IMAP (empty when it does not exist)."""
        client = imaplib.IMAP4_SSL(
            LOOPBACK, self.ports["imaps"], ssl_context=unverified(), timeout=TIMEOUT
        )
        try:
            client.login(account, PASSWORD)
            status, _ = client.select(folder, readonly=True)
            if status != "OK":
                return []
            _, numbers = client.search(None, "ALL")
            found = []
            for number in numbers[0].split():
                _, data = client.fetch(number, "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
                part = data[0]
                assert isinstance(part, tuple)
                found.append(part[1].decode().partition(":")[2].strip())
            return sorted(found)
        finally:
            client.logout()

    def files(self, account: str) -> list[bytes]:
        """What Dovecot wrote into the INBOX of an account without a password."""
        name, _, domain = account.partition("@")
        inbox = self.root / "var" / "mail" / domain / name
        return [
            path.read_bytes()
            for sub in ("new", "cur")
            if (inbox / sub).is_dir()
            for path in sorted((inbox / sub).iterdir())
        ]


@pytest.fixture
def farm() -> Iterator[Farm]:
    root = Path(tempfile.mkdtemp(prefix="mailplan-lmtp-"))
    os.chmod(root, 0o711)  # Dovecot's unprivileged processes reach the Maildirs
    try:
        yield from _farm(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _farm(root: Path) -> Iterator[Farm]:
    ports = dict(zip(("smtp", "imaps", "lmtp"), free_ports(3), strict=True))
    devtls.ensure(root / "tls", HOSTNAME)
    site = root / "site"
    site.mkdir()
    hashed = PasswordHasher().hash(PASSWORD)
    text = SITE.format(hostname=HOSTNAME, loopback=LOOPBACK, hash=hashed, **ports)
    (site / "site.yaml").write_text(text, encoding="utf-8")
    (site / "carol.rules").write_text(CAROL_RULES, encoding="utf-8")
    mail = root / "var" / "mail"
    mail.mkdir(parents=True)
    if os.geteuid() == 0:  # Dovecot never writes mail as root
        entry = pwd.getpwnam(MAIL_USER)
        os.chown(mail, entry.pw_uid, entry.pw_gid)
    output = root / "dovecot"
    result = mailplan("dovecot", site, "-o", output, "--root", root, "--user", MAIL_USER)
    assert result.returncode == 0, result.stderr
    # Dovecot does not know dave: its LMTP refuses him, and only him
    users = output / dovecot.USERS
    kept = [line for line in users.read_text().splitlines() if not line.startswith("dave@")]
    users.write_text("\n".join(kept) + "\n")
    imap = Dovecot.under(output, root, [ports["imaps"], ports["lmtp"]])
    imap.start()
    server = MailServer(site, root, [ports["smtp"]])
    try:
        server.start()
        yield Farm(root, ports, server, imap)
    finally:
        server.stop()
        imap.stop()


@pytest.mark.interop("dovecot", "lmtp")
def test_local_mail_goes_over_lmtp_through_the_rules_one_outcome_per_recipient(
    farm: Farm,
) -> None:
    farm.send(
        ["alice@example.com", "bob@example.com", "carol@example.com", "dave@example.com"],
        "hello everyone",
    )
    farm.send(["carol@example.com"], "a special offer")
    farm.send(["carol@example.com"], "an advert")
    # an alias beside its account: one copy in the mailbox, the rules run once
    farm.send(["alice@example.com", "alicia@example.com"], "to alice twice")
    farm.send(["carol@example.com", "caroline@example.com"], "another offer")
    log = farm.server
    assert log.wait_for_log("<dave@example.com> failed: 550", TIMEOUT), log.log()
    assert log.wait_for_log("<alice@example.com> delivered: 250", TIMEOUT), log.log()
    assert wait_until(lambda: farm.subjects("carol@example.com", "Junk"), TIMEOUT), log.log()
    assert wait_until(lambda: len(farm.subjects("carol@example.com", "Junk")) == 2, TIMEOUT)
    assert wait_until(lambda: len(farm.subjects("alice@example.com")) == 2, TIMEOUT)
    assert sorted(farm.subjects("alice@example.com")) == ["hello everyone", "to alice twice"]
    assert farm.subjects("carol@example.com") == ["hello everyone"]
    assert sorted(farm.subjects("carol@example.com", "Junk")) == [
        "a special offer",
        "another offer",
    ]
    assert "<alicia@example.com> goes into the mailbox of alice@example.com with" in log.log()
    (bobs,) = farm.files("bob@example.com")  # an account without a password gets mail too
    assert bobs.startswith(b"Return-Path: <sender@remote.example>\n"), bobs  # Dovecot's
    assert b"by mail.example.com (mailplan) with ESMTP" in bobs, bobs
    assert "LMTP(127.0.0.1:" in log.log()
    # dave alone bounced: a DSN is queued for the sender, nobody else failed
    assert log.log().count("failed: 5") == 1, log.log()
    assert "DSN for sender@remote.example queued" in log.log()
    # what carol's rules did is said as such: stored (queued for LMTP), or refused
    assert "<carol@example.com> through rules to LMTP" in log.log()
    refused = "<carol@example.com> rejected by the rules of carol@example.com"
    assert log.wait_for_log(refused, TIMEOUT), log.log()
    assert "an advert" not in farm.subjects("carol@example.com")


@pytest.mark.interop("dovecot", "lmtp")
def test_a_stopped_dovecot_makes_deliveries_wait_then_each_arrives_once(farm: Farm) -> None:
    farm.send(["alice@example.com"], "before")
    assert wait_until(lambda: farm.subjects("alice@example.com") == ["before"], TIMEOUT)
    farm.imap.stop()
    subjects = [f"while down {n}" for n in range(5)]
    for subject in subjects:
        farm.send(["alice@example.com", "bob@example.com"], subject)  # each got its 250
    log = farm.server
    assert wait_until(lambda: log.log().count("deferred (no LMTP server") >= 10, TIMEOUT), log.log()
    queued = list((farm.root / "var" / "queue").glob("*.msg"))
    assert len(queued) == len(subjects)  # still there: settled only after Dovecot's 250
    farm.imap.start()
    flushed = mailplan("queue", "flush", "--site", farm.server.site, "--root", farm.root)
    assert flushed.returncode == 0, flushed.stderr
    expected = sorted(["before", *subjects])
    assert wait_until(lambda: farm.subjects("alice@example.com") == expected, TIMEOUT), log.log()
    assert wait_until(lambda: len(farm.files("bob@example.com")) == len(subjects), TIMEOUT)
    assert wait_until(lambda: not list((farm.root / "var" / "queue").glob("*.msg")), TIMEOUT)
    assert farm.subjects("alice@example.com") == expected  # nothing doubled
    assert len(farm.files("bob@example.com")) == len(subjects)


def test_mailplan_dovecot_writes_the_lmtp_listeners_and_every_account(tmp_path: Path) -> None:
    """The files as values: `protocols` gains lmtp, one listener per server the plan names
    (a unix socket for its owner only), details saved into folders, a userdb with
    accounts that have no password too."""
    from dataclasses import replace

    from mailplan.compiler.pipeline import compile_site
    from mailplan.plan.model import LocalDelivery

    site = tmp_path / "site"
    site.mkdir()
    ports = {"smtp": 25, "imaps": 993, "lmtp": 24}
    text = SITE.format(
        hostname=HOSTNAME, loopback=LOOPBACK, hash=PasswordHasher().hash("x"), **ports
    )
    (site / "site.yaml").write_text(text, encoding="utf-8")
    (site / "carol.rules").write_text(CAROL_RULES, encoding="utf-8")
    unit = compile_site(site)
    assert unit.plan is not None, unit.diagnostics
    domain = unit.plan.domains[0]
    own = LocalDelivery("lmtp", ("unix:/run/dovecot/lmtp-mailplan",))
    plan = replace(unit.plan, domains=(replace(domain, local=own),))
    place = dovecot.Place(
        Path("/etc/dovecot/mailplan"), Path("/srv/mail"), None, None, 120, 130, owner="mailplan"
    )
    snippet = dovecot.snippet(plan, place)
    assert "protocols = imap lmtp\n" in snippet
    assert "lmtp_save_to_detail_mailbox = yes\nlda_mailbox_autocreate = yes\n" in snippet
    assert "recipient_delimiter = +\n" in snippet
    assert "  args = /etc/dovecot/mailplan/users\n" in snippet
    assert (
        "  inet_listener lmtp0 {  # site.yaml:12\n    address = 127.0.0.1\n    port = 24\n"
        in snippet
    )
    assert (
        "  unix_listener /run/dovecot/lmtp-mailplan {\n    user = mailplan\n    mode = 0600\n"
        in snippet
    )
    users = dovecot.users(plan, place).splitlines()
    assert users[1:] == [
        f"{name}@example.com::120:130::" for name in ("alice", "bob", "carol", "dave", "postmaster")
    ]
    maildir_only = replace(plan, local=LocalDelivery("maildir"), domains=(domain,))
    assert "lmtp" not in dovecot.snippet(maildir_only, place)
