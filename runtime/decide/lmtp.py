"""Which LOCAL deliveries go over LMTP, to which servers, and with which RCPT address.

A domain's own `delivery.local` wins over the site's. An account's recipient goes to an
`LMTP(SERVERS)` queue (the servers as the site lists them, space-separated: one queue,
so one connection carries every domain's mail for those servers); a folder that the
account's rules chose travels as the address's detail (`name+Folder@domain`), which
Dovecot's LMTP saves into with `lmtp_save_to_detail_mailbox = yes`.
"""

from __future__ import annotations

import re
from dataclasses import replace

from mailplan.plan.model import LocalDelivery, Plan
from mailplan.runtime.decide.router import Routing

_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
DELIMITER = "+"  # Dovecot's `recipient_delimiter`, as `mailplan dovecot` writes it


_known: list[tuple[Plan, dict[str, LocalDelivery]]] = []  # the last plans, by identity


def _by_domain(plan: Plan) -> dict[str, LocalDelivery]:
    """Each domain's way, per plan object (a plan's hash would walk all of it)."""
    for known, table in _known:
        if known is plan:
            return table
    table = {domain.name: domain.local or plan.local for domain in plan.domains}
    _known[:] = [*_known[-3:], (plan, table)]
    return table


def local_delivery(plan: Plan, account: str) -> LocalDelivery:
    """How mail for `account` (name@domain, as the router gives it) reaches its mailbox."""
    return _by_domain(plan).get(account.rpartition("@")[2].lower(), plan.local)


def over_lmtp(plan: Plan, account: str) -> bool:
    return local_delivery(plan, account).via == "lmtp"


def carried(folder: str) -> bool:
    """Whether a folder can travel as a detail: Dovecot 2.3's LMTP offers no SMTPUTF8, so
    a name that is not ASCII cannot (such mail goes to INBOX)."""
    return folder.isascii() and folder.isprintable()


def rcpt(account: str, folder: str = "INBOX") -> str:
    """The LMTP recipient for `account`'s `folder`: the address itself for INBOX (and for a
    folder that cannot travel, see `carried`), else the folder as its detail (a `/` of a
    subfolder becomes Maildir++'s `.`), the local part quoted when it must be (a space)."""
    if folder.upper() == "INBOX" or not carried(folder):
        return account
    name, _, domain = account.rpartition("@")
    local = f"{name}{DELIMITER}{folder.replace('/', '.')}"
    if not _DOT_ATOM.fullmatch(local):
        local = '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{local}@{domain}"


def handover(plan: Plan, routing: Routing, folder: str = "INBOX") -> Routing:
    """A LOCAL routing to `account` as the LMTP queue that delivers it."""
    servers = local_delivery(plan, routing.queue).to
    target = rcpt(routing.queue, folder)
    return replace(routing, module="LMTP", queue=" ".join(servers), target=target)


def servers(queue: str) -> tuple[str, ...]:
    """The servers of an `LMTP(...)` queue, in the site's order."""
    return tuple(queue.split())
