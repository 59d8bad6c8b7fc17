"""The library's layering: no import goes up the layers or sideways between peers, and none goes in a circle."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[1] / "scripts" / "selfheal"

# Rank of each top-level package or module; the package docstring of selfheal says the same in words.
RANKS = {
    "errors": 0,
    "clock": 0,
    "_testing": 0,
    "_bootstrap": 0,
    "_typing": 0,
    "state": 1,
    "core": 2,
    "models": 3,
    "durable": 3,
    "tasks": 4,
    "observe": 5,
    "heal": 6,
    "cli": 7,
    "testing": 7,
    "__init__": 7,
}


def module_name(path: Path, lib: Path = LIB) -> str:
    parts = path.relative_to(lib.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, lib: Path = LIB) -> Iterator[tuple[str, int]]:
    """Every `selfheal` module `path` imports (at the top or inside a function), with its line."""
    me = module_name(path, lib)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target.split(".")[0] != "selfheal":
                continue
            if lib.parent.joinpath(*target.split(".")).is_dir():  # `from ..pkg import mod`: names are modules
                for alias in node.names:
                    yield f"{target}.{alias.name}", node.lineno
            else:
                yield target, node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "selfheal":
                    yield alias.name, node.lineno


def unit(module: str) -> str:
    """The layer unit a module belongs to: its top-level package under selfheal, or the module itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def in_type_checking(path: Path) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
            for inner in ast.walk(node):
                if hasattr(inner, "lineno"):
                    lines.add(inner.lineno)
    return lines


MODULES = sorted(LIB.rglob("*.py"))


def test_every_package_has_a_rank() -> None:
    """A new package or top-level module must be placed in the layering before it can be used."""
    units = {unit(module_name(p)) if module_name(p) != "selfheal" else "__init__" for p in MODULES}
    assert units <= set(RANKS), sorted(units - set(RANKS))


def violations(path: Path, lib: Path = LIB) -> list[str]:
    me = module_name(path, lib)
    mine = unit(me) if me != "selfheal" else "__init__"
    skip = in_type_checking(path) if mine == "__init__" else set()
    bad = []
    for target, line in imports_of(path, lib):
        theirs = unit(target)
        if theirs == mine or line in skip:
            continue
        if RANKS[theirs] >= RANKS[mine]:
            bad.append(f"line {line}: {me} (rank {RANKS[mine]}) imports {target} (rank {RANKS[theirs]})")
    return bad


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(LIB)))
def test_no_import_goes_up_or_sideways(path: Path) -> None:
    """A module imports only its own package and lower layers (type-only imports included)."""
    bad = violations(path)
    assert not bad, "\n".join(bad)


def test_no_import_cycle_between_modules() -> None:
    """No module reaches itself through imports, lazy ones inside functions included."""
    graph: dict[str, set[str]] = {}
    names = {module_name(p) for p in MODULES}
    for path in MODULES:
        me = module_name(path)
        if me == "selfheal":
            continue  # the public API's lazy re-exports point down at everything by design
        edges = set()
        for imported, _ in imports_of(path):
            target = imported
            while target not in names and "." in target:  # `from pkg.mod import name`
                target = target.rsplit(".", 1)[0]
            if target not in (me, "selfheal"):
                edges.add(target)
        graph[me] = edges
    seen: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        seen[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if seen.get(nxt) == 1:
                cycle = [*stack[stack.index(nxt) :], nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in seen:
                visit(nxt)
        stack.pop()
        seen[node] = 2

    for node in sorted(graph):
        if node not in seen:
            visit(node)


def test_the_checker_sees_upward_sideways_and_lazy_imports(tmp_path: Path) -> None:
    """The import reader finds relative, absolute and lazy imports, so the tests above can fail."""
    lib = tmp_path / "selfheal"
    for package in ("state", "core", "models", "durable", "heal"):
        (lib / package).mkdir(parents=True)
        (lib / package / "__init__.py").write_text("")
    (lib / "heal" / "diagnose.py").write_text("")
    (lib / "durable" / "workflow.py").write_text("")
    up = lib / "state" / "root.py"
    up.write_text("def f():\n    from ..heal import diagnose\n")
    side = lib / "models" / "llm.py"
    side.write_text("from selfheal.durable.workflow import run\nfrom ..core import config\n")
    assert violations(up, lib) == ["line 2: selfheal.state.root (rank 1) imports selfheal.heal.diagnose (rank 6)"]
    assert violations(side, lib) == ["line 1: selfheal.models.llm (rank 3) imports selfheal.durable.workflow (rank 3)"]
    assert "selfheal.models.llm" in {t for t, _ in imports_of(LIB / "heal" / "diagnose.py")}


PATH_LITERAL = re.compile(
    r'(?:\.sub\(|\broot\s*/\s*)"(?:ledger|logs|breakers|checkpoints|tasks|fixes|incidents|sessions|status|runs|locks|fleet)"'
    r'|"(?:tasks\.db|selfheal\.log|config\.yaml|index\.json|HISTORY\.md)"'
)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(LIB)))
def test_only_the_layout_module_spells_a_state_path(path: Path) -> None:
    """Where each kind of state file lives is written once, in state/layout.py; everything else asks it."""
    if path == LIB / "state" / "layout.py":
        return
    found = [
        f"line {n}: {line.strip()}"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if PATH_LITERAL.search(line) and not line.lstrip().startswith("#")
    ]
    assert not found, "\n".join(found)


def test_the_path_check_finds_a_spelled_path() -> None:
    assert PATH_LITERAL.search('folder = state.sub("runs")')
    assert PATH_LITERAL.search('db = state.root / "tasks.db"')
    assert not PATH_LITERAL.search("folder = state.sub(layout.RUNS)")
