"""Listener check: AUTH where it must be, passwords never in clear, TLS with a certificate,
no two listeners on one socket, and an address for every MX host the site names."""

from __future__ import annotations

from mailplan.compiler.diagnostics import Diagnostic, error, warning
from mailplan.plan.model import Listener, Plan, Source
from mailplan.runtime.decide.router import Router

SUBMISSION = ("submission", "smtps")
READING = ("pop3", "pop3s", "imap", "imaps")
WILDCARDS = ("0.0.0.0", "::")


def check_listeners(plan: Plan, router: Router) -> list[Diagnostic]:
    problems: list[Diagnostic] = []
    for listener in plan.listeners:
        problems += _listener(listener, plan)
        problems += _reading(listener)
    problems += _sockets(plan.listeners)
    addressed = {mx.host for d in plan.domains for mx in d.mx if mx.ipv4 or mx.ipv6}
    hosted = [*router.domains, *router.aliases]
    for domain in plan.domains:
        for mx in domain.mx:
            inside = any(mx.host == d or mx.host.endswith("." + d) for d in hosted)
            if inside and mx.host not in addressed:
                message = (
                    f"MX host {mx.host} of {domain.name} has no address: give its ipv4 or ipv6, "
                    "so that its A/AAAA records can be published"
                )
                problems.append(_error(mx.source, "MP404", message))
    return problems


def _listener(listener: Listener, plan: Plan) -> list[Diagnostic]:
    problems = []
    name = listener.name
    if listener.protocol in SUBMISSION and listener.auth != "required":
        message = f"{listener.protocol} listener {name!r} must require AUTH (set auth: required)"
        problems.append(_error(listener.source, "MP401", message))
    offers_auth = listener.auth != "none" and listener.protocol in ("smtp", *SUBMISSION)
    if offers_auth and listener.tls == "none":
        message = (
            f"listener {name!r} offers AUTH without TLS: passwords would cross the network in clear"
        )
        if listener.plaintext_auth:
            problems.append(_warning(listener.source, "MP402", message + " (plaintext_auth: true)"))
        else:
            hint = "; use tls: starttls or implicit, or auth: none, or plaintext_auth: true"
            problems.append(_error(listener.source, "MP402", message + hint))
    elif offers_auth and listener.plaintext_auth and listener.tls == "starttls":
        message = f"listener {name!r} accepts AUTH before STARTTLS (plaintext_auth: true)"
        problems.append(_warning(listener.source, "MP402", message))
    missing = [key for key in ("certificate", "key") if not getattr(plan.tls, key)]
    if listener.tls != "none" and missing:
        keys = " and ".join(f"tls.{key}" for key in missing)
        message = f"listener {name!r} uses TLS ({listener.tls}) but {keys} is not set"
        problems.append(_error(listener.source, "MP403", message))
    return problems


def _reading(listener: Listener) -> list[Diagnostic]:
    """POP3 and IMAP: every session logs in, so a login must be possible and safe."""
    if listener.protocol not in READING:
        return []
    name, protocol = listener.name, listener.protocol
    if listener.auth == "none":
        message = (
            f"{protocol} listener {name!r} cannot do without a login: mail is read only "
            "by its owner (remove auth: none)"
        )
        return [_error(listener.source, "MP411", message)]
    if listener.tls == "none" and not listener.plaintext_auth:
        message = (
            f"{protocol} listener {name!r} has no TLS, so it would refuse every login; "
            "use tls: starttls or implicit, or plaintext_auth: true"
        )
        return [_error(listener.source, "MP410", message)]
    if listener.tls == "none":
        message = (
            f"{protocol} listener {name!r} takes passwords without TLS: they would cross "
            "the network in clear (plaintext_auth: true)"
        )
        return [_warning(listener.source, "MP410", message)]
    if listener.plaintext_auth and listener.tls == "starttls":
        message = f"{protocol} listener {name!r} accepts logins before STLS (plaintext_auth: true)"
        return [_warning(listener.source, "MP410", message)]
    return []


def _sockets(listeners: tuple[Listener, ...]) -> list[Diagnostic]:
    """Two listeners on one port of one address (a wildcard address covers its family)."""
    problems = []
    ordered = sorted(listeners, key=lambda listener: (listener.source.line, listener.name))
    for k, listener in enumerate(ordered):
        for other in ordered[:k]:
            clash = next(
                (a for a in listener.bind if _overlap(a, other) and other.port == listener.port),
                None,
            )
            if clash is not None:
                message = (
                    f"listener {listener.name!r} and listener {other.name!r} both listen on "
                    f"{clash} port {listener.port}"
                )
                problems.append(_error(listener.source, "MP405", message))
                break
    return problems


def _overlap(address: str, other: Listener) -> bool:
    """Whether `address` shares sockets with one of `other`'s (a wildcard covers its family)."""
    for theirs in other.bind:
        if (":" in address) == (":" in theirs) and (
            address == theirs or address in WILDCARDS or theirs in WILDCARDS
        ):
            return True
    return False


def _error(source: Source, code: str, message: str) -> Diagnostic:
    return error(source.file, source.line, source.column, code, message)


def _warning(source: Source, code: str, message: str) -> Diagnostic:
    return warning(source.file, source.line, source.column, code, message)
