"""Resolve-engines pass: the engines beside mailplan that the site hands mail to.

- How LOCAL mail reaches a mailbox (`delivery.local`), for the site (`Plan.local`) and
  for each domain that says otherwise (`Domain.local`): `{via: maildir}` (the default)
  writes mailplan's own Maildirs; `{via: lmtp, to: [...]}` hands it over to a mailbox
  server (Dovecot) by LMTP.
- The content filter (`receiving.content_filter`): rspamd, asked at the end of DATA
  (`Receiving.content_filter`), with the defaults of `defaults.CONTENT_FILTER`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from mailplan.compiler import defaults
from mailplan.compiler.diagnostics import Diagnostic, error, warning
from mailplan.compiler.unit import Unit
from mailplan.compiler.yamlpos import Document
from mailplan.compiler.yamlpos import Path as DataPath
from mailplan.plan.model import MAILDIR, ContentFilter, Domain, LocalDelivery, Source
from mailplan.runtime.decide.address import canonical_domain


def resolve_engines(unit: Unit) -> Unit:
    if unit.plan is None or unit.document is None:
        return unit
    document, plan = unit.document, unit.plan
    problems: list[Diagnostic] = []
    site = _local(document, ("delivery", "local"), document.data, problems) or MAILDIR
    domains = []
    for domain in plan.domains:
        written = next(k for k in document.data["domains"] if canonical_domain(k) == domain.name)
        spec = document.data["domains"][written] or {}
        own = _local(document, ("domains", written, "delivery", "local"), spec, problems)
        domains.append(replace(domain, local=own) if own is not None else domain)
        if (own or site).via == "lmtp":
            problems += _unreachable(domain)
    receiving = replace(plan.receiving, content_filter=_content_filter(document))
    plan = replace(plan, local=site, domains=tuple(domains), receiving=receiving)
    return replace(unit, plan=plan).report(*problems)


def _content_filter(document: Document) -> ContentFilter | None:
    spec = document.data.get("receiving", {}).get("content_filter")
    if spec is None:
        return None
    given = defaults.CONTENT_FILTER | spec
    position = document.key_at(("receiving", "content_filter"))
    return ContentFilter(
        Source(document.file, position.line, position.column),
        given["rspamd"].rstrip("/"),
        given["scope"],
        defaults.seconds(given["timeout"]),
        given["on_failure"],
    )


def _unreachable(domain: Domain) -> list[Diagnostic]:
    """Accounts whose address is not ASCII: Dovecot 2.3's LMTP offers no SMTPUTF8."""
    return [
        warning(
            account.source.file,
            account.source.line,
            account.source.column,
            "MP702",
            f"{account.name}@{domain.name} is not ASCII: LMTP cannot deliver to it without "
            "SMTPUTF8, which Dovecot 2.3 does not offer (its mail bounces with 5.6.7)",
        )
        for account in domain.accounts
        if not account.name.isascii()
    ]


def _local(
    document: Document, path: DataPath, spec: dict[str, Any], problems: list[Diagnostic]
) -> LocalDelivery | None:
    """The `delivery.local` at `path` (whose parent mapping is `spec`), or None."""
    local = spec.get("delivery", {}).get("local")
    if local is None:
        return None
    position = document.key_at(path)
    source = Source(document.file, position.line, position.column)
    via, to = local["via"], tuple(local.get("to", ()))
    if via == "lmtp" and not to:
        message = "delivery.local via lmtp needs `to`: the LMTP servers (host:port or unix:/path)"
        problems.append(error(source.file, source.line, source.column, "MP701", message))
    if via == "maildir" and to:
        message = "delivery.local via maildir takes no `to` (that is for via: lmtp)"
        problems.append(error(source.file, source.line, source.column, "MP701", message))
    return LocalDelivery(via, to, source)
