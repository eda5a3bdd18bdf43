"""DKIM signing end to end (runtime/smtp/signing.py): a real `mailplan serve` relays mail
from its Client IP to an aiosmtpd sink on loopback, and dkimpy verifies what arrives
against the TXT records that `mailplan dns` renders for the site, served by a DNS server
in the test's process (tests/dnskit.py). Also: which mail is not signed, the start-up
errors of a key that cannot sign (exact text), and a reload that picks up a rotated key.
"""

from __future__ import annotations

import os
import signal
import smtplib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import dkim
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import Envelope as SinkEnvelope
from aiosmtpd.smtp import Session as SinkSession
from argon2 import PasswordHasher
from cryptography.hazmat.primitives import serialization
from dnskit import NameServer, zone_text
from serverkit import (
    LOOPBACK,
    MailServer,
    as_root,
    children,
    free_port,
    free_ports,
    mailplan,
    wait_until,
)
from sitekit import listener, plain, write_site

from mailplan.compiler.pipeline import compile_site
from mailplan.runtime.decide.signing import Signature
from mailplan.runtime.smtp.signing import KeyProblem, Loading, Signer, load_keys
from mailplan.zones.dkim import key_pair
from tests.conftest import EXAMPLE

TIMEOUT = 15.0
SINK = "127.0.0.2"
STRANGER = "127.0.0.9"  # not a Client IP
PASSWORD = "secret"
PASSWORD_HASH = PasswordHasher().hash(PASSWORD)


@dataclass
class Sink:
    """The remote SMTP server: it keeps every message it is given."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    messages: list[bytes] = field(default_factory=list)

    async def handle_DATA(
        self, server: SMTPServer, session: SinkSession, envelope: SinkEnvelope
    ) -> str:
        with self.lock:
            self.messages.append(envelope.original_content or b"")
        return "250 2.0.0 queued"

    def received(self, count: int = 1) -> list[bytes]:
        assert wait_until(lambda: len(self.messages) >= count, TIMEOUT)
        with self.lock:
            return list(self.messages)


@pytest.fixture(scope="module")
def sink_port() -> Iterator[tuple[Sink, int]]:
    sink, port = Sink(), free_port()
    controller = Controller(sink, hostname=SINK, port=port, ready_timeout=10)
    controller.start()
    try:
        yield sink, port
    finally:
        controller.stop()


@pytest.fixture
def sink(sink_port: tuple[Sink, int]) -> Sink:
    sink_port[0].messages.clear()
    return sink_port[0]


def make_key(folder: Path, selector: str, algorithm: str) -> tuple[Path, Path]:
    """(private, public) key files, as `mailplan dkim keygen` writes them."""
    private, public = key_pair(algorithm)  # type: ignore[arg-type]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{selector}.key").write_bytes(private)
    (folder / f"{selector}.pub").write_bytes(public)
    (folder / f"{selector}.key").chmod(0o600)
    return folder / f"{selector}.key", folder / f"{selector}.pub"


@dataclass
class Signing:
    """A site whose example.com signs with `selectors`, its DNS and its server."""

    tmp: Path
    site: Path
    port: int  # smtp, no AUTH
    submission: int  # AUTH (PLAIN without TLS, for the test)
    selectors: dict[str, str]  # selector → algorithm
    keys: Path = field(init=False)

    def __post_init__(self) -> None:
        self.keys = self.tmp / "keys"  # outside the site folder

    def write(self, private: dict[str, str] | None = None) -> None:
        """The site: each selector's public key in the site, its private key outside it
        (`private`: other paths for some selectors)."""
        entries = []
        for selector, algorithm in self.selectors.items():
            key, public = self.keys / f"{selector}.key", self.keys / f"{selector}.pub"
            if not public.exists():
                key, public = make_key(self.keys, selector, algorithm)
            (self.site / "dkim").mkdir(parents=True, exist_ok=True)
            (self.site / "dkim" / public.name).write_bytes(public.read_bytes())
            path = (private or {}).get(selector, str(key))
            entries.append(
                {"selector": selector, "public_key": f"dkim/{public.name}", "private_key": path}
            )
        write_site(
            self.site,
            listeners={
                "smtp": plain(self.port),
                "submission": listener(
                    self.submission, tls="none", auth="required", plaintext_auth=True
                ),
            },
            accounts={"alice": {"password": PASSWORD_HASH}},
            domains={"example.com": {"dkim": entries, "aliases": ["example.net"]}},
            extra={"receiving": {"return_path": {"scope": "nobody"}, "spf": {"scope": "nobody"}}},
        )

    def zones(self) -> dict[str, str]:
        """What `mailplan dns` renders for the site, and the sink's MX."""
        zones = {"accept.test": zone_text("accept.test", f"@ IN MX 10 mx\nmx IN A {SINK}\n")}
        for name in ("example.com", "example.net"):
            result = mailplan("dns", self.site, "--domain", name)
            assert result.returncode == 0, result.stderr
            records = [line for line in result.stdout.splitlines() if line[:1] not in "$;"]
            zones[name] = zone_text(name, "\n".join(records))
        return zones


@pytest.fixture
def signing(tmp_path: Path) -> Callable[..., Signing]:
    def make(**selectors: str) -> Signing:
        smtp, submission = free_ports(2)
        made = Signing(tmp_path, tmp_path / "site", smtp, submission, selectors)
        made.write()
        return made

    return make


@pytest.fixture
def served(
    sink_port: tuple[Sink, int], tmp_path: Path
) -> Iterator[Callable[[Signing], tuple[MailServer, NameServer]]]:
    running: list[Any] = []

    def start(
        site: Signing, zones: dict[str, str] | None = None, workers: int = 1
    ) -> tuple[MailServer, NameServer]:
        names = NameServer(tmp_path / "dns", zones or site.zones()).start()
        running.append(names)
        server = MailServer(
            site.site,
            tmp_path,
            [site.port, site.submission],
            resolver=names.address,
            smtp_port=sink_port[1],
            extra_arguments=["--workers", str(workers)] if workers > 1 else [],
        )
        running.append(server)
        return server.start(), names

    yield start
    for thing in reversed(running):
        thing.stop()


def send(
    port: int,
    author: str,
    source: str = LOOPBACK,
    to: str = "carol@accept.test",
    login: bool = False,
) -> None:
    message = EmailMessage()
    message["From"] = f"Alice <{author}>"
    message["To"] = to
    message["Subject"] = "signed"
    message["Message-ID"] = "<signed.1@example.com>"
    message["List-Id"] = "<team.example.com>"
    message.set_content("hello\n")
    with smtplib.SMTP(LOOPBACK, port, timeout=TIMEOUT, source_address=(source, 0)) as client:
        client.ehlo("client.example.com")
        if login:
            client.login("alice@example.com", PASSWORD)
        client.mail(author)
        assert client.rcpt(to)[0] == 250
        code, reply = client.data(message.as_bytes().replace(b"\n", b"\r\n"))
    assert code == 250, reply


def verifications(message: bytes, names: NameServer) -> list[tuple[bool, bytes]]:
    """(verified, the signature's header list) of every DKIM-Signature, in order."""
    resolver = names.resolver()

    def txt(name: bytes, timeout: int = 5) -> bytes:
        answer = resolver.resolve(name.decode().rstrip("."), "TXT")
        return b"".join(b"".join(record.strings) for record in answer)

    found = []
    verifier = dkim.DKIM(message)
    for index, (_, value) in enumerate(
        (h, v) for h, v in verifier.headers if h.lower() == b"dkim-signature"
    ):
        try:
            ok = dkim.DKIM(message).verify(idx=index, dnsfunc=txt)
        except dkim.ValidationError:  # a body hash that does not match: dkim.verify's False
            ok = False
        tags = dict(
            part.strip().split(b"=", 1) for part in value.replace(b"\r\n", b"").split(b";") if part
        )
        found.append((ok, b" ".join(tags[b"h"].split()) + b" " + tags[b"a"] + b" " + tags[b"s"]))
    return found


HEADERS = b"from:to:subject:message-id:list-id:content-type:mime-version"


@pytest.mark.parametrize("algorithm", ["ed25519", "rsa"])
def test_mail_from_a_client_ip_arrives_signed_and_verifies(
    signing: Callable[..., Signing], served: Any, sink: Sink, algorithm: str
) -> None:
    site = signing(mail=algorithm)
    server, names = served(site)
    send(site.port, "alice@example.com")
    (message,) = sink.received()
    ((ok, what),) = verifications(message, names)
    assert ok, server.log()
    signed, algorithm_used, selector = what.rsplit(b" ", 2)
    assert (algorithm_used, selector) == (f"{algorithm}-sha256".encode(), b"mail")
    assert signed.replace(b" ", b"") == HEADERS + b":from"  # present ones, From oversigned
    assert b"c=relaxed/relaxed" in message.replace(b"\r\n\t", b"").replace(b" ", b"")


def test_mail_from_an_authenticated_user_arrives_signed_and_verifies(
    signing: Callable[..., Signing], served: Any, sink: Sink
) -> None:
    site = signing(mail="ed25519")
    _, names = served(site)
    send(site.submission, "alice@example.com", source=STRANGER, login=True)
    (message,) = sink.received()
    assert [ok for ok, _ in verifications(message, names)] == [True]


def test_two_selectors_during_a_rotation_give_two_signatures(
    signing: Callable[..., Signing], served: Any, sink: Sink
) -> None:
    site = signing(old="rsa", new="ed25519")
    _, names = served(site)
    send(site.port, "alice@example.com")
    (message,) = sink.received()
    found = verifications(message, names)
    assert [ok for ok, _ in found] == [True, True]
    assert sorted(what.rsplit(b" ", 1)[1] for _, what in found) == [b"new", b"old"]


def test_a_domain_alias_signs_as_itself_with_its_domains_key(
    signing: Callable[..., Signing], served: Any, sink: Sink
) -> None:
    site = signing(mail="ed25519")
    _, names = served(site)
    send(site.port, "alice@example.net")
    (message,) = sink.received()
    assert [ok for ok, _ in verifications(message, names)] == [True]
    assert b"d=example.net" in message


def test_the_body_changed_after_signing_fails(
    signing: Callable[..., Signing], served: Any, sink: Sink
) -> None:
    site = signing(mail="ed25519")
    _, names = served(site)
    send(site.port, "alice@example.com")
    (message,) = sink.received()
    assert [ok for ok, _ in verifications(message, names)] == [True]
    changed = message.replace(b"hello", b"jello")
    assert [ok for ok, _ in verifications(changed, names)] == [False]


def test_mail_relayed_for_a_stranger_is_not_signed(
    signing: Callable[..., Signing], served: Any, sink: Sink
) -> None:
    site = signing(mail="ed25519")
    served(site)
    send(site.port, "someone@elsewhere.test")
    (message,) = sink.received()
    assert b"DKIM-Signature" not in message


def test_mail_from_outside_that_claims_our_domain_is_not_signed(
    signing: Callable[..., Signing], served: Any, tmp_path: Path
) -> None:
    site = signing(mail="ed25519")
    served(site)
    send(site.port, "alice@example.com", source=STRANGER, to="alice@example.com")
    mailbox = tmp_path / "var" / "mail" / "example.com" / "alice" / "new"
    assert wait_until(lambda: any(mailbox.glob("*")), TIMEOUT)
    (delivered,) = mailbox.glob("*")
    assert b"DKIM-Signature" not in delivered.read_bytes()


def test_a_reload_picks_up_a_rotated_key_and_refuses_a_bad_one(
    signing: Callable[..., Signing], served: Any, sink: Sink
) -> None:
    site = signing(old="rsa", new="ed25519")
    zones = site.zones()  # both keys in DNS first, as a rotation starts
    del site.selectors["new"]
    site.write()
    server, names = served(site, zones)
    send(site.port, "alice@example.com")
    assert [ok for ok, _ in verifications(sink.received()[0], names)] == [True]

    site.selectors["new"] = "ed25519"
    site.write()  # the signer switched: both sign
    server.reload()
    assert server.wait_for_log("reloaded: serving plan")
    send(site.port, "alice@example.com")
    assert [ok for ok, _ in verifications(sink.received(2)[1], names)] == [True, True]

    other, _ = make_key(site.tmp / "other", "other", "ed25519")
    site.write(private={"old": str(other)})  # not the key the site publishes
    mark = len(server.log())
    server.reload()
    assert server.wait_for_log("reload refused", after=mark)
    assert (
        f"the DKIM key {other} does not belong to selector old of example.com: its public "
        "key is not the one the plan publishes (dkim/old.pub)"
    ) in server.log()
    send(site.port, "alice@example.com")
    assert [ok for ok, _ in verifications(sink.received(3)[2], names)] == [True, True]


def test_workers_started_after_a_reload_sign_with_the_keys_it_read(
    signing: Callable[..., Signing], served: Any, sink: Sink
) -> None:
    """The supervisor reads the keys of a reload too: a worker it starts again later signs
    with the selectors the site has now, not with those the server started with."""
    site = signing(old="rsa", new="ed25519")
    zones = site.zones()
    del site.selectors["new"]
    site.write()
    server, names = served(site, zones, workers=2)
    assert server.wait_for_log("(worker 1 of 2)")
    site.selectors["new"] = "ed25519"
    site.write()
    server.reload()
    assert wait_until(lambda: server.log().count("reloaded: serving plan") == 2, TIMEOUT)
    assert server.process is not None
    workers = children(server.process.pid)
    for pid in workers:  # both die: every message after this is signed by a new worker
        os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: server.log().count("starting it again") == 2, TIMEOUT)
    assert wait_until(lambda: len(set(children(server.process.pid)) - set(workers)) == 2, TIMEOUT)
    for _ in range(4):
        send(site.port, "alice@example.com")
    for message in sink.received(4):
        assert [ok for ok, _ in verifications(message, names)] == [True, True]


# -- start-up: a key that cannot sign is one line naming the selector and the file ------------


def serve(site: Signing) -> str:
    result = mailplan(
        "serve",
        site.site,
        "--root",
        site.tmp,
        "--resolver",
        f"{LOOPBACK}:{free_port()}",
        *as_root(),
    )
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.splitlines()
    return line


def test_a_key_that_is_not_the_published_one_is_named(signing: Callable[..., Signing]) -> None:
    site = signing(mail="ed25519")
    other, _ = make_key(site.tmp / "other", "other", "rsa")
    site.write(private={"mail": str(other)})
    assert serve(site) == (
        f"mailplan: the DKIM key {other} does not belong to selector mail of example.com: "
        "its public key is not the one the plan publishes (dkim/mail.pub)"
    )


def test_a_missing_key_file_is_named(signing: Callable[..., Signing]) -> None:
    site = signing(mail="ed25519")
    missing = site.tmp / "nowhere" / "mail.key"
    site.write(private={"mail": str(missing)})
    assert serve(site) == (
        f"mailplan: cannot read the DKIM key {missing} (selector mail of example.com): "
        "no such file or directory"
    )


def test_an_unreadable_key_file_is_named(
    signing: Callable[..., Signing], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What `load_keys` says of a key file the server may not read (made unreadable for
    the server's reading of it alone: whoever runs the suite, root included)."""
    from mailplan.compiler.pipeline import compile_site
    from mailplan.runtime.smtp.signing import KeyProblem, Loading, load_keys

    site = signing(mail="ed25519")
    key = site.keys / "mail.key"
    unit = compile_site(site.site)
    assert unit.plan is not None, unit.diagnostics
    read_bytes = Path.read_bytes

    def denied(path: Path) -> bytes:
        if path == key:
            raise PermissionError(13, "Permission denied", str(path))
        return read_bytes(path)

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(KeyProblem) as problem:
        load_keys(unit.plan, Loading(site.tmp, site.site))
    assert str(problem.value) == (
        f"cannot read the DKIM key {key} (selector mail of example.com): permission denied"
    )


def test_a_key_inside_the_site_folder_is_named(signing: Callable[..., Signing]) -> None:
    site = signing(mail="ed25519")
    inside = site.site / "secret" / "mail.key"
    inside.parent.mkdir()
    inside.write_bytes((site.keys / "mail.key").read_bytes())
    site.write(private={"mail": str(inside)})
    assert serve(site) == (
        f"mailplan: the DKIM key {inside} (selector mail of example.com) is inside the site "
        f"folder {site.site}: keep private keys out of the site and out of git"
    )


def test_a_key_that_is_not_pem_is_named(signing: Callable[..., Signing]) -> None:
    site = signing(mail="ed25519")
    (site.keys / "mail.key").write_text("not a key\n")
    assert serve(site) == (
        f"mailplan: the DKIM key {site.keys / 'mail.key'} (selector mail of example.com) is "
        "not a PEM private key (`mailplan dkim keygen` makes one)"
    )


def test_a_key_with_a_passphrase_is_named(signing: Callable[..., Signing]) -> None:
    site = signing(mail="ed25519")
    key = site.keys / "mail.key"
    private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    assert serve(site) == (
        f"mailplan: the DKIM key {key} (selector mail of example.com) is protected by a "
        f"passphrase; mailplan needs it without one (openssl pkey -in {key} -out KEY)"
    )


# -- reading keys (load_keys) ---------------------------------------------------------------


def test_a_reload_keeps_a_key_it_may_not_read_only_while_it_is_the_same(
    signing: Callable[..., Signing], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read as root at start-up, a root-only key cannot be read again by the serving user."""
    site = signing(mail="ed25519")
    plan = compile_site(site.site).plan
    assert plan is not None
    keys = load_keys(plan, Loading(site.tmp))

    def denied(path: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(Path, "read_bytes", denied)
    assert load_keys(plan, Loading(site.tmp, previous=keys)) == keys
    moved = {("example.com", "mail"): replace(keys["example.com", "mail"], file="/elsewhere")}
    with pytest.raises(KeyProblem, match=r"\(selector mail of example.com\): permission denied"):
        load_keys(plan, Loading(site.tmp, previous=moved))


def test_dev_mode_warns_of_a_key_that_is_not_the_published_one(
    signing: Callable[..., Signing],
) -> None:
    site = signing(mail="ed25519")
    other, _ = make_key(site.tmp / "other", "other", "ed25519")
    site.write(private={"mail": str(other)})
    plan = compile_site(site.site).plan
    assert plan is not None
    told: list[tuple[Path, str]] = []
    keys = load_keys(plan, Loading(site.tmp, mismatch=lambda *problem: told.append(problem)))
    assert list(keys) == [("example.com", "mail")]
    assert told == [
        (
            other,
            f"the DKIM key {other} does not belong to selector mail of example.com: its public "
            "key is not the one the plan publishes (dkim/mail.pub)",
        )
    ]


def test_rsa_signatures_are_made_by_openssl_and_verify(
    signing: Callable[..., Signing], monkeypatch: pytest.MonkeyPatch
) -> None:
    """dkimpy canonicalises and hashes; the RSA step is cryptography's, not dkimpy's
    Python integers (12 ms a signature)."""
    site = signing(mail="rsa")
    plan = compile_site(site.site).plan
    assert plan is not None
    keys = load_keys(plan, Loading(site.tmp))

    def python_rsa(*arguments: object) -> bytes:
        raise AssertionError("dkimpy's own RSA signed")

    monkeypatch.setattr(dkim, "RSASSA_PKCS1_v1_5_sign", python_rsa)
    message = b"From: <alice@example.com>\r\nTo: b@accept.test\r\nSubject: hi\r\n\r\nhello\r\n"
    signature = Signature("example.com", "mail", "rsa", "example.com")
    field = Signer(plan, keys).field(message, signature)
    assert field.startswith(b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed;")
    domain = next(d for d in plan.domains if d.name == "example.com")
    assert domain.dns is not None
    published = domain.dns.dkim[0].public_key

    def txt(name: bytes, timeout: int = 5) -> bytes:
        assert name == b"mail._domainkey.example.com."
        return f"v=DKIM1; k=rsa; p={published}".encode()

    assert dkim.verify(field + message, dnsfunc=txt)


def test_sealing_without_an_rsa_signing_key_is_a_warning(tmp_path: Path) -> None:
    """ARC seals with rsa-sha256 only: `arc.seal` on a site that signs with no RSA key
    would seal nothing, which `check` says at the key (MP510), not only the server's log."""
    directory = tmp_path / "site"
    sealing = {"receiving": {"arc": {"seal": True}}}
    write_site(directory, listeners={"smtp": plain(free_port())}, extra=sealing)
    unit = compile_site(directory)
    assert unit.plan is not None
    (found,) = [d for d in unit.diagnostics if d.code == "MP510"]
    assert (found.severity, found.file) == ("warning", "site.yaml")
    line = (directory / "site.yaml").read_text().splitlines()[found.line - 1]
    assert line[found.column - 1 :].startswith("true"), line  # at the value that turns it on
    example = compile_site(EXAMPLE)  # seals with its RSA selector
    assert [d for d in example.diagnostics if d.code == "MP510"] == []
