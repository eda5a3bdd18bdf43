"""Resolve pass: build the plan from the site's YAML, its routing records and address lists.

Defaults come from `compiler.defaults`; positions from the YAML loader. Names are
lower-cased here (objects are case-insensitive), names of accounts, aliases,
forwarders and lists in Unicode NFC, domains in A-labels (`runtime.decide.address`, the form
the router compares); the checks that follow look for what clashes or is missing.
"""

from __future__ import annotations

import unicodedata
from dataclasses import replace
from typing import Any

from mailplan.compiler import defaults
from mailplan.compiler.addresslists import addresslists
from mailplan.compiler.diagnostics import Diagnostic
from mailplan.compiler.routes import routes
from mailplan.compiler.rulesets import rulesets
from mailplan.compiler.unit import Unit
from mailplan.compiler.yamlpos import Document
from mailplan.compiler.yamlpos import Path as DataPath
from mailplan.plan.model import (
    FORMAT,
    Account,
    AccountRules,
    Admin,
    ArcSealing,
    DkimCheck,
    DmarcCheck,
    Domain,
    Forwarder,
    Limits,
    Listener,
    MailingList,
    Member,
    MxHost,
    Outbound,
    OutboundTls,
    Pipe,
    Plan,
    Queue,
    RblCheck,
    RblZone,
    Receiving,
    Relaying,
    ReturnPathCheck,
    ReverseConnectCheck,
    RuleSet,
    Server,
    Source,
    Spf,
    SpfCheck,
    TestCase,
    TestHeader,
    TestMessage,
    TestZone,
    Tls,
    Unknown,
)
from mailplan.runtime.decide.address import canonical_domain


def resolve(unit: Unit) -> Unit:
    document = unit.document
    if document is None or unit.shapeless:
        return unit
    data = document.data
    problems: list[Diagnostic] = []
    main = canonical_domain(data["server"]["main_domain"])
    # the routes first: the address lists may be under way in a second process meanwhile
    table, routes_trouble = routes(unit.records, main)
    lists, trouble = unit.lists_later() if unit.lists_later else addresslists(unit.lists)
    problems += trouble + routes_trouble
    rules, trouble = rulesets(unit.rulefiles)
    problems += trouble
    plan = Plan(
        format=FORMAT,
        server=_server(data["server"], _source(document, ("server", "main_domain"))),
        listeners=_listeners(document),
        tls=Tls(data.get("tls", {}).get("certificate"), data.get("tls", {}).get("key")),
        relaying=_relaying(data.get("relaying", {}), _source(document, ("relaying", "scope"))),
        receiving=_receiving(data.get("receiving", {})),
        limits=_limits(data.get("limits", {})),
        queue=_queue(data.get("queue", {})),
        outbound=_outbound(data.get("outbound", {})),
        address_lists=lists,
        domains=tuple(
            sorted(
                (
                    _domain(document, written, spec or {}, main, rules)
                    for written, spec in data["domains"].items()
                ),
                key=lambda domain: domain.name,
            )
        ),
        pipes=tuple(
            Pipe(
                name,
                _source(document, ("pipes", name)),
                spec["program"],
                tuple(spec.get("args", ())),
                defaults.seconds(spec.get("timeout", defaults.PIPE_TIMEOUT)),
            )
            for name, spec in sorted(data.get("pipes", {}).items())
        ),
        routes=table,
        server_rules=rules.get(data.get("server_rules", "")),
        account_rules=AccountRules(
            tuple(data.get("account_rules", {}).get("actions", defaults.ACCOUNT_RULE_ACTIONS))
        ),
        tests=_tests(document),
        sources=unit.files,
        admin=_admin(data.get("admin")),
    )
    return replace(unit, plan=plan).report(*problems)


def _at(document: Document, path: DataPath) -> Source:
    """Where the value at `path` is written."""
    position = document.at(path)
    return Source(document.file, position.line, position.column)


def _source(document: Document, path: DataPath) -> Source:
    """Where the key of `path` is written (the value's place for list items)."""
    position = document.key_at(path)
    return Source(document.file, position.line, position.column)


def _server(server: dict[str, Any], source: Source) -> Server:
    return Server(
        source=source,
        hostname=server["hostname"].lower(),
        main_domain=canonical_domain(server["main_domain"]),
        client_ips="client_ips",
        blacklisted_ips="blacklisted_ips",
        addresses=tuple(server.get("addresses", ())),
        user=server.get("user"),
        group=server.get("group"),
    )


def _listeners(document: Document) -> tuple[Listener, ...]:
    """Listeners in the order written (the schema made sure each has a protocol)."""
    found = []
    for name, spec in document.data.get("listeners", {}).items():
        protocol = spec.get("protocol", name.lower())  # a name is its protocol in any case
        source = _source(document, ("listeners", name))
        settled = defaults.LISTENERS[protocol] | spec
        found.append(
            Listener(
                name=name,
                source=source,
                protocol=protocol,
                bind=tuple(settled.get("bind", defaults.LISTENER_BIND)),
                port=settled["port"],
                tls=settled["tls"],
                auth=settled["auth"],
                plaintext_auth=settled.get("plaintext_auth", defaults.PLAINTEXT_AUTH),
            )
        )
    return tuple(found)


def _admin(spec: dict[str, Any] | None) -> Admin | None:
    """The admin listener, when the site has one (off unless `admin:` is written)."""
    if spec is None:
        return None
    return Admin(spec.get("bind", defaults.ADMIN_BIND), spec["port"])


def _relaying(spec: dict[str, Any], source: Source) -> Relaying:
    settled = defaults.RELAYING | spec
    return Relaying(
        source, settled["scope"], settled["authenticated"], spec.get("acknowledge_open_relay")
    )


def _receiving(spec: dict[str, Any]) -> Receiving:
    settled = {
        key: value | spec.get(key, {})
        for key, value in defaults.RECEIVING.items()
        if isinstance(value, dict)
    }
    reverse = settled["reverse_connect"]
    rbl = settled["rbl"]
    return Receiving(
        return_path=ReturnPathCheck(**settled["return_path"]),
        reverse_connect=ReverseConnectCheck(
            reverse["scope"],
            reverse["action"],
            defaults.seconds(reverse["cache"]),
            defaults.seconds(reverse["timeout"]),
        ),
        spf=SpfCheck(**settled["spf"]),
        rbl=RblCheck(
            rbl["scope"],
            tuple(
                RblZone(zone.lower(), defaults.RBL_WEIGHT)
                if isinstance(zone, str)
                else RblZone(zone["zone"].lower(), zone.get("weight", defaults.RBL_WEIGHT))
                for zone in rbl["zones"]
            ),
            rbl["threshold"],
        ),
        blacklisted_ips=spec.get("blacklisted_ips", defaults.RECEIVING["blacklisted_ips"]),
        dkim=DkimCheck(**settled["dkim"]),
        dmarc=DmarcCheck(**settled["dmarc"]),
        arc=ArcSealing(**settled["arc"]),
    )


def _limits(spec: dict[str, Any]) -> Limits:
    settled = defaults.LIMITS | spec
    return Limits(
        defaults.size(settled["max_message_size"]),
        int(settled["max_recipients"]),
        int(settled["max_connections"]),
        int(settled["max_connections_per_client"]),
    )


def _outbound(spec: dict[str, Any]) -> Outbound:
    settled = defaults.OUTBOUND_TLS | spec.get("tls", {})
    return Outbound(
        tuple(name.lower() for name in spec.get("require_tls", [])),
        OutboundTls(
            mta_sts=settled["mta_sts"],
            dane=settled["dane"],
            reports=settled["reports"],
            ca_file=settled["ca_file"],
            trusted_resolver=settled["trusted_resolver"],
        ),
    )


def _queue(spec: dict[str, Any]) -> Queue:
    settled = defaults.QUEUE | spec
    return Queue(
        directory=settled["directory"],
        mail_directory=settled["mail_directory"],
        retry=tuple(defaults.seconds(value) for value in settled["retry"]),
        give_up_after=defaults.seconds(settled["give_up_after"]),
        warn_after=defaults.seconds(settled["warn_after"]),
    )


def _name(written: str) -> str:
    """An account's, alias's, forwarder's or list's name as the router compares it."""
    return unicodedata.normalize("NFC", written).lower()


def _domain(
    document: Document, written: str, spec: dict[str, Any], main: str, rules: dict[str, RuleSet]
) -> Domain:
    name = canonical_domain(written)
    path: DataPath = ("domains", written)
    source = _source(document, path)
    accounts = _accounts(document, path, spec, rules)
    forwarders = _forwarders(document, path, spec, name)
    lists = _lists(document, path, spec, name)
    if name == main:
        accounts += _postmaster(accounts, forwarders, lists, source)
    settled = defaults.DOMAIN | spec
    spf = defaults.SPF | spec.get("spf", {})
    return Domain(
        name=name,
        source=source,
        aliases=tuple(canonical_domain(alias) for alias in spec.get("aliases", ())),
        accounts=tuple(sorted(accounts, key=lambda a: a.name)),
        forwarders=tuple(sorted(forwarders, key=lambda f: f.name)),
        lists=tuple(sorted(lists, key=lambda m: m.name)),
        unknown=_unknown(document, path, spec, settled["unknown"], source),
        sends_mail=settled["sends_mail"],
        mx=_mx(document, path, spec),
        spf=Spf(spf["policy"], tuple(spf["include"]), tuple(spf["ip4"]), tuple(spf["ip6"])),
        rules=rules.get(spec.get("rules", "")),
    )


def _accounts(
    document: Document, path: DataPath, spec: dict[str, Any], rules: dict[str, RuleSet]
) -> list[Account]:
    """A domain's accounts in the order written, each with the default folders first."""
    return [
        Account(
            _name(account),
            _source(document, (*path, "accounts", account)),
            (value or {}).get("password"),
            tuple(_name(alias) for alias in (value or {}).get("aliases", ())),
            rules.get((value or {}).get("rules", "")),
            tuple(dict.fromkeys((*defaults.FOLDERS, *(value or {}).get("folders", ())))),
        )
        for account, value in spec.get("accounts", {}).items()
    ]


def _forwarders(
    document: Document, path: DataPath, spec: dict[str, Any], domain: str
) -> tuple[Forwarder, ...]:
    return tuple(
        Forwarder(
            _name(forwarder),
            _source(document, (*path, "forwarders", forwarder)),
            _full(target, domain),
        )
        for forwarder, target in spec.get("forwarders", {}).items()
    )


def _lists(
    document: Document, path: DataPath, spec: dict[str, Any], domain: str
) -> tuple[MailingList, ...]:
    return tuple(
        MailingList(
            _name(mailing_list),
            _source(document, (*path, "lists", mailing_list)),
            _full(value["owner"], domain),
            tuple(
                Member(member, _at(document, (*path, "lists", mailing_list, "members", i)))
                for i, member in enumerate(value["members"])
            ),
            value.get("posting", defaults.MAILING_LIST_POSTING),
        )
        for mailing_list, value in spec.get("lists", {}).items()
    )


def _postmaster(
    accounts: list[Account],
    forwarders: tuple[Forwarder, ...],
    lists: tuple[MailingList, ...],
    source: Source,
) -> list[Account]:
    """The postmaster account the main domain gets when nothing there has that name."""
    names = {a.name for a in accounts} | {alias for a in accounts for alias in a.aliases}
    names |= {f.name for f in forwarders} | {m.name for m in lists}
    if defaults.POSTMASTER in names:
        return []
    return [Account(defaults.POSTMASTER, source, None, (), None, defaults.FOLDERS)]


def _unknown(
    document: Document, path: DataPath, spec: dict[str, Any], unknown: Any, source: Source
) -> Unknown:
    """What the domain does with mail for names it does not have (`unknown:`)."""
    where = _source(document, (*path, "unknown")) if "unknown" in spec else source
    if isinstance(unknown, dict):
        return Unknown(where, "route", unknown["route"])
    return Unknown(where, unknown, None)


def _mx(document: Document, path: DataPath, spec: dict[str, Any]) -> tuple[MxHost, ...]:
    return tuple(
        MxHost(
            _source(document, (*path, "mx", i)),
            mx["host"].lower(),
            mx["priority"],
            tuple(mx.get("ipv4", ())),
            tuple(mx.get("ipv6", ())),
        )
        for i, mx in enumerate(spec.get("mx", ()))
    )


def _full(address: str, domain: str) -> str:
    return address if "@" in address else f"{address}@{domain}"


def _tests(document: Document) -> tuple[TestCase, ...]:
    return tuple(
        TestCase(
            source=_source(document, ("tests", i)),
            name=case.get("name", f"test {i + 1}"),
            kind=case.get("kind", "mail"),
            to=case["to"],
            sender=case.get("from"),
            client=case.get("client"),
            authenticated=case.get("authenticated"),
            expect=case["expect"],
            message=TestMessage(
                subject=case.get("subject"),
                headers=tuple(TestHeader(k, v) for k, v in case.get("headers", {}).items()),
                size=defaults.size(case["size"]) if "size" in case else None,
                tls=case.get("tls", False),
                at=case.get("at"),
                actions=tuple(case["actions"]) if "actions" in case else None,
            ),
            helo=case.get("helo"),
            dns=tuple(
                TestZone(origin.lower().rstrip("."), records)
                for origin, records in sorted(case.get("dns", {}).items())
            ),
        )
        for i, case in enumerate(document.data.get("tests", ()))
    )
