"""The `mailplan` command: argument parsing and output around the compiler and the runtime."""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import logging.handlers
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from queue import SimpleQueue
from typing import Any

import uvloop

from compiler.diagnostics import has_errors, render_json, render_text
from compiler.load import SITE_FILE
from compiler.pipeline import compile_site
from compiler.schema import site_schema
from plan import codec
from plan.model import Plan
from runtime.router import Router, Routing


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `mailplan check ... | head` ends quietly
    arguments = _parser().parse_args(argv)
    code: int = arguments.run(arguments)
    return code


def _parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="mailplan", description="A mail server configured as code.")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = commands.add_parser("check", help="validate a site and print every problem in it")
    check.add_argument("site", type=Path, metavar="SITE_DIR")
    check.add_argument("--format", choices=("text", "json"), default="text")
    check.set_defaults(run=_check)

    build = commands.add_parser("build", help="compile a site into a plan file")
    build.add_argument("site", type=Path, metavar="SITE_DIR")
    build.add_argument(
        "-o", "--output", default="plan.json", metavar="PLAN", help="'-' for standard output"
    )
    build.set_defaults(run=_build)

    route = commands.add_parser("route", help="show how an address is routed, step by step")
    route.add_argument("address")
    source = route.add_mutually_exclusive_group(required=True)
    source.add_argument("--site", type=Path, metavar="SITE_DIR")
    source.add_argument("--plan", type=Path, metavar="PLAN")
    route.add_argument("--kind", choices=("mail", "access", "signal"), default="mail")
    route.add_argument("--format", choices=("text", "json"), default="text")
    route.set_defaults(run=_route)

    passwd = commands.add_parser("passwd", help="make an argon2id password hash for site.yaml")
    passwd.add_argument(
        "--stdin", action="store_true", help="read the password from standard input"
    )
    passwd.set_defaults(run=_passwd)

    test = commands.add_parser("test", help="prove the site's own tests (tests: in site.yaml)")
    origin = test.add_mutually_exclusive_group(required=True)
    origin.add_argument("site", type=Path, nargs="?", metavar="SITE_DIR")
    origin.add_argument("--plan", type=Path, metavar="PLAN")
    test.set_defaults(run=_test)

    rules = commands.add_parser("rules", help="show what the rules do with a message file")
    rules.add_argument("message", type=Path, metavar="MESSAGE")
    rules.add_argument("--to", required=True, help="the envelope recipient")
    rules.add_argument("--from", dest="sender", help="the envelope sender (default Return-Path)")
    rules.add_argument("--client", default="", help="the submitting client's IP")
    rules.add_argument("--authenticated", action="store_true")
    rules.add_argument("--tls", action="store_true")
    rules.add_argument("--at", help="the local time the rules see (YYYY-MM-DD HH:MM; default now)")
    origin = rules.add_mutually_exclusive_group(required=True)
    origin.add_argument("--site", type=Path, metavar="SITE_DIR")
    origin.add_argument("--plan", type=Path, metavar="PLAN")
    rules.set_defaults(run=_rules)

    serve = commands.add_parser("serve", help="run the mail server on a site or a plan")
    origin = serve.add_mutually_exclusive_group(required=True)
    origin.add_argument("site", type=Path, nargs="?", metavar="SITE_DIR")
    origin.add_argument("--plan", type=Path, metavar="PLAN")
    serve.add_argument("--dev", action="store_true", help="loopback, high ports, self-signed TLS")
    serve.add_argument("--root", type=Path, default=Path("."), help="base of relative paths")
    serve.set_defaults(run=_serve)

    queue = commands.add_parser("queue", help="list the queued messages by logical queue")
    origin = queue.add_mutually_exclusive_group(required=True)
    origin.add_argument("--site", type=Path, metavar="SITE_DIR")
    origin.add_argument("--plan", type=Path, metavar="PLAN")
    queue.add_argument("--root", type=Path, default=Path("."), help="base of relative paths")
    queue.set_defaults(run=_queue)

    schema = commands.add_parser("schema", help="print the JSON Schema of site.yaml or of a plan")
    schema.add_argument("which", choices=("site", "plan"))
    schema.set_defaults(run=_schema)
    return top


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


def _load_plan(arguments: argparse.Namespace) -> Plan | None:
    """The plan of `--plan`, or of the site compiled; None (and why, on stderr) if neither."""
    try:
        return _loader(arguments.site, arguments.plan)()
    except (SiteError, codec.PlanError) as exc:
        print(f"mailplan: {exc}", file=sys.stderr)
        return None


def _route(arguments: argparse.Namespace) -> int:
    plan = _load_plan(arguments)
    if plan is None:
        return 1
    routing = Router(plan).route(arguments.address, arguments.kind)
    if arguments.format == "json":
        print(json.dumps(codec.encode(routing), indent=2))
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


class SiteError(Exception):
    """A site that does not compile: the diagnostics, rendered."""


def _loader(site: Path | None, plan: Path | None) -> Callable[[], Plan]:
    """How the server gets its plan, at start and at every reload."""

    def load() -> Plan:
        if plan is not None:
            return codec.load(plan)
        assert site is not None
        unit = compile_site(site)
        if unit.plan is None:
            raise SiteError(render_text(unit.diagnostics, unit.texts, f"{site}/"))
        return unit.plan

    return load


def _serve(arguments: argparse.Namespace) -> int:
    from runtime.server import SMTP_PROTOCOLS, Options, Server, development

    # Log lines are written by a thread of their own, never by the event loop.
    output = logging.StreamHandler(sys.stderr)
    output.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    lines: SimpleQueue[logging.LogRecord] = SimpleQueue()
    writer = logging.handlers.QueueListener(lines, output)
    enqueue = logging.handlers.QueueHandler(lines)
    enqueue.setFormatter(logging.Formatter("%(message)s"))  # the writer adds time and level
    logging.basicConfig(level=logging.INFO, handlers=[enqueue])
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd's own chatter
    writer.start()
    try:
        server = Server(
            _loader(arguments.site, arguments.plan), Options(arguments.root, arguments.dev)
        )
    except (SiteError, codec.PlanError) as exc:
        print(f"mailplan: cannot serve:\n{exc}", file=sys.stderr)
        return 1
    if arguments.dev:
        plan = server.current.policy.plan
        print("development mode: listeners on 127.0.0.1")
        for listener in plan.listeners:
            moved = development(listener)
            later = "" if listener.protocol in SMTP_PROTOCOLS else "  (not served yet)"
            print(f"  {listener.name:<12} {listener.protocol:<11} port {moved.port}{later}")
        smtp = next((development(x).port for x in plan.listeners if x.protocol == "smtp"), 2525)
        rcpt = f"postmaster@{plan.server.main_domain}"
        print(
            "send a test message:\n"
            f"  python3 -c \"import smtplib; smtplib.SMTP('127.0.0.1', {smtp}).sendmail("
            f"'you@remote.test', ['{rcpt}'], 'Subject: hello\\n\\nhello')\"",
            flush=True,
        )
    try:
        uvloop.run(server.run())
    finally:
        writer.stop()
    return 0


def _test(arguments: argparse.Namespace) -> int:
    from runtime.casework import judge
    from runtime.policy import Policy
    from runtime.rules import RuleBook

    plan = _load_plan(arguments)
    if plan is None:
        return 1
    policy = Policy(plan)
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

    from runtime.casework import decide
    from runtime.policy import Policy
    from runtime.rules import Facts, Headers, RuleBook

    plan = _load_plan(arguments)
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


def _queue(arguments: argparse.Namespace) -> int:
    from runtime.processor import pending
    from runtime.spool import Spool

    plan = _load_plan(arguments)
    if plan is None:
        return 1
    directory = Path(plan.queue.directory)
    spool = Spool(directory if directory.is_absolute() else arguments.root / directory)
    waiting = pending(spool, Router(plan))
    now = time.time()
    queues: dict[str, list[float]] = {}
    for entry in waiting:
        queues.setdefault(entry.queue, []).append(entry.arrived)
    print(f"{'queue':<40} {'recipients':>10} {'oldest':>10}")
    for name, arrivals in sorted(queues.items()):
        print(f"{name:<40} {len(arrivals):>10} {_age(now - min(arrivals)):>10}")
    messages = len({entry.queue_id for entry in waiting})
    print(f"{messages} message(s), {len(waiting)} recipient(s) waiting")
    return 0


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def _passwd(arguments: argparse.Namespace) -> int:
    from argon2 import PasswordHasher

    if arguments.stdin or not sys.stdin.isatty():
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            print("mailplan: the passwords differ", file=sys.stderr)
            return 1
    if not password:
        print("mailplan: an empty password is not allowed", file=sys.stderr)
        return 1
    print(PasswordHasher().hash(password))
    return 0


def _schema(arguments: argparse.Namespace) -> int:
    schema = site_schema() if arguments.which == "site" else codec.json_schema()
    print(json.dumps(schema, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
