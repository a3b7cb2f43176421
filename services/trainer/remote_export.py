"""ExportOnnx into a model repository in an object store (`s3://bucket/models`).

The versions are made in a local staging repository that mirrors what the remote one holds of the
two models (their config.pbtxt and version numbers), so that the same rules apply as locally: the
next version number, never rewriting a version, refusing a model of another shape. The new version
directories (and the configs of new models) are then uploaded, and the staging copy removed.
"""

from __future__ import annotations

import posixpath
from pathlib import Path
from typing import Any

from driftlm.services.core.artifacts import translated


def mirror(filesystem: Any, root: str, uri: str, names: tuple[str, ...], staging: Path) -> set[str]:
    """Copy the remote models' configs and empty version folders into `staging`; the names of the
    models that already exist there."""
    existing: set[str] = set()
    for name in names:
        folder = f"{root.rstrip('/')}/{name}"
        try:
            entries = filesystem.ls(folder, detail=False) if filesystem.exists(folder) else []
            for entry in entries:
                leaf = posixpath.basename(str(entry).rstrip("/"))
                if leaf.isdecimal():
                    (staging / name / leaf).mkdir(parents=True, exist_ok=True)
                elif leaf == "config.pbtxt":
                    (staging / name).mkdir(parents=True, exist_ok=True)
                    filesystem.get(f"{folder}/config.pbtxt", str(staging / name / "config.pbtxt"))
                    existing.add(name)
        except (OSError, ValueError) as error:
            raise translated(error, uri, "destination.uri") from None
    return existing


def upload(
    filesystem: Any, root: str, uri: str, staging: Path, names: tuple[str, ...], version: int, existing: set[str]
) -> None:
    """Upload the new version of each model, and the config of each model that was not there."""
    try:
        for name in names:
            folder = f"{root.rstrip('/')}/{name}"
            filesystem.put(f"{staging / name / str(version)}/", f"{folder}/{version}/", recursive=True)
            if name not in existing:
                filesystem.put(str(staging / name / "config.pbtxt"), f"{folder}/config.pbtxt")
    except (OSError, ValueError) as error:
        raise translated(error, uri, "destination.uri") from None
