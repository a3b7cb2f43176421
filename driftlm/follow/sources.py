"""Where `driftlm follow` finds new text: files that keep arriving in a local directory or under an
object-store prefix (any fsspec URI: s3://bucket/feed/, gs://..., memory://...).

A Source lists what is there now with each file's size and version (mtime, or the object's ETag);
the intake decides what is new. Files whose names start with `.` or end in `.tmp`/`.part` are
being written and are skipped: a writer drops a file by renaming it into place. Another kind of
source (a message-queue consumer) implements the same two methods.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from driftlm.services.core.artifacts import is_remote
from driftlm.services.core.corpus import CorpusFormat, format_of

_DATED_FORMATS = (CorpusFormat.JSONL, CorpusFormat.CSV, CorpusFormat.PARQUET)
_IN_FLIGHT_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload")


class SourceUnavailableError(OSError):
    """The source cannot be listed now (gone, unreachable, no permission); the next poll retries."""


@dataclass(frozen=True)
class SourceFile:
    """A file as listed: its name relative to the source, size in bytes, and version tag."""

    name: str
    size: int
    version: str


class Source(Protocol):
    """What the intake needs from a source."""

    description: str

    def list(self) -> list[SourceFile]:
        """Every complete dated file there now, sorted by name.

        Raises:
            SourceUnavailableError: the source cannot be listed.
        """
        ...

    def fetch(self, item: SourceFile, cache: Path) -> Path:
        """A local path holding the file's bytes (downloaded into `cache` when remote).

        Raises:
            SourceUnavailableError: the file vanished or cannot be read.
        """
        ...


def _is_dated_file(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    if base.startswith(".") or base.endswith(_IN_FLIGHT_SUFFIXES):
        return False
    return format_of(Path(base)) in _DATED_FORMATS


class DirectorySource:
    """A local directory, read recursively."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.description = str(root)

    def list(self) -> list[SourceFile]:
        if not self.root.is_dir():
            raise SourceUnavailableError(f"the source directory {self.root} does not exist (or is not a directory)")
        found = []
        try:
            for path in self.root.rglob("*"):
                relative = path.relative_to(self.root).as_posix()
                if not _is_dated_file(relative) or not path.is_file():
                    continue
                stat = path.stat()
                found.append(SourceFile(relative, stat.st_size, str(stat.st_mtime_ns)))
        except OSError as error:
            raise SourceUnavailableError(f"listing {self.root}: {error.strerror or error}") from None
        return sorted(found, key=lambda f: f.name)

    def fetch(self, item: SourceFile, cache: Path) -> Path:
        path = self.root / item.name
        if not path.is_file():
            raise SourceUnavailableError(f"{item.name} vanished from {self.root}")
        return path


class ObjectStoreSource:
    """Objects under a prefix of an object store (fsspec); credentials come from the environment,
    as fsspec's backends read them (AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL...)."""

    def __init__(self, uri: str) -> None:
        import fsspec

        self.description = uri
        self._filesystem: Any
        self._filesystem, self._prefix = fsspec.core.url_to_fs(uri)
        self._prefix = self._prefix.rstrip("/")
        self._protocol = uri.split("://", 1)[0]

    def list(self) -> list[SourceFile]:
        try:
            self._filesystem.invalidate_cache()
            listed = self._filesystem.find(self._prefix, detail=True)
        except (OSError, PermissionError) as error:
            raise SourceUnavailableError(f"listing {self.description}: {error}") from None
        found = []
        for key, info in listed.items():
            relative = key[len(self._prefix) :].lstrip("/")
            if info.get("type", "file") != "file" or not _is_dated_file(relative):
                continue
            version = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified") or ""
            found.append(SourceFile(relative, int(info.get("size") or 0), str(version).strip('"')))
        return sorted(found, key=lambda f: f.name)

    def fetch(self, item: SourceFile, cache: Path) -> Path:
        digest = hashlib.sha256(f"{item.name}\0{item.version}".encode()).hexdigest()[:24]
        local = cache / digest / item.name.rsplit("/", 1)[-1]
        if local.is_file() and local.stat().st_size == item.size:
            return local
        shutil.rmtree(local.parent, ignore_errors=True)
        local.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._filesystem.get_file(f"{self._prefix}/{item.name}", str(local))
        except (OSError, PermissionError) as error:
            shutil.rmtree(local.parent, ignore_errors=True)
            raise SourceUnavailableError(f"fetching {item.name} from {self.description}: {error}") from None
        return local


def open_source(location: str) -> Source:
    """A DirectorySource for a path (or file:// URI), an ObjectStoreSource for another URI."""
    if is_remote(location):
        return ObjectStoreSource(location)
    return DirectorySource(Path(location.removeprefix("file://")).expanduser())
