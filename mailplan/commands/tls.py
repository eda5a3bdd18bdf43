"""`mailplan tls DOMAIN`: what outbound delivery would require of TLS for a domain, and why
(none of DANE, MTA-STS, `require_tls`: opportunistic), host by host: for an operator
debugging a deferral. It asks DNS and fetches the MTA-STS policy as the server would,
and reads (never writes) the server's policy cache in the queue folder."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mailplan.commands.origin import add_origin, load_plan

if TYPE_CHECKING:
    from mailplan.commands.origin import Subcommands
    from mailplan.plan.model import Plan

_CHECKS = {
    "dane": "the chain must match its TLSA records",
    "pkix": "a certificate valid for its name, from a trusted CA",
    "pkix-testing": "checked as MTA-STS enforce would, reported, delivered anyway",
    "encrypt": "TLS required, the certificate unchecked (TLSA records, none usable)",
    "opportunistic": "STARTTLS when offered, the certificate unchecked",
    "skip": "not used",
}


def add_parser(subcommands: Subcommands) -> None:
    tls = subcommands.add_parser(
        "tls", help="show what outbound TLS a domain requires (DANE, MTA-STS) and why"
    )
    tls.add_argument("domain")
    add_origin(tls, positional=False)
    tls.add_argument("--root", type=Path, default=Path("."), help="base of relative paths")
    tls.add_argument("--resolver", metavar="IP[:PORT]", help="DNS server (default: the system's)")
    tls.add_argument(
        "--mta-sts-port", type=int, default=443, metavar="PORT", help="port of policy servers"
    )
    tls.add_argument("--format", choices=("text", "json"), default="text")
    tls.set_defaults(run=_tls)


def _tls(arguments: argparse.Namespace) -> int:
    plan = load_plan(arguments)
    if plan is None:
        return 1
    from mailplan.runtime.decide.address import canonical_domain

    domain = canonical_domain(arguments.domain.strip().rstrip("."))
    if not domain or "@" in domain or "[" in domain:
        print(f"mailplan: not a domain: {arguments.domain!r}", file=sys.stderr)
        return 2
    found = asyncio.run(_look(plan, domain, arguments))
    if isinstance(found, str):
        print(f"mailplan: {found}", file=sys.stderr)
        return 1
    if arguments.format == "json":
        print(json.dumps(found, indent=2))
        return 0
    print(f"{domain}: {found['level']}")
    print(f"  why: {found['reason']}")
    for host in found["hosts"]:
        addresses = ", ".join(host["addresses"])
        note = f" ({host['note']})" if host["note"] else ""
        print(f"  {host['name']} [{addresses}]: {host['check']}: {_CHECKS[host['check']]}{note}")
    return 0


async def _look(plan: Plan, domain: str, arguments: argparse.Namespace) -> dict[str, Any] | str:
    from mailplan.runtime.decide import tlsneed
    from mailplan.runtime.delivery import mtasts, tlspolicy
    from mailplan.runtime.dns import mx

    resolve = mx.resolver(arguments.resolver)
    try:
        hosts = await mx.destinations(domain, domain, resolve)
    except mx.LookupFailed as failure:
        return failure.reason
    wanted = plan.outbound.tls
    ca_file = None if wanted.ca_file is None else arguments.root / wanted.ca_file
    try:
        trust = tlspolicy.trust(ca_file)
    except OSError as exc:
        return f"outbound.tls.ca_file {ca_file}: {exc}"
    cache = mtasts.Cache(arguments.root / plan.queue.directory, keep=False)
    fetcher = mtasts.Fetcher(cache, resolve, trust, arguments.mta_sts_port)
    policies = tlspolicy.Policies(wanted, plan.outbound.require_tls, resolve, fetcher)
    needed = await policies.need(domain, hosts)
    rows = []
    for host in hosts:
        check = tlsneed.host_check(needed, host.name)
        rows.append(
            {
                "name": host.name,
                "addresses": list(host.addresses),
                "check": check.check,
                "note": check.reason,
                "tlsa": [str(record) for record in check.records],
            }
        )
    return {"domain": domain, "level": needed.level, "reason": needed.reason, "hosts": rows}
