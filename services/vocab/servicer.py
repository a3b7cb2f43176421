"""VocabService over gRPC: translate messages, call the domain, translate back."""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import grpc
import numpy as np

from driftlm.services.runtime.corpus import CorpusError, CorpusFormat, read_texts
from driftlm.services.runtime.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
)
from driftlm.services.runtime.limits import RequestLimits
from driftlm.services.runtime.paging import page_of
from driftlm.services.runtime.paths import FileRoots
from driftlm.services.runtime.remote import file_sha256
from driftlm.services.runtime.tensors import array_to_tensor
from driftlm.v1 import common_pb2, vocab_pb2, vocab_pb2_grpc

from .drift import measure_drift
from .export import export_directory
from .observation import Observation, observe_slice
from .protection import (
    DEFAULT_LANGUAGE,
    DEFAULT_TOP_WORDS,
    MAX_TOP_WORDS,
    UnknownLanguageError,
    pieces_of,
)
from .repository import VersionRecord, VocabRepository
from .tokenization import BYTES_PER_PIECE, BatchTooLargeError, tokenize_batch
from .update import UpdateSizeError, propose_change
from .wordpiece import DEFAULT_VOCAB_SIZE, VocabularyError, load_tokenizer_directory, train_tokenizer

DEFAULT_MAX_CANDIDATES = 10_000
# A base vocabulary's size: tokenizers panics (and aborts the process) on absurd sizes.
MIN_VOCAB_SIZE = 100
MAX_VOCAB_SIZE = 1_000_000
DEFAULT_MIN_COUNT = 2
# History observations one ProposeUpdate may name.
MAX_HISTORY_OBSERVATIONS = 1_000
MAX_TOKENIZE_TEXTS = 100_000
_FORMATS = {
    common_pb2.CORPUS_FORMAT_JSONL: CorpusFormat.JSONL,
    common_pb2.CORPUS_FORMAT_CSV: CorpusFormat.CSV,
    common_pb2.CORPUS_FORMAT_PARQUET: CorpusFormat.PARQUET,
    common_pb2.CORPUS_FORMAT_TEXT: CorpusFormat.TEXT,
}


def _piece_count(piece: dict[str, object] | tuple[str, int], index: int = -1) -> vocab_pb2.PieceCount:
    if isinstance(piece, tuple):
        return vocab_pb2.PieceCount(piece=piece[0], count=piece[1], id=index)
    return vocab_pb2.PieceCount(
        piece=str(piece["piece"]),
        id=int(piece["id"]),  # type: ignore[call-overload]
        count=int(piece["count"]),  # type: ignore[call-overload]
        parent_decomposition=list(piece.get("parent_decomposition", ())),  # type: ignore[call-overload]
    )


class VocabServicer(vocab_pb2_grpc.VocabServiceServicer):
    """Every RPC of VocabService, over one VocabRepository."""

    def __init__(self, repository: VocabRepository, roots: FileRoots, limits: RequestLimits) -> None:
        self._repository = repository
        self._roots = roots
        self._limits = limits

    def _version_message(
        self, record: VersionRecord, *, include_tokenizer_json: bool = False
    ) -> vocab_pb2.VocabVersion:
        directory = self._repository.version_directory(record.version_id)
        special = self._repository.load(record.version_id)[0].special_tokens
        return vocab_pb2.VocabVersion(
            version_id=record.version_id,
            parent_id=record.parent_id,
            size=record.size,
            create_time=record.create_time,
            display_name=record.display_name,
            change=vocab_pb2.VocabChange(
                added=[_piece_count(p) for p in record.added], removed=[_piece_count(p) for p in record.removed]
            ),
            tokenizer=common_pb2.ArtifactRef(
                uri=(directory / "tokenizer.json").as_uri(), sha256=file_sha256(directory / "tokenizer.json")
            ),
            slice_labels=record.slice_labels,
            tokenizer_json=self._repository.tokenizer_json(record.version_id) if include_tokenizer_json else "",
            special_tokens=vocab_pb2.SpecialTokens(
                reserved_ids=special.reserved_ids,
                unknown_id=special.unknown_id,
                mask_id=special.mask_id,
                pad_id=special.pad_id,
                cls_id=special.cls_id,
                sep_id=special.sep_id,
            ),
        )

    def _corpus_texts(self, corpus: common_pb2.CorpusSource, field: str) -> Iterator[str]:
        if corpus.WhichOneof("source") == "uri":
            path = self._roots.readable(corpus.uri.uri, f"{field}.uri.uri", sha256=corpus.uri.sha256)
            if corpus.format not in _FORMATS and corpus.format != common_pb2.CORPUS_FORMAT_UNSPECIFIED:
                raise InvalidArgumentError(
                    f"{field}.format", f"is not a CorpusFormat this service knows: {corpus.format}"
                )
            return read_texts(path, text_field=corpus.text_field or "text", corpus_format=_FORMATS.get(corpus.format))
        return iter(corpus.texts.texts)

    def CreateVocabulary(
        self, request: vocab_pb2.CreateVocabularyRequest, context: grpc.ServicerContext
    ) -> vocab_pb2.CreateVocabularyResponse:
        origin = request.WhichOneof("origin")
        if origin == "tokenizer_dir":
            directory = self._roots.readable(
                request.tokenizer_dir.uri, "tokenizer_dir.uri", kind="directory", sha256=request.tokenizer_dir.sha256
            )
            try:
                tokenizer_json = load_tokenizer_directory(directory)
            except VocabularyError as error:
                raise InvalidArgumentError("tokenizer_dir", str(error)) from error
        elif origin == "training_corpus":
            vocab_size = request.vocab_size or DEFAULT_VOCAB_SIZE
            if not MIN_VOCAB_SIZE <= vocab_size <= MAX_VOCAB_SIZE:
                raise InvalidArgumentError(
                    "vocab_size",
                    f"must be in [{MIN_VOCAB_SIZE}, {MAX_VOCAB_SIZE}] (0 means {DEFAULT_VOCAB_SIZE}), got {vocab_size}",
                )
            with _corpus_errors("training_corpus"):
                texts = list(self._corpus_texts(request.training_corpus, "training_corpus"))
            if not any(text.strip() for text in texts):
                raise InvalidArgumentError("training_corpus", "has no text to train on")
            tokenizer_json = train_tokenizer(texts, vocab_size=vocab_size, cased=request.cased)
        else:
            raise InvalidArgumentError("origin", "set tokenizer_dir (an existing tokenizer) or training_corpus")
        record = self._repository.create_base(tokenizer_json, request.display_name)
        return vocab_pb2.CreateVocabularyResponse(version=self._version_message(record))

    def ObserveSlice(
        self, request_iterator: Iterator[vocab_pb2.ObserveSliceRequest], context: grpc.ServicerContext
    ) -> vocab_pb2.ObserveSliceResponse:
        first = next(request_iterator, None)
        if first is None:
            raise InvalidArgumentError("request", "the request stream carried no messages")
        vocabulary, tokenizer = self._repository.load(first.version_id)
        max_candidates = first.max_candidates or DEFAULT_MAX_CANDIDATES
        min_count = first.min_candidate_count or DEFAULT_MIN_COUNT
        if not 1 <= max_candidates <= 1_000_000:
            raise InvalidArgumentError("max_candidates", f"must be in [1, 1000000], got {max_candidates}")
        if min_count < 1:
            raise InvalidArgumentError("min_candidate_count", f"must be >= 1 (0 means 2), got {min_count}")
        texts: Iterable[str] = itertools.chain(
            self._corpus_texts(first.corpus, "corpus"),
            _streamed_texts(request_iterator, self._limits.max_stream_bytes - first.ByteSize()),
        )
        with _corpus_errors("corpus"):
            observation = observe_slice(
                vocabulary,
                tokenizer,
                texts,
                version_id=first.version_id,
                slice_label=first.slice_label,
                max_candidates=max_candidates,
                min_candidate_count=min_count,
            )
        self._repository.save_observation(observation)
        return vocab_pb2.ObserveSliceResponse(
            observation_id=observation.observation_id,
            text_count=observation.text_count,
            piece_count=observation.piece_count,
            word_count=observation.word_count,
            unknown_rate=observation.unknown_rate,
            pieces_per_word=observation.pieces_per_word,
            top_candidates=[_piece_count(candidate) for candidate in observation.candidates[:50]],
            candidate_count=len(observation.candidates),
        )

    def ProposeUpdate(
        self, request: vocab_pb2.ProposeUpdateRequest, context: grpc.ServicerContext
    ) -> vocab_pb2.ProposeUpdateResponse:
        vocabulary, _ = self._repository.load(request.version_id)
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
        history = self._repository.recent_use(request.version_id)
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
        proposal = self._repository.save_proposal(
            request.version_id, change, [observation.slice_label for observation in observations]
        )
        return vocab_pb2.ProposeUpdateResponse(
            proposal_id=proposal.proposal_id,
            change=vocab_pb2.VocabChange(
                added=[_piece_count(p.to_json()) for p in change.added],
                removed=[_piece_count(p.to_json()) for p in change.removed],
            ),
            protected_piece_count=len(protected),
        )

    def _observations_of(self, version_id: str, observation_ids: Sequence[str]) -> list[Observation]:
        """Stored observations, each of `version_id`."""
        observations = [self._repository.load_observation(i) for i in observation_ids]
        for observation in observations:
            if observation.version_id != version_id:
                raise FailedPreconditionError(
                    f"observation {observation.observation_id} counted version {observation.version_id}, not "
                    f"{version_id}; observe the slice with {version_id} first",
                    reason="OBSERVATION_OF_ANOTHER_VERSION",
                )
        return observations

    def _protected_pieces(self, request: vocab_pb2.ProposeUpdateRequest) -> set[str]:
        """The pieces the request protects and those its language's most frequent words need."""
        top_words = request.protected_top_words if request.HasField("protected_top_words") else DEFAULT_TOP_WORDS
        if not 0 <= top_words <= MAX_TOP_WORDS:
            raise InvalidArgumentError(
                "protected_top_words", f"must be in [0, {MAX_TOP_WORDS}] (unset: {DEFAULT_TOP_WORDS}), got {top_words}"
            )
        tokenizers = {
            self._repository.tokenizer_json(request.version_id),
            self._repository.tokenizer_json(self._repository.root_of(request.version_id)),
        }
        try:
            words = pieces_of(tokenizers, request.protected_words_language or DEFAULT_LANGUAGE, top_words)
        except UnknownLanguageError as error:
            raise InvalidArgumentError("protected_words_language", str(error)) from error
        return set(request.protected_pieces) | words

    def CommitUpdate(
        self, request: vocab_pb2.CommitUpdateRequest, context: grpc.ServicerContext
    ) -> vocab_pb2.CommitUpdateResponse:
        record = self._repository.commit(self._repository.load_proposal(request.proposal_id), request.display_name)
        return vocab_pb2.CommitUpdateResponse(version=self._version_message(record))

    def GetVersion(
        self, request: vocab_pb2.GetVersionRequest, context: grpc.ServicerContext
    ) -> vocab_pb2.GetVersionResponse:
        record = self._repository.get(request.version_id)
        return vocab_pb2.GetVersionResponse(
            version=self._version_message(record, include_tokenizer_json=request.include_tokenizer_json)
        )

    def ListVersions(
        self, request: vocab_pb2.ListVersionsRequest, context: grpc.ServicerContext
    ) -> vocab_pb2.ListVersionsResponse:
        versions, token = page_of(self._repository.list_versions(), request.page_size, request.page_token)
        return vocab_pb2.ListVersionsResponse(
            versions=[self._version_message(record) for record in versions], next_page_token=token
        )

    def DiffVersions(
        self, request: vocab_pb2.DiffVersionsRequest, context: grpc.ServicerContext
    ) -> vocab_pb2.DiffVersionsResponse:
        before, _ = self._repository.load(request.from_version_id)
        after, _ = self._repository.load(request.to_version_id)
        added = sorted((after.piece_ids[p], p) for p in after.piece_ids.keys() - before.piece_ids.keys())
        removed = sorted((before.piece_ids[p], p) for p in before.piece_ids.keys() - after.piece_ids.keys())
        moved = sum(1 for p, i in before.piece_ids.items() if p in after.piece_ids and after.piece_ids[p] != i)
        return vocab_pb2.DiffVersionsResponse(
            added=[vocab_pb2.PieceCount(piece=p, id=i) for i, p in added],
            removed=[vocab_pb2.PieceCount(piece=p, id=i) for i, p in removed],
            moved_count=moved,
        )

    def MeasureDrift(
        self, request: vocab_pb2.MeasureDriftRequest, context: grpc.ServicerContext
    ) -> vocab_pb2.MeasureDriftResponse:
        before = self._repository.load_observation(request.before_observation_id)
        after = self._repository.load_observation(request.after_observation_id)
        if request.top_n < 0 or request.list_size < 0:
            raise InvalidArgumentError("top_n" if request.top_n < 0 else "list_size", "must be >= 0")
        report = measure_drift(
            before,
            self._repository.load(before.version_id)[0].pieces,
            after,
            self._repository.load(after.version_id)[0].pieces,
            top_n=request.top_n or 1000,
            list_size=request.list_size or 20,
        )
        return vocab_pb2.MeasureDriftResponse(
            top_n_overlap=report.top_n_overlap,
            before_tied_at_cut=report.before_tied_at_cut,
            after_tied_at_cut=report.after_tied_at_cut,
            before_unknown_rate=report.before_unknown_rate,
            after_unknown_rate=report.after_unknown_rate,
            before_pieces_per_word=report.before_pieces_per_word,
            after_pieces_per_word=report.after_pieces_per_word,
            rising=[_piece_count(item) for item in report.rising],
            fading=[_piece_count(item) for item in report.fading],
        )

    def TokenizeTexts(
        self, request: vocab_pb2.TokenizeTextsRequest, context: grpc.ServicerContext
    ) -> vocab_pb2.TokenizeTextsResponse:
        if len(request.texts) > MAX_TOKENIZE_TEXTS:
            raise InvalidArgumentError(
                "texts", f"has {len(request.texts)} texts; send at most {MAX_TOKENIZE_TEXTS} per call"
            )
        if request.max_length < 0:
            raise InvalidArgumentError("max_length", f"must be >= 0 (0 means no limit), got {request.max_length}")
        vocabulary, tokenizer = self._repository.load(request.version_id)
        if request.max_length:
            specials = 0 if request.omit_special_tokens else tokenizer.num_special_tokens_to_add(is_pair=False)
            if request.max_length <= specials:
                raise InvalidArgumentError(
                    "max_length", f"must leave room for text after the {specials} special tokens"
                )
            tokenizer = self._repository.load_truncating(request.version_id, request.max_length)
        try:
            batch = tokenize_batch(
                tokenizer,
                list(request.texts),
                pad=request.pad,
                add_special_tokens=not request.omit_special_tokens,
                pad_id=vocabulary.piece_ids.get("[PAD]", 0),
                max_pieces=self._limits.max_message_bytes // BYTES_PER_PIECE,
            )
        except BatchTooLargeError as error:
            raise ResourceExhaustedError(str(error), reason="ANSWER_TOO_LARGE") from error
        return vocab_pb2.TokenizeTextsResponse(
            input_ids=array_to_tensor(batch.input_ids),
            attention_mask=array_to_tensor(batch.attention_mask),
            lengths=array_to_tensor(batch.lengths),
            offsets=array_to_tensor(batch.offsets),
        )

    def ExportVersion(
        self, request: vocab_pb2.ExportVersionRequest, context: grpc.ServicerContext
    ) -> vocab_pb2.ExportVersionResponse:
        vocabulary, _ = self._repository.load(request.version_id)
        destination, remote_uri = self._roots.staged_writable(request.destination.uri, "destination.uri")
        try:
            try:
                written = export_directory(vocabulary, destination)
            except FileExistsError as error:
                raise AlreadyExistsError(f"destination.uri: {destination} exists; export to a new directory") from error
            if remote_uri is None:
                return vocab_pb2.ExportVersionResponse(directory=common_pb2.ArtifactRef(uri=written.as_uri()))
            published = self._roots.remote.publish(written, remote_uri, "destination.uri")
        finally:
            if remote_uri is not None:  # the local staging copy of an upload
                shutil.rmtree(destination.parent, ignore_errors=True)
        return vocab_pb2.ExportVersionResponse(directory=common_pb2.ArtifactRef(uri=published))


def _streamed_texts(requests: Iterator[vocab_pb2.ObserveSliceRequest], budget_bytes: int) -> Iterator[str]:
    """The texts of the stream's later messages, within `budget_bytes` of messages in all.

    Raises:
        InvalidArgumentError: a later message names a corpus file (only the first may).
        ResourceExhaustedError: the stream carries more than the budget (--max-stream-mb).
    """
    for index, message in enumerate(requests, start=1):
        budget_bytes -= message.ByteSize()
        if budget_bytes < 0:
            raise ResourceExhaustedError(
                "the request stream carries more text than this service takes in one call (--max-stream-mb); "
                "observe the slice in parts, or name a corpus file",
                reason="STREAM_TOO_LARGE",
            )
        if message.corpus.WhichOneof("source") == "uri":
            raise InvalidArgumentError(
                f"request[{index}].corpus.uri", "only the stream's first message may name a corpus file"
            )
        yield from message.corpus.texts.texts


@contextmanager
def _corpus_errors(field: str) -> Iterator[None]:
    """Map a corpus that cannot be read to INVALID_ARGUMENT (malformed) or NOT_FOUND (missing)."""
    try:
        yield
    except CorpusError as error:
        raise InvalidArgumentError(field, str(error)) from error
    except FileNotFoundError as error:
        raise NotFoundError(f"{field}: no file at {error}") from error
