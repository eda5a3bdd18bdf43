"""`mailplan serve`: start-up in the order of docs/running.md ("Starting"), then one
server in this process, or a supervisor and its workers (`--workers N`)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import uvloop

from mailplan.commands import internal
from mailplan.commands.origin import SiteError, add_origin, loader
from mailplan.plan import codec
from mailplan.plan.model import Plan
from mailplan.runtime.serve import logs

log = logging.getLogger("mailplan.server")

# The installed mailplan package (this is mailplan/commands/), which the serving user
# must be able to read: it runs from there.
PACKAGE = Path(__file__).parent.parent

if TYPE_CHECKING:
    from mailplan.commands.origin import Subcommands
    from mailplan.runtime.serve.privileges import Identity
    from mailplan.runtime.serve.server import Options
    from mailplan.runtime.serve.startup import Sockets


def add_parser(subcommands: Subcommands) -> None:
    serve = subcommands.add_parser("serve", help="run the mail server on a site or a plan")
    add_origin(serve, positional=True)
    serve.add_argument("--dev", action="store_true", help="loopback, high ports, self-signed TLS")
    serve.add_argument("--root", type=Path, default=Path("."), help="base of relative paths")
    serve.add_argument(
        "--resolver", metavar="IP[:PORT]", help="DNS server for MX look-ups (default: the system's)"
    )
    serve.add_argument(
        "--smtp-port", type=_port, default=25, metavar="PORT", help="port of other SMTP servers"
    )
    serve.add_argument(
        "--mta-sts-port",
        type=_port,
        default=443,
        metavar="PORT",
        help="port of other domains' MTA-STS policy servers (default 443; for tests, staging)",
    )
    serve.add_argument(
        "--workers",
        default="1",
        metavar="N|auto",
        help="worker processes (auto: one per CPU; default 1)",
    )
    serve.add_argument(
        "--one-process",
        action="store_true",
        help="process and deliver mail in the process that accepts it (default: one of its own)",
    )
    serve.add_argument(
        "--dns-timeout",
        type=_seconds,
        default=10.0,
        metavar="SECONDS",
        help="how long a receiving check waits for DNS (default 10)",
    )
    serve.add_argument(
        "--user", metavar="NAME", help="serve as this user once the ports are bound (as root)"
    )
    serve.add_argument("--group", metavar="NAME", help="and this group (default: the user's)")
    serve.add_argument("--allow-root", action="store_true", help="serve as root (without --user)")
    serve.add_argument(
        "--bind",
        action="append",
        type=_address,
        metavar="IP",
        help="listen on IP instead of each listener's bind (a farm node; repeatable)",
    )
    serve.add_argument(
        "--admin-bind",
        type=_address,
        metavar="IP",
        help="the admin listener on IP instead of admin.bind (farm nodes on one host)",
    )
    serve.add_argument("--log-format", choices=("text", "json"), default="text")
    serve.add_argument("--log-level", choices=logs.LEVELS, default="info")
    serve.add_argument(  # also `mailplan --debug serve`: one flag, kept here for old units
        "--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
    serve.set_defaults(run=_serve)


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= 65535):
        raise argparse.ArgumentTypeError(f"a port is a number from 1 to 65535: {text!r}")
    return int(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 3600:  # NaN too
        raise argparse.ArgumentTypeError(f"seconds above 0, at most 3600: {text!r}")
    return value


def _serve(arguments: argparse.Namespace) -> int:
    """Run the server; whatever stops it from starting is one line on standard error."""
    from mailplan.runtime.serve.startup import StartupError

    if _workers(arguments.workers) is None:
        print(
            f"mailplan: --workers is a number from 1, or auto: {arguments.workers!r}"
            f" (at most {4 * len(os.sched_getaffinity(0))}, four per CPU this process may use)",
            file=sys.stderr,
        )
        return 2
    writer = logs.Writer(arguments.log_format, arguments.log_level)
    # Each failure first lets the writer write the lines logged before it, so that the
    # reason not to serve comes last, after the warnings that led to it.
    try:
        return _start(arguments, writer)
    except StartupError as exc:
        writer.stop()
        _fail(arguments, f"mailplan: {exc}")
    except (SiteError, codec.PlanError) as exc:
        writer.stop()
        text = str(exc)  # a plan's problem is one line; a site's are its diagnostics
        _fail(arguments, f"mailplan: cannot serve:{chr(10) if chr(10) in text else ' '}{text}")
    except Exception as exc:  # as every command (cli.main), in the log's shape
        writer.stop()
        if arguments.debug:
            print(internal.where(exc), file=sys.stderr)
        _fail(arguments, internal.line(exc))
        return internal.EXIT
    finally:
        writer.stop()
    return 1


def _fail(arguments: argparse.Namespace, text: str) -> None:
    """Why the server did not start, on standard error: as a log line in JSON when the
    log is JSON (a collector reads one shape), else as text."""
    if arguments.log_format == "json":
        record = logging.LogRecord("mailplan.server", logging.CRITICAL, "", 0, text, None, None)
        print(logs.formatter("json", logs.to_journal()).format(record), file=sys.stderr)
    else:
        print(logs.line(text), file=sys.stderr)


def _address(text: str) -> str:
    import ipaddress

    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an IP address: {text!r}") from None


def _start(arguments: argparse.Namespace, writer: logs.Writer) -> int:
    """The order of `runtime.serve.startup`: queue lock, TLS and DKIM keys, sockets,
    resolver, user, pid."""
    from mailplan.runtime.base import metrics
    from mailplan.runtime.delivery.scheduler import Remote
    from mailplan.runtime.serve import admin, privileges, startup, tls
    from mailplan.runtime.serve.server import Options
    from mailplan.runtime.serve.startup import StartupError

    workers = _workers(arguments.workers) or 1
    load = loader(arguments.site, arguments.plan)
    plan = load()
    root, dev = arguments.root, arguments.dev
    site_user = (None, None) if dev else (plan.server.user, plan.server.group)  # `make run`
    who = privileges.identity(
        arguments.user or site_user[0],
        arguments.group or site_user[1],
        allow_root=arguments.allow_root or dev,
    )
    queue = startup.resolve(root, plan.queue.directory)
    mail = startup.resolve(root, plan.queue.mail_directory)
    privileges.prepare_directories([queue], who)
    lock = startup.lock_queue(queue)
    try:
        context = tls.context(plan, root, dev)
        dkim, warnings = startup.dkim_keys(plan, root, arguments.site, dev)
        for warning in (*tls.warnings(plan, root, dev), *warnings):
            log.warning("%s", warning)
        descriptors = startup.raise_descriptor_limit(plan.limits.max_connections)
        if descriptors:
            log.warning("%s", descriptors)
        bind = tuple(arguments.bind or ())
        sockets = startup.bind(startup.served(plan, dev, bind))
        try:
            listening = admin.bind(plan.admin, dev, arguments.admin_bind)
        except StartupError:
            for sock in sockets.values():
                sock.close()
            raise
        quiet = _settle(arguments, who, queue, mail, sockets)
        if listening is not None:  # as the serving user: the metrics' folder is its own
            metrics.share(admin.folder(queue))
        lock.write_pid()
        if quiet:
            log.warning("%s", quiet)
        options = Options(
            root,
            dev,
            Remote(
                arguments.smtp_port,
                arguments.resolver,
                dns_timeout=arguments.dns_timeout,
                https_port=arguments.mta_sts_port,
                root=root,
            ),
            sockets=sockets,
            tls=context,
            dkim=dkim,
            bind=bind,
            admin=listening,
            describe=_describe,
            queue_process=None
            if arguments.one_process
            else (arguments.log_format, arguments.log_level),
        )
        if dev:
            _banner(plan, arguments)
        return _run(arguments, writer, load, plan, options, workers)
    finally:
        lock.release()


def _settle(
    arguments: argparse.Namespace, who: Identity | None, queue: Path, mail: Path, sockets: Sockets
) -> str | None:
    """With the sockets bound: ask the resolver, make the mailbox folder, give up root and
    check what the serving user writes and reads. The sockets are closed if any of it fails;
    what a resolver that does not answer means is returned, for a warning."""
    from mailplan.runtime.serve import privileges, startup

    try:
        quiet = startup.check_resolver(arguments.resolver)
        privileges.prepare_directories([mail], who)
        if who is not None:
            privileges.become(who)
        os.umask(0o077)
        site = arguments.plan if arguments.plan is not None else arguments.site
        privileges.check_writable([queue, mail], [site.resolve(), PACKAGE])
        if who is not None:
            log.info("serving as %s (uid %d, gid %d)", who.user, who.uid, who.gid)
    except BaseException:
        for sock in sockets.values():
            sock.close()
        raise
    return quiet


def _run(
    arguments: argparse.Namespace,
    writer: logs.Writer,
    load: Callable[[], Plan],
    plan: Plan,
    options: Options,
    workers: int,
) -> int:
    """Serve in this process, or fork `workers` of them under a supervisor."""
    if workers > 1:
        from mailplan.runtime.serve.workers import supervise

        def worker(load: Callable[[], Plan], first: Plan, options: Options) -> int:
            mine = logs.Writer(arguments.log_format, arguments.log_level)
            try:
                return _serve_worker(load, first, options)
            finally:
                mine.stop()

        def answer(load: Callable[[], Plan], first: Plan, options: Options) -> int:
            from mailplan.runtime.serve import admin, startup

            assert options.admin is not None
            queue = startup.resolve(options.root, first.queue.directory)
            mine = logs.Writer(arguments.log_format, arguments.log_level)
            try:
                return admin.in_process(options.admin, load, first, queue, workers)
            finally:
                mine.stop()

        writer.stop()  # no thread may run when the supervisor forks
        return supervise(
            load, plan, options, workers, worker, answer if options.admin is not None else None
        )
    return _serve_worker(load, plan, options)


def _describe(old: Plan, new: Plan) -> list[str]:
    """What a reload changes, for its lines in the log (docs/diff.md's text, one a line)."""
    from mailplan.diff.compare import compare
    from mailplan.diff.render import summary

    changes = compare(old, new)
    lines = [
        f"UNSAFE {c.group}: {c.text} ({c.unsafe})" if c.unsafe else f"{c.group}: {c.text}"
        for c in changes
    ]
    return [*lines, summary(changes)]


def _workers(text: str) -> int | None:
    """The number of worker processes `--workers` asks for (None: not a number from 1)."""
    cpus = len(os.sched_getaffinity(0))  # the CPUs this process may use, not the machine's
    if text == "auto":
        return cpus
    if text.isascii() and text.isdigit() and 1 <= int(text) <= 4 * cpus:
        return int(text)
    return None


def _banner(plan: Plan, arguments: argparse.Namespace) -> None:
    """What `make run` prints: where each listener is, how to start Dovecot for IMAP,
    and a command to try it. One write, so that no log line lands inside it (the log's
    thread writes to the same terminal or file)."""
    from mailplan.runtime.serve.startup import POP3_PROTOCOLS, SMTP_PROTOCOLS, development

    lines = ["development mode: listeners on 127.0.0.1"]
    ours = (*SMTP_PROTOCOLS, *POP3_PROTOCOLS)
    for listener in plan.listeners:
        moved = development(listener)
        later = "" if listener.protocol in ours else "  (Dovecot: see below)"
        lines.append(f"  {listener.name:<12} {listener.protocol:<11} port {moved.port}{later}")
    if plan.admin is not None:
        lines.append(
            f"  {'admin':<12} {'http':<11} port {plan.admin.port}  (/healthz /plan /metrics)"
        )
    if not all(x.protocol in ours for x in plan.listeners):
        lines.append(_dovecot_howto(arguments))
    smtp = next((development(x).port for x in plan.listeners if x.protocol == "smtp"), 2525)
    rcpt = f"postmaster@{plan.server.main_domain}"
    lines.append(
        "send a test message:\n"
        f"  python3 -c \"import smtplib; smtplib.SMTP('127.0.0.1', {smtp}).sendmail("
        f"'you@remote.test', ['{rcpt}'], 'Subject: hello\\n\\nhello')\""
    )
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()


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


def _serve_worker(load: Callable[[], Plan], first: Plan, options: Options) -> int:
    """The server in this process: alone, or one worker of `serve --workers N`
    (see runtime.serve.workers)."""
    from mailplan.runtime.serve.server import Daemon

    uvloop.run(Daemon(load, options, first).run())
    return 0
