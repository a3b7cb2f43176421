"""The vocab service's application layer: versions, observations, updates and exports, no gRPC.

It owns the repository and the roots a caller may name files under; it checks what the domain
needs checked (sizes, ranges, which version an observation counted) and raises `core.errors`.
The servicer maps messages onto it.
"""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from driftlm.services.core.artifacts import file_sha256
from driftlm.services.core.corpus import Corpus, corpus_paths, open_corpus, texts_of_files
from driftlm.services.core.engine import IN_PROCESS, Engine, EngineChoice, RayCluster
from driftlm.services.core.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    ResourceExhaustedError,
)
from driftlm.services.core.paths import FileRoots
from driftlm.services.core.tokenizer_files import export_directory
from driftlm.services.core.vocabulary import SpecialTokens, VocabularyError

from .drift import DriftReport, measure_drift
from .observation import Observation, PartialObservation, SliceCounter, finish_observation
from .protection import DEFAULT_LANGUAGE, DEFAULT_TOP_WORDS, MAX_TOP_WORDS, UnknownLanguageError, pieces_of
from .repository import Proposal, VersionRecord, VocabRepository
from .tokenization import BYTES_PER_PIECE, BatchTooLargeError, TokenizedBatch, tokenize_batch
from .tokenizer_sources import DEFAULT_VOCAB_SIZE, load_tokenizer_directory, train_tokenizer
from .update import Change, UpdateSizeError, propose_change

DEFAULT_MAX_CANDIDATES = 10_000
MAX_CANDIDATES = 1_000_000
# A base vocabulary's size: tokenizers panics (and aborts the process) on absurd sizes.
MIN_VOCAB_SIZE = 100
MAX_VOCAB_SIZE = 1_000_000
# Longest lineage name a base version is registered under.
MAX_LINEAGE = 64
DEFAULT_MIN_COUNT = 2
# History observations one update may name.
MAX_HISTORY_OBSERVATIONS = 1_000
MAX_TOKENIZE_TEXTS = 100_000
DEFAULT_DRIFT_TOP_N = 1000
DEFAULT_DRIFT_LIST_SIZE = 20


@dataclass(frozen=True)
class VersionView:
    """A version as callers see it: its record, where its tokenizer.json is, its special tokens."""

    record: VersionRecord
    tokenizer_uri: str
    tokenizer_sha256: str
    special: SpecialTokens
    # Empty unless asked for.
    tokenizer_json: str = ""


@dataclass(frozen=True)
class UpdateRequest:
    """What a proposed update takes (ProposeUpdate's fields; 0 or None means the default)."""

    version_id: str
    observation_ids: Sequence[str]
    k: int
    min_count: int = 0
    history_observation_ids: Sequence[str] = ()
    protected_pieces: Sequence[str] = ()
    # "" means DEFAULT_LANGUAGE; "none" protects no language's words.
    protected_words_language: str = ""
    protected_top_words: int | None = None


@dataclass(frozen=True)
class ProposedUpdate:
    """A stored proposal and how many pieces it had to keep."""

    proposal: Proposal
    change: Change
    protected_piece_count: int


@dataclass(frozen=True)
class VersionDiff:
    """Pieces in one version and not the other, as (id, piece), and kept pieces whose id moved."""

    added: list[tuple[int, str]] = field(default_factory=list)
    removed: list[tuple[int, str]] = field(default_factory=list)
    moved_count: int = 0


class VocabApp:
    """Every operation of the vocab service, over one VocabRepository."""

    def __init__(
        self, repository: VocabRepository, roots: FileRoots, *, max_answer_bytes: int, ray: RayCluster | None = None
    ) -> None:
        self.repository = repository
        self.ray = ray
        self.roots = roots
        self._max_answer_pieces = max_answer_bytes // BYTES_PER_PIECE

    # Versions --------------------------------------------------------------------------------

    def view(self, record: VersionRecord, *, include_tokenizer_json: bool = False) -> VersionView:
        tokenizer_file = self.repository.version_directory(record.version_id) / "tokenizer.json"
        return VersionView(
            record=record,
            tokenizer_uri=tokenizer_file.as_uri(),
            tokenizer_sha256=file_sha256(tokenizer_file),
            special=self.repository.load(record.version_id)[0].special_tokens,
            tokenizer_json=self.repository.tokenizer_json(record.version_id) if include_tokenizer_json else "",
        )

    def create_from_directory(self, uri: str, sha256: str, display_name: str, lineage: str = "") -> VersionRecord:
        """A base version from a Hugging Face tokenizer directory the caller may read."""
        directory = self.roots.readable(uri, "tokenizer_dir.uri", kind="directory", sha256=sha256)
        try:
            tokenizer_json = load_tokenizer_directory(directory)
        except VocabularyError as error:
            raise InvalidArgumentError("tokenizer_dir", str(error)) from error
        return self.repository.create_base(tokenizer_json, display_name, _checked_lineage(lineage))

    def create_from_corpus(
        self, corpus: Corpus, *, vocab_size: int, cased: bool, display_name: str, lineage: str = ""
    ) -> VersionRecord:
        """A base version trained on a corpus (vocab_size 0: DEFAULT_VOCAB_SIZE)."""
        vocab_size = vocab_size or DEFAULT_VOCAB_SIZE
        if not MIN_VOCAB_SIZE <= vocab_size <= MAX_VOCAB_SIZE:
            raise InvalidArgumentError(
                "vocab_size",
                f"must be in [{MIN_VOCAB_SIZE}, {MAX_VOCAB_SIZE}] (0 means {DEFAULT_VOCAB_SIZE}), got {vocab_size}",
            )
        texts = list(open_corpus(corpus, self.roots, "training_corpus"))
        if not any(text.strip() for text in texts):
            raise InvalidArgumentError("training_corpus", "has no text to train on")
        tokenizer_json = train_tokenizer(texts, vocab_size=vocab_size, cased=cased)
        return self.repository.create_base(tokenizer_json, display_name, _checked_lineage(lineage))

    def diff(self, from_version_id: str, to_version_id: str) -> VersionDiff:
        before, _ = self.repository.load(from_version_id)
        after, _ = self.repository.load(to_version_id)
        old, new = before.piece_ids, after.piece_ids
        return VersionDiff(
            added=sorted((new[p], p) for p in new.keys() - old.keys()),
            removed=sorted((old[p], p) for p in old.keys() - new.keys()),
            moved_count=sum(1 for p, i in old.items() if p in new and new[p] != i),
        )

    def export(self, version_id: str, destination_uri: str) -> str:
        """The version's tokenizer files in a new directory (local or object store); its URI."""
        vocabulary, _ = self.repository.load(version_id)
        destination, remote_uri = self.roots.staged_writable(destination_uri, "destination.uri")
        try:
            try:
                written = export_directory(vocabulary, destination)
            except FileExistsError as error:
                raise AlreadyExistsError(f"destination.uri: {destination} exists; export to a new directory") from error
            if remote_uri is None:
                return written.as_uri()
            return self.roots.remote.publish(written, remote_uri, "destination.uri")
        finally:
            if remote_uri is not None:  # the local staging copy of an upload
                shutil.rmtree(destination.parent, ignore_errors=True)

    # Observations and updates ----------------------------------------------------------------

    def observe(
        self,
        version_id: str,
        corpus: Corpus,
        streamed: Iterable[str] = (),
        *,
        slice_label: str,
        max_candidates: int,
        min_count: int,
        engine: EngineChoice = IN_PROCESS,
    ) -> Observation:
        """Count a slice's pieces and candidate words under a version, and keep the observation.

        The corpus's files are shards 0..n-1 and its inline texts, followed by the streamed ones,
        the next shard; the Ray engine counts the files on the cluster.
        """
        vocabulary, tokenizer = self.repository.load(version_id)
        max_candidates = max_candidates or DEFAULT_MAX_CANDIDATES
        min_count = min_count or DEFAULT_MIN_COUNT
        if not 1 <= max_candidates <= MAX_CANDIDATES:
            raise InvalidArgumentError("max_candidates", f"must be in [1, {MAX_CANDIDATES}], got {max_candidates}")
        if min_count < 1:
            raise InvalidArgumentError("min_candidate_count", f"must be >= 1 (0 means 2), got {min_count}")
        paths = corpus_paths(corpus, self.roots, "corpus") if corpus.files else []
        counter = SliceCounter(vocabulary, tokenizer)
        if engine.engine is Engine.RAY:
            if not paths:
                raise InvalidArgumentError(
                    "corpus",
                    "the Ray engine reads files: name the corpus as uri or shards, or ask for the local engine",
                )
            counter.partial = self._observe_on_ray(paths, vocabulary.tokenizer_json, corpus, engine.workers)
        else:
            for shard, path in enumerate(paths):
                texts = texts_of_files(
                    [path], "corpus", text_field=corpus.text_field, corpus_format=corpus.corpus_format
                )
                counter.add_shard(shard, texts)
        counter.add_shard(len(paths), itertools.chain(corpus.texts, streamed))
        observation = finish_observation(
            vocabulary,
            tokenizer,
            counter.partial,
            version_id=version_id,
            slice_label=slice_label,
            max_candidates=max_candidates,
            min_candidate_count=min_count,
        )
        self.repository.save_observation(observation)
        return observation

    def _observe_on_ray(
        self, paths: list[Path], tokenizer_json: str, corpus: Corpus, workers: int
    ) -> PartialObservation:
        if self.ray is None:
            raise FailedPreconditionError("this service has no Ray cluster configured", reason="RAY_NOT_CONFIGURED")
        from .ray_observation import observe_on_ray  # imports Ray Data's client side only when asked for

        return observe_on_ray(
            self.ray,
            paths,
            tokenizer_json,
            text_field=corpus.text_field,
            corpus_format=corpus.corpus_format,
            workers=workers,
        )

    def propose(self, request: UpdateRequest) -> ProposedUpdate:
        """A fixed-size update from observations of the version, stored as a proposal."""
        vocabulary, _ = self.repository.load(request.version_id)
        if not request.observation_ids:
            raise InvalidArgumentError("observation_ids", "name at least one observation of the version")
        if len(request.history_observation_ids) > MAX_HISTORY_OBSERVATIONS:
            raise InvalidArgumentError(
                "history_observation_ids",
                f"names {len(request.history_observation_ids)} observations; at most {MAX_HISTORY_OBSERVATIONS}",
            )
        observations = self._observations_of(request.version_id, request.observation_ids)
        if request.min_count < 0:
            raise InvalidArgumentError(
                "min_count", f"must be >= 0 (0 means {DEFAULT_MIN_COUNT}), got {request.min_count}"
            )
        history = self.repository.recent_use(request.version_id)
        if history is None and request.history_observation_ids:
            seeded = self._observations_of(request.version_id, request.history_observation_ids)
            history = np.stack([o.counts for o in seeded]).sum(axis=0).astype(np.float64)
        protected = self._protected_pieces(request) & set(vocabulary.piece_ids)
        try:
            change = propose_change(
                vocabulary,
                observations,
                k=request.k,
                min_count=request.min_count or DEFAULT_MIN_COUNT,
                protected=sorted(protected),
                parent_use=history,
            )
        except UpdateSizeError as error:
            raise InvalidArgumentError("k", str(error)) from error
        proposal = self.repository.save_proposal(request.version_id, change, [o.slice_label for o in observations])
        return ProposedUpdate(proposal, change, len(protected))

    def commit(self, proposal_id: str, display_name: str) -> VersionRecord:
        return self.repository.commit(self.repository.load_proposal(proposal_id), display_name)

    def measure_drift(self, before_id: str, after_id: str, *, top_n: int, list_size: int) -> DriftReport:
        before = self.repository.load_observation(before_id)
        after = self.repository.load_observation(after_id)
        if top_n < 0 or list_size < 0:
            raise InvalidArgumentError("top_n" if top_n < 0 else "list_size", "must be >= 0")
        return measure_drift(
            before,
            self.repository.load(before.version_id)[0].pieces,
            after,
            self.repository.load(after.version_id)[0].pieces,
            top_n=top_n or DEFAULT_DRIFT_TOP_N,
            list_size=list_size or DEFAULT_DRIFT_LIST_SIZE,
        )

    def _observations_of(self, version_id: str, observation_ids: Sequence[str]) -> list[Observation]:
        """Stored observations, each of `version_id`."""
        observations = [self.repository.load_observation(i) for i in observation_ids]
        for observation in observations:
            if observation.version_id != version_id:
                raise FailedPreconditionError(
                    f"observation {observation.observation_id} counted version {observation.version_id}, not "
                    f"{version_id}; observe the slice with {version_id} first",
                    reason="OBSERVATION_OF_ANOTHER_VERSION",
                )
        return observations

    def _protected_pieces(self, request: UpdateRequest) -> set[str]:
        """The pieces the request protects and those its language's most frequent words need."""
        top_words = DEFAULT_TOP_WORDS if request.protected_top_words is None else request.protected_top_words
        if not 0 <= top_words <= MAX_TOP_WORDS:
            raise InvalidArgumentError(
                "protected_top_words", f"must be in [0, {MAX_TOP_WORDS}] (unset: {DEFAULT_TOP_WORDS}), got {top_words}"
            )
        tokenizers = {
            self.repository.tokenizer_json(request.version_id),
            self.repository.tokenizer_json(self.repository.root_of(request.version_id)),
        }
        try:
            words = pieces_of(tokenizers, request.protected_words_language or DEFAULT_LANGUAGE, top_words)
        except UnknownLanguageError as error:
            raise InvalidArgumentError("protected_words_language", str(error)) from error
        return set(request.protected_pieces) | words

    # Tokenization ----------------------------------------------------------------------------

    def tokenize(
        self, version_id: str, texts: Sequence[str], *, max_length: int, pad: bool, add_special_tokens: bool
    ) -> TokenizedBatch:
        """The texts' piece ids under a version (max_length 0: no limit)."""
        if len(texts) > MAX_TOKENIZE_TEXTS:
            raise InvalidArgumentError("texts", f"has {len(texts)} texts; send at most {MAX_TOKENIZE_TEXTS} per call")
        if max_length < 0:
            raise InvalidArgumentError("max_length", f"must be >= 0 (0 means no limit), got {max_length}")
        vocabulary, tokenizer = self.repository.load(version_id)
        if max_length:
            specials = tokenizer.num_special_tokens_to_add(is_pair=False) if add_special_tokens else 0
            if max_length <= specials:
                raise InvalidArgumentError(
                    "max_length", f"must leave room for text after the {specials} special tokens"
                )
            tokenizer = self.repository.load_truncating(version_id, max_length)
        try:
            return tokenize_batch(
                tokenizer,
                list(texts),
                pad=pad,
                add_special_tokens=add_special_tokens,
                pad_id=max(vocabulary.special_tokens.pad_id, 0),
                max_pieces=self._max_answer_pieces,
            )
        except BatchTooLargeError as error:
            raise ResourceExhaustedError(str(error), reason="ANSWER_TOO_LARGE") from error


def _checked_lineage(lineage: str) -> str:
    """The lineage, or INVALID_ARGUMENT for one that is not a short plain name."""
    if len(lineage) > MAX_LINEAGE or not all(c.isascii() and (c.isalnum() or c in "-_./") for c in lineage):
        raise InvalidArgumentError(
            "lineage", f"must be at most {MAX_LINEAGE} letters, digits, '-', '_', '.' or '/' (a name for the chain)"
        )
    return lineage
