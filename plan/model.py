"""The plan model: the frozen value that the compiler produces and the runtime executes.

Every entity keeps the `Source` it came from, so that a trace or a log line can name
the file and line that decided. Sequences are tuples and enumerations are `Literal`s,
so that `plan.codec` can derive the JSON form and its JSON Schema from these classes.

The classes are frozen dataclasses, except the few whose values a big site holds by the
hundred thousand (a route and its parts, a source, an interval of an address list):
those are frozen msgspec Structs, which are made in C some eight times faster (`Route`
with its two sources: 0.3 µs against 2.5), and kept out of the cyclic garbage collector
(`gc=False`: they hold only strings, numbers and other such values, never a cycle). Both
kinds are frozen, compare and hash by value; `fields` and `is_class` treat them alike.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from itertools import repeat
from typing import Annotated, Any, Literal

import msgspec

FORMAT = 1


def is_class(hint: object) -> bool:
    """Whether `hint` is one of the model's classes (a dataclass or a Struct)."""
    return isinstance(hint, type) and (
        dataclasses.is_dataclass(hint) or issubclass(hint, msgspec.Struct)
    )


def fields(cls: Any) -> tuple[str, ...]:
    """The names of the fields of a model class (or of one of its values), in order."""
    names: tuple[str, ...] | None = getattr(cls, "__struct_fields__", None)  # a Struct's
    return names if names is not None else tuple(f.name for f in dataclasses.fields(cls))


@dataclass(frozen=True)
class Form:
    """What a string must be beyond being a string, which JSON Schema cannot say: `test`
    raises ValueError when it is not. `plan.codec` checks every field annotated with a
    Form when it loads a plan, so that the runtime never meets a value it cannot use."""

    what: str
    test: Callable[[str], object]
    # Whether all of a list's values pass, tested at once (in C), before `test` is
    # tried one value at a time to find the one that does not (None: no such test).
    every: Callable[[list[str]], bool] | None = None


def _ip_address(text: str) -> None:
    """ValueError unless `text` is an IP address. `inet_pton` reads the forms the compiler
    writes several times faster than `ipaddress` (a plan may hold 100,000 of them, checked
    at every start and reload); any other form is `ipaddress`'s to accept or refuse, as
    in `runtime.decide.addresslist`."""
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)
    except OSError:
        ipaddress.ip_address(text)


# Addresses read by one C call: a reload reads its plan in a thread, and a C call holds
# the interpreter (and the event loop) until it returns; 2,048 take well under 1 ms.
PIECE = 2048


def _ip_addresses(texts: list[str]) -> bool:
    """Whether `inet_pton` reads every one of `texts`, all IPv4 or all IPv6 (an address
    list keeps the two apart): loops in C over a list of 100,000, PIECE at a time."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            for start in range(0, len(texts), PIECE):
                deque(map(socket.inet_pton, repeat(family), texts[start : start + PIECE]), 0)
        except (OSError, ValueError):
            continue
        return True
    return False


IPAddress = Annotated[str, Form("an IP address", _ip_address, _ip_addresses)]

Scope = Literal["everybody", "clients-only", "everybody-except-clients", "nobody"]
Kind = Literal["mail", "access", "signal"]
KINDS: tuple[Kind, ...] = ("mail", "access", "signal")


class Source(msgspec.Struct, frozen=True, gc=False):
    """A place in the site: a file relative to the site folder, a line and a column (1-based)."""

    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


class Interval(msgspec.Struct, frozen=True, gc=False):
    """An inclusive range of IP addresses of one family, written as addresses."""

    first: IPAddress
    last: IPAddress


@dataclass(frozen=True)
class AddressList:
    """A named network address list compiled to sorted, merged, disjoint intervals."""

    name: str
    source: Source
    ipv4: tuple[Interval, ...]
    ipv6: tuple[Interval, ...]


@dataclass(frozen=True)
class Server:
    source: Source
    hostname: str
    main_domain: str
    client_ips: str
    blacklisted_ips: str
    addresses: tuple[str, ...]
    user: str | None = None  # whom `serve` runs as once its ports are bound
    group: str | None = None


@dataclass(frozen=True)
class Account:
    name: str
    source: Source
    password: str | None
    aliases: tuple[str, ...]
    rules: RuleSet | None
    folders: tuple[str, ...]


@dataclass(frozen=True)
class Forwarder:
    name: str
    source: Source
    target: str


@dataclass(frozen=True)
class Member:
    address: str
    source: Source


@dataclass(frozen=True)
class MailingList:
    name: str
    source: Source
    owner: str
    members: tuple[Member, ...]
    posting: Literal["members", "anyone", "moderated"]


@dataclass(frozen=True)
class Unknown:
    """What happens to mail for a name that the domain does not have."""

    source: Source
    action: Literal["reject", "discard", "route"]
    target: str | None


@dataclass(frozen=True)
class MxHost:
    source: Source
    host: str
    priority: int
    ipv4: tuple[str, ...]
    ipv6: tuple[str, ...]


@dataclass(frozen=True)
class Spf:
    policy: Literal["-all", "~all", "?all"]
    include: tuple[str, ...]
    ip4: tuple[str, ...]
    ip6: tuple[str, ...]


@dataclass(frozen=True)
class DkimKey:
    """A DKIM public key published at `selector._domainkey.DOMAIN`: `public_key` is `p=`.

    `private_key` is the path of the key file that signs with this selector (absolute, or
    relative to `serve --root`, as `tls.key`), or None: published, not signing.
    """

    source: Source
    selector: str
    algorithm: Literal["rsa", "ed25519"]
    public_key: str
    file: str
    private_key: str | None = None


@dataclass(frozen=True)
class Dmarc:
    """The `_dmarc` record: policy, subdomain policy, report addresses, alignment, percentage."""

    source: Source
    policy: Literal["none", "quarantine", "reject"]
    subdomain_policy: Literal["none", "quarantine", "reject"] | None
    rua: tuple[str, ...]
    ruf: tuple[str, ...]
    adkim: Literal["r", "s"]
    aspf: Literal["r", "s"]
    percent: int


@dataclass(frozen=True)
class MtaSts:
    """MTA-STS (RFC 8461): the policy's mode and max_age; its mx lines are the domain's MX."""

    source: Source
    mode: Literal["enforce", "testing", "none"]
    max_age: int


@dataclass(frozen=True)
class TlsRpt:
    """SMTP TLS reporting (RFC 8460): where reports go (mailto: or https: URIs)."""

    source: Source
    rua: tuple[str, ...]


@dataclass(frozen=True)
class MailDns:
    """What a domain publishes in DNS beyond `spf` (`mailplan dns` renders it all).

    `mx` is the domain's `mx`, or the server's hostname when the site names none.
    """

    ttl: int
    spf_source: Source
    mx: tuple[MxHost, ...]
    dkim: tuple[DkimKey, ...]
    dmarc: Dmarc
    mta_sts: MtaSts | None
    tls_rpt: TlsRpt | None


@dataclass(frozen=True)
class LocalDelivery:
    """How LOCAL mail reaches a mailbox: into mailplan's own Maildirs, or handed over by
    LMTP (RFC 2033) to a mailbox server (`to`: `host:port`, `[v6]:port` or `unix:/path`,
    tried in order). `source` is where the site says so (None: the default)."""

    via: Literal["maildir", "lmtp"]
    to: tuple[str, ...] = ()
    source: Source | None = None


MAILDIR = LocalDelivery("maildir")


@dataclass(frozen=True)
class Domain:
    name: str
    source: Source
    aliases: tuple[str, ...]
    accounts: tuple[Account, ...]
    forwarders: tuple[Forwarder, ...]
    lists: tuple[MailingList, ...]
    unknown: Unknown
    sends_mail: bool
    mx: tuple[MxHost, ...]
    spf: Spf
    rules: RuleSet | None
    dns: MailDns | None = None  # filled by compiler.resolve_dns
    local: LocalDelivery | None = None  # its own `delivery.local`; None: the site's


@dataclass(frozen=True)
class Pipe:
    """An external program the site allows: the only things PIPE may execute."""

    name: str
    source: Source
    program: str
    args: tuple[str, ...]
    timeout: int


@dataclass(frozen=True)
class Listener:
    name: str
    source: Source
    protocol: Literal["smtp", "submission", "smtps", "pop3", "pop3s", "imap", "imaps"]
    bind: tuple[str, ...]
    port: int
    tls: Literal["none", "starttls", "implicit"]
    auth: Literal["required", "optional", "none"]
    plaintext_auth: bool


@dataclass(frozen=True)
class Tls:
    certificate: str | None
    key: str | None


@dataclass(frozen=True)
class Relaying:
    source: Source
    scope: Scope
    authenticated: bool
    open_relay_acknowledged: str | None


@dataclass(frozen=True)
class ReturnPathCheck:
    scope: Scope
    action: Literal["reject", "header"]


@dataclass(frozen=True)
class ReverseConnectCheck:
    scope: Scope
    action: Literal["reject", "header"]
    cache: int
    timeout: int


@dataclass(frozen=True)
class SpfCheck:
    scope: Scope
    action: Literal["reject-fail", "reject-softfail", "header"]


@dataclass(frozen=True)
class RblZone:
    zone: str
    weight: int


@dataclass(frozen=True)
class RblCheck:
    scope: Scope
    zones: tuple[RblZone, ...]
    threshold: int


@dataclass(frozen=True)
class ContentFilter:
    """rspamd at the end of DATA, before the 250: `rspamd` is its URL (`/checkv2` is
    asked); `on_failure` says what an unreachable or slow rspamd means."""

    source: Source
    rspamd: str
    scope: Scope
    timeout: int
    on_failure: Literal["tempfail", "accept"]


@dataclass(frozen=True)
class DkimCheck:
    """DKIM signatures and ARC chains verified, reported in Authentication-Results."""

    scope: Scope


@dataclass(frozen=True)
class DmarcCheck:
    """DMARC evaluated; `action` is the most the site does with a failing message: follow
    the sender's policy (`reject`), never refuse (`quarantine`), only report (`none`)."""

    scope: Scope
    action: Literal["reject", "quarantine", "none"]


@dataclass(frozen=True)
class ArcSealing:
    """Whether mail from outside that leaves again (forwarders, lists, remote recipients)
    is ARC-sealed (RFC 8617) with the RSA key of the domain it was sent to."""

    seal: bool


@dataclass(frozen=True)
class Receiving:
    return_path: ReturnPathCheck
    reverse_connect: ReverseConnectCheck
    spf: SpfCheck
    rbl: RblCheck
    blacklisted_ips: Scope
    dkim: DkimCheck
    dmarc: DmarcCheck
    arc: ArcSealing
    content_filter: ContentFilter | None = None  # compiler.resolve_engines


@dataclass(frozen=True)
class Limits:
    max_message_size: int
    max_recipients: int
    max_connections: int  # held at once, in all (each worker of `serve --workers`)
    max_connections_per_client: int  # from one IPv4 address or IPv6 /64


@dataclass(frozen=True)
class Queue:
    directory: str
    mail_directory: str
    retry: tuple[int, ...]
    give_up_after: int
    warn_after: int


@dataclass(frozen=True)
class OutboundTls:
    """Which TLS policies of other domains outbound delivery honours (docs/delivery.md):
    MTA-STS (RFC 8461), DANE (RFC 7672) and TLS reports (RFC 8460); `ca_file` is trusted
    besides the system's CA store when a certificate is verified; `trusted_resolver`
    believes the AD bit of a resolver that is not on loopback."""

    mta_sts: bool
    dane: bool
    reports: bool
    ca_file: str | None
    trusted_resolver: bool


@dataclass(frozen=True)
class Admin:
    """The admin listener (`admin:`): HTTP on loopback by default, for /healthz, /plan and
    /metrics (docs/admin.md). A site without `admin:` has none."""

    bind: str
    port: int


@dataclass(frozen=True)
class Outbound:
    """How mail leaves: domains whose mail is sent only over verified TLS, and the
    policies of other domains that are honoured."""

    require_tls: tuple[str, ...]
    tls: OutboundTls


class Pattern(msgspec.Struct, frozen=True, gc=False):
    """A routing record's left side: a `*` picture of an address or of a domain (lower case)."""

    kind: Literal["address", "domain"]
    picture: str

    def __str__(self) -> str:
        return f"<{self.picture}>" if self.kind == "address" else self.picture


class Target(msgspec.Struct, frozen=True, gc=False):
    """A routing record's right side.

    `address` and `domain` are templates whose `*` take, in order, what the left side's
    `*` matched; `error` rejects with `message`; `discard` drops; `pipe` runs a
    declared program (`value` is the program name, `message` carries its arguments).
    """

    kind: Literal["address", "domain", "error", "discard", "pipe"]
    value: str
    message: str | None


class Route(msgspec.Struct, frozen=True, gc=False):
    source: Source
    right_source: Source
    text: str
    relay: bool
    kinds: tuple[Kind, ...]
    left: Pattern
    right: Target
    open_relay_acknowledged: str | None


RuleField = Literal[
    "From",
    "Sender",
    "Return-Path",
    "To",
    "Cc",
    "Any To or Cc",
    "Each To or Cc",
    "Reply-To",
    "'From' Name",
    "Subject",
    "Message-ID",
    "Message Size",
    "Header Field",
    "Any Recipient",
    "Each Recipient",
    "Source",
    "Security",
    "Submit Address",
    "Time Of Day",
    "Current Date",
    "Current Day",
    "Existing Mailbox",
    "Human Generated",
]
RuleOperation = Literal["is", "is not", "in", "not in", "greater than", "less than"]
RuleVerb = Literal[
    "Store in",
    "Redirect to",
    "Forward to",
    "Mirror to",
    "Reject with",
    "Discard",
    "Stop Processing",
    "Mark",
    "Add Header",
    "Tag Subject",
    "Reply with",
    "Reply to All with",
    "Execute",
    "Remember 'From' in",
    "Copy Attachments into",
]


@dataclass(frozen=True)
class RuleCondition:
    """`FIELD OPERATION VALUES`: values are pictures (or canonical words: weekdays, `yes`);
    `header` is the field a Header Field condition reads (lower case); `number` is what
    `greater than` / `less than` compare with (bytes, minute of the day, or YYYYMMDD)."""

    source: Source
    field: RuleField
    operation: RuleOperation
    values: tuple[str, ...]
    header: str | None
    number: int | None

    def __str__(self) -> str:
        named = [f"{self.header}: {v}" if self.header else v for v in self.values]
        shown = ", ".join(_quoted(value) for value in named)
        return f"{self.field} {self.operation} {shown}".rstrip()


@dataclass(frozen=True)
class RuleAction:
    """`VERB VALUES`; `period` is how often a Reply answers one sender (seconds)."""

    source: Source
    verb: RuleVerb
    values: tuple[str, ...]
    period: int | None

    def __str__(self) -> str:
        shown = ", ".join(_quoted(value) for value in self.values)
        return f"{self.verb} {shown}".rstrip()


@dataclass(frozen=True)
class Rule:
    """A CommuniGate Pro rule: when every condition holds, its actions run in order."""

    name: str
    source: Source
    priority: int
    inactive: bool
    conditions: tuple[RuleCondition, ...]
    actions: tuple[RuleAction, ...]


@dataclass(frozen=True)
class RuleSet:
    """The rules of one rule file, in the order written."""

    file: str
    rules: tuple[Rule, ...]


@dataclass(frozen=True)
class AccountRules:
    """What the site lets account rules do (`account_rules:` in site.yaml)."""

    actions: tuple[RuleVerb, ...]


def _quoted(value: str) -> str:
    if value and not any(c in value for c in ' \t\n,"#\\'):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


@dataclass(frozen=True)
class TestCase:
    """One assertion in the site's `tests:`, proven by `mailplan test`."""

    source: Source
    name: str
    kind: Kind
    to: str
    sender: str | None
    client: IPAddress | None
    authenticated: str | None
    expect: str
    message: TestMessage
    helo: str | None = None
    dns: tuple[TestZone, ...] = ()  # the DNS the receiving checks see; none: they do not run


@dataclass(frozen=True)
class TestZone:
    """A zone a test case brings (`dns:`): its origin and its records, in zone-file syntax."""

    origin: str
    records: str


@dataclass(frozen=True)
class TestHeader:
    name: str
    value: str


@dataclass(frozen=True)
class TestMessage:
    """What a test case says of the message itself, for the rules (`subject:`, `headers:`, ...);
    `at` is the local time the rules see, `actions` the actions the case expects, in order."""

    subject: str | None
    headers: tuple[TestHeader, ...]
    size: int | None
    tls: bool
    at: str | None
    actions: tuple[str, ...] | None


@dataclass(frozen=True)
class SourceFile:
    path: str
    sha256: str


@dataclass(frozen=True)
class Plan:
    format: int
    server: Server
    listeners: tuple[Listener, ...]
    tls: Tls
    relaying: Relaying
    receiving: Receiving
    limits: Limits
    queue: Queue
    outbound: Outbound
    address_lists: tuple[AddressList, ...]
    domains: tuple[Domain, ...]
    pipes: tuple[Pipe, ...]
    routes: tuple[Route, ...]
    server_rules: RuleSet | None
    account_rules: AccountRules
    tests: tuple[TestCase, ...]
    sources: tuple[SourceFile, ...]
    local: LocalDelivery = MAILDIR  # the site's `delivery.local` (compiler.resolve_engines)
    admin: Admin | None = None
