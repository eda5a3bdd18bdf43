"""The commands for mailboxes: `passwd` makes an account's password hash and `dovecot`
writes the files Dovecot needs to serve IMAP from the same Maildirs."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from mailplan.commands.origin import add_origin, load_plan

if TYPE_CHECKING:
    from mailplan.commands.origin import Subcommands


def add_parser(subcommands: Subcommands) -> None:
    passwd = subcommands.add_parser("passwd", help="make an argon2id password hash for site.yaml")
    passwd.add_argument(
        "--stdin", action="store_true", help="read the password from standard input"
    )
    passwd.set_defaults(run=_passwd)

    dovecot = subcommands.add_parser(
        "dovecot", help="write the passwd-file and configuration Dovecot needs to serve IMAP"
    )
    add_origin(dovecot, positional=True)
    dovecot.add_argument("-o", "--output", type=Path, required=True, metavar="DIR")
    dovecot.add_argument("--root", type=Path, default=Path("."), help="base of relative paths")
    dovecot.add_argument(
        "--user", help="who owns the Maildirs (default: the owner of the mail directory)"
    )
    dovecot.add_argument(
        "--dev", action="store_true", help="for `serve --dev`: its ports and certificate"
    )
    dovecot.set_defaults(run=_dovecot)


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


def _dovecot(arguments: argparse.Namespace) -> int:
    from dataclasses import replace

    from mailplan.runtime.mailbox import dovecot
    from mailplan.runtime.serve import devtls
    from mailplan.runtime.serve.startup import development

    plan = load_plan(arguments)
    if plan is None:
        return 1
    root = arguments.root.resolve()
    if arguments.dev:  # what `serve --dev` serves: its listeners, its certificate
        plan = replace(plan, listeners=tuple(development(x) for x in plan.listeners))

    def absolute(value: str) -> Path:
        return Path(value) if Path(value).is_absolute() else root / value

    mail_directory = absolute(plan.queue.mail_directory)
    owner = _owner(arguments.user, mail_directory)
    if owner is None:
        return 1
    output = arguments.output.resolve()
    certificate, key = plan.tls.certificate, plan.tls.key
    tls = (absolute(certificate) if certificate else None, absolute(key) if key else None)
    if arguments.dev:
        tls = devtls.ensure(root / "var" / "tls", plan.server.hostname)
    place = dovecot.Place(
        output, mail_directory, *tls, *owner, root / "var" / "dovecot" if arguments.dev else None,
        _name(owner[0]),
    )  # fmt: skip
    try:
        files = dovecot.files(plan, place)
    except ValueError as exc:
        print(f"mailplan: {exc}", file=sys.stderr)
        return 1
    output.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        _write(output, name, text, passwd=name == dovecot.PASSWD)
    return 0


def _name(uid: int) -> str | None:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def _owner(user: str | None, mail_directory: Path) -> tuple[int, int] | None:
    """Who owns the Maildirs, as (uid, gid); None (and why, on stderr) if no one may."""
    import pwd

    try:
        if user is not None:
            entry = pwd.getpwnam(user)
            uid, gid = entry.pw_uid, entry.pw_gid
        elif mail_directory.exists():
            uid, gid = mail_directory.stat().st_uid, mail_directory.stat().st_gid
        else:
            uid, gid = os.getuid(), os.getgid()
    except KeyError:
        print(f"mailplan: no such user: {user}", file=sys.stderr)
        return None
    if uid == 0:
        print(
            "mailplan: Dovecot does not read mail as root: run `mailplan serve` as a user of "
            "its own and name it with --user",
            file=sys.stderr,
        )
        return None
    return uid, gid


def _write(output: Path, name: str, text: str, *, passwd: bool) -> None:
    """Write `output/name` by a rename; the passwd-file readable by Dovecot's auth only."""
    import grp

    target = output / name
    temporary = target.with_name(f".{name}.tmp")
    temporary.unlink(missing_ok=True)
    # Never readable by everyone, not even for a moment: the passwd-file has hashes.
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(text)
    if passwd:  # readable by Dovecot's auth process only
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
