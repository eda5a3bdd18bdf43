"""Policy: what the server says to a client, as pure functions of the plan and the session.

Who is a client (Client IPs), who is refused at connect (blacklisted IPs), who may
relay, which sender and recipients are accepted, which internationalised addresses
may be given (RFC 6531), and who a login name is. The SMTP handler asks; this module
answers with the reply line (or None for "go on").
"""

from __future__ import annotations

from dataclasses import dataclass

from mailplan.plan.model import Account, Plan, Scope
from mailplan.runtime.decide import replies
from mailplan.runtime.decide.address import idn_problem
from mailplan.runtime.decide.addresslist import AddressSet
from mailplan.runtime.decide.passwords import hash_password, verify
from mailplan.runtime.decide.router import Router, Routing

# A hash that no password matches, checked when there is no account to check against,
# so that an unknown name costs as long as a wrong password (no way to list accounts).
_DECOY = hash_password("mailplan: no such account")


@dataclass(frozen=True)
class Client:
    """What the server knows about the other end of a session."""

    ip: str
    trusted: bool
    tls: bool
    authenticated: str | None = None


def in_scope(scope: Scope, trusted: bool) -> bool:
    """Whether a setting with this CommuniGate scope applies to a (non-)client."""
    if scope == "everybody":
        return True
    if scope == "clients-only":
        return trusted
    if scope == "everybody-except-clients":
        return not trusted
    return False


def international(address: str, smtputf8: bool) -> str | None:
    """The reply that refuses a non-ASCII address in MAIL or RCPT, or None to go on.

    RFC 6531 3.4: a non-ASCII address is only taken in a transaction that MAIL FROM
    opened with SMTPUTF8; its domain must then be valid IDNA2008 (in U-labels or
    A-labels). Plain ASCII addresses pass untouched.
    """
    if address.isascii():
        return None
    if not smtputf8:
        return replies.NEEDS_SMTPUTF8
    _, at, domain = address.rpartition("@")
    if at and idn_problem(domain) is not None:
        return replies.reply(replies.BAD_IDN, address=address)
    return None


class Policy:
    """The decisions of one plan; built once per plan, shared by every session on it."""

    def __init__(self, plan: Plan, router: Router | None = None) -> None:
        self.plan = plan
        self.router = router or Router(plan)
        self.client_ips = AddressSet.named(plan, plan.server.client_ips)
        self.blacklisted_ips = AddressSet.named(plan, plan.server.blacklisted_ips)
        self.accounts: dict[str, Account] = {
            f"{account.name}@{domain.name}": account
            for domain in plan.domains
            for account in domain.accounts
        }

    def client(self, ip: str, tls: bool, authenticated: str | None = None) -> Client:
        """A session's client: trusted when its IP is one of the Client IPs."""
        return Client(ip, ip in self.client_ips, tls, authenticated)

    def refuse_connection(self, client: Client) -> str | None:
        """The greeting that refuses a blacklisted client, or None to serve it."""
        scope = self.plan.receiving.blacklisted_ips
        if client.ip in self.blacklisted_ips and in_scope(scope, client.trusted):
            return replies.GREETING_REFUSED
        return None

    def may_relay(self, client: Client) -> bool:
        relaying = self.plan.relaying
        if client.authenticated is not None and relaying.authenticated:
            return True
        return in_scope(relaying.scope, client.trusted)

    def sender(self, address: str) -> str | None:
        """The reply that refuses MAIL FROM, or None to accept it (`<>` is always accepted)."""
        if address in ("", "<>"):
            return None
        local, at, domain = address.rpartition("@")
        if not at or not domain or not local:
            return replies.reply(replies.BAD_SENDER_DOMAIN, address=address)
        routing = self.router.route(address)
        if routing.module == "ERROR" and routing.status == "5.7.1":
            return replies.reply(
                replies.REJECTED, status="5.7.1", address=address, reason=routing.reason
            )
        return None

    def recipient(self, client: Client, address: str, accepted: int) -> tuple[str, Routing | None]:
        """The reply to RCPT TO, and the routing when the recipient is accepted."""
        limit = self.plan.limits.max_recipients
        if accepted >= limit:
            return replies.reply(replies.TOO_MANY_RECIPIENTS, limit=limit), None
        routing = self.router.route(address)
        if routing.module == "ERROR":
            status = routing.status or "5.1.1"
            text = replies.reply(
                replies.REJECTED, status=status, address=address, reason=routing.reason
            )
            return text, None
        if routing.module == "SMTP" and not routing.relayable and not self.may_relay(client):
            return replies.reply(replies.RELAY_DENIED, address=address), None
        return replies.RECIPIENT_OK, routing

    def login(self, name: str, password: str) -> str | None:
        """The account (`name@domain`) that `name` and `password` log in as, or None.

        The name goes through the router as an Access address, so `user`, `user@domain`,
        `user%domain` and aliases reach the same account. Slow by design (argon2id):
        call it off the event loop.
        """
        routing = self.router.route(name, "access")
        account = self.accounts.get(routing.queue) if routing.module == "LOCAL" else None
        if account is None or account.password is None:
            verify(_DECOY, password)  # as slow as a wrong password
            return None
        return routing.queue if verify(account.password, password) else None
