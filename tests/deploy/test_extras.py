"""Each service's image installs only its own extra, so every package its server imports must be in
that extra's closure: a module that imports a package the extra lacks crash-loops the container.
The imports are read from the source (module level, outside TYPE_CHECKING), from the server module
through every driftlm module it reaches."""

from __future__ import annotations

import ast
import importlib.util
import sys
from importlib import metadata
from pathlib import Path

import pytest

from driftlm.services.runtime.config import SERVICE_DEFAULTS

from ..distributions import extra_closure


def _module_level_imports(path: Path, package: str) -> set[str]:
    """Absolute names of what a file imports at module level (TYPE_CHECKING blocks left out)."""
    names: set[str] = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))

    def visit(statements: list[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = (
                    importlib.util.resolve_name("." * node.level + (node.module or ""), package)
                    if node.level
                    else node.module or ""
                )
                names.add(base)
                names.update(f"{base}.{alias.name}" for alias in node.names)  # a submodule, or a name in base
            elif isinstance(node, ast.If) and not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
                visit(node.body + node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body + node.orelse + node.finalbody)

    visit(tree.body)
    return names


def third_party_imports(start: str) -> set[str]:
    """Top-level names of the packages `start` imports, following driftlm's own modules."""
    found: set[str] = set()
    seen: set[str] = set()
    todo = [start]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        top = name.split(".")[0]
        if top != "driftlm":
            if top not in sys.stdlib_module_names and top != "__future__":
                found.add(top)
            continue
        spec = importlib.util.find_spec(name) if _parent_is_package(name) else None
        if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
            continue  # a name defined in a module, not a module
        package = name if spec.submodule_search_locations is not None else name.rpartition(".")[0]
        todo.extend(_module_level_imports(Path(spec.origin), package))
    return found


def _parent_is_package(name: str) -> bool:
    parent = name.rpartition(".")[0]
    if not parent:
        return True
    spec = importlib.util.find_spec(parent)
    return spec is not None and spec.submodule_search_locations is not None


@pytest.mark.parametrize("service", sorted(SERVICE_DEFAULTS))
def test_every_package_a_server_imports_comes_with_its_extra(service: str) -> None:
    imported = third_party_imports(f"driftlm.services.{service}.server")
    by_package = metadata.packages_distributions()
    needed = {
        package: {d.lower().replace("_", "-") for d in by_package.get(package, [package])} for package in imported
    }
    installed = extra_closure(service)
    missing = {package: sorted(dists) for package, dists in needed.items() if not dists & installed}
    assert not missing, f"driftlm[{service}] lacks what its server imports: {missing}"


def test_the_walk_sees_a_known_dependency() -> None:
    """The check cannot pass by reading nothing: the trainer's server reaches torch, sampling numba."""
    assert "torch" in third_party_imports("driftlm.services.trainer.server")
    assert "numba" in third_party_imports("driftlm.services.sampling.server")
    assert "safetensors" in third_party_imports("driftlm.services.vocab.server")


def test_the_controller_image_has_what_driftlm_follow_imports_and_no_torch() -> None:
    """The follow image installs driftlm[follow,s3] (and MiniLM's files with --no-deps)."""
    imported = set()
    for module in ("driftlm.commands", "driftlm.follow.controller", "driftlm.follow.living_report"):
        imported |= third_party_imports(module)
    by_package = metadata.packages_distributions()
    installed = extra_closure("follow") | extra_closure("s3")
    missing = {
        package: sorted(dists)
        for package in imported
        if not (dists := {d.lower().replace("_", "-") for d in by_package.get(package, [package])}) & installed
    }
    assert not missing, f"driftlm[follow] lacks what the controller imports: {missing}"
    assert "grpcio" in installed and "torch" not in installed and "transformers" not in installed
