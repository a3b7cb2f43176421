"""What an extra of pyproject.toml installs: the closure of its requirements, from installed metadata."""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def closure(requirements: list[str]) -> set[str]:
    """Every distribution the requirements pull in, through the installed packages' own metadata."""
    seen: set[str] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        requirement = todo.pop()
        name = requirement.name.lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        for extra in requirement.extras or {""}:
            for line in metadata.requires(name) or []:
                dependency = Requirement(line)
                if dependency.marker is None or dependency.marker.evaluate({"extra": extra}):
                    todo.append(dependency)
    return seen


def extra_closure(extra: str) -> set[str]:
    """What `pip install 'driftlm[extra]'` installs, driftlm's own dependencies included."""
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    return closure(project["dependencies"] + project["optional-dependencies"][extra])
