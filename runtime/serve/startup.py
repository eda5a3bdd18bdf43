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
import grp
import logging
import os
import pwd
import resource
import signal
import socket
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import dns.exception
import dns.message
import dns.rdatatype
import dns.resolver
from cryptography import x509

from mailplan.plan.model import Listener, Plan
from mailplan.runtime.serve import devdkim, devtls
from mailplan.runtime.smtp.signing import KeyProblem, Keyring, Loading, load_keys

log = logging.getLogger("mailplan.server")

# `make run`: every listener moves to 127.0.0.1, on a fixed high port.
DEV_PORTS = {25: 2525, 587: 2587, 465: 2465, 110: 2110, 995: 2995, 143: 2143, 993: 2993}
SMTP_PROTOCOLS = ("smtp", "submission", "smtps")
POP3_PROTOCOLS = ("pop3", "pop3s")
PIDFILE = "mailplan.pid"
BACKLOG = 512
RESOLVER_PROBE_TIMEOUT = 2.0
CERTIFICATE_WARNING = 14 * 86400  # seconds before a certificate expires that start-up warns

# Mozilla's "intermediate" profile for TLS 1.2: forward secrecy and AEAD only (no CBC,
# so nothing for LUCKY13); TLS 1.3 suites are all AEAD and are not affected by this.
TLS12_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
        "DHE-RSA-CHACHA20-POLY1305",
    )
)

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


def served(plan: Plan, dev: bool) -> list[Listener]:
    """The listeners this server serves itself (IMAP is Dovecot's), as they listen."""
    listeners = [development(x) if dev else x for x in plan.listeners]
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
        raise StartupError(f"cannot use the queue directory {directory}: {_why(exc)}") from exc
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


# -- TLS ---------------------------------------------------------------------------------


def tls_context(plan: Plan, root: Path, dev: bool) -> ssl.SSLContext | None:
    """The listeners' TLS context, or None when no listener uses TLS."""
    if not any(listener.tls != "none" for listener in plan.listeners):
        return None
    if dev:
        certificate, key = devtls.ensure(root / "var" / "tls", plan.server.hostname)
    else:
        if not plan.tls.certificate or not plan.tls.key:
            raise StartupError("a listener uses TLS but tls.certificate and tls.key are not set")
        certificate = resolve(root, plan.tls.certificate)
        key = resolve(root, plan.tls.key)
    for what, path in (("certificate", certificate), ("key", key)):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise StartupError(f"cannot read the TLS {what} {path}: {_why(exc)}") from exc
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        context.load_cert_chain(certificate, key, password=_no_passphrase)
    except _Passphrase as exc:  # never a prompt on the terminal, queue lock held
        raise StartupError(
            f"the TLS key {key} is protected by a passphrase; mailplan needs it without one "
            f"(openssl pkey -in {key} -out KEY), readable by the serving user only"
        ) from exc
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc) or "key values mismatch" in str(exc):
            raise StartupError(
                f"the TLS key {key} does not belong to the certificate {certificate}"
            ) from exc
        raise StartupError(
            f"cannot use the TLS certificate {certificate} with the key {key}: "
            f"{exc.reason or exc} (both must be PEM)"
        ) from exc
    return context


class _Passphrase(Exception):
    """The key asked for a passphrase."""


def _no_passphrase() -> str:
    raise _Passphrase


def tls_warnings(plan: Plan, root: Path, dev: bool, now: float | None = None) -> list[str]:
    """What an operator should hear about the certificate and key the server uses: a
    certificate that has expired or expires within two weeks (senders that check it,
    as MTA-STS and DANE make them, will not deliver), a key that others can read."""
    if dev or not plan.tls.certificate or not plan.tls.key:
        return []
    found = []
    certificate, key = resolve(root, plan.tls.certificate), resolve(root, plan.tls.key)
    try:
        leaf = x509.load_pem_x509_certificate(certificate.read_bytes())
    except (OSError, ValueError):
        return []  # tls_context has already read and used it: nothing more to say
    left = leaf.not_valid_after_utc.timestamp() - (time.time() if now is None else now)
    if left <= 0:
        found.append(
            f"the TLS certificate {certificate} has expired ({leaf.not_valid_after_utc:%Y-%m-%d})"
        )
    elif left < CERTIFICATE_WARNING:
        found.append(
            f"the TLS certificate {certificate} expires in {left / 86400:.0f} day(s) "
            f"({leaf.not_valid_after_utc:%Y-%m-%d})"
        )
    with contextlib.suppress(OSError):
        if key.stat().st_mode & 0o004:
            found.append(f"the TLS key {key} is readable by every user: chmod o-r {key}")
    return found


# -- DKIM keys ---------------------------------------------------------------------------


def dkim_keys(
    plan: Plan, root: Path, site: Path | None, dev: bool = False
) -> tuple[Keyring, list[str]]:
    """The DKIM private keys of the plan, each checked against the public key the plan
    publishes, and warnings. Read as root (before the server gives it up): key files are
    typically root's. With `--dev`, a key file that does not exist is made (`devdkim`) and
    a key that is not the published one is a warning, so that the example site signs on a
    fresh clone."""
    warnings = devdkim.ensure(plan, root) if dev else []
    how = Loading(root, site, mismatch=warnings.append if dev else None)
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
    return f"{where}: {_why(exc)}"


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
                f"cannot reach the DNS resolver {where} port {port}: {_why(exc)}"
            ) from exc
        except dns.exception.DNSException:
            pass  # an answer of some kind: a resolver is there
    return None


# -- giving up root ----------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """Whom the server runs as once its sockets are bound."""

    user: str
    uid: int
    gid: int


def identity(user: str | None, group: str | None, allow_root: bool) -> Identity | None:
    """Whom to become (None: stay who we are), or why this cannot be."""
    root = os.geteuid() == 0
    if user is None:
        if root and not allow_root:
            raise StartupError(
                "refusing to serve as root: give --user NAME (or server.user in site.yaml) "
                "to serve as that user once the ports are bound, or --allow-root"
            )
        if group is not None:
            raise StartupError("--group needs --user (or server.user in site.yaml)")
        return None
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise StartupError(f"no such user: {user} (create it: adduser --system {user})") from None
    gid = entry.pw_gid
    if group is not None:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise StartupError(f"no such group: {group}") from None
    if entry.pw_uid == 0:
        raise StartupError(f"--user {user} is root: name an unprivileged user")
    if not root:
        if entry.pw_uid == os.geteuid() and gid == os.getegid():
            return None  # already that user
        raise StartupError(
            f"--user {user} needs the server to start as root; it runs as uid {os.geteuid()}"
        )
    return Identity(entry.pw_name, entry.pw_uid, gid)


def prepare_directories(folders: Iterable[Path], who: Identity | None) -> None:
    """Create the folders the server writes (0700), owned by whom it serves as; a folder
    that exists and belongs to someone else is the admin's to give (named, not changed)."""
    for folder in folders:
        if folder.exists() and not folder.is_dir():
            raise StartupError(f"{folder} is not a directory")
        try:
            made = _made(folder)
            if made and who is not None:
                os.chown(folder, who.uid, who.gid)
            elif who is not None and folder.stat().st_uid != who.uid:
                raise StartupError(
                    f"{folder} belongs to uid {folder.stat().st_uid}, not to {who.user}, "
                    f"who serves: chown -R {who.user}: {folder}"
                )
        except OSError as exc:
            raise StartupError(f"cannot create {folder}: {_why(exc)}") from exc


def _made(folder: Path) -> bool:
    """Make `folder` (0700) unless it is there; whether this call made it (two servers
    started at once both get here before one of them has the queue's lock)."""
    try:
        folder.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        if not folder.is_dir():
            raise StartupError(f"{folder} is not a directory") from None
        return False
    return True


def become(who: Identity) -> None:
    """Give up root for good: groups, then group, then user."""
    os.initgroups(who.user, who.gid)
    os.setgid(who.gid)
    os.setuid(who.uid)
    with contextlib.suppress(PermissionError):
        os.setuid(0)
        raise StartupError("root could be taken back after dropping it; refusing to serve")


def check_writable(folders: Iterable[Path], readable: Iterable[Path]) -> None:
    """As the serving user: the folders it writes are writable, and what it reads later
    (the Python installation, the site for reloads) is readable."""
    for folder in folders:
        if _read_only(folder):
            raise StartupError(f"{folder} is on a read-only file system")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise StartupError(
                f"{folder} is not writable by uid {os.geteuid()}, who serves; fix its owner or mode"
            )
    for path in (Path(os.__file__).parent, *readable):  # the standard library first
        try:
            mode = os.R_OK | os.X_OK if path.is_dir() else os.R_OK
        except OSError:
            mode = os.R_OK | os.X_OK
        if not os.access(path, mode):
            raise StartupError(
                f"{path} is not readable by uid {os.geteuid()}, who serves; "
                "install where that user can read (docs/deploy.md)"
            )


def _read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _why(exc: OSError) -> str:
    return (exc.strerror or str(exc)).lower()
