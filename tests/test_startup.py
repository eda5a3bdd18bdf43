"""What `mailplan serve` does before its first client (runtime/serve/startup.py): one server per
queue, and each mistake an operator can make as one line on standard error, with no
traceback; giving up root for an unprivileged user (as root only)."""

from __future__ import annotations

import datetime
import os
import pwd
import shutil
import smtplib
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from serverkit import (
    LOOPBACK,
    Maildir,
    MailServer,
    as_root,
    free_port,
    mailplan,
    wait_until,
)
from sitekit import listener, plain, write_site

TIMEOUT = 15.0
ROOT = os.geteuid() == 0


def make_site(
    root: Path, port: int, *, queue: str = "var/queue", mail: str = "var/mail", tls: str = ""
) -> Path:
    """A site with one SMTP listener; given the site's `tls:` line, it offers STARTTLS."""
    smtp = listener(port, tls="starttls", auth="optional") if tls else plain(port)
    folders = {"directory": queue, "mail_directory": mail}
    return write_site(root / "site", listeners={"smtp": smtp}, queue=folders, extra=tls)


def serve(
    site: Path, root: Path, *extra: str, resolver: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`mailplan serve` that is expected to stop at once."""
    resolver = resolver or f"{LOOPBACK}:{free_port()}"
    return mailplan("serve", site, "--root", root, "--resolver", resolver, *extra)


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single line a failed start printed (and nothing else, no traceback)."""
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def send(port: int, token: str) -> tuple[int, bytes]:
    with smtplib.SMTP(LOOPBACK, port, timeout=TIMEOUT) as client:
        client.ehlo("client.example.com")
        client.mail("someone@remote.test")
        client.rcpt("alice@example.com")
        return client.data(f"Subject: {token}\r\n\r\n{token}\r\n".encode())


# -- one server per queue ----------------------------------------------------------------


def test_a_second_server_on_a_held_queue_says_who_holds_it_and_touches_nothing(
    tmp_path: Path,
) -> None:
    port = free_port()
    site = make_site(tmp_path, port)
    with MailServer(site, tmp_path, [port]) as first:
        assert first.process is not None
        pidfile = tmp_path / "var" / "queue" / "mailplan.pid"
        assert wait_until(pidfile.exists, TIMEOUT)
        second = serve(site, tmp_path, *as_root())
        queue = tmp_path / "var" / "queue"
        assert one_line(second) == (
            f"mailplan: the queue {queue} is in use by another mailplan server "
            f"(pid {first.process.pid}); stop that one first, or give this one a "
            "queue.directory of its own"
        )
        assert pidfile.read_text() == f"{first.process.pid}\n"
        assert send(port, "still-served")[0] == 250
        assert Maildir(tmp_path / "var" / "mail" / "example.com" / "alice").wait(1, TIMEOUT)
    assert not pidfile.exists()  # removed by the server that wrote it, as it stopped


def test_queue_flush_finds_the_server_by_its_lock(tmp_path: Path) -> None:
    port = free_port()
    site = make_site(tmp_path, port)
    with MailServer(site, tmp_path, [port]) as server:
        flushed = mailplan("queue", "flush", "--site", site, "--root", tmp_path)
        assert flushed.stdout.splitlines() == ["0 message(s) to be tried again now"]
        assert server.running


# -- an operator's mistakes, one line each -------------------------------------------------


def test_a_port_in_use_is_named_with_what_to_do(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        port = taken.getsockname()[1]
        site = make_site(tmp_path, port)
        result = serve(site, tmp_path, *as_root())
    assert one_line(result) == (
        f"mailplan: cannot listen on {LOOPBACK} port {port} (listener smtp): the port is in "
        f"use; stop what listens there (`ss -ltnp 'sport = :{port}'` shows it) or change "
        "listeners.smtp.port"
    )
    assert not (tmp_path / "var" / "queue" / "mailplan.pid").exists()


@pytest.mark.parametrize("which", ["queue", "mail"])
def test_a_folder_that_cannot_be_made_is_named(tmp_path: Path, which: str) -> None:
    (tmp_path / "plain-file").write_text("not a folder\n")
    folders = {"queue": "var/queue", "mail": "var/mail", which: "plain-file/inside"}
    site = make_site(tmp_path, free_port(), **folders)
    result = serve(site, tmp_path, *as_root())
    assert one_line(result) == (
        f"mailplan: cannot create {tmp_path / 'plain-file' / 'inside'}: not a directory"
    )


def test_a_missing_certificate_is_named(tmp_path: Path) -> None:
    tls = "tls: {certificate: tls/missing.crt, key: tls/missing.key}"
    site = make_site(tmp_path, free_port(), tls=tls)
    result = serve(site, tmp_path, *as_root())
    assert one_line(result) == (
        f"mailplan: cannot read the TLS certificate {tmp_path / 'tls' / 'missing.crt'}: "
        "no such file or directory"
    )


def _certificate(key: ec.EllipticCurvePrivateKey, days: int = 30) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mail.example.com")])
    now = datetime.datetime.now(datetime.UTC)
    if days < 0:  # made two years ago, for `days` ago
        now -= datetime.timedelta(days=730)
    built = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days if days > 0 else 730 + days))
        .sign(key, hashes.SHA256())
    )
    return built.public_bytes(serialization.Encoding.PEM)


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def test_a_key_that_does_not_belong_to_its_certificate_is_named(tmp_path: Path) -> None:
    (tmp_path / "tls").mkdir()
    (tmp_path / "tls" / "mail.crt").write_bytes(
        _certificate(ec.generate_private_key(ec.SECP256R1()))
    )
    (tmp_path / "tls" / "mail.key").write_bytes(_pem(ec.generate_private_key(ec.SECP256R1())))
    site = make_site(
        tmp_path, free_port(), tls="tls: {certificate: tls/mail.crt, key: tls/mail.key}"
    )
    result = serve(site, tmp_path, *as_root())
    assert one_line(result) == (
        f"mailplan: the TLS key {tmp_path / 'tls' / 'mail.key'} does not belong to the "
        f"certificate {tmp_path / 'tls' / 'mail.crt'}"
    )


def _tls_files(folder: Path, days: int = 30, passphrase: bytes | None = None) -> str:
    """A certificate and its key in folder/tls; the site's `tls:` line for them."""
    key = ec.generate_private_key(ec.SECP256R1())
    (folder / "tls").mkdir()
    (folder / "tls" / "mail.crt").write_bytes(_certificate(key, days))
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    (folder / "tls" / "mail.key").write_bytes(pem)
    (folder / "tls" / "mail.key").chmod(0o600)
    return "tls: {certificate: tls/mail.crt, key: tls/mail.key}"


def test_a_key_with_a_passphrase_is_named_and_never_prompts(tmp_path: Path) -> None:
    site = make_site(tmp_path, free_port(), tls=_tls_files(tmp_path, passphrase=b"secret"))
    assert one_line(serve(site, tmp_path, *as_root())) == (
        f"mailplan: the TLS key {tmp_path / 'tls' / 'mail.key'} is protected by a passphrase; "
        f"mailplan needs it without one (openssl pkey -in {tmp_path / 'tls' / 'mail.key'} "
        "-out KEY), readable by the serving user only"
    )


@pytest.mark.parametrize(
    ("days", "mode", "warned"),
    [
        (-3, 0o600, "has expired"),
        (5, 0o600, "expires in 5 day(s)"),
        (90, 0o644, "is readable by every user: chmod o-r"),
    ],
    ids=["expired", "expires-soon", "key-world-readable"],
)
def test_what_is_wrong_with_the_certificate_is_a_warning(
    tmp_path: Path, days: int, mode: int, warned: str
) -> None:
    port = free_port()
    site = make_site(tmp_path, port, tls=_tls_files(tmp_path, days))
    (tmp_path / "tls" / "mail.key").chmod(mode)
    with MailServer(site, tmp_path, [port]) as server:
        assert server.wait_for_log(warned), server.log()
        assert send(port, "served")[0] == 250
    assert " WARNING the TLS " in server.log()


def test_a_queue_folder_that_is_a_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "queue").write_text("a file\n")
    site = make_site(tmp_path, free_port())
    assert one_line(serve(site, tmp_path, *as_root())) == (
        f"mailplan: {tmp_path / 'var' / 'queue'} is not a directory"
    )


@pytest.mark.parametrize(
    ("option", "value", "said"),
    [
        ("--smtp-port", "70000", "a port is a number from 1 to 65535: '70000'"),
        ("--dns-timeout", "nan", "seconds above 0, at most 3600: 'nan'"),
        ("--dns-timeout", "-1", "seconds above 0, at most 3600: '-1'"),
    ],
)
def test_an_option_out_of_range_is_a_usage_error(
    tmp_path: Path, option: str, value: str, said: str
) -> None:
    site = make_site(tmp_path, free_port())
    result = serve(site, tmp_path, option, value, *as_root())
    assert result.returncode == 2
    assert said in result.stderr.splitlines()[-1]


def test_a_resolver_port_out_of_range_is_named(tmp_path: Path) -> None:
    site = make_site(tmp_path, free_port())
    assert one_line(serve(site, tmp_path, *as_root(), resolver="127.0.0.1:99999")) == (
        "mailplan: --resolver is IP[:PORT], a port from 1 to 65535: '127.0.0.1:99999'"
    )


def test_a_plan_file_that_is_not_text_is_named(tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_bytes(b"\xff\xfe not a plan")
    result = mailplan("serve", "--plan", plan, "--root", tmp_path, *as_root())
    assert (
        one_line(result)
        == (
            f"mailplan: cannot serve:\n{plan}: not a plan: not UTF-8 text (invalid start byte)"
        ).splitlines()[0]
        or result
    )


def test_a_start_up_error_is_json_when_the_log_is(tmp_path: Path) -> None:
    import json

    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        site = make_site(tmp_path, taken.getsockname()[1])
        result = serve(site, tmp_path, "--log-format", "json", *as_root())
    line = json.loads(one_line(result))
    assert line["level"] == "critical"
    assert line["message"].startswith("mailplan: cannot listen on 127.0.0.1 port ")


def test_a_certificate_and_key_that_match_serve_starttls_with_aead_only(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "tls").mkdir()
    (tmp_path / "tls" / "mail.crt").write_bytes(_certificate(key))
    (tmp_path / "tls" / "mail.key").write_bytes(_pem(key))
    port = free_port()
    site = make_site(tmp_path, port, tls="tls: {certificate: tls/mail.crt, key: tls/mail.key}")
    import ssl

    with MailServer(site, tmp_path, [port]):
        cbc = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        cbc.check_hostname, cbc.verify_mode = False, ssl.CERT_NONE
        cbc.maximum_version = ssl.TLSVersion.TLSv1_2
        cbc.set_ciphers("ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA384")  # CBC only
        with smtplib.SMTP(LOOPBACK, port, timeout=TIMEOUT) as client, pytest.raises(ssl.SSLError):
            client.starttls(context=cbc)
        aead = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        aead.check_hostname, aead.verify_mode = False, ssl.CERT_NONE
        aead.maximum_version = ssl.TLSVersion.TLSv1_2
        with smtplib.SMTP(LOOPBACK, port, timeout=TIMEOUT) as client:
            assert client.starttls(context=aead)[0] == 220
            assert client.sock is not None
            cipher = client.sock.cipher()  # type: ignore[attr-defined]
            assert "GCM" in cipher[0] or "CHACHA20" in cipher[0]


def test_a_resolver_that_is_not_an_address_is_named(tmp_path: Path) -> None:
    site = make_site(tmp_path, free_port())
    result = serve(site, tmp_path, *as_root(), resolver="dns.example.net")
    assert one_line(result) == "mailplan: --resolver is IP[:PORT]: 'dns.example.net'"


def test_a_resolver_that_cannot_be_sent_to_is_named(tmp_path: Path) -> None:
    site = make_site(tmp_path, free_port())
    # A broadcast address: the kernel refuses the datagram, so nothing leaves the host.
    result = serve(site, tmp_path, *as_root(), resolver="255.255.255.255")
    assert one_line(result) == (
        "mailplan: cannot reach the DNS resolver 255.255.255.255 port 53: permission denied"
    )


def test_a_resolver_that_does_not_answer_is_a_warning_and_the_server_serves(
    tmp_path: Path,
) -> None:
    port = free_port()
    site = make_site(tmp_path, port)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as deaf:
        deaf.bind((LOOPBACK, 0))
        resolver = f"{LOOPBACK}:{deaf.getsockname()[1]}"
        with MailServer(site, tmp_path, [port], resolver=resolver) as server:
            assert server.wait_for_log(
                f"WARNING the DNS resolver {LOOPBACK} port {deaf.getsockname()[1]} does not "
                "answer: receiving checks and deliveries wait until it does"
            )
            assert send(port, "served")[0] == 250


# -- root --------------------------------------------------------------------------------


@pytest.mark.skipif(not ROOT, reason="needs root: a server started as root")
def test_root_without_a_user_is_refused(tmp_path: Path) -> None:
    site = make_site(tmp_path, free_port())
    assert one_line(serve(site, tmp_path)) == (
        "mailplan: refusing to serve as root: give --user NAME (or server.user in site.yaml) "
        "to serve as that user once the ports are bound, or --allow-root"
    )


def test_a_user_other_than_oneself_needs_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """Decided by `privileges.identity` from the effective uid: here that of a server started
    by uid 1000 (the suite may run as root, where --user is how root is given up)."""
    from mailplan.runtime.serve import privileges, startup

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(os, "getegid", lambda: 1000)
    with pytest.raises(startup.StartupError) as refused:
        privileges.identity("nobody", None, allow_root=False)
    assert str(refused.value) == (
        "--user nobody needs the server to start as root; it runs as uid 1000"
    )
    assert privileges.identity(None, None, allow_root=False) is None  # serves as it is


def test_an_unknown_user_is_named(tmp_path: Path) -> None:
    site = make_site(tmp_path, free_port())
    assert one_line(serve(site, tmp_path, "--user", "no-such-mailplan-user")) == (
        "mailplan: no such user: no-such-mailplan-user "
        "(create it: adduser --system no-such-mailplan-user)"
    )


@pytest.fixture
def open_folder() -> Iterator[Path]:
    """A folder an unprivileged user can reach (pytest's tmp_path is root's only)."""
    folder = Path(tempfile.mkdtemp(prefix="mailplan-user-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _unreadable_python() -> bool:
    """Whether the Python running the tests lies where `nobody` cannot read it."""
    return any(
        not (parent.stat().st_mode & 0o001) for parent in Path(sys.base_prefix).parents
    ) or not (Path(sys.base_prefix).stat().st_mode & 0o001)


class _AsNobodyCanRead(MailServer):
    """The server started as root in a mount namespace where a Python installed under
    /root (0700, as pyenv puts it) is reachable by other users too; the server process
    itself is the one the namespace runs (exec), so its pid is the server's."""

    def command(self) -> list[str]:
        command = super().command()
        if not _unreadable_python():
            return command
        if not sys.base_prefix.startswith("/root/"):
            pytest.fail(f"the test's Python ({sys.base_prefix}) is unreadable by nobody")
        stash = self.root / ".python"
        inner = sys.base_prefix.removeprefix("/root/").split("/")[0]
        script = (
            f"mkdir -p {stash} && mount --bind /root/{inner} {stash} && "
            "mount -t tmpfs -o mode=0711 tmpfs /root && "
            f'mkdir /root/{inner} && mount --bind {stash} /root/{inner} && exec "$@"'
        )
        return [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
            *command,
        ]


def _status_ids(pid: int) -> tuple[int, int]:
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["Uid"].split()[1]), int(fields["Gid"].split()[1])  # effective ids


@pytest.mark.skipif(not ROOT, reason="needs root: giving up root is tested as root")
def test_as_root_with_a_user_the_server_serves_as_that_user(open_folder: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    port = free_port()
    site = make_site(open_folder, port)
    server = _AsNobodyCanRead(site, open_folder, [port], extra_arguments=["--user", "nobody"])
    with server:
        assert server.process is not None
        assert server.wait_for_log(f"serving as nobody (uid {nobody.pw_uid}")
        assert _status_ids(server.process.pid) == (nobody.pw_uid, nobody.pw_gid)
        assert send(port, "as-nobody")[0] == 250
        box = open_folder / "var" / "mail" / "example.com" / "alice"
        [message] = Maildir(box).wait(1, TIMEOUT)
        assert b"as-nobody" in message
        delivered = next((box / "new").iterdir())
        assert delivered.stat().st_uid == nobody.pw_uid
        assert delivered.stat().st_mode & 0o777 == 0o600
        for folder in (open_folder / "var" / "queue", open_folder / "var" / "mail"):
            assert folder.stat().st_uid == nobody.pw_uid
            assert folder.stat().st_mode & 0o777 == 0o700


@pytest.mark.skipif(not ROOT, reason="needs root: giving up root is tested as root")
def test_a_queue_that_belongs_to_someone_else_is_named(open_folder: Path) -> None:
    queue = open_folder / "var" / "queue"
    queue.mkdir(parents=True)
    site = make_site(open_folder, free_port())
    assert one_line(serve(site, open_folder, "--user", "nobody")) == (
        f"mailplan: {queue} belongs to uid 0, not to nobody, who serves: chown -R nobody: {queue}"
    )


@pytest.mark.skipif(
    not ROOT or not _unreadable_python(), reason="needs root and a Python under /root"
)
def test_a_python_the_user_cannot_read_is_named(open_folder: Path) -> None:
    site = make_site(open_folder, free_port())
    line = one_line(serve(site, open_folder, "--user", "nobody"))
    assert line.startswith(f"mailplan: {sys.base_prefix}/lib/python3")
    assert line.endswith(
        "is not readable by uid 65534, who serves; install where that user can read "
        "(docs/deploy.md)"
    )
