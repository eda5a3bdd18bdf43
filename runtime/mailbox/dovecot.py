"""IMAP through Dovecot: the files Dovecot needs to serve the plan's Maildirs and accounts.

A pure function of the plan and of where things are on this machine (`Place`):

- `passwd`: a Dovecot passwd-file with each account's argon2id hash (Dovecot reads the
  PHC string as `{ARGON2ID}`), under every login name that the router takes to that
  account: `name@domain` for the domain and its aliases, the account's aliases, and the
  bare `name` where the router reaches the account with it. An alias line carries
  `user=ACCOUNT`, so Dovecot logs in as the account itself.
- `mailplan.conf`: the snippet with the login rules (lower case, `%` read as `@`), the
  passdb and userdb, `mail_location` on mailplan's Maildirs, TLS, and one inet_listener
  per `imap`/`imaps` listener of the plan.
- `users`: the userdb, every account (with a password or not: LMTP delivers to them all),
  with the owner of the Maildirs as its uid and gid.
- LMTP, when the plan hands LOCAL mail over by LMTP (`delivery.local: {via: lmtp}`): the
  snippet adds `lmtp` to the protocols, one listener per server the plan names
  (`host:port` an inet_listener, `unix:/path` a unix_listener), and saves a recipient's
  detail into that folder (`name+Junk@domain` into Junk, made when missing): that is how
  the folder an account's rules chose reaches Dovecot.
- `dovecot.conf`: a complete configuration that includes the snippet, for a Dovecot that
  serves only this site (`dovecot -c DIR/dovecot.conf`). With `Place.state` (development)
  it keeps Dovecot's own files there, so it runs beside a system Dovecot, and logs to
  standard error (`dovecot -F` in a terminal).

Login names that only a wildcard `Access:` record of the routing table would produce
cannot be listed ahead of time; Dovecot does not know them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mailplan.plan import codec
from mailplan.plan.model import Listener, Plan
from mailplan.runtime.decide.router import Router

PASSWD = "passwd"
USERS = "users"
SNIPPET = "mailplan.conf"
CONFIG = "dovecot.conf"
IMAP_PROTOCOLS = ("imap", "imaps")
DEFAULT_LISTENERS = ("imap", "imaps")  # Dovecot's own; turned off unless the plan has them
DOVECOT_FIRST_VALID_UID = 500  # Dovecot's default, lowered when the mail user is below it


@dataclass(frozen=True)
class Place:
    """Where the files are on this machine (absolute paths) and who owns the Maildirs."""

    output: Path
    mail_directory: Path
    certificate: Path | None
    key: Path | None
    uid: int
    gid: int
    state: Path | None = None  # development: Dovecot's base_dir and state_dir under it
    owner: str | None = None  # the name of `uid`: who may connect to a unix LMTP listener


def files(plan: Plan, place: Place) -> dict[str, str]:
    """File name (inside `place.output`) to content."""
    return {
        PASSWD: passwd(plan, place),
        USERS: users(plan, place),
        SNIPPET: snippet(plan, place),
        CONFIG: config(plan, place),
    }


def logins(plan: Plan, router: Router | None = None) -> list[tuple[str, str]]:
    """(login name, account) for every name the router takes to an account that has a password."""
    router = router or Router(plan)
    found: dict[str, str] = {}
    for domain in plan.domains:
        for account in domain.accounts:
            if account.password is None:
                continue
            address = f"{account.name}@{domain.name}"
            candidates = [address]
            for name in (account.name, *account.aliases):
                candidates += [f"{name}@{d}" for d in (domain.name, *domain.aliases)]
                candidates.append(name)
            for candidate in candidates:
                routing = router.route(candidate, "access")
                if routing.module == "LOCAL" and routing.queue == address:
                    found.setdefault(candidate.lower(), address)
    return sorted(found.items(), key=lambda item: (item[1], item[0] != item[1], item[0]))


def passwd(plan: Plan, place: Place) -> str:
    hashes = {
        f"{account.name}@{domain.name}": account.password
        for domain in plan.domains
        for account in domain.accounts
    }
    lines = [f"# Written by `mailplan dovecot` from plan {codec.digest(plan)}: do not edit."]
    for name, account in logins(plan):
        for field in (name, account, hashes[account] or ""):
            if any(c in field for c in ":\r\n"):  # would break the passwd-file's lines
                raise ValueError(f"{field!r} cannot stand in Dovecot's passwd-file")
        extra = "" if name == account else f"user={account}"
        lines.append(
            f"{name}:{{ARGON2ID}}{hashes[account]}:{place.uid}:{place.gid}::::{extra}".rstrip(":")
        )
    return "\n".join(lines) + "\n"


def users(plan: Plan, place: Place) -> str:
    """The userdb: every account, owned by the Maildirs' owner (no passwords here)."""
    lines = [f"# Written by `mailplan dovecot` from plan {codec.digest(plan)}: do not edit."]
    for domain in plan.domains:
        for account in domain.accounts:
            name = f"{account.name}@{domain.name}".lower()
            if any(c in name for c in ":\r\n"):
                raise ValueError(f"{name!r} cannot stand in Dovecot's passwd-file")
            lines.append(f"{name}::{place.uid}:{place.gid}::")
    return "\n".join(lines) + "\n"


def lmtp_servers(plan: Plan) -> list[tuple[str, str]]:
    """(server, where the site names it) for every LMTP server of the plan, once each."""
    found: dict[str, str] = {}
    for local in (plan.local, *(domain.local for domain in plan.domains)):
        if local is not None and local.via == "lmtp":
            for server in local.to:
                found.setdefault(server, str(local.source) if local.source else "")
    return list(found.items())


def _lmtp(plan: Plan, place: Place) -> list[str]:
    servers = lmtp_servers(plan)
    if not servers:
        return []
    lines = [
        "",
        "# LMTP from mailplan (delivery.local via lmtp): a recipient's detail is its folder.",
        "recipient_delimiter = +",
        "lmtp_save_to_detail_mailbox = yes",
        "lda_mailbox_autocreate = yes",
        "lda_mailbox_autosubscribe = yes",
        "service lmtp {",
    ]
    for number, (server, source) in enumerate(servers):
        comment = f"  # {source}" if source else ""
        if server.startswith("unix:"):
            lines += [f"  unix_listener {_value(server.removeprefix('unix:'))} {{{comment}"]
            lines += [f"    user = {_value(place.owner)}"] if place.owner else []
            lines += ["    mode = 0600", "  }"]
        else:
            host, _, port = server.rpartition(":")
            lines += [
                f"  inet_listener lmtp{number} {{{comment}",
                f"    address = {host.strip('[]')}",
                f"    port = {port}",
                "  }",
            ]
    return [*lines, "}"]


def _value(text: str) -> str:
    """A value for Dovecot's configuration, quoted when it has to be."""
    if text and all(c.isalnum() or c in "/._-:%<" for c in text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def snippet(plan: Plan, place: Place) -> str:
    imap = [listener for listener in plan.listeners if listener.protocol in IMAP_PROTOCOLS]
    plaintext = bool(imap) and all(listener.plaintext_auth for listener in imap)
    uses_tls = any(listener.tls != "none" for listener in imap)
    passwd_file = _value(str(place.output / PASSWD))
    users_file = _value(str(place.output / USERS))
    lmtp = _lmtp(plan, place)
    mail = _value(f"maildir:{place.mail_directory}/%d/%n")
    lines = [
        f"# Written by `mailplan dovecot` from plan {codec.digest(plan)}: do not edit,",
        "# run it again after every change of the site.",
        "protocols = imap lmtp" if lmtp else "protocols = imap",
        "",
        "# Login names: any case; `user%domain` is read as `user@domain`.",
        "auth_username_format = %Lu",
        "auth_username_translation = %@",
        "auth_mechanisms = plain login",
        f"disable_plaintext_auth = {'no' if plaintext else 'yes'}",
        "passdb {",
        "  driver = passwd-file",
        f"  args = scheme=ARGON2ID {passwd_file}",
        "}",
        "userdb {",
        "  driver = passwd-file",
        f"  args = {users_file}",
        "}",
        "",
        "# mailplan's Maildirs: MAIL_DIRECTORY/DOMAIN/ACCOUNT.",
        f"mail_location = {mail}",
    ]
    if place.uid < DOVECOT_FIRST_VALID_UID:
        lines.append(f"first_valid_uid = {place.uid}")
    if place.gid < 1:
        lines.append(f"first_valid_gid = {place.gid}")
    lines.append("")
    if uses_tls and place.certificate and place.key:
        lines += [
            "ssl = yes",
            f"ssl_cert = <{_value(str(place.certificate))}",
            f"ssl_key = <{_value(str(place.key))}",
        ]
    else:
        lines.append("ssl = no")
    lines += ["", "service imap-login {"]
    for listener in imap:
        lines += _inet_listener(listener)
    for name in DEFAULT_LISTENERS:
        if all(listener.name != name for listener in imap):
            lines += [f"  inet_listener {name} {{", "    port = 0", "  }"]
    lines.append("}")
    lines += lmtp
    return "\n".join(lines) + "\n"


def _inet_listener(listener: Listener) -> list[str]:
    lines = [
        f"  inet_listener {listener.name} {{  # {listener.source}",
        f"    address = {' '.join(listener.bind)}",
        f"    port = {listener.port}",
    ]
    if listener.tls == "implicit":
        lines.append("    ssl = yes")
    return [*lines, "  }"]


def config(plan: Plan, place: Place) -> str:
    text = (
        f"# A complete Dovecot configuration for {plan.server.hostname}, written by\n"
        "# `mailplan dovecot`: Dovecot serves IMAP on mailplan's Maildirs, mailplan the rest.\n"
        f"!include {place.output / SNIPPET}\n"
    )
    if place.state is not None:
        text += (
            "\n# Development: Dovecot's own files here, not beside a system Dovecot's; logs on\n"
            "# standard error (run `dovecot -F -c THIS_FILE` in a terminal).\n"
            f"base_dir = {_value(str(place.state / 'run'))}\n"
            f"state_dir = {_value(str(place.state / 'state'))}\n"
            "log_path = /dev/stderr\n"
        )
    return text
