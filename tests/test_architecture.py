"""The house rules, read from the import graph (every module's `import` statements, by ast):

- a service reaches another service only through that service's `client.py`;
- the shared core imports no service, no gRPC plumbing and no gRPC; the kernels import neither;
- inside a service only the gRPC edge (server, servicers, client, and `remote.py`, the adapters
  over peers' clients) imports grpc; domain and application modules raise `core.errors`;
- the services never import the command line;
- no import cycle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The repository's folders and the import names they install as (pyproject.toml's package-dir).
PACKAGES = {"driftlm": "driftlm", "services": "driftlm.services", "kernels": "driftlm.kernels"}
SERVICES = ("vocab", "sampling", "trainer", "inference", "compare")
GRPC_MODULES = ("grpc", "grpc_status", "grpc_health", "grpc_reflection")
# A service's gRPC edge: the only modules of a service that may import grpc.
GRPC_EDGE = ("server", "servicer", "oip_servicer", "client", "remote")


@dataclass(frozen=True)
class Import:
    source: str
    target: str
    line: int
    # Inside `if TYPE_CHECKING:` (no run-time edge, so no cycle).
    typing_only: bool


def _module_name(path: Path) -> str:
    relative = path.relative_to(ROOT).with_suffix("")
    name = ".".join([PACKAGES[relative.parts[0]], *relative.parts[1:]])
    return name.removesuffix(".__init__")


def _typing_only_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _imports(path: Path, known: set[str]) -> Iterator[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    source = _module_name(path)
    package = source if path.name == "__init__.py" else source.rpartition(".")[0]
    typing_only = _typing_only_lines(tree)
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            # `from package import module` depends on the module itself.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for target in targets:
            yield Import(source, target, node.lineno, node.lineno in typing_only)


def _graph() -> tuple[set[str], list[Import]]:
    files = [p for folder in PACKAGES for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts]
    known = {_module_name(p) for p in files}
    return known, [i for p in files for i in _imports(p, known)]


KNOWN, IMPORTS = _graph()


def _service_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and parts[1] == "services" and parts[2] in SERVICES else None


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _is_grpc(target: str) -> bool:
    return any(_in(target, name) for name in GRPC_MODULES)


def _is_command_line(target: str) -> bool:
    return _in(target, "driftlm") and not any(_in(target, f"driftlm.{sub}") for sub in ("services", "kernels", "v1"))


def test_the_graph_is_read() -> None:
    """The rules below see the house: every service, the core and the command line, with edges."""
    assert {_service_of(m) for m in KNOWN} >= set(SERVICES)
    assert "driftlm.services.core.vocabulary" in KNOWN and "driftlm.commands" in KNOWN
    assert any(i.target == "driftlm.services.vocab.client" for i in IMPORTS)
    assert any(_is_grpc(i.target) for i in IMPORTS)


def test_a_service_reaches_another_only_through_its_client() -> None:
    violations = [
        f"{i.source}:{i.line} imports {i.target}"
        for i in IMPORTS
        if (theirs := _service_of(i.target))
        and _service_of(i.source) not in (None, theirs)
        and i.target != f"driftlm.services.{theirs}.client"
    ]
    assert violations == []


def test_the_core_and_the_kernels_stand_alone() -> None:
    """core: no service, no runtime, no grpc, no command line; kernels: arrays only."""
    violations = [
        f"{i.source}:{i.line} imports {i.target}"
        for i in IMPORTS
        if (_in(i.source, "driftlm.services.core") or _in(i.source, "driftlm.kernels"))
        and (
            _service_of(i.target)
            or _in(i.target, "driftlm.services.runtime")
            or _is_grpc(i.target)
            or _is_command_line(i.target)
        )
    ]
    assert violations == []


def test_only_a_services_grpc_edge_imports_grpc() -> None:
    violations = [
        f"{i.source}:{i.line} imports {i.target}"
        for i in IMPORTS
        if _service_of(i.source) and _is_grpc(i.target) and i.source.rpartition(".")[2] not in GRPC_EDGE
    ]
    assert violations == []


def test_the_services_never_import_the_command_line() -> None:
    violations = [
        f"{i.source}:{i.line} imports {i.target}"
        for i in IMPORTS
        if _in(i.source, "driftlm.services") and _is_command_line(i.target)
    ]
    assert violations == []


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycle() -> None:
    edges: dict[str, set[str]] = {module: set() for module in KNOWN}
    for i in IMPORTS:
        if not i.typing_only and i.target in KNOWN and i.target != i.source:
            edges[i.source].add(i.target)
    assert _cycles(edges) == []


@pytest.mark.parametrize(
    ("edges", "expected"),
    [
        ({"a": {"b"}, "b": {"a"}, "c": set()}, [["a", "b"]]),  # a cycle of two
        ({"a": {"b"}, "b": {"c"}, "c": set()}, []),  # a chain
    ],
)
def test_the_cycle_finder_finds_cycles(edges: dict[str, set[str]], expected: list[list[str]]) -> None:
    assert _cycles(edges) == expected


# Size bounds that keep each layer readable: a servicer only maps messages; no class grows into a
# god object (split by idea instead: selection, resume state, export...).
MAX_SERVICER_LINES = 250
MAX_CLASS_LINES = 300


def test_servicers_only_map_messages_and_classes_stay_small() -> None:
    too_long = []
    for folder in PACKAGES:
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            name = path.relative_to(ROOT).as_posix()
            if path.name.endswith("servicer.py") and len(text.splitlines()) > MAX_SERVICER_LINES:
                too_long.append(f"{name}: {len(text.splitlines())} lines")
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, ast.ClassDef) and (node.end_lineno or 0) - node.lineno + 1 > MAX_CLASS_LINES:
                    too_long.append(f"{name}: class {node.name}, {(node.end_lineno or 0) - node.lineno + 1} lines")
    assert too_long == []


def test_every_service_has_a_servicer_over_an_app_layer() -> None:
    """servicer -> app -> domain: each service's servicer builds on its app.py, which imports no grpc."""
    for service in SERVICES:
        app = f"driftlm.services.{service}.app"
        assert app in KNOWN, f"{service} has no app.py"
        assert any(i.source == f"driftlm.services.{service}.servicer" and i.target == app for i in IMPORTS), service
        assert not any(i.source == app and _is_grpc(i.target) for i in IMPORTS), service
