"""The commands for DNS: `dns` prints the records a site needs (`dns check` compares
them with live DNS) and `dkim keygen` makes a DKIM key pair."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mailplan.commands.origin import load_plan
from mailplan.plan.model import Plan
from mailplan.zones.render import FORMATS

if TYPE_CHECKING:
    from mailplan.commands.origin import Subcommands


def add_parser(subcommands: Subcommands) -> None:
    dns = subcommands.add_parser(
        "dns",
        help="print the DNS records the site needs; `dns check` compares them with live DNS",
        usage="mailplan dns [check] SITE_DIR [options]",
    )
    dns.add_argument("words", nargs="+", metavar="[check] SITE_DIR")
    dns.add_argument("--format", choices=FORMATS, default="bind")
    dns.add_argument("--domain", metavar="D", help="only the zone of this domain (or alias)")
    dns.add_argument("-o", "--output", type=Path, metavar="DIR", help="one file per zone in DIR")
    dns.add_argument("--mta-sts", action="store_true", help="print the MTA-STS policy files")
    dns.add_argument("--resolver", metavar="IP[:PORT]", help="dns check: the server to ask")
    dns.set_defaults(run=_dns)

    dkim = subcommands.add_parser("dkim", help="DKIM keys: `dkim keygen` makes a key pair")
    keygen = dkim.add_subparsers(dest="action", required=True, metavar="ACTION").add_parser(
        "keygen", help="write SELECTOR.DOMAIN.key (private, 0600) and SELECTOR.DOMAIN.pub"
    )
    keygen.add_argument("--domain", required=True)
    keygen.add_argument("--selector", required=True)
    keygen.add_argument("--algorithm", choices=("rsa", "ed25519"), default="rsa")
    keygen.add_argument("--bits", type=int, default=2048, help="RSA key size (default 2048)")
    keygen.add_argument("-o", "--output", type=Path, default=Path("."), metavar="DIR")
    keygen.set_defaults(run=_dkim_keygen)


def _dns(arguments: argparse.Namespace) -> int:
    from mailplan.zones.records import zones
    from mailplan.zones.render import files, policies, render_all

    checking = arguments.words[0] == "check" and len(arguments.words) == 2
    if arguments.words == ["check"] or (len(arguments.words) != 1 and not checking):
        print("mailplan: usage: mailplan dns [check] SITE_DIR [options]", file=sys.stderr)
        return 2
    plan = load_plan(argparse.Namespace(site=Path(arguments.words[-1]), plan=None))
    if plan is None:
        return 1
    found = zones(plan)
    if arguments.domain:
        found = tuple(z for z in found if z.name == arguments.domain.lower().rstrip("."))
        if not found:
            print(f"mailplan: {arguments.domain} is no domain of the site", file=sys.stderr)
            return 1
    if checking:
        return _dns_check(plan, found, arguments.resolver)
    if arguments.output is not None:
        arguments.output.mkdir(parents=True, exist_ok=True)
        for name, text in files(found, arguments.format).items():
            (arguments.output / name).write_text(text, encoding="utf-8")
            print(f"wrote {arguments.output / name}")
    elif arguments.mta_sts:
        sys.stdout.write(policies(found))
    else:
        sys.stdout.write(render_all(found, arguments.format))
    return 0


def _dns_check(plan: Plan, found: tuple[Any, ...], resolver: str | None) -> int:
    from mailplan.zones.check import STATUSES, check, resolver_for

    try:
        asking = resolver_for(resolver)
    except ValueError as exc:
        print(f"mailplan: {exc}", file=sys.stderr)
        return 2
    findings = check(plan, found, asking)
    for finding in findings:
        print(finding.line())
    counts = {status: sum(f.status == status for f in findings) for status in STATUSES}
    print(", ".join(f"{n} {status}" for status, n in counts.items()))
    return 0 if counts["present"] == len(findings) else 1


def _dkim_keygen(arguments: argparse.Namespace) -> int:
    from mailplan.zones.dkim import key_pair

    domain, selector = arguments.domain.lower().rstrip("."), arguments.selector.lower()
    try:
        private, public = key_pair(arguments.algorithm, arguments.bits)
    except ValueError as exc:
        print(f"mailplan: {exc}", file=sys.stderr)
        return 2
    stem = arguments.output / f"{selector}.{domain}"
    written = []
    try:
        for path, data, mode in ((f"{stem}.key", private, 0o600), (f"{stem}.pub", public, 0o644)):
            # O_EXCL: never overwrite a key (a lost private key breaks signing)
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            with os.fdopen(descriptor, "wb") as file:
                file.write(data)
            written.append(path)
    except OSError as exc:
        print(f"mailplan: cannot write {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 1
    print(f"wrote {written[0]} (private: keep it out of the site and out of git)")
    print(f"wrote {written[1]}")
    print(
        f"in site.yaml, under domains: {domain}:\n"
        f"    dkim: [{{selector: {selector}, public_key: PATH/{selector}.{domain}.pub,\n"
        f"            private_key: {Path(written[0]).resolve()}}}]\n"
        "(PATH: in the site; the private key stays where it is, docs/dkim.md)"
    )
    return 0
