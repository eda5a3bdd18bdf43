"""Start and stop a real `mailplan serve` process for end-to-end tests.

Nothing here knows about a particular site: a test writes its own site folder (with
`sitekit.write_site`), then `MailServer(site, root, ports).start()` runs the server on
it and waits until every given port accepts connections. The server's standard error
goes to a file (no pipe to fill up), so tests can read its log at any time; `stop()`
sends SIGTERM, waits, and kills only as a last resort. Loopback only: listeners belong
on 127.0.0.0/8.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that is free on `host` right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """`count` distinct free ports (all held open together while they are picked)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(
    predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.05
) -> object:
    """Poll `predicate` until it returns something true; that value, or the last false one."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid`."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                fields = Path(entry.path, "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def environment() -> dict[str, str]:
    """The environment for a mailplan subprocess: the project importable, output unbuffered."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def as_root() -> list[str]:
    """What `mailplan serve` needs to run as root in a test (CI runs as root)."""
    return ["--allow-root"] if os.geteuid() == 0 else []


def mailplan(*arguments: str | Path, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run one `mailplan` command to completion (not the server) and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "mailplan", *map(str, arguments)],
        cwd=PROJECT,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class ServerError(RuntimeError):
    """The server did not start, or did not stop, as it should."""


class MailServer:
    """One `mailplan serve SITE --root ROOT` process.

    `ports` are the (host, port) pairs, or bare ports on 127.0.0.1, that must accept
    connections before `start()` returns; with ports, `start()` also waits for the log
    line that says the server serves its plan. Also a context manager.

    Outbound mail stays on loopback: the server asks `resolver` (`IP:PORT`) for MX
    records and connects to other SMTP servers on `smtp_port`. By default both are
    loopback ports where nothing listens, so that a test that does not care about
    delivery sees its remote recipients wait (DNS time-out: a temporary failure).
    """

    def __init__(
        self,
        site: Path,
        root: Path,
        ports: Iterable[int | tuple[str, int]] = (),
        *,
        extra_arguments: Iterable[str] = (),
        log_file: Path | None = None,
        resolver: str | None = None,
        smtp_port: int | None = None,
    ) -> None:
        self.site = Path(site)
        self.root = Path(root)
        self.ports = [(LOOPBACK, p) if isinstance(p, int) else p for p in ports]
        self.extra_arguments = list(extra_arguments)
        self.resolver = resolver or f"{LOOPBACK}:{free_port()}"
        self.smtp_port = smtp_port or free_port()
        self.log_file = log_file or self.root / "server.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None

    # -- life cycle ------------------------------------------------------------------

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "mailplan",
            "serve",
            str(self.site),
            "--root",
            str(self.root),
            "--resolver",
            self.resolver,
            "--smtp-port",
            str(self.smtp_port),
            *as_root(),
            *self.extra_arguments,
        ]

    def start(self, timeout: float = 20.0) -> MailServer:
        if self.running:
            raise ServerError("the server is already running")
        for host, port in self.ports:
            if accepts(host, port, timeout=0.2):
                raise ServerError(f"something else already listens on {host} port {port}")
        self.root.mkdir(parents=True, exist_ok=True)
        begun = len(self.log())
        with open(self.log_file, "ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                cwd=PROJECT,
                env=environment(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + timeout
        waiting = list(self.ports)
        while waiting:
            if self.process.poll() is not None:
                self.returncode = self.process.returncode
                raise ServerError(
                    f"the server exited with status {self.returncode} before it listened:\n"
                    + self.log()
                )
            if time.monotonic() > deadline:
                self.kill()
                raise ServerError(f"the server did not listen on {waiting}:\n" + self.log())
            if accepts(*waiting[0], timeout=0.2):
                waiting.pop(0)
            else:
                time.sleep(0.05)
        # the kernel accepts on a bound socket before the server serves it: wait for the
        # line that says it does (its queue process is ready by then)
        left = max(deadline - time.monotonic(), 1.0)
        if self.ports and not wait_until(lambda: "serving plan" in self.log()[begun:], left):
            self.kill()
            raise ServerError("the server did not say it serves a plan:\n" + self.log())
        return self

    def signal(self, number: int) -> None:
        if self.process is None or self.process.poll() is not None:
            raise ServerError("the server is not running")
        self.process.send_signal(number)

    def reload(self) -> None:
        """SIGHUP: the server loads its site again (asynchronously: watch the log)."""
        self.signal(signal.SIGHUP)

    def terminate(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then wait up to `timeout` seconds; the exit status, or None if it hung."""
        if self.process is None:
            return self.returncode
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                return None
        self.returncode = self.process.returncode
        return self.returncode

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        if self.process is not None:
            self.returncode = self.process.returncode

    def stop(self, timeout: float = 10.0) -> int | None:
        """Terminate cleanly, kill if that hangs; the status of the clean stop (None: hung)."""
        status = self.terminate(timeout)
        if status is None:
            self.kill()
        return status

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def __enter__(self) -> MailServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what it wrote ---------------------------------------------------------------

    def log(self) -> str:
        """Everything the server wrote to standard output and error so far."""
        try:
            return self.log_file.read_text("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, text: str, timeout: float = 10.0, after: int = 0) -> bool:
        """Whether `text` appears in the log (past character `after`) within `timeout`."""
        return bool(wait_until(lambda: text in self.log()[after:], timeout))

    def path(self, relative: str | Path) -> Path:
        """A path the server resolves against --root (queue and mail directories)."""
        path = Path(relative)
        return path if path.is_absolute() else self.root / path


class Maildir:
    """A Maildir the server delivers into (DOMAIN/ACCOUNT under the mail directory)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def messages(self) -> list[bytes]:
        new = self.folder / "new"
        if not new.is_dir():
            return []
        return [path.read_bytes() for path in sorted(new.iterdir()) if path.is_file()]

    def wait(self, count: int = 1, timeout: float = 10.0) -> list[bytes]:
        """The messages in `new/`, once there are at least `count` (or when time runs out)."""
        wait_until(lambda: len(self.messages()) >= count, timeout)
        return self.messages()
