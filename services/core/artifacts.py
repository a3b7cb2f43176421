"""Artifacts in an object store (`s3://bucket/key`, or any fsspec URI), fetched into a local cache.

A call may name a corpus, a model or tokenizer directory, or an export destination in a bucket
instead of on the service's disk. The same rule as for local files holds per scheme: a remote URI
must fall under a prefix the operator allows (`--read-uri-prefix s3://corpora/2024/`, writes under
`--write-uri-prefix`), or the call is refused with PERMISSION_DENIED; with none configured, remote
URIs are off. A remote artifact is downloaded once into `<store>/cache/remote/` (keyed by the URI
and its ETag, size and time), bounded in size, and the rest of the service reads the local copy.
Credentials and endpoints come from the environment, as fsspec's backends read them (for S3:
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL for MinIO or another S3-compatible store).
"""

from __future__ import annotations

import functools
import hashlib
import posixpath
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from .errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnavailableError,
)

Kind = Literal["file", "directory", "any"]
MAX_URI_BYTES = 4096
# Largest remote artifact (a file, or a directory's files together) a call may fetch.
DEFAULT_MAX_REMOTE_BYTES = 64 * 1024**3


@dataclass(frozen=True)
class FileRef:
    """A file a call names (an ArtifactRef): its URI, and optionally the SHA-256 its bytes must have."""

    uri: str
    sha256: str = ""


def is_remote(uri: str) -> bool:
    """Whether `uri` names an object store rather than a local path (file:// and C:\\ are local)."""
    scheme = urlparse(uri).scheme
    return len(scheme) > 1 and scheme != "file"


def normalized(uri: str, field_name: str) -> str:
    """`scheme://bucket/key` with `.` and `..` resolved, or INVALID_ARGUMENT for what cannot name an object."""
    if len(uri.encode()) > MAX_URI_BYTES or "\x00" in uri:
        raise InvalidArgumentError(field_name, f"is not a usable URI (NUL bytes, or over {MAX_URI_BYTES} bytes)")
    parsed = urlparse(uri)
    if parsed.scheme not in _known_schemes():
        raise InvalidArgumentError(
            field_name,
            f"scheme {parsed.scheme!r} is not supported; use a path, a file:// URI or an fsspec URI (s3://...)",
        )
    if not parsed.netloc:
        raise InvalidArgumentError(field_name, f"names no bucket or host; write {parsed.scheme}://BUCKET/KEY")
    if parsed.query or parsed.fragment or parsed.params:
        raise InvalidArgumentError(field_name, "takes no query or fragment; name the object by its key")
    key = posixpath.normpath("/" + parsed.path.lstrip("/")) if parsed.path.strip("/") else "/"
    return f"{parsed.scheme}://{parsed.netloc}{key}"


def _known_schemes() -> frozenset[str]:
    """The URI schemes fsspec has a file system for (installed or not)."""
    from fsspec.registry import known_implementations

    return frozenset(known_implementations) - {"file", "local"}


def _prefix(uri: str) -> str:
    """An allowed prefix, normalized and ending with '/', so that s3://a/b allows s3://a/b/c but not s3://a/bc."""
    return normalized(uri, "prefix").rstrip("/") + "/"


def under_prefixes(uri: str, prefixes: tuple[str, ...]) -> bool:
    """Whether the normalized `uri` is one of, or under one of, the prefixes."""
    return any((uri.rstrip("/") + "/").startswith(_prefix(p)) for p in prefixes)


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in blocks (any size)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@functools.lru_cache(maxsize=1024)
def _sha256_at(path: Path, _size: int, _mtime_ns: int) -> str:
    return sha256_of(path)


def file_sha256(path: Path) -> str:
    """sha256_of, remembered while the file's size and time stay the same (for ArtifactRefs we answer)."""
    status = path.stat()
    return _sha256_at(path, status.st_size, status.st_mtime_ns)


def check_sha256(path: Path, expected: str, field_name: str) -> None:
    """FAILED_PRECONDITION when a file's bytes do not have the SHA-256 the caller gave."""
    if not expected:
        return
    wanted = expected.strip().lower()
    if len(wanted) != 64 or any(c not in "0123456789abcdef" for c in wanted):
        raise InvalidArgumentError(field_name.replace(".uri", ".sha256"), "is not 64 hex digits")
    if path.is_dir():
        raise InvalidArgumentError(
            field_name.replace(".uri", ".sha256"), "checks a file's bytes, and this names a directory; leave it empty"
        )
    actual = sha256_of(path)
    if actual != wanted:
        raise FailedPreconditionError(
            f"{field_name}: the artifact's SHA-256 is {actual}, not the {wanted} the request gives; "
            "it changed or is not the one meant",
            reason="SHA256_MISMATCH",
        )


def _filesystem(uri: str, field_name: str) -> tuple[Any, str]:
    """fsspec's file system for the URI's scheme and the path within it."""
    try:
        import fsspec
    except ImportError:  # pragma: no cover - fsspec is a dependency of the project
        raise FailedPreconditionError(f"{field_name}: remote URIs need fsspec installed") from None
    try:
        return fsspec.core.url_to_fs(uri)  # type: ignore[no-any-return]
    except (ImportError, ValueError) as error:
        scheme = urlparse(uri).scheme
        raise FailedPreconditionError(
            f"{field_name}: this service cannot reach {scheme}:// URIs ({type(error).__name__}); "
            f"install its fsspec backend (for s3: pip install 'driftlm[s3]')",
            reason="SCHEME_UNAVAILABLE",
        ) from None


def translated(error: Exception, uri: str, field_name: str) -> Exception:
    """The store's error as one a caller can act on; no content of the store in the message."""
    if isinstance(error, FileNotFoundError):
        return NotFoundError(f"{field_name}: nothing at {uri}")
    if isinstance(error, PermissionError):
        return PermissionDeniedError(f"{field_name}: the store refused access to {uri} (check the credentials)")
    return UnavailableError(f"{field_name}: the store holding {uri} could not be reached ({type(error).__name__})")


def _version_of(item: dict[str, Any]) -> str:
    """What changes when an object is rewritten: its ETag, else its modification time."""
    return str(item.get("ETag") or item.get("etag") or item.get("mtime") or item.get("LastModified") or "")


@dataclass(frozen=True)
class RemoteArtifacts:
    """What a service may read from and write to object stores, and where it caches what it read."""

    cache: Path
    read_prefixes: tuple[str, ...] = ()
    write_prefixes: tuple[str, ...] = ()
    max_bytes: int = DEFAULT_MAX_REMOTE_BYTES

    def _confined(self, uri: str, field_name: str, mode: Literal["read", "write"]) -> str:
        clean = normalized(uri, field_name)
        prefixes = self.read_prefixes + self.write_prefixes if mode == "read" else self.write_prefixes
        if not under_prefixes(clean, prefixes):
            allowed = ", ".join(prefixes) if prefixes else "none: remote URIs are off"
            raise PermissionDeniedError(
                f"{field_name}: {clean} is outside the object-store prefixes this service may {mode} ({allowed}); "
                f"the operator can allow more with --{mode}-uri-prefix",
                reason="URI_OUTSIDE_PREFIXES",
            )
        return clean

    def fetch(self, uri: str, field_name: str, *, kind: Kind) -> Path:
        """A local copy of the remote file or directory `uri` names (downloaded once, then cached).

        Raises:
            InvalidArgumentError: a malformed URI, or a file where a directory is wanted (or back).
            PermissionDeniedError: outside every allowed prefix, or refused by the store.
            NotFoundError: nothing there.
            ResourceExhaustedError: larger than the service fetches.
            UnavailableError: the store cannot be reached.
        """
        clean = self._confined(uri, field_name, "read")
        filesystem, path = _filesystem(clean, field_name)
        try:
            info = filesystem.info(path)
            is_directory = info.get("type") == "directory"
            entries = filesystem.find(path, detail=True) if is_directory else {path: info}
        except (OSError, ValueError) as error:
            raise translated(error, clean, field_name) from None
        if kind == "directory" and not is_directory:
            raise InvalidArgumentError(field_name, f"{clean} is a file; name a directory (a key prefix)")
        if kind == "file" and is_directory:
            raise InvalidArgumentError(field_name, f"{clean} is a directory (a key prefix); name a file")
        total = sum(int(item.get("size") or 0) for item in entries.values())
        if total > self.max_bytes:
            raise ResourceExhaustedError(
                f"{field_name}: {clean} holds {total:,} bytes, over the {self.max_bytes:,} this service fetches"
            )
        # A new copy whenever any object changed: each one's name, size and version (ETag or time).
        stamp = "\n".join(f"{name}\t{item.get('size')}\t{_version_of(item)}" for name, item in sorted(entries.items()))
        key = hashlib.sha256(f"{clean}\n{stamp}".encode()).hexdigest()[:32]
        name = posixpath.basename(path.rstrip("/")) or "root"
        local = self.cache / key / name
        if local.exists():
            return local
        self.cache.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".fetch-", dir=self.cache))
        try:
            try:
                filesystem.get(
                    path.rstrip("/") + ("/" if is_directory else ""), str(staging / name), recursive=is_directory
                )
            except (OSError, ValueError) as error:
                raise translated(error, clean, field_name) from None
            (self.cache / key).mkdir(exist_ok=True)
            try:
                (staging / name).rename(local)
            except OSError:
                if not local.exists():  # not another call's copy of the same object: a real failure
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return local

    def writable_filesystem(self, uri: str, field_name: str) -> tuple[Any, str, str]:
        """fsspec's file system, the path in it and the normalized URI, for a URI under a write prefix."""
        clean = self._confined(uri, field_name, "write")
        filesystem, path = _filesystem(clean, field_name)
        return filesystem, path, clean

    def check_writable(self, uri: str, field_name: str) -> str:
        """The normalized URI, when it falls under a write prefix (PERMISSION_DENIED otherwise)."""
        clean = self._confined(uri, field_name, "write")
        _filesystem(clean, field_name)  # the backend is there
        return clean

    def publish(self, local: Path, uri: str, field_name: str) -> str:
        """Upload a written file or directory to `uri` (under a write prefix); the normalized URI."""
        clean = self._confined(uri, field_name, "write")
        filesystem, path = _filesystem(clean, field_name)
        try:
            if local.is_dir():  # a trailing slash copies the folder's contents to the prefix
                filesystem.put(f"{local}/", path.rstrip("/") + "/", recursive=True)
            else:
                filesystem.put(str(local), path)
        except (OSError, ValueError) as error:
            raise translated(error, clean, field_name) from None
        return clean
