"""`mailplan serve --workers N`: a supervisor and N worker processes on one site.

(What happens to acknowledged and queued mail when the whole server is killed,
with one process or two workers, is in test_crash.py.)
"""

from __future__ import annotations

import os
import signal
import smtplib
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from serverkit import LOOPBACK, Maildir, MailServer, children, free_port, mailplan, wait_until
from sitekit import plain, write_site

TIMEOUT = 15.0


class Site:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.directory = root / "site"
        self.write()
        self.server = MailServer(
            self.directory, root, [self.port], extra_arguments=["--workers", "2"]
        )

    def write(self, accounts: Iterable[str] = ("alice",)) -> None:
        write_site(self.directory, listeners={"smtp": plain(self.port)}, accounts=accounts)

    @property
    def pid(self) -> int:
        assert self.server.process is not None
        return self.server.process.pid

    def send(self, recipient: str, token: str) -> tuple[int, bytes]:
        with smtplib.SMTP(LOOPBACK, self.port, timeout=TIMEOUT) as client:
            client.ehlo("client.example.com")
            client.mail("someone@remote.test")
            code, reply = client.rcpt(recipient)
            if code != 250:
                return code, reply
            return client.data(f"Subject: {token}\r\n\r\n{token}\r\n".encode())

    def tokens(self, account: str = "alice") -> list[str]:
        box = Maildir(self.root / "var" / "mail" / "example.com" / account)
        return sorted(
            line.removeprefix(b"Subject: ").decode()
            for message in box.messages()
            for line in message.split(b"\r\n")
            if line.startswith(b"Subject: ")
        )


def serving(site: Site, workers: int = 2) -> bool:
    """Both workers have started serving (their loops handle signals from then on)."""
    log = site.server.log
    return bool(
        wait_until(
            lambda: all(f"(worker {i} of {workers})" in log() for i in range(workers)), TIMEOUT
        )
    )


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    made = Site(tmp_path)
    made.server.start()
    assert serving(made), made.server.log()
    yield made
    made.server.stop()


def test_two_workers_serve_and_deliver_everything_once(site: Site) -> None:
    assert wait_until(lambda: len(children(site.pid)) == 2, TIMEOUT)
    tokens = [f"m{n:02d}" for n in range(30)]
    for token in tokens:
        assert site.send("alice@example.com", token)[0] == 250
    assert wait_until(lambda: site.tokens() == tokens, TIMEOUT), site.server.log()
    pidfile = site.root / "var" / "queue" / "mailplan.pid"
    assert pidfile.read_text() == f"{site.pid}\n"  # the supervisor's: flush signals it


def test_a_worker_that_dies_is_started_again(site: Site) -> None:
    assert wait_until(lambda: len(children(site.pid)) == 2, TIMEOUT)
    victim = children(site.pid)[0]
    os.kill(victim, signal.SIGKILL)
    assert wait_until(lambda: "starting it again" in site.server.log(), TIMEOUT)
    assert wait_until(
        lambda: len(children(site.pid)) == 2 and victim not in children(site.pid), TIMEOUT
    )
    for n in range(10):
        assert site.send("alice@example.com", f"after{n}")[0] == 250
    assert wait_until(lambda: len(site.tokens()) == 10, TIMEOUT), site.server.log()


def test_reload_reaches_every_worker(site: Site) -> None:
    assert wait_until(lambda: len(children(site.pid)) == 2, TIMEOUT)
    assert site.send("bob@example.com", "before")[0] == 550
    site.write(["alice", "bob"])
    site.server.reload()
    assert wait_until(lambda: site.server.log().count("reloaded: serving plan") == 2, TIMEOUT)
    for n in range(10):  # whichever worker takes the connection knows bob now
        assert site.send("bob@example.com", f"b{n}")[0] == 250


def test_a_worker_started_again_serves_the_plan_the_others_serve(site: Site) -> None:
    """Not the plan the server started with, nor an edit of the site nobody reloaded."""
    assert wait_until(lambda: len(children(site.pid)) == 2, TIMEOUT)
    site.write(["alice", "bob"])
    site.server.reload()
    assert wait_until(lambda: site.server.log().count("reloaded: serving plan") == 2, TIMEOUT)
    (site.directory / "site.yaml").write_text("server: {half: written\n")  # an edit under way
    victim = children(site.pid)[0]
    os.kill(victim, signal.SIGKILL)
    assert wait_until(
        lambda: len(children(site.pid)) == 2 and victim not in children(site.pid), TIMEOUT
    )
    assert serving(site), site.server.log()
    for n in range(12):  # whichever worker takes the connection knows bob
        assert site.send("bob@example.com", f"b{n}")[0] == 250, site.server.log()


def test_flush_and_stop(site: Site) -> None:
    assert wait_until(lambda: len(children(site.pid)) == 2, TIMEOUT)
    flushed = mailplan("queue", "flush", "--site", site.directory, "--root", site.root)
    assert flushed.returncode == 0, flushed.stderr
    assert "no server is running" not in flushed.stdout
    workers = children(site.pid)
    assert site.server.stop() == 0
    assert all(not Path(f"/proc/{pid}").exists() for pid in workers)
    assert not (site.root / "var" / "queue" / "mailplan.pid").exists()


def test_a_bad_worker_count_is_refused(tmp_path: Path) -> None:
    directory = write_site(tmp_path / "site", listeners={"smtp": plain(free_port())})
    result = mailplan("serve", directory, "--root", tmp_path, "--workers", "0")
    assert result.returncode == 2
    assert "--workers is a number from 1, or auto" in result.stderr


def test_the_supervisor_passes_over_a_child_that_is_not_a_worker(tmp_path: Path) -> None:
    """A reload compiles a site, which may fork a child for its address lists
    (compiler/apart.py): reaped by the supervisor's wait, it is no worker of its."""
    from mailplan.runtime.serve.workers import _Supervisor

    supervisor = _Supervisor.__new__(_Supervisor)
    stray = os.fork()
    if stray == 0:
        os._exit(0)
    worker = os.fork()
    if worker == 0:
        time.sleep(0.5)  # ends after the stray child
        os._exit(3)
    supervisor.children = {worker: 0}
    supervisor.stopping = True
    assert supervisor.watch() == 3
    assert supervisor.children == {}
