"""The `mailplan` command: one parser assembled from the families of commands in
mailplan/commands/, each module adding its own."""

from __future__ import annotations

import argparse
import signal
import sys

from mailplan.commands import diff, dns, internal, mailbox, queue, serve, site, status, tls

# The families of commands, in the order `mailplan --help` lists them: check mode first.
FAMILIES = (
    site.add_parser,
    diff.add_parser,
    serve.add_parser,
    queue.add_parser,
    status.add_parser,
    dns.add_parser,
    tls.add_parser,
    mailbox.add_parser,
)


def main(argv: list[str] | None = None) -> int:
    """Run one command; an exception it did not expect is one line and exit 70."""
    arguments = _parser().parse_args(argv)
    if arguments.command == "serve":
        # A client that hangs up while the server writes to it is an EPIPE for that one
        # connection, never a signal that ends the process.
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        from mailplan.runtime.serve.startup import hold_signals

        hold_signals()
    elif argv is None:  # the program, not a caller in a process of its own (a test)
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `mailplan check ... | head` ends quietly
    try:
        code: int = arguments.run(arguments)
    except Exception as exc:  # the last line of defence: see commands/internal.py
        if arguments.debug:
            print(internal.where(exc), file=sys.stderr)
        print(internal.line(exc), file=sys.stderr)
        return internal.EXIT
    return code


def _parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="mailplan", description="A mail server configured as code.")
    top.add_argument(
        "--debug", action="store_true", help="the traceback of an internal error (exit 70)"
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_parser in FAMILIES:
        add_parser(commands)
    return top


if __name__ == "__main__":
    sys.exit(main())
