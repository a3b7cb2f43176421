"""The vocab service's store: immutable versions, observations and proposals on disk.

    <store>/vocab/versions/<version_id>/tokenizer.json   the version's tokenizer
    <store>/vocab/versions/<version_id>/version.json     its metadata and change
    <store>/vocab/versions/<version_id>/recent_use.safetensors   its pieces' decayed use (not for a base)
    <store>/vocab/children/<parent_id>                   the id of its only child
    <store>/vocab/observations/<observation_id>.json
    <store>/vocab/proposals/<proposal_id>.json (and .recent_use.safetensors: the child's history)

A version directory is filled under a temporary name and renamed into place, so it is either
whole or absent. A commit holds an exclusive file lock (released by the kernel if the process
dies) while it checks that the parent has no child yet, publishes the version and records the
child, so two commits on one parent, from threads or from processes sharing the store, cannot
both win.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save
from tokenizers import Tokenizer

from driftlm.services.core import store
from driftlm.services.core.errors import AbortedError, NotFoundError
from driftlm.services.core.vocabulary import WordPieceVocabulary

from . import metrics
from .observation import Observation
from .update import Change, PieceChange

# Tokenizers kept parsed in memory (about 5 MB each for 30k pieces).
_CACHED_TOKENIZERS = 16


@dataclass(frozen=True)
class VersionRecord:
    """A committed version's metadata."""

    version_id: str
    parent_id: str
    size: int
    create_time: str
    display_name: str
    added: list[dict[str, Any]] = field(default_factory=list)
    removed: list[dict[str, Any]] = field(default_factory=list)
    slice_labels: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able record (shallow: the lists are already JSON)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> VersionRecord:
        return cls(**record)


@dataclass(frozen=True)
class Proposal:
    """A change proposed for a version, stored until committed."""

    proposal_id: str
    version_id: str
    change: Change
    slice_labels: list[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "proposal_id": self.proposal_id,
            "version_id": self.version_id,
            "added": [piece.to_json() for piece in self.change.added],
            "removed": [piece.to_json() for piece in self.change.removed],
            "slice_labels": self.slice_labels,
        }

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> Proposal:
        def pieces(key: str) -> tuple[PieceChange, ...]:
            return tuple(
                PieceChange(p["piece"], p["id"], p["count"], tuple(p["parent_decomposition"])) for p in record[key]
            )

        change = Change(added=pieces("added"), removed=pieces("removed"))
        return cls(record["proposal_id"], record["version_id"], change, list(record["slice_labels"]))


def _tokenizer_digest(tokenizer_json: str) -> str:
    """The tokenizer's content, independent of the order its JSON lists keys in."""
    return json.dumps(json.loads(tokenizer_json), sort_keys=True, ensure_ascii=False)


def _content_id(prefix: str, *parts: str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode("utf-8", "surrogatepass") + b"\0")
    return f"{prefix}-{digest.hexdigest()[:16]}"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class VocabRepository:
    """Versions, observations and proposals under `<store>/vocab`; safe across threads and processes."""

    def __init__(self, store_root: Path) -> None:
        self.root = store_root / "vocab"
        self._versions = self.root / "versions"
        self._children = self.root / "children"
        self._observations = self.root / "observations"
        self._proposals = self.root / "proposals"
        for directory in (self._versions, self._children, self._observations, self._proposals):
            directory.mkdir(parents=True, exist_ok=True)
            store.remove_temporaries(directory)
        self._lock_path = self.root / "commit.lock"
        self._thread_lock = threading.Lock()
        self._tokenizers: OrderedDict[str, tuple[WordPieceVocabulary, Tokenizer]] = OrderedDict()
        self._cache_lock = threading.Lock()
        with self._exclusive():
            self._drop_unpublished_claims()
        metrics.count_versions_with(self._count_versions)

    def _count_versions(self) -> int:
        return sum(1 for entry in self._versions.iterdir() if not entry.name.startswith(store.TEMPORARY_PREFIX))

    def _drop_unpublished_claims(self) -> None:
        """Remove child markers whose version was never published (the process died in between).

        A commit claims its parent (writes the marker) before it publishes the child, so that no
        instant exists where a published child is unclaimed and a second, different child could
        commit. A claim without its version is a commit that never happened: no caller saw it.
        """
        for marker in self._children.iterdir():
            if marker.name.startswith(store.TEMPORARY_PREFIX) or not marker.is_file():
                continue
            child = marker.read_text(encoding="utf-8").strip()
            if not (self._versions / child / "version.json").is_file():
                marker.unlink()

    # Versions -------------------------------------------------------------------------------

    def version_directory(self, version_id: str) -> Path:
        """Where a version lives (NotFoundError when it does not exist)."""
        if not store.is_stored_id(version_id) or not (self._versions / version_id / "version.json").is_file():
            raise NotFoundError(
                f"vocab version {version_id[:200]!r} does not exist; ListVersions shows the versions there are"
            )
        return self._versions / version_id

    def get(self, version_id: str) -> VersionRecord:
        """A version's metadata."""
        return VersionRecord.from_json(store.read_json(self.version_directory(version_id) / "version.json"))

    def tokenizer_json(self, version_id: str) -> str:
        """A version's tokenizer.json text."""
        return (self.version_directory(version_id) / "tokenizer.json").read_text(encoding="utf-8")

    def load(self, version_id: str) -> tuple[WordPieceVocabulary, Tokenizer]:
        """A version's vocabulary and tokenizer (cached; never mutate the tokenizer)."""
        with self._cache_lock:
            if version_id in self._tokenizers:
                self._tokenizers.move_to_end(version_id)
                return self._tokenizers[version_id]
        text = self.tokenizer_json(version_id)
        loaded = (WordPieceVocabulary(text), Tokenizer.from_str(text))
        with self._cache_lock:
            self._tokenizers[version_id] = loaded
            while len(self._tokenizers) > _CACHED_TOKENIZERS:
                self._tokenizers.popitem(last=False)
        return loaded

    def load_truncating(self, version_id: str, max_length: int) -> Tokenizer:
        """A version's tokenizer that truncates to max_length pieces, specials included (cached)."""
        key = f"{version_id}@{max_length}"
        with self._cache_lock:
            if key in self._tokenizers:
                self._tokenizers.move_to_end(key)
                return self._tokenizers[key][1]
        vocabulary, _ = self.load(version_id)
        tokenizer = Tokenizer.from_str(vocabulary.tokenizer_json)
        tokenizer.enable_truncation(max_length)
        with self._cache_lock:
            self._tokenizers[key] = (vocabulary, tokenizer)
            while len(self._tokenizers) > _CACHED_TOKENIZERS:
                self._tokenizers.popitem(last=False)
        return tokenizer

    def list_versions(self) -> list[VersionRecord]:
        """Every version, newest first."""
        records = [
            VersionRecord.from_json(store.read_json(entry / "version.json"))
            for entry in self._versions.iterdir()
            if not entry.name.startswith(store.TEMPORARY_PREFIX) and (entry / "version.json").is_file()
        ]
        return sorted(records, key=lambda record: (record.create_time, record.version_id), reverse=True)

    def child_of(self, version_id: str) -> str | None:
        """The committed child of a version, if any."""
        marker = self._children / version_id
        return marker.read_text(encoding="utf-8").strip() if marker.is_file() else None

    def create_base(self, tokenizer_json: str, display_name: str, lineage: str = "") -> VersionRecord:
        """Store a base version (idempotent: the same tokenizer and lineage give the existing version)."""
        # "lineage:" keeps a lineage from ever reading as a parent's id (a child's id hashes its parent's).
        version_id = _content_id("v", f"lineage:{lineage}" if lineage else "", _tokenizer_digest(tokenizer_json))
        if (self._versions / version_id / "version.json").is_file():
            return self.get(version_id)
        record = VersionRecord(version_id, "", WordPieceVocabulary(tokenizer_json).size, _now(), display_name)
        with self._exclusive():
            self._publish(record, tokenizer_json)
        return self.get(version_id)

    def commit(self, proposal: Proposal, display_name: str) -> VersionRecord:
        """Make a proposal a version, child of its version.

        Idempotent: committing the same proposal again returns the version it made.

        Raises:
            NotFoundError: the proposal's version is gone.
            AbortedError: the version already has another child.
        """
        parent, _ = self.load(proposal.version_id)
        swaps = [
            (old.piece, new.piece, old.id)
            for new, old in zip(proposal.change.added, proposal.change.removed, strict=True)
        ]
        tokenizer_json = parent.with_swaps(swaps)
        recent_use = self._proposal_use(proposal.proposal_id)
        version_id = _content_id("v", proposal.version_id, _tokenizer_digest(tokenizer_json))
        with self._exclusive():
            child = self.child_of(proposal.version_id)
            if child == version_id and (self._versions / version_id / "version.json").is_file():
                return self.get(version_id)
            if child is not None and not (self._versions / child / "version.json").is_file():
                child = None  # a claim left by a commit that failed in this process: take it over
            if child is not None:
                raise AbortedError(
                    f"vocab version {proposal.version_id} already has a child, {child}; observe the slice with {child} "
                    "and propose again from it",
                    reason="VERSION_HAS_CHILD",
                )
            record = VersionRecord(
                version_id=version_id,
                parent_id=proposal.version_id,
                size=parent.size,
                create_time=_now(),
                display_name=display_name,
                added=[piece.to_json() for piece in proposal.change.added],
                removed=[piece.to_json() for piece in proposal.change.removed],
                slice_labels=proposal.slice_labels,
            )
            # Claim the parent first, then publish: see _drop_unpublished_claims.
            claim = self._children / proposal.version_id
            store.write_bytes_atomically(claim, version_id.encode())
            try:
                self._publish(record, tokenizer_json, recent_use)
            except BaseException:
                claim.unlink(missing_ok=True)
                raise
        return self.get(version_id)

    def _publish(self, record: VersionRecord, tokenizer_json: str, recent_use: np.ndarray | None = None) -> None:
        if (self._versions / record.version_id).exists():
            return
        with store.staged_directory(self._versions) as temporary:
            (temporary / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
            if recent_use is not None and recent_use.size:
                (temporary / "recent_use.safetensors").write_bytes(save({"recent_use": recent_use}))
            (temporary / "version.json").write_text(json.dumps(record.to_json(), ensure_ascii=False), encoding="utf-8")
            store.publish_directory(temporary, self._versions / record.version_id)
        metrics.CREATED.labels("update" if record.parent_id else "base").inc()

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """One writer at a time: across threads (the lock) and processes (flock on a file)."""
        with self._thread_lock, self._lock_path.open("a") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)

    # Observations and proposals -------------------------------------------------------------

    def save_observation(self, observation: Observation) -> None:
        """Store an observation (idempotent)."""
        store.write_json_atomically(self._observations / f"{observation.observation_id}.json", observation.to_json())

    def load_observation(self, observation_id: str) -> Observation:
        """A stored observation (NotFoundError when there is none)."""
        path = self._observations / f"{observation_id}.json"
        if not store.is_stored_id(observation_id) or not path.is_file():
            raise NotFoundError(
                f"observation {observation_id[:200]!r} does not exist; ObserveSlice returns observation ids"
            )
        return Observation.from_json(store.read_json(path))

    def root_of(self, version_id: str) -> str:
        """The base version of the chain `version_id` belongs to."""
        record = self.get(version_id)
        while record.parent_id:
            record = self.get(record.parent_id)
        return record.version_id

    def recent_use(self, version_id: str) -> np.ndarray | None:
        """A version's decayed use of each piece; None for a base version (no history)."""
        path = self.version_directory(version_id) / "recent_use.safetensors"
        return load_file(str(path))["recent_use"] if path.is_file() else None

    def _proposal_use(self, proposal_id: str) -> np.ndarray | None:
        path = self._proposals / f"{proposal_id}.recent_use.safetensors"
        return load_file(str(path))["recent_use"] if path.is_file() else None

    def save_proposal(self, version_id: str, change: Change, slice_labels: list[str]) -> Proposal:
        """Store a proposal under a content-hashed id."""
        body = json.dumps(
            {
                "version_id": version_id,
                "added": [p.to_json() for p in change.added],
                "removed": [p.to_json() for p in change.removed],
            },
            sort_keys=True,
        )
        proposal = Proposal(_content_id("prop", body), version_id, change, slice_labels)
        if change.recent_use.size:
            store.write_bytes_atomically(
                self._proposals / f"{proposal.proposal_id}.recent_use.safetensors",
                save({"recent_use": change.recent_use}),
            )
        store.write_json_atomically(self._proposals / f"{proposal.proposal_id}.json", proposal.to_json())
        return proposal

    def load_proposal(self, proposal_id: str) -> Proposal:
        """A stored proposal (NotFoundError when there is none)."""
        path = self._proposals / f"{proposal_id}.json"
        if not store.is_stored_id(proposal_id) or not path.is_file():
            raise NotFoundError(f"proposal {proposal_id[:200]!r} does not exist; ProposeUpdate returns proposal ids")
        return Proposal.from_json(store.read_json(path))
