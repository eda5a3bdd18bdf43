"""The layout of docs/architecture.md, held: one import name, and the runtime's wings
importing only downward (the way a message goes, toward the pure decisions)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent
PACKAGES = ("compiler", "runtime", "plan", "grammar", "zones", "diff", "mailplan")

# What each wing of runtime/ may import of the runtime, besides itself. A wing sends a
# message on to the wings it imports; nothing comes back up.
WINGS: dict[str, set[str]] = {
    "decide": set(),
    "base": set(),
    "rules": {"decide"},
    "dns": {"decide"},
    "store": {"decide", "base"},
    "delivery": {"decide", "base", "dns", "store", "rules"},
    "queue": {"decide", "base", "dns", "store", "rules", "delivery"},
    "smtp": {"decide", "base", "dns", "store", "rules", "delivery", "queue"},
    "mailbox": {"decide", "base", "store"},
    "serve": {"decide", "base", "dns", "store", "rules", "delivery", "queue", "smtp", "mailbox"},
}
# What the compiler may use of the runtime: its pure decisions, and one pure function of
# the DNS wing (the zone text of a site test case).
COMPILER_MAY_IMPORT = {"mailplan.runtime.decide", "mailplan.runtime.dns.lookup"}


def modules() -> list[Path]:
    """Every module once: mailplan/compiler and the like are links to the top folders,
    while mailplan/commands/ is the command line's own."""
    return sorted(
        path
        for package in PACKAGES
        for path in (PROJECT / package).rglob("*.py")
        if not (package == "mailplan" and _linked(path))
    )


def _linked(path: Path) -> bool:
    top = PROJECT / "mailplan" / path.relative_to(PROJECT / "mailplan").parts[0]
    return top.is_symlink()


def imports(path: Path) -> set[str]:
    """The absolute module names `path` imports (`from X import y` gives X and X.y)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def name(path: Path) -> str:
    return str(path.relative_to(PROJECT))


@pytest.mark.parametrize("path", modules(), ids=name)
def test_everything_is_imported_under_mailplan(path: Path) -> None:
    bare = {
        module
        for module in imports(path)
        if module.split(".")[0] in PACKAGES[:-1]  # `compiler.x`, not `mailplan.compiler.x`
    }
    assert not bare, f"{name(path)} imports {sorted(bare)}: write mailplan.{sorted(bare)[0]}"


def _wing(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if parts[:2] == ["mailplan", "runtime"] and len(parts) > 2 else None


@pytest.mark.parametrize(
    "path", [p for p in modules() if p.parent.parent.name == "runtime"], ids=name
)
def test_a_wing_imports_only_the_wings_below_it(path: Path) -> None:
    wing = path.parent.name
    assert wing in WINGS, f"{name(path)}: runtime/{wing}/ is not a wing of docs/architecture.md"
    upward = {
        module
        for module in imports(path)
        if (other := _wing(module)) is not None and other != wing and other not in WINGS[wing]
    }
    assert not upward, f"{name(path)} ({wing}) imports {sorted(upward)}"


def test_the_wings_have_no_cycle() -> None:
    seen: list[str] = []

    def visit(wing: str, path: tuple[str, ...]) -> None:
        assert wing not in path, f"a cycle between wings: {' -> '.join((*path, wing))}"
        for lower in WINGS[wing]:
            visit(lower, (*path, wing))
        seen.append(wing)

    for wing in WINGS:
        visit(wing, ())
    assert set(seen) == set(WINGS)


def test_the_runtime_is_all_in_wings() -> None:
    loose = sorted(p.name for p in (PROJECT / "runtime").glob("*.py") if p.name != "__init__.py")
    assert loose == [], f"modules outside a wing: {loose}"


@pytest.mark.parametrize("path", modules(), ids=name)
def test_only_the_command_line_uses_serve_and_nothing_below_uses_the_compiler(
    path: Path,
) -> None:
    found = imports(path)
    top = path.relative_to(PROJECT).parts[0]
    if top != "mailplan" and not (top == "runtime" and path.parent.name == "serve"):
        serve = sorted(m for m in found if m.startswith("mailplan.runtime.serve"))
        assert not serve, f"{name(path)} imports {serve}: only the CLI starts a server"
    if top in ("runtime", "plan", "zones", "grammar", "diff"):
        compiler = sorted(m for m in found if m.startswith("mailplan.compiler"))
        assert not compiler, f"{name(path)} imports the compiler: {compiler}"
    if top == "compiler":
        used = {m for m in found if m.startswith("mailplan.runtime.")}
        allowed = {m for m in used if any(m.startswith(a) for a in COMPILER_MAY_IMPORT)}
        assert used == allowed, f"{name(path)} imports {sorted(used - allowed)}"
    if top == "diff":
        runtime = sorted(
            m for m in found if m.startswith("mailplan.runtime") and _wing(m) != "decide"
        )
        assert not runtime, f"{name(path)} compares plans with pure decisions only: {runtime}"


@pytest.mark.parametrize("path", sorted((PROJECT / "runtime" / "decide").glob("*.py")), ids=name)
def test_decisions_import_only_the_plan(path: Path) -> None:
    ours = {m for m in imports(path) if m.startswith("mailplan.")}
    other = sorted(
        m for m in ours if not m.startswith(("mailplan.plan", "mailplan.runtime.decide"))
    )
    assert not other, f"{name(path)} is a pure decision module but imports {other}"


def test_no_two_classes_of_the_runtime_or_the_plan_share_a_name() -> None:
    """A name means one thing: a reader who meets `Envelope` knows which one it is."""
    where: dict[str, list[str]] = {}
    for path in modules():
        if path.relative_to(PROJECT).parts[0] not in ("runtime", "plan"):
            continue
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                where.setdefault(node.name, []).append(name(path))
    shared = {cls: paths for cls, paths in where.items() if len(paths) > 1}
    assert shared == {}
