"""The `mailplan` command: argument parsing and output around the compiler and the runtime."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

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
    if arguments.plan is not None:
        try:
            return codec.load(arguments.plan)
        except codec.PlanError as exc:
            print(f"mailplan: {exc}", file=sys.stderr)
            return None
    unit = compile_site(arguments.site)
    if unit.plan is None:
        print(render_text(unit.diagnostics, unit.texts, f"{arguments.site}/"), file=sys.stderr)
    return unit.plan


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
