"""IMAP through Dovecot: `mailplan dovecot` files, read by a real Dovecot on loopback.

The end-to-end test delivers through a real `mailplan serve`, writes Dovecot's files with
`mailplan dovecot`, starts Debian's Dovecot (`dovecot-imapd`, installed by `.ci/run`) on
free loopback ports with a base directory under the test's temporary folder, and reads
the message back with imaplib under every login form, then over POP3 again. Another runs
the two commands `mailplan serve --dev` prints for IMAP, as printed. Both are interop
tests (tests/interop.py): skipped where Dovecot is not installed.

Dovecot never reads mail as root. In production `mailplan serve` runs as a user of its
own, which owns the Maildirs; CI runs everything as root, so the test hands the Maildirs
to `nobody` (as if that user had delivered them) and names it with `--user`.
"""

from __future__ import annotations

import grp
import imaplib
import os
import poplib
import shutil
import signal
import smtplib
import ssl
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from interop import program
from serverkit import LOOPBACK, MailServer, accepts, free_ports, mailplan, wait_until

from mailplan.plan.model import Plan
from mailplan.runtime.mailbox import dovecot
from mailplan.runtime.mailbox.maildrop import base_name
from mailplan.runtime.serve import devtls

HOSTNAME = "mail.example.com"
PASSWORD = "imap secret"
TIMEOUT = 10.0
MAIL_USER = "nobody"

SITE = """\
server:
  hostname: {hostname}
  main_domain: example.com
  client_ips: |
    127.0.0.1
listeners:
  smtp:  {{port: {smtp}, bind: [{loopback}]}}
  pop3s: {{port: {pop3s}, bind: [{loopback}]}}
  imap:  {{port: {imap}, bind: [{loopback}]}}
  imaps: {{port: {imaps}, bind: [{loopback}]}}
tls: {{certificate: tls/dev.crt, key: tls/dev.key}}
queue: {{directory: var/queue, mail_directory: var/mail}}
domains:
  example.com:
    aliases: [example.org]
    accounts:
      alice: {{password: "{hash}", aliases: [al]}}
      bob: {{password: "{hash}"}}
      nopass: {{}}
  other.example:
    accounts:
      alice: {{password: "{hash}"}}
"""
LOGIN_FORMS = (
    "alice@example.com",
    "alice%example.com",
    "alice",
    "al@example.org",
    "AL%Example.ORG",
)


def unverified() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def write_site(base: Path, ports: dict[str, int]) -> Path:
    devtls.ensure(base / "tls", HOSTNAME)
    directory = base / "site"
    directory.mkdir()
    text = SITE.format(
        hostname=HOSTNAME, loopback=LOOPBACK, hash=PasswordHasher().hash(PASSWORD), **ports
    )
    (directory / "site.yaml").write_text(text, encoding="utf-8")
    return directory


def compiled(directory: Path) -> Plan:
    from mailplan.compiler.pipeline import compile_site

    unit = compile_site(directory)
    assert unit.plan is not None, unit.diagnostics
    return unit.plan


# -- the files, as values ---------------------------------------------------------------


@pytest.fixture(scope="module")
def plan(tmp_path_factory: pytest.TempPathFactory) -> Plan:
    base = tmp_path_factory.mktemp("dovecot-files")
    ports = dict(zip(("smtp", "pop3s", "imap", "imaps"), (25, 995, 143, 993), strict=True))
    return compiled(write_site(base, ports))


PLACE = dovecot.Place(
    output=Path("/etc/dovecot/mailplan"),
    mail_directory=Path("/srv/mail"),
    certificate=Path("/etc/tls/mail.crt"),
    key=Path("/etc/tls/mail.key"),
    uid=120,
    gid=130,
)


def test_login_names_are_those_the_router_takes_to_each_account(plan: Plan) -> None:
    names = dict(dovecot.logins(plan))
    assert names["alice@example.com"] == "alice@example.com"
    assert names["alice"] == "alice@example.com"  # a bare name is the main domain's
    assert names["al@example.org"] == "alice@example.com"
    assert names["alice@other.example"] == "alice@other.example"
    assert names["bob@example.org"] == "bob@example.com"
    assert not any(account.startswith("nopass@") for account in names.values())
    assert "al@other.example" not in names


def test_the_passwd_file_has_argon2id_hashes_and_maps_aliases(plan: Plan) -> None:
    lines = dovecot.passwd(plan, PLACE).splitlines()
    assert lines[0].startswith("# Written by `mailplan dovecot` from plan sha256:")
    entries = {line.split(":", 1)[0]: line.split(":") for line in lines[1:]}
    canonical = entries["alice@example.com"]
    assert canonical[1].startswith("{ARGON2ID}$argon2id$v=19$")
    assert canonical[2:4] == ["120", "130"] and len(canonical) == 4
    alias = entries["al@example.org"]
    assert alias[1] == canonical[1]
    assert alias[4:] == ["", "", "", "user=alice@example.com"]


def test_a_name_that_would_break_the_passwd_file_is_refused(plan: Plan) -> None:
    """A password hash with a newline in it (the schema's `$` lets one through) would
    split a passwd-file line in two: refused, not written."""
    domain = plan.domains[0]
    broken = replace(domain.accounts[0], password=(domain.accounts[0].password or "") + "\n")
    edited = replace(
        plan, domains=(replace(domain, accounts=(broken, *domain.accounts[1:])), *plan.domains[1:])
    )
    with pytest.raises(ValueError, match="cannot stand in Dovecot's passwd-file"):
        dovecot.passwd(edited, PLACE)


def test_the_snippet_serves_the_plans_imap_listeners_on_its_maildirs(plan: Plan) -> None:
    text = dovecot.snippet(plan, PLACE)
    assert "mail_location = maildir:/srv/mail/%d/%n\n" in text
    assert "auth_username_translation = %@\n" in text
    assert "auth_username_format = %Lu\n" in text
    assert "args = scheme=ARGON2ID /etc/dovecot/mailplan/passwd\n" in text
    assert "first_valid_uid = 120\n" in text
    assert "disable_plaintext_auth = yes\n" in text
    assert "ssl_cert = </etc/tls/mail.crt\nssl_key = </etc/tls/mail.key\n" in text
    assert (
        "  inet_listener imap {  # site.yaml:9\n    address = 127.0.0.1\n    port = 143\n" in text
    )
    assert "    port = 993\n    ssl = yes\n" in text
    assert dovecot.config(plan, PLACE).endswith("!include /etc/dovecot/mailplan/mailplan.conf\n")


def test_the_development_configuration_keeps_dovecots_files_beside_the_site(plan: Plan) -> None:
    text = dovecot.config(plan, replace(PLACE, state=Path("/srv/site/var/dovecot")))
    assert text.startswith(dovecot.config(plan, PLACE))
    assert text.endswith(
        "base_dir = /srv/site/var/dovecot/run\n"
        "state_dir = /srv/site/var/dovecot/state\n"
        "log_path = /dev/stderr\n"
    )


def test_the_command_refuses_root_as_the_mail_user(tmp_path: Path) -> None:
    ports = dict(zip(("smtp", "pop3s", "imap", "imaps"), (25, 995, 143, 993), strict=True))
    directory = write_site(tmp_path, ports)
    result = mailplan("dovecot", directory, "-o", tmp_path / "out", "--user", "root")
    assert result.returncode == 1
    assert "Dovecot does not read mail as root" in result.stderr
    result = mailplan("dovecot", directory, "-o", tmp_path / "out", "--user", "no-such-user-here")
    assert result.stderr == "mailplan: no such user: no-such-user-here\n"


# -- Dovecot itself ----------------------------------------------------------------------


class Dovecot:
    """`dovecot -F -c CONFIG`, its standard error in `log_file`."""

    def __init__(self, config: Path, log_file: Path, ports: list[int]) -> None:
        self.config = config
        self.log_file = log_file
        self.ports = ports
        self.process: subprocess.Popen[bytes] | None = None

    @classmethod
    def under(cls, output: Path, base: Path, ports: list[int]) -> Dovecot:
        """On the files in `output`, with its state under `base` (`mailplan dovecot` without
        --dev leaves that to the system's Dovecot)."""
        config = base / "test.conf"
        run = base / "run"
        run.mkdir(mode=0o755)
        log_file = base / "dovecot.log"
        config.write_text(
            f"!include {output / dovecot.CONFIG}\n"
            f"base_dir = {run}\n"
            f"state_dir = {run}/state\n"
            f"log_path = {log_file}\n"
            "auth_failure_delay = 0\n",  # keeps the wrong-password case short
            encoding="utf-8",
        )
        return cls(config, log_file, ports)

    def start(self) -> None:
        with self.log_file.with_suffix(".stderr").open("wb") as stderr:
            self.process = subprocess.Popen(
                [program("dovecot") or "dovecot", "-F", "-c", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        for port in self.ports:
            assert wait_until(lambda port=port: accepts(LOOPBACK, port), TIMEOUT), self.log()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(TIMEOUT)

    def log(self) -> str:
        parts = [self.log_file, self.log_file.with_suffix(".stderr")]
        return "".join(p.read_text("utf-8", "replace") for p in parts if p.exists())


@pytest.fixture
def reachable() -> Iterator[Path]:
    """A temporary folder that Dovecot's unprivileged processes can reach: not under
    pytest's folder, which pytest keeps at mode 0700."""
    tmp_path = Path(tempfile.mkdtemp(prefix="mailplan-dovecot-"))
    os.chmod(tmp_path, 0o711)
    try:
        yield tmp_path
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.fixture
def served(reachable: Path) -> Iterator[tuple[Path, dict[str, int], MailServer]]:
    """A site, its mailplan server, the mail in alice's Maildir, and Dovecot on its files."""
    yield from _served(reachable)


def deliver_to_alice(port: int) -> None:
    with smtplib.SMTP(LOOPBACK, port, timeout=TIMEOUT) as client:
        client.sendmail(
            "sender@remote.example",
            ["alice@example.com"],
            b"From: <sender@remote.example>\r\nSubject: through mailplan\r\n\r\nhello\r\n",
        )


def _served(tmp_path: Path) -> Iterator[tuple[Path, dict[str, int], MailServer]]:
    ports = dict(zip(("smtp", "pop3s", "imap", "imaps"), free_ports(4), strict=True))
    directory = write_site(tmp_path, ports)
    server = MailServer(directory, tmp_path, [ports["smtp"], ports["pop3s"]])
    server.start()
    try:
        deliver_to_alice(ports["smtp"])
        new = tmp_path / "var" / "mail" / "example.com" / "alice" / "new"
        assert wait_until(lambda: new.is_dir() and any(new.iterdir()), TIMEOUT), server.log()
        subprocess.run(["chown", "-R", f"{MAIL_USER}:", str(tmp_path / "var" / "mail")], check=True)
        output = tmp_path / "dovecot"
        result = mailplan(
            "dovecot", directory, "-o", output, "--root", tmp_path, "--user", MAIL_USER
        )
        assert result.returncode == 0, result.stderr
        written = (output / dovecot.PASSWD).stat()
        assert (written.st_mode & 0o777, written.st_gid) == (0o640, grp.getgrnam("dovecot").gr_gid)
        imap = Dovecot.under(output, tmp_path, [ports["imap"], ports["imaps"]])
        imap.start()
        try:
            yield tmp_path, ports, server
        finally:
            imap.stop()
    finally:
        server.stop()


def read_inbox(client: imaplib.IMAP4, name: str) -> bytes:
    assert client.login(name, PASSWORD)[0] == "OK"
    status, data = client.select("INBOX")
    assert status == "OK" and data == [b"1"], (name, data)
    status, fetched = client.fetch("1", "(RFC822)")
    assert status == "OK"
    client.logout()
    part = fetched[0]
    assert isinstance(part, tuple)
    return part[1]


@pytest.mark.interop("dovecot")
def test_dovecot_serves_the_same_maildirs_under_every_login_form(
    served: tuple[Path, dict[str, int], MailServer],
) -> None:
    root, ports, _ = served
    folder = root / "var" / "mail" / "example.com" / "alice"
    pop = poplib.POP3_SSL(LOOPBACK, ports["pop3s"], timeout=TIMEOUT, context=unverified())
    pop.user("alice")
    pop.pass_(PASSWORD)
    before = pop.uidl(1).split()[2].decode()
    pop.quit()

    for name in LOGIN_FORMS:
        client = imaplib.IMAP4(LOOPBACK, ports["imap"], timeout=TIMEOUT)
        client.starttls(unverified())
        message = read_inbox(client, name)
        assert b"Subject: through mailplan\r\n" in message
        assert b"by mail.example.com (mailplan) with ESMTP" in message
    secure = imaplib.IMAP4_SSL(LOOPBACK, ports["imaps"], ssl_context=unverified(), timeout=TIMEOUT)
    assert b"Subject: through mailplan" in read_inbox(secure, "alice@example.com")

    wrong = imaplib.IMAP4_SSL(LOOPBACK, ports["imaps"], ssl_context=unverified(), timeout=TIMEOUT)
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        wrong.login("alice@example.com", "not the password")
    wrong.logout()

    # Dovecot moved the message from new/ to cur/; POP3 still knows it by the same UIDL.
    assert [base_name(p.name) for p in (folder / "cur").iterdir()] == [before]
    pop = poplib.POP3_SSL(LOOPBACK, ports["pop3s"], timeout=TIMEOUT, context=unverified())
    pop.user("alice@example.com")
    pop.pass_(PASSWORD)
    assert pop.uidl(1).split()[2].decode() == before
    assert b"Subject: through mailplan" in pop.retr(1)[1]
    pop.quit()


@pytest.mark.interop("dovecot")
def test_dovecot_runs_beside_serve_dev_as_its_banner_says(reachable: Path) -> None:
    """`mailplan serve --dev` prints two commands for IMAP; run as printed, they start a
    Dovecot that serves the server's Maildirs with its development certificate, on its
    listeners (high ports stay as they are), with Dovecot's own files under var/dovecot."""
    ports = dict(zip(("smtp", "pop3s", "imap", "imaps"), free_ports(4), strict=True))
    directory = write_site(reachable, ports)
    with MailServer(directory, reachable, [ports["smtp"]], extra_arguments=["--dev"]) as server:
        deliver_to_alice(ports["smtp"])
        new = reachable / "var" / "mail" / "example.com" / "alice" / "new"
        assert wait_until(lambda: new.is_dir() and any(new.iterdir()), TIMEOUT), server.log()
        lines = server.log().splitlines()
    at = lines.index(
        "IMAP is served by Dovecot, which mailplan does not start; in another terminal:"
    )
    write, start = lines[at + 1].split(), lines[at + 2].split()
    output = reachable / "var" / "dovecot"
    assert write[write.index("mailplan") + 1 :] == [
        *("dovecot", str(directory), "--dev", "--root", str(reachable), "-o", str(output))
    ]
    assert start[-4:] == ["dovecot", "-F", "-c", str(output / dovecot.CONFIG)]
    if os.geteuid() == 0:  # Dovecot never reads mail as root: the banner says so
        assert lines[at + 3].startswith("  (Dovecot never reads mail as root")
        subprocess.run(
            ["chown", "-R", f"{MAIL_USER}:", str(reachable / "var" / "mail")], check=True
        )
    result = mailplan(*write[write.index("mailplan") + 1 :])
    assert result.returncode == 0, result.stderr
    imap = Dovecot(Path(start[-1]), reachable / "dovecot-dev.log", [ports["imap"], ports["imaps"]])
    imap.start()
    try:
        # not the system Dovecot's /run/dovecot (its master writes the pid file after it
        # listens: under load, a moment after the ports answer)
        pid_file = output / "run" / "master.pid"
        assert wait_until(pid_file.exists, TIMEOUT), imap.log()
        context = ssl.create_default_context(cafile=reachable / "var" / "tls" / "dev.crt")
        context.check_hostname = False  # the certificate names mail.example.com, not an IP
        client = imaplib.IMAP4(LOOPBACK, ports["imap"], timeout=TIMEOUT)
        client.starttls(context)
        inbox = read_inbox(client, "alice@example.com")
        assert b"Subject: through mailplan\r\n" in inbox, imap.log()
    finally:
        imap.stop()
