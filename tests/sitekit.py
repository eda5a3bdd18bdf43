"""Write the `site.yaml` of a test: one builder instead of a YAML template per test file.

Most end-to-end tests need the same site: mail.example.com, main domain example.com,
127.0.0.1 as the one Client IP, a few listeners on loopback ports the caller picked
(`serverkit.free_ports`), the queue under var/, and some accounts. `site_yaml` says
that with keyword arguments and renders it with PyYAML's safe dumper; what a test needs
beyond that goes in `extra` (a mapping or YAML text), merged into the document key by
key, so `extra={"server": {"user": "mail"}}` adds one setting and keeps the others.

    port = free_port()
    site = write_site(tmp_path / "site", listeners={"smtp": plain(port)}, accounts=["bob"])
    with MailServer(site, tmp_path, [port]) as server: ...

Tests whose point is the exact text of a site (positions of keys, a broken document)
write that text themselves.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from serverkit import LOOPBACK

from mailplan.compiler.pipeline import compile_site
from mailplan.plan.model import Plan

HOSTNAME = "mail.example.com"
MAIN_DOMAIN = "example.com"
QUEUE = {"directory": "var/queue", "mail_directory": "var/mail"}
# The development certificate, as `devtls.ensure(root / "tls", hostname)` writes it.
DEV_TLS = {"certificate": "tls/dev.crt", "key": "tls/dev.key"}
# For `extra`: no look-ups of the sender's domain (return path, SPF, DKIM, DMARC) for tests
# about other things.
NO_SENDER_CHECKS = {
    "receiving": {
        "return_path": {"scope": "nobody"},
        "spf": {"scope": "nobody"},
        "dkim": {"scope": "nobody"},
        "dmarc": {"scope": "nobody"},
    }
}

Settings = Mapping[str, Any]


def listener(port: int, **settings: Any) -> dict[str, Any]:
    """A listener on 127.0.0.1:`port`; `settings` as site.yaml spells them (tls, auth, ...)."""
    return {"port": port, "bind": [LOOPBACK], **settings}


def plain(port: int) -> dict[str, Any]:
    """A listener on 127.0.0.1:`port` with neither TLS nor AUTH: what most tests speak to."""
    return listener(port, tls="none", auth="none")


def site_yaml(
    *,
    listeners: Mapping[str, int | Settings],
    accounts: Iterable[str] | Mapping[str, Settings] = ("alice",),
    domains: Mapping[str, Settings] | None = None,
    hostname: str = HOSTNAME,
    main_domain: str = MAIN_DOMAIN,
    client_ips: Iterable[str] = (LOOPBACK,),
    tls: bool = False,
    queue: Settings | None = None,
    extra: Settings | str = "",
) -> str:
    """The text of a site.yaml.

    - `listeners`: name -> a port (a listener on 127.0.0.1 with the defaults of its
      name) or the listener's settings (`listener`, `plain`);
    - `accounts`: the main domain's, as names (no settings) or name -> settings;
    - `domains`: more settings per domain, the main domain's included (aliases,
      forwarders, lists, rules) and other domains with their accounts;
    - `client_ips`: none at all when empty;
    - `tls`: the development certificate (`devtls.ensure(root / "tls", hostname)`);
    - `queue`: merged over var/queue and var/mail;
    - `extra`: merged into the whole document, last.
    """
    if not isinstance(accounts, Mapping):
        accounts = {name: {} for name in accounts}
    all_domains = {main_domain: {}, **(domains or {})}
    all_domains[main_domain] = {**all_domains[main_domain], "accounts": dict(accounts)}
    server = {"hostname": hostname, "main_domain": main_domain}
    if ips := "".join(f"{ip}\n" for ip in client_ips):
        server["client_ips"] = ips
    document: dict[str, Any] = {
        "server": server,
        "listeners": {
            name: listener(given) if isinstance(given, int) else dict(given)
            for name, given in listeners.items()
        },
        **({"tls": DEV_TLS} if tls else {}),
        "queue": {**QUEUE, **(queue or {})},
        "domains": all_domains,
    }
    if isinstance(extra, str):
        extra = yaml.safe_load(extra) or {}
    return yaml.dump(
        merged(document, extra),
        Dumper=_Dumper,
        sort_keys=False,
        allow_unicode=True,
        default_flow_style=None,
        width=100,
    )


def write_site(folder: Path, **settings: Any) -> Path:
    """Write `folder`/site.yaml (`site_yaml(**settings)`), making the folder; the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "site.yaml").write_text(site_yaml(**settings), encoding="utf-8")
    return folder


def merged(base: Settings, extra: Settings) -> dict[str, Any]:
    """`base` with `extra` over it: mappings merged key by key, anything else replaced."""
    result = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = merged(result[key], value)
        else:
            result[key] = value
    return result


class _Dumper(yaml.SafeDumper):
    """safe_dump's dumper; lines of text (address lists) as `|` blocks, tuples as lists."""


def _text(dumper: yaml.SafeDumper, text: str) -> yaml.Node:
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_Dumper.add_representer(str, _text)
_Dumper.add_representer(tuple, lambda dumper, items: dumper.represent_list(items))


def alice_plan(folder: Path, port: int, routing: str | None = None) -> Plan:
    """The plan of a site in `folder` (made here) with one account, alice@example.com, and
    one plain SMTP listener on `port`; `routing`: the text of its routing table."""
    folder.mkdir(exist_ok=True)
    (folder / "site.yaml").write_text(
        "server: {hostname: mail.example.com, main_domain: example.com, client_ips: 127.0.0.1}\n"
        f"listeners:\n  smtp: {{port: {port}, bind: [{LOOPBACK}], tls: none, auth: none}}\n"
        "queue: {directory: var/queue, mail_directory: var/mail}\n"
        "domains:\n  example.com:\n    accounts:\n      alice: {}\n"
        + ("routing: router.cgr\n" if routing is not None else "")
    )
    if routing is not None:
        (folder / "router.cgr").write_text(routing)
    unit = compile_site(folder)
    assert unit.plan is not None, unit.diagnostics
    return unit.plan
