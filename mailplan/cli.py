"""The `mailplan` command: argument parsing and output around the compiler and the runtime."""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvloop

from mailplan.compiler.diagnostics import has_errors, render_json, render_text
from mailplan.compiler.load import SITE_FILE
from mailplan.compiler.pipeline import compile_site
from mailplan.compiler.schema import site_schema
from mailplan.plan import codec
from mailplan.plan.model import Plan
from mailplan.runtime.decide.router import Router, Routing
from mailplan.runtime.serve import logs
from mailplan.zones.render import FORMATS

log = logging.getLogger("mailplan.server")

if TYPE_CHECKING:
    from mailplan.runtime.serve.server import Options
    from mailplan.runtime.store.spool import Spool


def main(argv: list[str] | None = None) -> int:
    arguments = _parser().parse_args(argv)
    if arguments.run is _serve:
        # A client that hangs up while the server writes to it is an EPIPE for that one
        # connection, never a signal that ends the process.
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        from mailplan.runtime.serve.startup import hold_signals

        hold_signals()
    else:
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `mailplan check ... | head` ends quietly
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
    serve.add_argument(
        "--resolver", metavar="IP[:PORT]", help="DNS server for MX look-ups (default: the system's)"
    )
    serve.add_argument(
        "--smtp-port", type=int, default=25, metavar="PORT", help="port of other SMTP servers"
    )
    serve.add_argument(
        "--workers",
        default="1",
        metavar="N|auto",
        help="worker processes (auto: one per CPU; default 1)",
    )
    serve.add_argument(
        "--dns-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long a receiving check waits for DNS (default 10)",
    )
    serve.add_argument(
        "--user", metavar="NAME", help="serve as this user once the ports are bound (as root)"
    )
    serve.add_argument("--group", metavar="NAME", help="and this group (default: the user's)")
    serve.add_argument("--allow-root", action="store_true", help="serve as root (without --user)")
    serve.add_argument("--log-format", choices=("text", "json"), default="text")
    serve.add_argument("--log-level", choices=logs.LEVELS, default="info")
    serve.add_argument("--debug", action="store_true", help="a traceback for an internal error")
    serve.set_defaults(run=_serve)

    queue = commands.add_parser(
        "queue", help="list the logical queues; flush [DOMAIN] retries now; show ID"
    )
    queue.add_argument("action", nargs="?", choices=("list", "flush", "show"), default="list")
    queue.add_argument("name", nargs="?", metavar="DOMAIN|ID")
    origin = queue.add_mutually_exclusive_group(required=True)
    origin.add_argument("--site", type=Path, metavar="SITE_DIR")
    origin.add_argument("--plan", type=Path, metavar="PLAN")
    queue.add_argument("--root", type=Path, default=Path("."), help="base of relative paths")
    queue.set_defaults(run=_queue)

    dns = commands.add_parser(
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

    dkim = commands.add_parser("dkim", help="DKIM keys: `dkim keygen` makes a key pair")
    keygen = dkim.add_subparsers(dest="action", required=True, metavar="ACTION").add_parser(
        "keygen", help="write SELECTOR.DOMAIN.key (private, 0600) and SELECTOR.DOMAIN.pub"
    )
    keygen.add_argument("--domain", required=True)
    keygen.add_argument("--selector", required=True)
    keygen.add_argument("--algorithm", choices=("rsa", "ed25519"), default="rsa")
    keygen.add_argument("--bits", type=int, default=2048, help="RSA key size (default 2048)")
    keygen.add_argument("-o", "--output", type=Path, default=Path("."), metavar="DIR")
    keygen.set_defaults(run=_dkim_keygen)

    dovecot = commands.add_parser(
        "dovecot", help="write the passwd-file and configuration Dovecot needs to serve IMAP"
    )
    origin = dovecot.add_mutually_exclusive_group(required=True)
    origin.add_argument("site", type=Path, nargs="?", metavar="SITE_DIR")
    origin.add_argument("--plan", type=Path, metavar="PLAN")
    dovecot.add_argument("-o", "--output", type=Path, required=True, metavar="DIR")
    dovecot.add_argument("--root", type=Path, default=Path("."), help="base of relative paths")
    dovecot.add_argument(
        "--user", help="who owns the Maildirs (default: the owner of the mail directory)"
    )
    dovecot.add_argument(
        "--dev", action="store_true", help="for `serve --dev`: its ports and certificate"
    )
    dovecot.set_defaults(run=_dovecot)

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
    """Run the server; whatever stops it from starting is one line on standard error."""
    from mailplan.runtime.serve.startup import StartupError

    if _workers(arguments.workers) is None:
        print(
            f"mailplan: --workers is a number from 1, or auto: {arguments.workers!r}",
            file=sys.stderr,
        )
        return 2
    writer = logs.Writer(arguments.log_format, arguments.log_level)
    try:
        return _start(arguments, writer)
    except StartupError as exc:
        print(logs.line(f"mailplan: {exc}"), file=sys.stderr)
    except (SiteError, codec.PlanError) as exc:
        print(logs.line(f"mailplan: cannot serve:\n{exc}"), file=sys.stderr)
    except Exception as exc:
        if arguments.debug:
            raise
        print(
            logs.line(
                f"mailplan: internal error: {type(exc).__name__}: {exc} (--debug shows where)"
            ),
            file=sys.stderr,
        )
    finally:
        writer.stop()
    return 1


def _start(arguments: argparse.Namespace, writer: logs.Writer) -> int:
    """The order of `runtime.serve.startup`: queue lock, TLS, sockets, resolver, user, pid."""
    from mailplan.runtime.delivery.scheduler import Remote
    from mailplan.runtime.serve import startup
    from mailplan.runtime.serve.server import Options

    workers = _workers(arguments.workers) or 1
    load = _loader(arguments.site, arguments.plan)
    plan = load()
    root, dev = arguments.root, arguments.dev
    site_user = (None, None) if dev else (plan.server.user, plan.server.group)  # `make run`
    who = startup.identity(
        arguments.user or site_user[0],
        arguments.group or site_user[1],
        allow_root=arguments.allow_root or dev,
    )
    queue = startup.resolve(root, plan.queue.directory)
    mail = startup.resolve(root, plan.queue.mail_directory)
    startup.prepare_directories([queue], who)
    lock = startup.lock_queue(queue)
    try:
        tls = startup.tls_context(plan, root, dev)
        sockets = startup.bind(startup.served(plan, dev))
        try:
            quiet = startup.check_resolver(arguments.resolver)
            startup.prepare_directories([mail], who)
            if who is not None:
                startup.become(who)
            os.umask(0o077)
            site = arguments.plan if arguments.plan is not None else arguments.site
            startup.check_writable([queue, mail], [site.resolve(), Path(__file__).parent])
            if who is not None:
                log.info("serving as %s (uid %d, gid %d)", who.user, who.uid, who.gid)
        except BaseException:
            for sock in sockets.values():
                sock.close()
            raise
        lock.write_pid()
        if quiet:
            log.warning("%s", quiet)
        options = Options(
            root,
            dev,
            Remote(arguments.smtp_port, arguments.resolver, dns_timeout=arguments.dns_timeout),
            sockets=sockets,
            tls=tls,
        )
        if dev:
            _banner(plan, arguments)
        if workers > 1:
            from mailplan.runtime.serve.workers import supervise

            def worker(load: Callable[[], Plan], first: Plan, options: Options) -> int:
                mine = logs.Writer(arguments.log_format, arguments.log_level)
                try:
                    return _serve_worker(load, first, options)
                finally:
                    mine.stop()

            writer.stop()  # no thread may run when the supervisor forks
            return supervise(load, plan, options, workers, worker)
        return _serve_worker(load, plan, options)
    finally:
        lock.release()


def _workers(text: str) -> int | None:
    """The number of worker processes `--workers` asks for (None: not a number from 1)."""
    if text == "auto":
        return os.cpu_count() or 1
    if text.isascii() and text.isdigit() and 1 <= int(text) <= 1024:
        return int(text)
    return None


def _banner(plan: Plan, arguments: argparse.Namespace) -> None:
    """What `make run` prints: where each listener is, how to start Dovecot for IMAP,
    and a command to try it."""
    from mailplan.runtime.serve.startup import POP3_PROTOCOLS, SMTP_PROTOCOLS, development

    print("development mode: listeners on 127.0.0.1")
    ours = (*SMTP_PROTOCOLS, *POP3_PROTOCOLS)
    for listener in plan.listeners:
        moved = development(listener)
        later = "" if listener.protocol in ours else "  (Dovecot: see below)"
        print(f"  {listener.name:<12} {listener.protocol:<11} port {moved.port}{later}")
    if not all(x.protocol in ours for x in plan.listeners):
        print(_dovecot_howto(arguments))
    smtp = next((development(x).port for x in plan.listeners if x.protocol == "smtp"), 2525)
    rcpt = f"postmaster@{plan.server.main_domain}"
    print(
        "send a test message:\n"
        f"  python3 -c \"import smtplib; smtplib.SMTP('127.0.0.1', {smtp}).sendmail("
        f"'you@remote.test', ['{rcpt}'], 'Subject: hello\\n\\nhello')\"",
        flush=True,
    )


def _serve_worker(load: Callable[[], Plan], first: Plan, options: Options) -> int:
    """The server in this process: alone, or one worker of `serve --workers N`
    (see runtime.serve.workers)."""
    from mailplan.runtime.serve.server import Daemon

    uvloop.run(Daemon(load, options, first).run())
    return 0


def _test(arguments: argparse.Namespace) -> int:
    from mailplan.runtime.decide.policy import Policy
    from mailplan.runtime.rules.engine import RuleBook
    from mailplan.runtime.smtp.casework import judge

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

    from mailplan.runtime.decide.policy import Policy
    from mailplan.runtime.rules.engine import Facts, Headers, RuleBook
    from mailplan.runtime.smtp.casework import decide

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
    from mailplan.runtime.store.spool import Spool

    plan = _load_plan(arguments)
    if plan is None:
        return 1
    directory = Path(plan.queue.directory)
    spool = Spool(directory if directory.is_absolute() else arguments.root / directory)
    if arguments.action == "show":
        return _queue_show(spool, plan, arguments.name)
    if arguments.action == "flush":
        return _queue_flush(spool, plan, arguments.name)
    return _queue_list(spool, plan)


def _queue_list(spool: Spool, plan: Plan) -> int:
    from mailplan.runtime.queue.processor import pending

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


def _queue_flush(spool: Spool, plan: Plan, domain: str | None) -> int:
    from mailplan.runtime.decide import retry
    from mailplan.runtime.queue.processor import pending
    from mailplan.runtime.serve.startup import holder_pid, queue_in_use

    chosen = sorted(
        {
            entry.queue_id
            for entry in pending(spool, Router(plan))
            if domain is None or entry.routing.queue.lower() == domain.lower()
        }
    )
    now = time.time()
    for queue_id in chosen:
        spool.journal(queue_id, retry.event_line("F", now))
    print(f"{len(chosen)} message(s) to be tried again now")
    pid = holder_pid(spool.directory) if queue_in_use(spool.directory) else None
    if pid is None:
        print("no server is running on this queue: they are tried at its next start")
    else:
        os.kill(pid, signal.SIGUSR1)
    return 0


def _queue_show(spool: Spool, plan: Plan, queue_id: str | None) -> int:
    from mailplan.runtime.decide import retry
    from mailplan.runtime.store.spool import BadQueueFile

    if not queue_id:
        print("mailplan: queue show needs a queue id", file=sys.stderr)
        return 2
    try:
        envelope, message = spool.load(queue_id)
    except (OSError, BadQueueFile, ValueError) as exc:
        print(f"mailplan: no queued message {queue_id}: {exc}", file=sys.stderr)
        return 1
    history = spool.history(queue_id)
    finished = spool.finished(queue_id)
    router = Router(plan)
    arrived = time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(envelope.arrived))
    print(f"id         {envelope.id}")
    print(f"arrived    {arrived} ({_age(time.time() - envelope.arrived)} ago)")
    print(f"from       <{envelope.sender}>")
    print(f"client     {envelope.client} helo {envelope.helo} tls {envelope.tls}")
    print(f"auth       {envelope.auth or '-'}")
    print(f"listener   {envelope.listener}, plan {envelope.plan[:19]}")
    print(f"size       {len(message)} bytes")
    for recipient in envelope.recipients:
        if recipient in finished:
            print(f"to         <{recipient}>  done")
            continue
        routing = router.route(recipient)
        state = f"waits in {routing.module}({routing.queue})"
        tries = history.attempts.get(recipient, 0)
        if tries:
            status, reason = history.reasons[recipient]
            due = retry.due(history, recipient, envelope.arrived, plan.queue.retry)
            state += f", {tries} failed attempt(s), last: {status} {reason}"
            state += f", next try in {_age(max(0.0, due - time.time()))}"
        print(f"to         <{recipient}>  {state}")
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


def _dns(arguments: argparse.Namespace) -> int:
    from mailplan.zones.records import zones
    from mailplan.zones.render import files, policies, render_all

    checking = arguments.words[0] == "check" and len(arguments.words) == 2
    if arguments.words == ["check"] or (len(arguments.words) != 1 and not checking):
        print("mailplan: usage: mailplan dns [check] SITE_DIR [options]", file=sys.stderr)
        return 2
    plan = _load_plan(argparse.Namespace(site=Path(arguments.words[-1]), plan=None))
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
        f"    dkim: [{{selector: {selector}, public_key: PATH/{selector}.{domain}.pub}}]"
    )
    return 0


def _dovecot_howto(arguments: argparse.Namespace) -> str:
    """How to have Dovecot serve IMAP beside `serve --dev`: it is not started for you."""
    script = sys.argv[0] if Path(sys.argv[0]).name == "mailplan" else "python3 -m mailplan"
    origin = f"--plan {arguments.plan}" if arguments.plan else str(arguments.site)
    root = "" if arguments.root == Path(".") else f" --root {arguments.root}"
    output = arguments.root / "var" / "dovecot"
    root_user = os.geteuid() == 0
    text = (
        "IMAP is served by Dovecot, which mailplan does not start; in another terminal:\n"
        f"  {script} dovecot {origin} --dev{root} -o {output}\n"
        f"  {'' if root_user else 'sudo '}dovecot -F -c {output / 'dovecot.conf'}"
    )
    if root_user:
        text += "\n  (Dovecot never reads mail as root: for IMAP, run this server as another user)"
    return text


def _dovecot(arguments: argparse.Namespace) -> int:
    import grp
    import pwd
    from dataclasses import replace

    from mailplan.runtime.mailbox import dovecot
    from mailplan.runtime.serve import devtls
    from mailplan.runtime.serve.startup import development

    plan = _load_plan(arguments)
    if plan is None:
        return 1
    root = arguments.root.resolve()
    if arguments.dev:  # what `serve --dev` serves: its listeners, its certificate
        plan = replace(plan, listeners=tuple(development(x) for x in plan.listeners))

    def absolute(value: str) -> Path:
        return Path(value) if Path(value).is_absolute() else root / value

    mail_directory = absolute(plan.queue.mail_directory)
    try:
        if arguments.user is not None:
            entry = pwd.getpwnam(arguments.user)
            uid, gid = entry.pw_uid, entry.pw_gid
        elif mail_directory.exists():
            uid, gid = mail_directory.stat().st_uid, mail_directory.stat().st_gid
        else:
            uid, gid = os.getuid(), os.getgid()
    except KeyError:
        print(f"mailplan: no such user: {arguments.user}", file=sys.stderr)
        return 1
    if uid == 0:
        print(
            "mailplan: Dovecot does not read mail as root: run `mailplan serve` as a user of "
            "its own and name it with --user",
            file=sys.stderr,
        )
        return 1
    output = arguments.output.resolve()
    certificate, key = plan.tls.certificate, plan.tls.key
    tls = (absolute(certificate) if certificate else None, absolute(key) if key else None)
    if arguments.dev:
        tls = devtls.ensure(root / "var" / "tls", plan.server.hostname)
    place = dovecot.Place(
        output, mail_directory, *tls, uid, gid, root / "var" / "dovecot" if arguments.dev else None
    )
    try:
        files = dovecot.files(plan, place)
    except ValueError as exc:
        print(f"mailplan: {exc}", file=sys.stderr)
        return 1
    output.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        target = output / name
        temporary = target.with_name(f".{name}.tmp")
        temporary.unlink(missing_ok=True)
        # Never readable by everyone, not even for a moment: the passwd-file has hashes.
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(text)
        if name == dovecot.PASSWD:  # readable by Dovecot's auth process only
            try:
                os.chown(temporary, -1, grp.getgrnam("dovecot").gr_gid)
                temporary.chmod(0o640)
            except (KeyError, PermissionError):
                print(
                    f"mailplan: {target} is readable by its owner only: give it to group "
                    f"dovecot (chgrp dovecot {target}; chmod 0640 {target})",
                    file=sys.stderr,
                )
        else:
            temporary.chmod(0o644)
        os.replace(temporary, target)
        print(f"wrote {target}")
    return 0


def _schema(arguments: argparse.Namespace) -> int:
    schema = site_schema() if arguments.which == "site" else codec.json_schema()
    print(json.dumps(schema, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
