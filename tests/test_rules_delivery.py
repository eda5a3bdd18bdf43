"""Rules carried out by a real `mailplan serve`: server rules at the end of DATA, domain
and account rules in LOCAL delivery, over SMTP sessions into real Maildirs."""

from __future__ import annotations

import email
import email.policy
import smtplib
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import pytest
from serverkit import LOOPBACK, Maildir, MailServer, free_port, wait_until
from sitekit import plain, write_site

TIMEOUT = 15.0

SERVER_RULES = """\
rule "No executables" priority 9
  if   Header Field is "X-Attachment-Type: *executable*"
  then Reject with "550 5.7.1 executables are not accepted here"

rule "Tag mail from clients" priority 5
  if   Source in trusted
  then Add Header "X-Sent-Via: mail.example.com"

rule "Drop the noise" priority 4
  if   Subject is "*noise*"
  then Discard

rule "Old address" priority 4
  if   Any Recipient is old@example.com
  then Redirect to bob@example.com

rule "Reports" priority 3
  if   Any Recipient is reports@example.com
  then Execute "report --server"

rule "Never" inactive
  if   Subject is "*"
  then Discard
"""

DOMAIN_RULES = """\
rule "Domain tag" priority 5
  if   Subject is "*tag me*"
  then Tag Subject "[domain]"

rule "Spam to Junk" priority 7
  if   Header Field is "X-Spam-Flag: YES*"
  then Store in Junk
  and  Stop Processing
"""

ALICE_RULES = """\
rule "Account tag" priority 5
  if   Subject is "*tag me*"
  then Tag Subject "[alice]"

rule "Boss" priority 6
  if   From is boss@example.com
  then Mark Flagged
  and  Mirror to carol@example.com
  and  Remember 'From' in Important

rule "Forward invoices" priority 4
  if   Subject is "*invoice*"
  then Forward to carol@example.com

rule "Attachments" priority 3
  if   Subject is "*attached*"
  then Copy Attachments into Files

rule "Refuse ads" priority 2
  if   Subject is "*advert*"
  then Reject with "550 5.7.1 alice takes no adverts"

rule "Away" priority 1
  if   Human Generated
  then Reply with "I am away this week." once per 1d
"""


@dataclass
class Site:
    port: int
    root: Path
    out: Path
    server: MailServer

    def send(
        self,
        recipients: list[str],
        subject: str,
        sender: str = "bob@example.com",
        headers: dict[str, str] | None = None,
        attachment: bytes | None = None,
    ) -> tuple[int, bytes]:
        message = EmailMessage()
        message["From"] = sender or "mailer-daemon@example.com"
        message["To"] = ", ".join(recipients)
        message["Subject"] = subject
        message["Message-ID"] = f"<{abs(hash(subject))}@example.com>"
        for name, value in (headers or {}).items():
            message[name] = value
        message.set_content(f"{subject}\n")
        if attachment is not None:
            message.add_attachment(attachment, "application", "pdf", filename="a.pdf")
        with smtplib.SMTP(LOOPBACK, self.port, timeout=TIMEOUT) as client:
            client.ehlo("client.example.com")
            client.mail(sender)
            for recipient in recipients:
                assert client.rcpt(recipient)[0] == 250
            return client.data(message.as_bytes())

    def box(self, account: str, folder: str = "") -> Maildir:
        path = self.root / "var" / "mail" / "example.com" / account
        return Maildir(path / f".{folder}" if folder else path)

    def flagged(self, account: str) -> list[Path]:
        cur = self.root / "var" / "mail" / "example.com" / account / "cur"
        return sorted(cur.glob("*:2,F")) if cur.is_dir() else []

    def queue_empty(self) -> bool:
        return not list((self.root / "var" / "queue").glob("*.msg"))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("rules")
    directory = root / "site"
    (directory / "rules").mkdir(parents=True)
    out = root / "out"
    out.mkdir()
    program = root / "report"
    program.write_text(f'#!/bin/sh\ncat > "{out}/report.$QUEUE_ID"\necho "$@" > "{out}/argv"\n')
    program.chmod(program.stat().st_mode | stat.S_IEXEC)
    port = free_port()
    write_site(
        directory,
        listeners={"smtp": plain(port)},
        accounts={
            "alice": {"rules": "rules/alice.rules", "folders": ["Files"]},
            **{name: {} for name in ("bob", "carol", "boss", "reports", "old")},
        },
        domains={"example.com": {"rules": "rules/example.com.rules"}},
        extra={
            "pipes": {"report": {"program": str(program)}},
            "server_rules": "rules/server.rules",
        },
    )
    (directory / "rules" / "server.rules").write_text(SERVER_RULES)
    (directory / "rules" / "example.com.rules").write_text(DOMAIN_RULES)
    (directory / "rules" / "alice.rules").write_text(ALICE_RULES)
    with MailServer(directory, root, [port]) as server:
        yield Site(port, root, out, server)


def parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def subjects(box: Maildir) -> list[str]:
    return sorted(str(parse(raw)["Subject"]) for raw in box.messages())


# --- server rules --------------------------------------------------------------------


def test_server_rule_reject_is_the_reply_to_data(site: Site) -> None:
    code, reply = site.send(
        ["carol@example.com"], "a program", headers={"X-Attachment-Type": "executable"}
    )
    assert (code, reply) == (550, b"5.7.1 executables are not accepted here")
    assert site.queue_empty()
    assert "a program" not in subjects(site.box("carol"))


def test_server_rule_adds_a_header_for_clients(site: Site) -> None:
    site.send(["carol@example.com"], "from a client")
    found = wait_until(
        lambda: [m for m in site.box("carol").messages() if b"Subject: from a client" in m],
        TIMEOUT,
    )
    assert found
    assert b"\nX-Sent-Via: mail.example.com\r\n" in found[0]  # type: ignore[index]


def test_server_rule_discard_and_redirect(site: Site) -> None:
    assert site.send(["carol@example.com"], "pure noise")[0] == 250
    site.send(["old@example.com"], "for the old address")
    wait_until(lambda: "for the old address" in subjects(site.box("bob")), TIMEOUT)
    assert "for the old address" in subjects(site.box("bob"))
    assert site.box("old").messages() == []
    assert "pure noise" not in subjects(site.box("carol"))


def test_server_rule_execute_runs_the_declared_pipe(site: Site) -> None:
    site.send(["reports@example.com"], "a report")
    argv = site.out / "argv"  # written last, when the program is done with the message
    assert wait_until(lambda: argv.exists() and argv.read_text(), TIMEOUT), site.server.log()
    (copy,) = site.out.glob("report.*")
    assert b"Subject: a report" in copy.read_bytes()
    assert argv.read_text() == "--server\n"
    delivered = wait_until(lambda: "a report" in subjects(site.box("reports")), TIMEOUT)
    assert delivered  # Execute does not divert


# --- domain and account rules --------------------------------------------------------


def test_domain_rules_run_before_the_accounts_at_equal_priority(site: Site) -> None:
    site.send(["alice@example.com", "bob@example.com"], "please tag me")
    wait_until(lambda: any("tag me" in s for s in subjects(site.box("alice"))), TIMEOUT)
    assert "[alice] [domain] please tag me" in subjects(site.box("alice"))
    wait_until(lambda: any("tag me" in s for s in subjects(site.box("bob"))), TIMEOUT)
    assert "[domain] please tag me" in subjects(site.box("bob"))  # bob has no rules


def test_store_in_and_stop_processing(site: Site) -> None:
    site.send(["alice@example.com"], "spam, tag me", headers={"X-Spam-Flag": "YES"})
    junk = site.box("alice", "Junk").wait(1, TIMEOUT)
    assert [str(parse(raw)["Subject"]) for raw in junk] == ["spam, tag me"]  # no tags: stopped
    assert "spam, tag me" not in subjects(site.box("alice"))


def test_mark_mirror_and_remember(site: Site) -> None:
    site.send(["alice@example.com"], "from the boss", sender="boss@example.com")
    assert wait_until(lambda: site.flagged("alice"), TIMEOUT), site.server.log()
    assert wait_until(lambda: "from the boss" in subjects(site.box("carol")), TIMEOUT)
    book = site.root / "var" / "mail" / "example.com" / "alice" / "addressbooks" / "Important.txt"
    assert book.read_text() == "boss@example.com\n"


def test_forward_adds_resent_fields_and_changes_the_sender(site: Site) -> None:
    site.send(["alice@example.com"], "an invoice")
    found = wait_until(
        lambda: [m for m in site.box("carol").messages() if b"Subject: an invoice" in m], TIMEOUT
    )
    assert found
    raw = found[0]  # type: ignore[index]
    assert raw.startswith(b"Return-Path: <alice@example.com>\r\n")
    message = parse(raw)
    assert message["Resent-From"] == "alice@example.com"
    assert message["Resent-To"] == "carol@example.com"
    assert "an invoice" not in subjects(site.box("alice"))
    _logged_not_delivered(site, "stored in no folder by the rules of alice@example.com")


def test_copy_attachments_into_a_folder(site: Site) -> None:
    site.send(["alice@example.com"], "attached files", attachment=b"%PDF-1.4")
    (copy,) = site.box("alice", "Files").wait(1, TIMEOUT)
    parts = list(parse(copy).iter_attachments())
    assert [part.get_filename() for part in parts] == ["a.pdf"]
    assert "attached files" in subjects(site.box("alice"))


def test_reject_with_in_account_rules_bounces_to_the_sender(site: Site) -> None:
    site.send(["alice@example.com"], "an advert")
    found = wait_until(
        lambda: [m for m in site.box("bob").messages() if b"multipart/report" in m], TIMEOUT
    )
    assert found, site.server.log()
    report = parse(found[0])  # type: ignore[index]
    status = list(report.iter_parts())[1].get_payload()[1]
    assert status["Final-Recipient"] == "rfc822; alice@example.com"
    assert status["Status"] == "5.7.1"
    assert status["Diagnostic-Code"] == "x-mailplan; alice takes no adverts"
    _logged_not_delivered(site, "rejected by the rules of alice@example.com")


def _logged_not_delivered(site: Site, what: str) -> None:
    """The recipient's line says what the rules did (`what`), and none says it was delivered."""
    lines = wait_until(
        lambda: [
            line for line in site.server.log().splitlines() if f"<alice@example.com> {what}" in line
        ],
        TIMEOUT,
    )
    assert lines, site.server.log()
    queue_id = lines[0].split(" mailplan.queue INFO ")[1].split()[0]  # type: ignore[index]
    same = [line for line in site.server.log().splitlines() if queue_id in line]
    assert not [line for line in same if "delivered to LOCAL(alice@example.com)" in line], same


def test_auto_reply_once_per_sender_and_never_to_automatic_mail(site: Site) -> None:
    def replies() -> list[EmailMessage]:
        found = [parse(raw) for raw in site.box("carol").messages()]
        return [m for m in found if m["Auto-Submitted"] == "auto-replied"]

    site.send(["alice@example.com"], "hello alice", sender="carol@example.com")
    assert wait_until(replies, TIMEOUT), site.server.log()
    site.send(["alice@example.com"], "hello again", sender="carol@example.com")
    site.send(
        ["alice@example.com"],
        "a newsletter",
        sender="carol@example.com",
        headers={"Precedence": "bulk"},
    )
    wait_until(lambda: "a newsletter" in subjects(site.box("alice")), TIMEOUT)
    wait_until(lambda: site.queue_empty(), TIMEOUT)
    (reply,) = replies()
    assert reply["Subject"] == "Re: hello alice"
    assert reply["From"] == "alice@example.com"
    assert reply["In-Reply-To"] is not None
    assert reply.get_content().rstrip() == "I am away this week."
    assert "carol@example.com was answered less than 86400 seconds ago" in site.server.log()
