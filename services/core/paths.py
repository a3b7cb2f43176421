"""Which files a caller may name: paths and file:// URIs, confined to the roots the operator allows,
and object-store URIs, confined to the prefixes the operator allows (remote.py).

A request names files on the service's machine (a corpus to read, a directory to export to). Any
client could otherwise make the service read /etc/passwd or write over its own code, so every such
name is resolved (symlinks and `..` followed) and must land under a configured root: the store, plus
the directories named with `--read-root` / `--write-root`. Relative names are relative to the store.
"""

from __future__ import annotations

import os
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlparse

from .artifacts import DEFAULT_MAX_REMOTE_BYTES, RemoteArtifacts, check_sha256, is_remote
from .errors import InvalidArgumentError, NotFoundError, PermissionDeniedError

# POSIX limits: a longer name fails with ENAMETOOLONG deep inside whatever opens it.
MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255

Kind = Literal["file", "directory", "any"]


def _under(path: Path, roots: tuple[Path, ...]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


@dataclass(frozen=True)
class FileRoots:
    """The store and the directories a service may read from and write to."""

    store: Path
    read: tuple[Path, ...] = field(default=())
    write: tuple[Path, ...] = field(default=())
    # Object-store prefixes (s3://bucket/prefix/) calls may read from / write to; none: remote URIs off.
    read_prefixes: tuple[str, ...] = field(default=())
    write_prefixes: tuple[str, ...] = field(default=())
    max_remote_bytes: int = DEFAULT_MAX_REMOTE_BYTES
    # Subtrees of the store the services manage themselves (versions, checkpoints, runs, the model
    # repository, records, caches): never a destination a call may name.
    managed: tuple[str, ...] = ("vocab", "trainer", "compare", "inference", "cache")

    @property
    def remote(self) -> RemoteArtifacts:
        """Object stores: the allowed prefixes and the store's cache of what was fetched."""
        cache = self.store / "cache" / "remote"
        return RemoteArtifacts(cache, self.read_prefixes, self.write_prefixes, self.max_remote_bytes)

    def readable_roots(self) -> tuple[Path, ...]:
        """Where reads may go: the store, the read roots, and the write roots (what we write we may read)."""
        return tuple(Path(os.path.realpath(p)) for p in (self.store, *self.read, *self.write))

    def writable_roots(self) -> tuple[Path, ...]:
        """Where writes may go: the store and the write roots."""
        return tuple(Path(os.path.realpath(p)) for p in (self.store, *self.write))

    def readable(self, uri: str, field_name: str, *, kind: Kind = "file", sha256: str = "") -> Path:
        """The existing file (or directory) `uri` names, under a readable root, or a local copy of
        the object it names under a readable prefix; with `sha256`, a file whose bytes have it.

        Raises:
            InvalidArgumentError: empty, NUL bytes, too long, or the wrong kind of file (a directory
                where a file is read, a device, a FIFO).
            PermissionDeniedError: outside every readable root or prefix.
            NotFoundError: nothing is there.
            FailedPreconditionError: the bytes do not have the SHA-256 given.
            ResourceExhaustedError, UnavailableError: an object too large, a store out of reach.
        """
        path = (
            self.remote.fetch(uri, field_name, kind=kind)
            if is_remote(uri)
            else self._local_readable(uri, field_name, kind)
        )
        check_sha256(path, sha256, field_name)
        return path

    def _local_readable(self, uri: str, field_name: str, kind: Kind) -> Path:
        path = self._confined(uri, field_name, self.readable_roots(), "--read-root")
        try:
            mode = path.stat().st_mode
        except FileNotFoundError:
            raise NotFoundError(f"{field_name}: nothing at {path}") from None
        except OSError as error:
            raise InvalidArgumentError(field_name, f"cannot be read: {error.strerror}") from None
        if kind == "directory" and not stat.S_ISDIR(mode):
            raise InvalidArgumentError(field_name, f"{path} is not a directory")
        if stat.S_ISDIR(mode):
            self._check_links_inside(path, field_name)
        if kind == "file" and not stat.S_ISREG(mode):
            what = "a directory" if stat.S_ISDIR(mode) else "not a regular file (a device, FIFO or socket)"
            raise InvalidArgumentError(field_name, f"{path} is {what}; name a file")
        if kind == "any" and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise InvalidArgumentError(field_name, f"{path} is not a regular file or directory")
        return path

    def _check_links_inside(self, directory: Path, field_name: str) -> None:
        """Every entry of a directory a call names must resolve inside the readable roots: a link in
        a granted directory to a file elsewhere (tokenizer.json -> /etc/...) is not a way out."""
        roots = self.readable_roots()
        for folder, subfolders, files in os.walk(directory):
            for name in (*subfolders, *files):
                entry = Path(folder) / name
                if entry.is_symlink() and not _under(Path(os.path.realpath(entry)), roots):
                    raise PermissionDeniedError(
                        f"{field_name}: {entry} links outside the directories this service may read; "
                        "copy the file in instead",
                        reason="LINK_OUTSIDE_ROOTS",
                    )

    def staged_writable(self, uri: str, field_name: str) -> tuple[Path, str | None]:
        """Where to write what `uri` names: the local path (writable(), and None), or for an
        object-store URI a fresh local folder to write into and the URI to publish() it to."""
        if not is_remote(uri):
            return self.writable(uri, field_name), None
        self.remote.check_writable(uri, field_name)
        staging = self.store / "cache" / "outgoing"
        staging.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix="export-", dir=staging)) / "out", uri

    def writable(self, uri: str, field_name: str) -> Path:
        """Where `uri` says to write, under a writable root (need not exist yet).

        Raises:
            InvalidArgumentError: empty, NUL bytes, too long, or another scheme.
            PermissionDeniedError: outside every writable root.
        """
        path = self._confined(uri, field_name, self.writable_roots(), "--write-root")
        store = Path(os.path.realpath(self.store))
        owned = tuple(store / name for name in self.managed)
        if _under(path, owned):
            raise PermissionDeniedError(
                f"{field_name}: {path} lies in what the services manage in their store ("
                + ", ".join(f"{name}/" for name in self.managed)
                + "); export somewhere else, e.g. exports/ under the store or a --write-root",
                reason="SERVICE_MANAGED_PATH",
            )
        return path

    def _confined(self, uri: str, field_name: str, roots: tuple[Path, ...], flag: str) -> Path:
        path = local_path(uri, self.store, field_name)
        resolved = Path(os.path.realpath(path))
        if not _under(resolved, roots):
            allowed = ", ".join(str(root) for root in roots)
            shown = str(path) if resolved == path else f"{path} (which resolves to {resolved})"
            raise PermissionDeniedError(
                f"{field_name}: {shown} is outside the directories this service may use ({allowed}); "
                f"the operator can allow more with {flag}",
                reason="PATH_OUTSIDE_ROOTS",
            )
        return resolved


def local_path(uri: str, store: Path, field_name: str) -> Path:
    """The local path a URI names: `file:///abs`, `/abs`, or relative to `store`; not yet confined.

    Raises:
        InvalidArgumentError: empty, NUL bytes, names over the POSIX limits, or a scheme other than file.
    """
    if not uri:
        raise InvalidArgumentError(field_name, "is empty; give a path or a file:// URI")
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        path = Path(unquote(parsed.path))
    elif parsed.scheme and len(parsed.scheme) > 1:  # one letter is a Windows drive, not a scheme
        raise InvalidArgumentError(
            field_name, f"scheme {parsed.scheme!r} is not supported; use a path or a file:// URI"
        )
    else:
        path = Path(uri).expanduser() if uri.startswith("~") else Path(uri)
    if "\x00" in str(path):
        raise InvalidArgumentError(field_name, "contains a NUL byte (or %00); no path can")
    path = path if path.is_absolute() else store / path
    if len(os.fsencode(path)) > MAX_PATH_BYTES or any(len(os.fsencode(part)) > MAX_NAME_BYTES for part in path.parts):
        raise InvalidArgumentError(
            field_name, f"is too long: paths are at most {MAX_PATH_BYTES} bytes, each name {MAX_NAME_BYTES}"
        )
    return path
