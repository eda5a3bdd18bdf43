"""What `mailplan serve` does before its first client, in this order: lock the queue
(one server per queue), load the TLS certificate and the DKIM keys, bind every
listener, ask the resolver once, give up root, check that what the server writes is
writable, and write the pid file.

Every mistake an operator can make on the way is a `StartupError` whose text is one
line naming the culprit; the CLI prints it and exits, with no traceback.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import resource
import signal
import socket
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import dns.exception
import dns.message
import dns.rdatatype
import dns.resolver

from mailplan.plan.model import Listener, Plan
from mailplan.runtime.serve import devdkim
from mailplan.runtime.smtp.signing import KeyProblem, Keyring, Loading, load_keys

# `make run`: every listener moves to 127.0.0.1, on a fixed high port.
DEV_PORTS = {25: 2525, 587: 2587, 465: 2465, 110: 2110, 995: 2995, 143: 2143, 993: 2993}
SMTP_PROTOCOLS = ("smtp", "submission", "smtps")
POP3_PROTOCOLS = ("pop3", "pop3s")
PIDFILE = "mailplan.pid"
BACKLOG = 512
RESOLVER_PROBE_TIMEOUT = 2.0

Sockets = dict[tuple[str, str], socket.socket]


# Signals that a running server handles (reload, `queue flush`, stop): held back from the
# first line of `serve` until the handlers are in place, then delivered: a reload asked for
# while the server starts is done once it serves, a stop is a clean stop.
HELD = frozenset({signal.SIGHUP, signal.SIGUSR1, signal.SIGTERM, signal.SIGINT})


def hold_signals() -> None:
    """Keep these signals pending while the server starts (their default is to kill)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, HELD)


def release_signals() -> None:
    """Deliver the held signals, now that the server handles them."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD)


class StartupError(Exception):
    """A reason the server cannot start, in one line that names the culprit."""


def development(listener: Listener) -> Listener:
    """A listener moved to loopback and a high port, for `make run`."""
    port = DEV_PORTS.get(
        listener.port, listener.port + 2000 if listener.port < 1024 else listener.port
    )
    return replace(listener, bind=("127.0.0.1",), port=port)


def served(plan: Plan, dev: bool, bind: tuple[str, ...] = ()) -> list[Listener]:
    """The listeners this server serves itself (IMAP is Dovecot's), as they listen; with
    `bind` (`serve --bind`: one node of a farm that shares the plan) on those addresses."""
    listeners = [development(x) if dev else x for x in plan.listeners]
    if bind:
        listeners = [replace(x, bind=bind) for x in listeners]
    return [x for x in listeners if x.protocol in (*SMTP_PROTOCOLS, *POP3_PROTOCOLS)]


def resolve(root: Path, value: str) -> Path:
    """A path of the plan, relative to `--root` unless it is absolute."""
    path = Path(value)
    return path if path.is_absolute() else root / path


# -- one server per queue ----------------------------------------------------------------


@dataclass
class QueueLock:
    """An exclusive `flock` on the queue directory, held while the server runs; the pid
    file beside it is written and removed only by the holder."""

    directory: Path
    descriptor: int

    @property
    def pidfile(self) -> Path:
        return self.directory / PIDFILE

    def write_pid(self) -> None:
        temporary = self.pidfile.with_name(f".{PIDFILE}.tmp")
        temporary.write_text(f"{os.getpid()}\n")
        os.replace(temporary, self.pidfile)

    def release(self) -> None:
        """Remove the pid file, then let the lock go (in that order: a new server that
        takes the lock never has its fresh pid file removed by the old one)."""
        if self.descriptor < 0:
            return
        with contextlib.suppress(OSError):
            self.pidfile.unlink(missing_ok=True)
        os.close(self.descriptor)
        self.descriptor = -1


def lock_queue(directory: Path) -> QueueLock:
    """Take the queue for this server, or say which server has it."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise StartupError(f"cannot use the queue directory {directory}: {why(exc)}") from exc
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(descriptor)
        holder = holder_pid(directory)
        who = f"pid {holder}" if holder else "a process that wrote no pid file"
        raise StartupError(
            f"the queue {directory} is in use by another mailplan server ({who}); "
            "stop that one first, or give this one a queue.directory of its own"
        ) from exc
    return QueueLock(directory, descriptor)


def holder_pid(directory: Path) -> int | None:
    """The pid a server wrote in `directory`'s pid file, if it wrote one."""
    try:
        text = (directory / PIDFILE).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isascii() and text.isdigit() else None


def queue_in_use(directory: Path) -> bool:
    """Whether a server holds the queue in `directory` now."""
    try:
        descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return False
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(descriptor)
    return False


# -- DKIM keys ---------------------------------------------------------------------------


def dkim_keys(
    plan: Plan, root: Path, site: Path | None, dev: bool = False, previous: Keyring | None = None
) -> tuple[Keyring, list[str]]:
    """The DKIM private keys of the plan, each checked against the public key the plan
    publishes, and warnings. Read as root at start-up (before the server gives it up): key
    files are typically root's; at a reload, `previous` are the keys read before. With
    `--dev`, a key file that does not exist is made (`devdkim`) and a key that is not the
    published one is a warning, so that the example site signs on a fresh clone."""
    made = devdkim.ensure(plan, root) if dev else {}
    warnings = list(made.values())

    def mismatch(path: Path, problem: str) -> None:
        if path not in made:  # a key just made is not the published one: said once already
            warnings.append(problem)

    how = Loading(root, site, previous, mismatch if dev else None)
    try:
        return load_keys(plan, how), warnings
    except KeyProblem as exc:
        raise StartupError(str(exc)) from exc


# -- listening sockets -------------------------------------------------------------------


def listening(address: str, port: int) -> socket.socket:
    """A TCP socket listening on address:port (IPv6 sockets take IPv6 only)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((address, port))
        sock.listen(BACKLOG)  # connections wait here until the server accepts them
    except OSError:
        sock.close()
        raise
    return sock


def raise_descriptor_limit(connections: int) -> str | None:
    """Raise this process's open-file limit to what it may have (each connection takes a
    descriptor, and so does each file the queue writes); a warning when that is still
    fewer than the connections the site allows, with some to spare."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    wanted = connections + connections // 4 + 64
    if soft != resource.RLIM_INFINITY and soft < wanted:
        return (
            f"the open-file limit is {soft}, fewer than limits.max_connections "
            f"({connections}) needs ({wanted}): raise it (LimitNOFILE= in the unit)"
        )
    return None


def bind(listeners: Iterable[Listener]) -> Sockets:
    """A listening socket for every address of every listener; all or none."""
    sockets: Sockets = {}
    try:
        for listener in listeners:
            for address in listener.bind:
                try:
                    sockets[(listener.name, address)] = listening(address, listener.port)
                except OSError as exc:
                    raise StartupError(_bind_problem(listener, address, exc)) from exc
    except StartupError:
        for sock in sockets.values():
            sock.close()
        raise
    return sockets


def _bind_problem(listener: Listener, address: str, exc: OSError) -> str:
    where = f"cannot listen on {address} port {listener.port} (listener {listener.name})"
    if exc.errno == errno.EADDRINUSE:
        return (
            f"{where}: the port is in use; stop what listens there "
            f"(`ss -ltnp 'sport = :{listener.port}'` shows it) "
            f"or change listeners.{listener.name}.port"
        )
    if exc.errno == errno.EACCES:
        return (
            f"{where}: permission denied; ports below 1024 need root "
            "(with --user to give it up) or CAP_NET_BIND_SERVICE"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{where}: {address} is not an address of this host"
    return f"{where}: {why(exc)}"


# -- the resolver ------------------------------------------------------------------------


def check_resolver(nameserver: str | None) -> str | None:
    """Ask the resolver the server will use one question. A resolver that is not
    configured or cannot be sent to is a StartupError; one that sends no answer is
    returned as a warning (the server serves, and mail waits until DNS answers)."""
    from mailplan.runtime.dns.mx import resolver as make_resolver

    try:
        configured = make_resolver(nameserver, RESOLVER_PROBE_TIMEOUT)
    except (dns.resolver.NoResolverConfiguration, OSError) as exc:
        raise StartupError(
            f"no DNS resolver: {exc}; give --resolver IP[:PORT] or fix /etc/resolv.conf"
        ) from exc
    except ValueError as exc:
        raise StartupError(f"--resolver is IP[:PORT]: {nameserver!r}") from exc
    if not 0 < configured.port < 65536:
        raise StartupError(f"--resolver is IP[:PORT], a port from 1 to 65535: {nameserver!r}")
    if not configured.nameservers:
        raise StartupError("no DNS resolver in /etc/resolv.conf; give --resolver IP[:PORT]")
    where, port = str(configured.nameservers[0]), configured.port
    family = socket.AF_INET6 if ":" in where else socket.AF_INET
    question = dns.message.make_query(".", dns.rdatatype.NS)
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.settimeout(RESOLVER_PROBE_TIMEOUT)
        try:
            probe.connect((where, port))  # connected: a closed port is ECONNREFUSED at once
            probe.send(question.to_wire())
            dns.message.from_wire(probe.recv(65535))
        except TimeoutError:
            return (
                f"the DNS resolver {where} port {port} does not answer: receiving checks "
                "and deliveries wait until it does"
            )
        except ConnectionRefusedError:
            return f"nothing answers DNS on {where} port {port}: mail waits until it does"
        except OSError as exc:
            raise StartupError(
                f"cannot reach the DNS resolver {where} port {port}: {why(exc)}"
            ) from exc
        except dns.exception.DNSException:
            pass  # an answer of some kind: a resolver is there
    return None


def why(exc: OSError) -> str:
    """An OSError in a few lower-case words, for a one-line error."""
    return (exc.strerror or str(exc)).lower()
