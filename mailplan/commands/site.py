"""The commands on a site: check, build, route, test, rules and schema."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mailplan.commands.origin import add_origin, load_plan
from mailplan.compiler.diagnostics import has_errors, render_json, render_text
from mailplan.compiler.load import SITE_FILE
from mailplan.compiler.pipeline import compile_site
from mailplan.compiler.report import render_github, render_sarif
from mailplan.compiler.schema import site_schema
from mailplan.plan import codec
from mailplan.runtime.decide.router import Router, Routing

if TYPE_CHECKING:
    from mailplan.commands.origin import Subcommands


def add_parser(subcommands: Subcommands) -> None:
    check = subcommands.add_parser("check", help="validate a site and print every problem in it")
    check.add_argument("site", type=Path, metavar="SITE_DIR")
    check.add_argument(
        "--format",
        choices=("text", "json", "github", "sarif"),
        default="text",
        help="github: workflow commands (findings on their lines in a pull request); "
        "sarif: SARIF 2.1.0 for code scanning",
    )
    check.set_defaults(run=_check)

    build = subcommands.add_parser("build", help="compile a site into a plan file")
    build.add_argument("site", type=Path, metavar="SITE_DIR")
    build.add_argument(
        "-o", "--output", default="plan.json", metavar="PLAN", help="'-' for standard output"
    )
    build.set_defaults(run=_build)

    route = subcommands.add_parser("route", help="show how an address is routed, step by step")
    route.add_argument("address")
    add_origin(route, positional=False)
    route.add_argument("--kind", choices=("mail", "access", "signal"), default="mail")
    route.add_argument("--format", choices=("text", "json"), default="text")
    route.set_defaults(run=_route)

    test = subcommands.add_parser("test", help="prove the site's own tests (tests: in site.yaml)")
    add_origin(test, positional=True)
    test.set_defaults(run=_test)

    _add_rules(subcommands)

    schema = subcommands.add_parser(
        "schema", help="print the JSON Schema of site.yaml or of a plan"
    )
    schema.add_argument("which", choices=("site", "plan"))
    schema.set_defaults(run=_schema)


def _add_rules(subcommands: Subcommands) -> None:
    rules = subcommands.add_parser("rules", help="show what the rules do with a message file")
    rules.add_argument("message", type=Path, metavar="MESSAGE")
    rules.add_argument("--to", required=True, help="the envelope recipient")
    rules.add_argument("--from", dest="sender", help="the envelope sender (default Return-Path)")
    rules.add_argument("--client", default="", help="the submitting client's IP")
    rules.add_argument("--authenticated", action="store_true")
    rules.add_argument("--tls", action="store_true")
    rules.add_argument("--at", help="the local time the rules see (YYYY-MM-DD HH:MM; default now)")
    add_origin(rules, positional=False)
    rules.set_defaults(run=_rules)


def _check(arguments: argparse.Namespace) -> int:
    unit = compile_site(arguments.site)
    prefix = f"{arguments.site}/"
    digest = codec.digest(unit.plan) if unit.plan else None
    if arguments.format == "json":
        report: dict[str, Any] = {
            "ok": unit.plan is not None,
            "digest": digest,
            "diagnostics": json.loads(render_json(unit.diagnostics, prefix)),
        }
        print(json.dumps(report, indent=2))
    elif arguments.format == "sarif":
        print(render_sarif(unit.diagnostics, prefix))
    elif arguments.format == "github":
        if unit.diagnostics:
            print(render_github(unit.diagnostics, prefix))
        if digest:
            print(f"configuration OK\nplan digest {digest}")
    else:
        if unit.diagnostics:
            print(render_text(unit.diagnostics, unit.texts, prefix))
        if digest:
            print(f"configuration OK\nplan digest {digest}")
    return 0 if unit.plan is not None else 1


def _build(arguments: argparse.Namespace) -> int:
    unit = compile_site(arguments.site)
    if unit.diagnostics:
        print(render_text(unit.diagnostics, unit.texts, f"{arguments.site}/"), file=sys.stderr)
    if unit.plan is None or has_errors(unit.diagnostics):
        return 1
    text = codec.dumps(unit.plan)
    if arguments.output == "-":
        sys.stdout.write(text)
        return 0
    target = Path(arguments.output)
    temporary = target.with_name(f".{target.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, target)
    print(f"wrote {target} ({codec.digest(unit.plan)})")
    return 0


def _route(arguments: argparse.Namespace) -> int:
    plan = load_plan(arguments)
    if plan is None:
        return 1
    routing = Router(plan).route(arguments.address, arguments.kind)
    if arguments.format == "json":
        print(json.dumps(codec.encode(routing), indent=2, ensure_ascii=False))
    else:
        print(_trace(routing))
    return 2 if routing.module == "ERROR" else 0


def _trace(routing: Routing) -> str:
    lines = [f"{routing.address} ({routing.kind})"]
    for number, step in enumerate(routing.steps, start=1):
        where = str(step.source) if step.source else "built-in"
        what = f"`{step.what}`" if step.source and step.source.file != SITE_FILE else step.what
        after = str(routing) if number == len(routing.steps) else step.after
        relay = "  [relay]" if step.relay else ""
        lines.append(f"  {where:<18} {what}: {step.before} -> {after}{relay}")
    lines.append(f"module     {routing.module}")
    if routing.module == "ERROR":
        lines.append(f"reply      {routing.status} {routing.reason}")
    elif routing.module != "DISCARD":
        lines.append(f"queue      {routing.queue}")
        lines.append(f"address    {routing.target}")
    lines.append(f"relayable  {'yes' if routing.relayable else 'no'}")
    return "\n".join(lines)


def _test(arguments: argparse.Namespace) -> int:
    from mailplan.runtime.decide.policy import Policy
    from mailplan.runtime.rules.engine import RuleBook
    from mailplan.runtime.smtp.casework import judge

    plan = load_plan(arguments)
    if plan is None:
        return 1
    policy = Policy(plan)
    if arguments.plan is not None:  # a compiled site has passed this check already
        from mailplan.compiler.check_tests import check_tests

        problems = check_tests(plan, policy.router)
        if problems:
            print(render_text(problems, {}), file=sys.stderr)
            return 1
    book = RuleBook(plan)
    verdicts = [judge(policy, case, book) for case in plan.tests]
    for verdict in verdicts:
        case = verdict.case
        done = "" if verdict.actions is None else f" [{'; '.join(verdict.actions)}]"
        if verdict.passed:
            print(f"ok    {case.source}  {case.name}: {verdict.outcome}{done}")
        else:
            wanted = case.expect
            if case.message.actions is not None:
                wanted += f" [{'; '.join(case.message.actions)}]"
            print(
                f"FAIL  {case.source}  {case.name}: expected {wanted}, got {verdict.outcome}{done}"
            )
    failed = sum(not verdict.passed for verdict in verdicts)
    print(f"{len(verdicts) - failed} passed, {failed} failed")
    return 1 if failed else 0


def _rules(arguments: argparse.Namespace) -> int:
    from datetime import datetime

    from mailplan.runtime.decide.policy import Policy
    from mailplan.runtime.rules.engine import Facts, Headers, RuleBook
    from mailplan.runtime.smtp.casework import decide

    plan = load_plan(arguments)
    if plan is None:
        return 1
    raw = arguments.message.read_bytes()
    headers = Headers.parse(raw)
    policy = Policy(plan)
    sources = {"remote"}
    if arguments.client and arguments.client in policy.client_ips:
        sources.add("trusted")
    if arguments.authenticated:
        sources.add("authenticated")
    return_path = headers.addresses("return-path")
    sender = arguments.sender if arguments.sender is not None else next(iter(return_path), "")
    facts = Facts(
        headers=headers,
        sender=sender,
        recipients=(arguments.to,),
        size=len(raw),
        sources=frozenset(sources),
        tls=arguments.tls,
        submit_address=arguments.client,
        now=datetime.fromisoformat(arguments.at) if arguments.at else datetime.now(),
    )
    outcome = decide(policy, RuleBook(plan), facts, arguments.to)
    for line in outcome.log():
        print(line)
    fired = ", ".join(rule.name for rule in outcome.fired) or "none"
    print(f"rules fired: {fired}")
    print(f"stopped: {'yes' if outcome.stopped else 'no'}; the message goes on: ", end="")
    print("yes" if outcome.keep else "no")
    return 0


def _schema(arguments: argparse.Namespace) -> int:
    schema = site_schema() if arguments.which == "site" else codec.json_schema()
    print(json.dumps(schema, indent=2))
    return 0
