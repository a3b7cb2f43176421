"""A service's persistent files: where references point, and writes that never leave half a file.

Every write goes to a temporary name beside its target, is fsynced, then renamed over the target
(and the directory fsynced), so a reader or a restart after kill -9 sees the old content or the
new, never a mix. Temporaries start with `.tmp-`; readers skip them and a restart removes them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TEMPORARY_PREFIX = ".tmp-"
# What the ids we mint look like (v-..., obs-..., ckpt-...): anything else names nothing, and is
# never joined to a path (a 300-byte id failed with ENAMETOOLONG, "a/../b" would walk the store).
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def is_stored_id(value: str) -> bool:
    """Whether `value` could be an id this store minted (safe to use as one file name)."""
    return _ID.fullmatch(value) is not None and ".." not in value


def _read_umask() -> int:
    current = os.umask(0o022)
    os.umask(current)
    return current


# Read once at import (os.umask can only be read by setting it). mkstemp and mkdtemp create 0600 and
# 0700, which a serving container under another uid cannot read: written files get the modes an
# ordinary write would (0666 and 0777 less the umask).
_UMASK = _read_umask()
FILE_MODE = 0o666 & ~_UMASK
DIRECTORY_MODE = 0o777 & ~_UMASK


def fsync_directory(path: Path) -> None:
    """Make a rename or a new entry in `path` durable."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_bytes_atomically(path: Path, data: bytes) -> None:
    """Replace `path` with `data` all at once, durably."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=TEMPORARY_PREFIX, dir=path.parent)
    os.fchmod(descriptor, FILE_MODE)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        Path(temporary).replace(path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def write_json_atomically(path: Path, value: Any) -> None:
    """Replace `path` with `value` as UTF-8 JSON, all at once, durably."""
    write_bytes_atomically(path, json.dumps(value, ensure_ascii=False).encode("utf-8"))


def read_json(path: Path) -> Any:
    """The JSON value in `path`."""
    return json.loads(path.read_text(encoding="utf-8"))


def new_temporary_directory(parent: Path) -> Path:
    """An empty directory to fill before publish_directory makes it visible."""
    parent.mkdir(parents=True, exist_ok=True)
    directory = Path(tempfile.mkdtemp(prefix=TEMPORARY_PREFIX, dir=parent))
    directory.chmod(DIRECTORY_MODE)
    return directory


@contextlib.contextmanager
def staged_directory(parent: Path) -> Iterator[Path]:
    """A new temporary directory in `parent` to fill and publish; removed if the block fails.

    A failed export or checkpoint (disk full, the destination taken meanwhile) leaves nothing behind.
    """
    temporary = new_temporary_directory(parent)
    try:
        yield temporary
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def publish_directory(temporary: Path, final: Path) -> None:
    """Rename a filled temporary directory to `final` in one step, durably.

    Every file in it is fsynced first. Raises FileExistsError when `final` exists.
    """
    for file in temporary.iterdir():
        with file.open("rb") as handle:
            os.fsync(handle.fileno())
    fsync_directory(temporary)
    if final.exists():
        raise FileExistsError(final)
    temporary.rename(final)
    fsync_directory(final.parent)


def remove_temporaries(directory: Path) -> int:
    """Delete what interrupted writes left in `directory`; returns how many."""
    leftovers = [entry for entry in directory.glob(f"{TEMPORARY_PREFIX}*")] if directory.exists() else []
    for entry in leftovers:
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    return len(leftovers)
