"""Load: read a site folder (site.yaml and every file it names) into a compilation unit.

This is the compiler's only reader of files. Paths in the plan are relative to the
site folder, so the same site compiles to the same plan wherever it is checked out.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from mailplan.compiler import yamlpos
from mailplan.compiler.diagnostics import Diagnostic, error
from mailplan.compiler.unit import Unit
from mailplan.compiler.yamlpos import Document
from mailplan.compiler.yamlpos import Path as DataPath
from mailplan.plan.model import SourceFile

SITE_FILE = "site.yaml"


def load(site_dir: Path) -> Unit:
    site_file = site_dir / SITE_FILE
    try:
        text = site_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problem = error(SITE_FILE, 1, 1, "MP100", f"cannot read {site_file}: {_why(exc)}")
        return Unit(None, {}, (), diagnostics=(problem,))
    document, problems = yamlpos.load(text, SITE_FILE)
    texts = {SITE_FILE: text}
    if document is not None:
        problems += _read_references(site_dir, document, texts)
    files = tuple(
        SourceFile(name, hashlib.sha256(content.encode()).hexdigest())
        for name, content in sorted(texts.items())
    )
    return Unit(document, texts, files, diagnostics=tuple(problems))


def references(data: Any) -> Iterator[DataPath]:
    """The paths in site.yaml whose values name other files of the site."""
    if not isinstance(data, dict):
        return
    for key in ("routing", "server_rules"):
        if isinstance(data.get(key), str):
            yield (key,)
    yield from _address_list_files(data)
    for name, domain in _items(data.get("domains")):
        if isinstance(domain, dict):
            yield from _domain_files(name, domain)


def _address_list_files(data: dict[str, Any]) -> Iterator[DataPath]:
    """The server's IP lists and the site's address lists that are read from a file."""
    server = data.get("server")
    for key in ("client_ips", "blacklisted_ips"):
        if isinstance(server, dict) and _is_file(server.get(key)):
            yield ("server", key, "file")
    for name, value in _items(data.get("address_lists")):
        if _is_file(value):
            yield ("address_lists", name, "file")


def _domain_files(name: str, domain: dict[str, Any]) -> Iterator[DataPath]:
    """A domain's rule file, its DKIM public keys and its accounts' rule files."""
    if isinstance(domain.get("rules"), str):
        yield ("domains", name, "rules")
    keys = domain.get("dkim")
    for i, key in enumerate(keys) if isinstance(keys, list) else ():
        if isinstance(key, dict) and isinstance(key.get("public_key"), str):
            yield ("domains", name, "dkim", i, "public_key")
    for account, value in _items(domain.get("accounts")):
        if isinstance(value, dict) and isinstance(value.get("rules"), str):
            yield ("domains", name, "accounts", account, "rules")


def _items(value: Any) -> Iterable[tuple[Any, Any]]:
    """The items of a mapping; none for anything else (the schema reports what it is)."""
    return value.items() if isinstance(value, dict) else ()


def _read_references(site_dir: Path, document: Document, texts: dict[str, str]) -> list[Diagnostic]:
    """Read every file site.yaml names, under its normalised name (`./r.cgr` and `r.cgr`
    are one file), which replaces the name in the document: later passes look files up
    by that one key."""
    problems = []
    for path in references(document.data):
        name = document.data_at(path)
        where = document.at(path)
        key, why = _normalised(name)
        if key is None:
            problems.append(error(document.file, where.line, where.column, "MP100", why))
            continue
        _replace(document.data, path, key)
        try:
            texts[key] = (site_dir / key).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            message = f"cannot read {name}: {_why(exc)}"
            problems.append(error(document.file, where.line, where.column, "MP100", message))
    return problems


def _normalised(name: str) -> tuple[str | None, str]:
    """The one name a file of the site goes by (relative, without `.` or `//`), or why not."""
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return None, f"{name!r}: a file name with a control character"
    relative = PurePosixPath(name)
    if relative.is_absolute() or ".." in relative.parts:
        return None, f"{name}: files of a site must be named by a path inside the site folder"
    return str(relative), ""


def _replace(data: Any, path: DataPath, value: str) -> None:
    for part in path[:-1]:
        data = data[part]
    data[path[-1]] = value


def _is_file(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("file"), str)


def _why(exc: Exception) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8 text"
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    return getattr(exc, "strerror", None) or str(exc)
