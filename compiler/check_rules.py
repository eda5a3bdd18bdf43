"""Rules check: every rule can do what it says where it stands, and can fire at all.

Server rules run on every message before it is queued, so they cannot use what only
an account has (folders, flags, its address book, auto-replies). Account rules may
use only the actions the site allows (`account_rules.actions`). Folders, pipes and
addresses that rules name must exist; a rule that can never fire, or an action that
can never be carried out, is a warning.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator

from mailplan.compiler.diagnostics import Diagnostic, error, warning
from mailplan.plan.model import Account, Domain, Plan, Rule, RuleCondition, RuleSet, Source
from mailplan.runtime.decide.router import Router

# What server rules cannot do: these act on one account's mailbox.
NOT_IN_SERVER_RULES = frozenset(
    {"Store in", "Mark", "Copy Attachments into", "Remember 'From' in"}
    | {"Reply with", "Reply to All with"}
)
ENDS_PROCESSING = frozenset({"Stop Processing", "Discard", "Reject with"})
FORWARDING = frozenset({"Redirect to", "Forward to", "Mirror to"})
FOLDER_VERBS = frozenset({"Store in", "Copy Attachments into"})
SINGLE_VALUED = frozenset(
    {"From", "Sender", "Return-Path", "Reply-To", "'From' Name", "Subject", "Message-ID"}
    | {"Submit Address", "Security", "Human Generated", "Current Day", "Current Date"}
)


def check_rules(plan: Plan, router: Router) -> list[Diagnostic]:
    problems: list[Diagnostic] = []
    pipes = {pipe.name for pipe in plan.pipes}
    if plan.server_rules is not None:
        problems += _server(plan.server_rules)
        problems += _named(plan.server_rules, router, pipes)
        problems += _never(plan.server_rules.rules)
    for domain in plan.domains:
        if domain.rules is not None:
            problems += _named(domain.rules, router, pipes)
            problems += _folders(domain.rules, domain.accounts, f"the domain {domain.name}")
        for account in domain.accounts:
            if account.rules is not None:
                problems += _account(plan, account.rules)
                problems += _named(account.rules, router, pipes)
                problems += _folders(account.rules, (account,), f"{account.name}@{domain.name}")
        problems += _never(_local_order(domain, None))
        for account in domain.accounts:
            if account.rules is not None:
                problems += _never(_local_order(domain, account))
    return list(dict.fromkeys(problems))  # domain rules are judged once per account


def _server(rules: RuleSet) -> Iterator[Diagnostic]:
    for rule in rules.rules:
        for action in rule.actions:
            if action.verb in NOT_IN_SERVER_RULES:
                message = f"{action.verb} acts on an account's mailbox: not in server rules"
                yield _at(action.source, "MP608", message)
        for condition in rule.conditions:
            if condition.field == "Existing Mailbox":
                message = "Existing Mailbox asks about an account's mailbox: not in server rules"
                yield _at(condition.source, "MP608", message)


def _account(plan: Plan, rules: RuleSet) -> Iterator[Diagnostic]:
    allowed = plan.account_rules.actions
    for rule in rules.rules:
        for action in rule.actions:
            if action.verb not in allowed:
                message = (
                    f"{action.verb} is not allowed in account rules "
                    f"(account_rules.actions in site.yaml allows: {', '.join(allowed)})"
                )
                yield _at(action.source, "MP608", message)


def _named(rules: RuleSet, router: Router, pipes: set[str]) -> Iterator[Diagnostic]:
    """Pipes and addresses inside the site's domains that rules name must exist."""
    for rule in rules.rules:
        for action in rule.actions:
            if action.verb == "Execute" and action.values:
                name = action.values[0].split()[0] if action.values[0].split() else ""
                if name not in pipes:
                    message = f"no such pipe: {name} (Execute runs only the site's `pipes:`)"
                    yield _at(action.source, "MP610", message)
            if action.verb in FORWARDING:
                for address in action.values:
                    routing = router.route(address, "mail")
                    if routing.module == "ERROR" and routing.status == "5.1.1":
                        message = f"no such address: {address} ({routing.reason})"
                        yield _at(action.source, "MP611", message)


def _folders(rules: RuleSet, accounts: tuple[Account, ...], owner: str) -> Iterator[Diagnostic]:
    """Store in and Copy Attachments into name a folder every account concerned has."""
    for rule in rules.rules:
        for action in rule.actions:
            if action.verb not in FOLDER_VERBS or not action.values:
                continue
            folder = action.values[0]
            lacking = [a.name for a in accounts if not _has_folder(a, folder)]
            if lacking:
                who = owner if len(accounts) == 1 else f"{owner} ({', '.join(lacking)})"
                message = f"no such folder: {folder} in {who}: list it in the account's `folders:`"
                yield _at(action.source, "MP609", message)


def _has_folder(account: Account, folder: str) -> bool:
    if folder.upper() == "INBOX":
        return True
    return folder in account.folders


def _local_order(domain: Domain, account: Account | None) -> tuple[Rule, ...]:
    """The rules LOCAL delivery runs for an account: domain first at equal priority."""
    domain_rules = domain.rules.rules if domain.rules else ()
    account_rules = account.rules.rules if account and account.rules else ()
    ranked = [(rule, 0, i) for i, rule in enumerate(domain_rules)]
    ranked += [(rule, 1, i) for i, rule in enumerate(account_rules)]
    ranked.sort(key=lambda item: (-item[0].priority, item[1], item[2]))
    return tuple(rule for rule, _, _ in ranked)


def _never(rules: tuple[Rule, ...]) -> Iterator[Diagnostic]:
    """Rules that can never fire, and actions that can never be carried out."""
    active = sorted((rule for rule in rules if not rule.inactive), key=lambda rule: -rule.priority)
    ender: Rule | None = None
    for rule in active:
        ends = next((a for a in rule.actions if a.verb in ENDS_PROCESSING), None)
        if ends is not None:
            for action in rule.actions[rule.actions.index(ends) + 1 :]:
                message = f"{action.verb} is never carried out: {ends.verb} ends processing first"
                yield _warn(action.source, message)
        where = rule.source
        if ender is not None:
            message = (
                f"rule {rule.name!r} can never fire: rule {ender.name!r} "
                f"({ender.source}) fires on every message and ends processing before it"
            )
            yield warning(where.file, where.line, where.column, "MP612", message)
            continue
        contradiction = _contradiction(rule.conditions)
        if contradiction:
            message = f"rule {rule.name!r} can never fire: {contradiction}"
            yield warning(where.file, where.line, where.column, "MP612", message)
        elif ends is not None and not rule.conditions:
            ender = rule


def _contradiction(conditions: tuple[RuleCondition, ...]) -> str | None:
    """Why conditions that must all hold cannot hold together, or None."""
    exact: dict[tuple[str, str | None], RuleCondition] = {}
    for condition in conditions:
        if condition.operation == "is" and condition.field in SINGLE_VALUED:
            key = (condition.field, condition.header)
            other = exact.get(key)
            if other is not None and _differ(other, condition):
                return f"`{other}` and `{condition}` cannot both hold"
            exact[key] = condition
    return _negated(conditions, exact) or _empty_range(conditions)


def _differ(earlier: RuleCondition, later: RuleCondition) -> bool:
    """Whether two `is` conditions name different literal values (no `*` in either)."""
    value = later.values[0].lower() if later.values else ""
    return "*" not in value + earlier.values[0] and earlier.values[0].lower() != value


def _negated(
    conditions: tuple[RuleCondition, ...], exact: dict[tuple[str, str | None], RuleCondition]
) -> str | None:
    """An `is not` that denies the very value an `is` of the same field requires."""
    for condition in conditions:
        key = (condition.field, condition.header)
        if condition.operation == "is not" and key in exact:
            same = exact[key].values[0].lower() == (condition.values or ("",))[0].lower()
            if same:
                return f"`{exact[key]}` and `{condition}` cannot both hold"
    return None


def _empty_range(conditions: tuple[RuleCondition, ...]) -> str | None:
    """A `greater than` and a `less than` of one field with no whole number between them."""
    below = _tightest(conditions, "less than", operator.lt)
    above = _tightest(conditions, "greater than", operator.gt)
    for field, (high, upper) in below.items():
        if field in above and above[field][0] >= high - 1:
            return f"`{above[field][1]}` and `{upper}` leave nothing between them"
    return None


def _tightest(
    conditions: tuple[RuleCondition, ...], operation: str, tighter: Callable[[int, int], bool]
) -> dict[str, tuple[int, RuleCondition]]:
    """For each field, the tightest bound of `operation` and the first condition that sets it."""
    found: dict[str, tuple[int, RuleCondition]] = {}
    for condition in conditions:
        number = condition.number
        if condition.operation != operation or number is None:
            continue
        if condition.field not in found or tighter(number, found[condition.field][0]):
            found[condition.field] = (number, condition)
    return found


def _at(source: Source, code: str, message: str) -> Diagnostic:
    return error(source.file, source.line, source.column, code, message)


def _warn(source: Source, message: str) -> Diagnostic:
    return warning(source.file, source.line, source.column, "MP613", message)
