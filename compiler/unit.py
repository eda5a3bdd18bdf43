"""The compilation unit: what the compiler's passes hand from one to the next."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from mailplan.compiler.diagnostics import Diagnostic
from mailplan.compiler.rulesyntax import RuleText
from mailplan.compiler.syntax import Entry, Record
from mailplan.compiler.yamlpos import Document
from mailplan.plan.model import AddressList, Plan, SourceFile

# Problems after which the YAML does not have the shape that resolving relies on.
SHAPELESS = frozenset({"MP101", "MP102", "MP103"})


@dataclass(frozen=True)
class ListSource:
    """An address list as written: its name, where it is defined, and its parsed entries."""

    name: str
    file: str
    line: int
    column: int
    entries: tuple[Entry, ...]


@dataclass(frozen=True)
class Unit:
    """A site on its way to a plan. Passes return a new unit; none mutates one."""

    document: Document | None
    texts: Mapping[str, str]
    files: tuple[SourceFile, ...]
    records: tuple[Record, ...] = ()
    lists: tuple[ListSource, ...] = ()
    # The address lists compiled, with their problems, when they are read in a second
    # process (`compiler.apart`): the call that gives them, made by the resolve pass.
    # `lists` is then empty.
    lists_later: Callable[[], tuple[tuple[AddressList, ...], list[Diagnostic]]] | None = None
    rulefiles: Mapping[str, tuple[RuleText, ...]] = field(default_factory=dict)
    plan: Plan | None = None
    diagnostics: tuple[Diagnostic, ...] = field(default=())

    def report(self, *problems: Diagnostic) -> Unit:
        return replace(self, diagnostics=self.diagnostics + problems)

    @property
    def shapeless(self) -> bool:
        """Whether the YAML has not the shape that resolving relies on (nor resolves)."""
        return any(d.code in SHAPELESS for d in self.diagnostics)
