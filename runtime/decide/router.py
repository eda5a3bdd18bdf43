"""The router: where an address goes, as a pure function of the plan.

Routing-table records are tried from the top; the first whose left side matches
(and whose prefix admits the kind of address) decides. A record that rewrites the
address sends the result back to the top. When no record matches, the built-in
routing applies: IP literals, module suffixes, domain aliases, the `%` hack, and
the names of hosted domains (accounts, aliases, forwarders, lists, mail to
unknown), and otherwise SMTP for a domain with a dot in it. docs/router.md is the
reference; every step of a routing records what fired and where it was written.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import msgspec

from mailplan.plan.model import Account, Domain, Forwarder, Kind, MailingList, Plan, Route, Source
from mailplan.runtime.decide.address import Address, ip_literal, is_utf8, literal, parse
from mailplan.runtime.decide.picture import Picture, substitute

MAX_REWRITES = 16
OWN_ADDRESSES = frozenset({"127.0.0.1", "0.0.0.0", "::1", "::"})
SUFFIXES = ("._via", ".smtp", ".local", ".list")

Module = Literal["LOCAL", "SMTP", "PIPE", "LIST", "ERROR", "DISCARD", "LMTP"]


class Step(msgspec.Struct, frozen=True, gc=False):
    """One thing that fired: where it is written, its canonical text, and what it did."""

    source: Source | None
    what: str
    before: str
    after: str
    relay: bool = False


@dataclass(frozen=True)
class Routing:
    """Where an address goes: module, queue and final address, and every step on the way."""

    address: str
    kind: Kind
    steps: tuple[Step, ...]
    module: Module
    queue: str
    target: str
    relayable: bool
    status: str | None = None
    reason: str | None = None

    def __str__(self) -> str:
        if self.module == "ERROR":
            return f"ERROR {self.status} {self.reason}"
        if self.module == "DISCARD":
            return "DISCARD"
        return f"{self.module}({self.queue}){self.target}"


class Rewrite(msgspec.Struct, frozen=True, gc=False):
    step: Step


class Decision(msgspec.Struct, frozen=True, gc=False):
    step: Step
    module: Module
    queue: str
    target: str
    status: str | None = None
    reason: str | None = None


_Name = tuple[Literal["account", "alias", "forwarder", "list"], Account | Forwarder | MailingList]


class RouteIndex:
    """The routing table indexed so that a look-up tries only records that could match.

    Records are filed by exact address; by literal domain, and within it by the literal
    start (or, failing that, end) of the local-part picture; by literal domain suffix
    (`*.example.com`); the few whose domain ends in `*` are tried one by one. Looking
    an address up costs about the same for ten records or a hundred thousand, and the
    first match from the top is still the one that wins.
    """

    def __init__(self, routes: Sequence[Route]) -> None:
        self.routes = routes
        # each record's compiled picture, made when a look-up first tries the record: a
        # plan of 100,000 records is served (and reloaded) without making them all first
        self.pictures: list[Picture | None] = [None] * len(routes)
        self._exact: dict[str, list[int]] = {}
        self._domain: dict[str, list[int]] = {}
        self._local_start: dict[tuple[str, str], list[int]] = {}
        self._local_end: dict[tuple[str, str], list[int]] = {}
        self._suffix: dict[str, list[int]] = {}
        self._generic: list[int] = []
        for i, route in enumerate(routes):
            picture = route.left.picture
            local, _, domain = picture.rpartition("@")
            if "*" not in picture:
                table = self._exact if route.left.kind == "address" else self._domain
                table.setdefault(picture, []).append(i)
            elif "*" not in domain and route.left.kind == "address" and local != "*":
                start, _, rest = local.partition("*")
                end = rest.rpartition("*")[2]
                if start:
                    self._local_start.setdefault((domain, start), []).append(i)
                elif end:
                    self._local_end.setdefault((domain, end), []).append(i)
                else:
                    self._domain.setdefault(domain, []).append(i)
            elif "*" not in domain:
                self._domain.setdefault(domain, []).append(i)
            elif suffix := domain.rpartition("*")[2]:
                self._suffix.setdefault(suffix, []).append(i)
            else:
                self._generic.append(i)
        # the lengths of the suffixes to try for a domain: those with a dot by the domain's
        # last label (`.corp.example` can only end a domain whose last label is `example`),
        # the others (`*example.com` has the suffix `example.com`... and `*ample` has none)
        # for every domain
        by_label: dict[str, set[int]] = {}
        for suffix in self._suffix:
            if "." in suffix:
                by_label.setdefault(suffix.rpartition(".")[2], set()).add(len(suffix))
        self._suffix_lengths = {label: tuple(sorted(n)) for label, n in by_label.items()}
        self._undotted = tuple(sorted({len(s) for s in self._suffix if "." not in s}))
        self._starts = _lengths_by_domain(self._local_start)
        self._ends = _lengths_by_domain(self._local_end)

    def _buckets(self, address: Address, exact: bool = True) -> list[list[int]]:
        """Every bucket that may hold a record matching `address`, exact ones first (unless
        `exact` is false: then every one but the bucket of its exact address)."""
        domain = address.domain
        local = address.local.lower()
        found = []
        if exact and (bucket := self._exact.get(f"{local}@{domain}")):
            found.append(bucket)
        if bucket := self._domain.get(domain):
            found.append(bucket)
        if domain in self._starts or domain in self._ends:
            self._local_buckets(domain, local, found)
        self._suffix_buckets(domain, found)
        if self._generic:
            found.append(self._generic)
        return found

    def _local_buckets(self, domain: str, local: str, found: list[list[int]]) -> None:
        """The buckets of `domain` filed by a literal start, then end, of the local part."""
        for length in self._starts.get(domain, ()):
            if bucket := self._local_start.get((domain, local[:length])):
                found.append(bucket)
        for length in self._ends.get(domain, ()):
            if bucket := self._local_end.get((domain, local[-length:])):
                found.append(bucket)

    def _suffix_buckets(self, domain: str, found: list[list[int]]) -> None:
        """The buckets of `*.suffix` records whose suffix ends `domain`, shortest first."""
        size = len(domain)
        for lengths in (self._suffix_lengths.get(domain[domain.rfind(".") + 1 :]), self._undotted):
            for length in lengths or ():
                if length > size:
                    break
                if bucket := self._suffix.get(domain[-length:]):
                    found.append(bucket)

    def match(self, i: int, address: Address) -> tuple[str, ...] | None:
        route = self.routes[i]
        subject = str(address) if route.left.kind == "address" else address.domain
        picture = self.pictures[i]
        if picture is None:
            picture = self.pictures[i] = Picture.of(route.left.picture)
        return picture.match(subject)

    def first(self, address: Address, kind: Kind) -> tuple[int, tuple[str, ...]] | None:
        """The topmost record that matches `address` for `kind`, with its captures."""
        best: tuple[int, tuple[str, ...]] | None = None
        routes = self.routes
        # a record filed under the address itself has no `*`: it matches, capturing nothing
        for i in self._exact.get(address.key, ()):
            if kind in routes[i].kinds:
                best = (i, ())
                break
        for bucket in self._buckets(address, exact=False):
            for i in bucket:
                if best is not None and i >= best[0]:
                    break
                if kind not in routes[i].kinds:
                    continue
                captures = self.match(i, address)
                if captures is not None:
                    best = (i, captures)
                    break
        return best

    def matching(self, address: Address, below: int | None = None) -> Iterator[int]:
        """Every record that matches `address`, for any kind, in no particular order; with
        `below`, only the records above record `below` in the table."""
        for bucket in self._buckets(address):
            for i in bucket:
                if below is not None and i >= below:
                    break  # a bucket lists its records from the top
                if self.match(i, address) is not None:
                    yield i


class Router:
    """Routes addresses by one plan; built once per plan, then used for every address."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.main_domain = plan.server.main_domain
        self.index = RouteIndex(plan.routes)
        self.domains: dict[str, Domain] = {d.name: d for d in plan.domains}
        self.aliases: dict[str, Domain] = {}
        self.names: dict[tuple[str, str], _Name] = {}
        for domain in plan.domains:
            for alias in domain.aliases:
                self.aliases.setdefault(alias, domain)
            for account in domain.accounts:
                self.names.setdefault((domain.name, account.name.lower()), ("account", account))
            for account in domain.accounts:
                for name in account.aliases:
                    self.names.setdefault((domain.name, name.lower()), ("alias", account))
            for forwarder in domain.forwarders:
                self.names.setdefault(
                    (domain.name, forwarder.name.lower()), ("forwarder", forwarder)
                )
            for mailing_list in domain.lists:
                self.names.setdefault(
                    (domain.name, mailing_list.name.lower()), ("list", mailing_list)
                )
        self.pipes = {pipe.name: pipe for pipe in plan.pipes}
        self.own = OWN_ADDRESSES | {ip for a in plan.server.addresses if (ip := ip_literal(a))}

    def route(self, text: str, kind: Kind = "mail") -> Routing:
        steps: list[Step] = []
        seen: list[str] = []
        current = text
        while True:
            address = parse(current, self.main_domain)
            if address.key in seen or len(steps) > MAX_REWRITES:
                reason = _loop(seen, address)
                return self._result(text, kind, steps, "ERROR", "", current, "5.4.6", reason)
            seen.append(address.key)
            outcome = self.step(address, kind)
            steps.append(outcome.step)
            if isinstance(outcome, Decision):
                return self._result(
                    text,
                    kind,
                    steps,
                    outcome.module,
                    outcome.queue,
                    outcome.target,
                    outcome.status,
                    outcome.reason,
                )
            current = outcome.step.after

    def _result(
        self,
        text: str,
        kind: Kind,
        steps: list[Step],
        module: Module,
        queue: str,
        target: str,
        status: str | None,
        reason: str | None,
    ) -> Routing:
        relayable = any(step.relay for step in steps)
        return Routing(text, kind, tuple(steps), module, queue, target, relayable, status, reason)

    def step(self, address: Address, kind: Kind) -> Rewrite | Decision:
        """What happens to `address` next: the first matching record, or the built-in routing."""
        if not address.local or not address.domain:
            return self._error(address, None, "address syntax", "5.1.3", f"bad address: {address}")
        if not is_utf8(address.local):
            reason = "bad address: the local part is not valid UTF-8"
            return self._error(address, None, "address syntax", "5.1.3", reason)
        if not address.domain.isascii():
            reason = f"not a valid internationalized domain name: {address.domain}"
            return self._error(address, None, "address syntax", "5.1.3", reason)
        if address.domain.endswith(SUFFIXES) and not self.hosts(address.domain):
            return self._builtin(address, kind)
        found = self.index.first(address, kind)
        if found is None:
            return self._builtin(address, kind)
        i, captures = found
        return self.apply(self.plan.routes[i], address, captures)

    def apply(
        self, route: Route, address: Address, captures: tuple[str, ...]
    ) -> Rewrite | Decision:
        """The effect of one routing-table record on an address it matched."""
        target = route.right
        before = str(address)
        if target.kind == "error":
            reason = target.message or "rejected by the routing table"
            return self._error(address, route.source, route.text, "5.7.1", reason)
        if target.kind == "discard":
            return Decision(
                Step(route.source, route.text, before, "DISCARD"), "DISCARD", "", before
            )
        if target.kind == "pipe":
            if any(not c or c.startswith("-") or any(x.isspace() for x in c) for c in captures):
                reason = "this address cannot be given to a program"
                return self._error(address, route.source, route.text, "5.1.3", reason)
            arguments = substitute(target.message or "", captures)
            pipe = self.pipes.get(target.value)
            if pipe is None:
                reason = f"no such pipe: {target.value}"
                return self._error(address, route.source, route.text, "5.3.5", reason)
            shown = f'"{" ".join(filter(None, [pipe.name, arguments]))}"@pipe'
            step = Step(route.source, route.text, before, shown, route.relay)
            return Decision(step, "PIPE", pipe.name, shown)
        if target.kind == "domain":
            after = f"{address.local}@{substitute(target.value, captures)}"
        else:
            after = substitute(target.value, captures)
        return Rewrite(Step(route.source, route.text, before, after, route.relay))

    def _builtin(self, address: Address, kind: Kind) -> Rewrite | Decision:
        domain = address.domain
        before = str(address)
        if domain in self.domains:
            return self._hosted(address, self.domains[domain], kind)
        if domain in self.aliases:
            real = self.aliases[domain]
            after = f"{address.local}@{real.name}"
            what = f"domain alias {domain} of {real.name}"
            return Rewrite(Step(real.source, what, before, after))
        if (ip := ip_literal(domain)) is not None:
            if ip in self.own:
                after = self._unhack(address.local)
                return Rewrite(Step(None, f"[{ip}] is this server", before, after))
            queue = literal(ip)
            target = self._unhack(address.local, default=queue)
            return Decision(
                Step(None, f"IP literal {queue}", before, target), "SMTP", queue, target
            )
        if domain == "pipe":
            reason = "pipe addresses are accepted only from the routing table"
            return self._error(address, None, "pipe address", "5.7.1", reason)
        for suffix in SUFFIXES:
            if domain.endswith(suffix) and len(domain) > len(suffix):
                return self._suffix(address, domain[: -len(suffix)], suffix, kind)
        if "." in domain:
            what = f"{domain} is not hosted here"
            return Decision(Step(None, what, before, before), "SMTP", domain, before)
        return self._error(address, None, "unroutable", "5.1.2", f"unroutable domain: {domain}")

    def _suffix(self, address: Address, host: str, suffix: str, kind: Kind) -> Rewrite | Decision:
        before = str(address)
        what = f"module suffix {suffix}"
        if suffix == "._via":
            target = self._unhack(address.local, default=host)
            queue = literal(ip) if (ip := ip_literal(host)) else host
            return Decision(Step(None, what, before, target), "SMTP", queue, target)
        if suffix == ".smtp":
            target = f"{address.local}@{host}"
            return Decision(Step(None, what, before, target), "SMTP", host, target)
        domain = self.domains.get(host) or self.aliases.get(host)
        entry = self.names.get((domain.name, address.local.lower())) if domain else None
        wanted = "account" if suffix == ".local" else "list"
        if domain is None or entry is None or entry[0] != wanted:
            reason = f"no such {wanted}: {address.local}@{host}"
            return self._error(address, None, what, "5.1.1", reason)
        queue = f"{entry[1].name}@{domain.name}"
        module: Module = "LOCAL" if wanted == "account" else "LIST"
        return Decision(Step(entry[1].source, what, before, queue), module, queue, queue)

    def _hosted(self, address: Address, domain: Domain, kind: Kind) -> Rewrite | Decision:
        before = str(address)
        if "%" in address.local:
            after = self._unhack(address.local)
            return Rewrite(Step(None, "%-hack", before, after))
        entry = self.names.get((domain.name, address.local.lower()))
        if entry is not None:
            role, thing = entry
            full = f"{thing.name}@{domain.name}"
            if role == "account":
                return Decision(
                    Step(thing.source, f"account {full}", before, full), "LOCAL", full, full
                )
            if role == "alias":
                what = f"alias {address.local.lower()}@{domain.name} of account {full}"
                return Rewrite(Step(thing.source, what, before, full))
            if kind != "access" and isinstance(thing, Forwarder):
                what = f"forwarder {full} = {thing.target}"
                return Rewrite(Step(thing.source, what, before, thing.target, relay=True))
            if kind != "access" and isinstance(thing, MailingList):
                return Decision(
                    Step(thing.source, f"mailing list {full}", before, full), "LIST", full, full
                )
            reason = f"{full} is a {role}, not an account"
            return self._error(address, thing.source, f"{role} {full}", "5.1.1", reason)
        return self._unknown(address, domain, kind)

    def _unknown(self, address: Address, domain: Domain, kind: Kind) -> Rewrite | Decision:
        before = str(address)
        unknown = domain.unknown
        what = f"unknown name in {domain.name}: {unknown.action}"
        if kind == "access" or unknown.action == "reject":
            reason = f"unknown user {address.local}@{domain.name}"
            return self._error(address, unknown.source, what, "5.1.1", reason)
        if unknown.action == "discard":
            return Decision(Step(unknown.source, what, before, "DISCARD"), "DISCARD", "", before)
        after = substitute(unknown.target or "", (address.local,))
        routed = parse(after, self.main_domain)
        if not self.is_local(routed.domain):
            after = f"{routed}._via"
        return Rewrite(Step(unknown.source, f"{what} {unknown.target}", before, after, relay=True))

    def hosts(self, domain: str) -> bool:
        """Whether `domain` is one of the site's domains or domain aliases."""
        return domain in self.domains or domain in self.aliases

    def is_local(self, domain: str) -> bool:
        """Whether mail for `domain` stays on this server (hosted, a pipe, a module, an IP)."""
        return (
            domain in self.domains
            or domain in self.aliases
            or domain == "pipe"
            or ip_literal(domain) is not None
            or any(domain.endswith(suffix) for suffix in SUFFIXES)
        )

    def _unhack(self, local: str, default: str | None = None) -> str:
        """`x%y` becomes `x@y`; a local part without `%` takes `default` (the main domain)."""
        user, percent, host = local.rpartition("%")
        if percent:
            return f"{user}@{host}"
        return f"{local}@{default or self.main_domain}"

    def _error(
        self, address: Address, source: Source | None, what: str, status: str, reason: str
    ) -> Decision:
        before = str(address)
        return Decision(Step(source, what, before, "ERROR"), "ERROR", "", before, status, reason)


def _loop(seen: list[str], address: Address) -> str:
    """The cycle of addresses that came back to `address`, or the first and last of too many."""
    if address.key in seen:
        cycle = [*seen[seen.index(address.key) :], address.key]
        return "routing loop: " + " -> ".join(cycle)
    shown = [*seen[:2], "...", seen[-1], address.key]
    return f"routing loop: more than {MAX_REWRITES} rewrites: " + " -> ".join(shown)


def _lengths_by_domain(table: dict[tuple[str, str], list[int]]) -> dict[str, tuple[int, ...]]:
    """For each domain, the lengths of the literal local-part pieces filed under it."""
    lengths: dict[str, set[int]] = {}
    for domain, piece in table:
        lengths.setdefault(domain, set()).add(len(piece))
    return {domain: tuple(sorted(found)) for domain, found in lengths.items()}
