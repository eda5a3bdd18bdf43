"""LOCAL delivery into Maildir: write in `tmp/`, fsync, move to `new/`, fsync the folder.

A mailbox is `MAIL_DIRECTORY/DOMAIN/ACCOUNT/` with `tmp`, `new` and `cur`, readable by
Dovecot or any Maildir tool; its folders are Maildir++ subfolders (`ACCOUNT/.Junk/`).
The message gets `Return-Path` on top, as RFC 5321 says final delivery must add.

A file's name carries its sizes as Dovecot writes them (`,S=` octets in the file, `,W=`
octets with CRLF line ends), so that a reader lists a mailbox without opening every
message: Dovecot and mailplan's POP3 both take them from the name.
"""

from __future__ import annotations

import itertools
import os
import re
import socket
import time
from pathlib import Path

from mailplan.runtime.store import durable

_counter = itertools.count()
_HOST = socket.gethostname().replace("/", "\\057").replace(":", "\\072")


def mailbox(mail_directory: Path, account: str, folder: str = "INBOX") -> Path:
    """The Maildir of `name@domain`, or of one of its folders (Maildir++: `.Folder`)."""
    name, _, domain = account.partition("@")
    inbox = mail_directory / domain / name
    return inbox if folder.upper() == "INBOX" else inbox / f".{folder.replace('/', '.')}"


_made: set[Path] = set()  # Maildirs known to exist, so as not to make them for every message


def _make(folder: Path) -> None:
    for sub in ("tmp", "new", "cur"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    _made.add(folder)


def deliver(
    folder: Path, sender: str, message: bytes, flags: str = "", batch: durable.Batch | None = None
) -> Path:
    """Deliver one message into the Maildir `folder`; returns its file: in `new/`, or in
    `cur/` with its info (`:2,FLAGS`) when it has flags. With `batch`, the file is in
    `tmp/` until the batch is committed."""
    if folder not in _made:
        _make(folder)
    try:
        return _write(folder, sender, message, flags, batch)
    except FileNotFoundError:  # removed since we made it: make it again
        _make(folder)
        return _write(folder, sender, message, flags, batch)


def _write(
    folder: Path, sender: str, message: bytes, flags: str, batch: durable.Batch | None
) -> Path:
    now = time.time()
    content = f"Return-Path: <{sender}>\r\n".encode("utf-8", "surrogateescape")
    sizes = f",S={len(content) + len(message)},W={len(content) + network_size(message)}"
    unique = f"{int(now)}.M{int(now % 1 * 1e6):06d}P{os.getpid()}Q{next(_counter)}.{_HOST}"
    temporary = folder / "tmp" / unique
    unique += sizes
    final = folder / "cur" / f"{unique}:2,{flags}" if flags else folder / "new" / unique
    if batch is None:
        durable.publish(temporary, final, content, message)
    else:
        batch.publish(temporary, final, content, message)
    return final


def network_size(content: bytes) -> int:
    """`len(network_form(content))` of `mailbox.maildrop`, without making it: each bare LF
    gains a CR, and a last line without its end gains CRLF."""
    size = len(content) + content.count(b"\n") - content.count(b"\r\n")
    return size + 2 if content and not content.endswith(b"\n") else size


_NETWORK_SIZE = re.compile(r",W=([0-9]{1,12})(?=[,:]|$)")


def named_size(file_name: str) -> int | None:
    """The size with CRLF line ends that a Maildir file's name gives (`,W=`), if it does."""
    found = _NETWORK_SIZE.search(file_name.split(":", 1)[0])
    return int(found[1]) if found else None
