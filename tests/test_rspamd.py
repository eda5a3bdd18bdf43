"""The content filter against Debian's rspamd (interop: `rspamd`).

rspamd runs in the foreground on a loopback port the kernel picked, with a test
configuration of its own: one normal worker, no Lua rules (so no module asks DNS, Redis
or the network; its DNS points at a loopback port where nothing answers), and rspamd's
test patterns on. GTUBE (`XJS*C4...`) is rspamd's `reject`; its variants `YJS*` and
`ZJS*` are `add header` and `rewrite subject`; a clean message is `no action`. The test
sends each through a real `mailplan serve` and checks the reply, the headers, and that a
domain rule acting on `X-Spam-Flag` stores spam in Junk.
"""

from __future__ import annotations

import getpass
import grp
import os
import signal
import smtplib
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from interop import program
from serverkit import LOOPBACK, Maildir, MailServer, free_port, free_ports, wait_until
from sitekit import NO_SENDER_CHECKS, merged, plain, write_site

STRANGER = "127.0.0.9"
GTUBE = "JS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
CONFIG = """\
options {{
  pidfile = "{run}/rspamd.pid";
  filters = "";
  enable_test_patterns = true;  # GTUBE and its variants (not for production)
  url_tld = "{run}/tld.dat";    # a short list: no minutes compiling the public suffixes
  dns {{ nameserver = ["127.0.0.1:{dead}"]; timeout = 0.2s; retransmits = 0; }}
}}
logging {{ type = "file"; filename = "{run}/rspamd.log"; level = "info"; }}
worker "normal" {{ bind_socket = "{loopback}:{port}"; count = 1; }}
actions {{ reject = 15; add_header = 6; greylist = 4; }}
"""
DOMAIN_RULES = """\
rule "Spam to Junk" priority 7
  if   Header Field is "X-Spam-Flag: YES*"
  then Store in Junk
  and  Stop Processing
"""


class Rspamd:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.folder.mkdir()
        (self.folder / "tld.dat").write_text("com\nnet\norg\ntest\nexample\n")
        config = self.folder / "rspamd.conf"
        text = CONFIG.format(run=self.folder, dead=free_port(), loopback=LOOPBACK, port=self.port)
        config.write_text(text)
        user, group = getpass.getuser(), grp.getgrgid(os.getgid()).gr_name
        with (self.folder / "stderr").open("wb") as stderr:
            self.process = subprocess.Popen(
                [program("rspamd") or "rspamd", "-f", "-i", "-u", user, "-g", group, "-c",
                 str(config), f"--var=DBDIR={self.folder}", f"--var=RUNDIR={self.folder}"],
                stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr,
            )  # fmt: skip
        assert wait_until(self.pings, 60, 0.2), self.log()

    def pings(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{LOOPBACK}:{self.port}/ping", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(20)

    def log(self) -> str:
        parts = [self.folder / "rspamd.log", self.folder / "stderr"]
        return "".join(p.read_text("utf-8", "replace") for p in parts if p.exists())


@pytest.fixture
def rspamd(tmp_path: Path) -> Iterator[Rspamd]:
    running = Rspamd(tmp_path / "rspamd")
    try:
        running.start()
        yield running
    finally:
        running.stop()


def send(port: int, subject: str, body: str) -> tuple[int, str]:
    message = f"From: <sender@remote.test>\r\nSubject: {subject}\r\n\r\n{body}\r\n".encode()
    with smtplib.SMTP(LOOPBACK, port, timeout=30, source_address=(STRANGER, 0)) as client:
        client.ehlo("client.remote.test")
        client.mail("sender@remote.test")
        client.rcpt("alice@example.com")
        code, text = client.data(message)
        return code, text.decode()


@pytest.mark.interop("rspamd")
def test_rspamd_rejects_gtube_and_marks_spam_for_the_rules(tmp_path: Path, rspamd: Rspamd) -> None:
    (port,) = free_ports(1)
    site = write_site(
        tmp_path / "site",
        listeners={"smtp": plain(port)},
        accounts=["alice"],
        domains={"example.com": {"rules": "domain.rules"}},
        extra=merged(
            NO_SENDER_CHECKS,
            {"receiving": {"content_filter": {"rspamd": f"http://{LOOPBACK}:{rspamd.port}"}}},
        ),
    )
    (site / "domain.rules").write_text(DOMAIN_RULES)
    inbox = Maildir(tmp_path / "var" / "mail" / "example.com" / "alice")
    junk = Maildir(inbox.folder / ".Junk")
    with MailServer(site, tmp_path, [port]) as server:
        assert send(port, "buy now", "X" + GTUBE) == (550, "5.7.1 Gtube pattern")
        assert send(port, "maybe spam", "Y" + GTUBE)[0] == 250
        assert send(port, "surely spam", "Z" + GTUBE)[0] == 250
        assert send(port, "lunch?", "See you at noon.")[0] == 250
        spam = junk.wait(2)
        (clean,) = inbox.wait(1)
        log = server.log()
    assert "rspamd: reject" in log and "rspamd: add header" in log, log
    assert len(spam) == 2, (log, rspamd.log())
    assert all(b"\r\nX-Spam-Flag: YES\r\n" in message for message in spam)
    assert any(b"Subject: *** SPAM *** surely spam\r\n" in message for message in spam)
    assert b"\r\nX-Spam-Flag: NO\r\nX-Spam-Score: 0.00\r\nX-Spam-Action: no action\r\n" in clean
    assert b"Subject: lunch?\r\n" in clean
