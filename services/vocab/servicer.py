"""VocabService over gRPC: translate messages, call VocabApp, translate back."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from driftlm.services.core.corpus import corpus_from_message
from driftlm.services.core.engine import engine_from_message
from driftlm.services.core.errors import InvalidArgumentError, ResourceExhaustedError
from driftlm.services.runtime.limits import RequestLimits
from driftlm.services.runtime.paging import page_of
from driftlm.services.runtime.tensors import array_to_tensor
from driftlm.v1 import common_pb2, vocab_pb2, vocab_pb2_grpc

from .app import UpdateRequest, VersionView, VocabApp
from .observation import Observation


def _piece_count(piece: dict[str, object] | tuple[str, int], index: int = -1) -> vocab_pb2.PieceCount:
    if isinstance(piece, tuple):
        return vocab_pb2.PieceCount(piece=piece[0], count=piece[1], id=index)
    return vocab_pb2.PieceCount(
        piece=str(piece["piece"]),
        id=int(piece["id"]),  # type: ignore[call-overload]
        count=int(piece["count"]),  # type: ignore[call-overload]
        parent_decomposition=list(piece.get("parent_decomposition", ())),  # type: ignore[call-overload]
    )


def _version_message(view: VersionView) -> vocab_pb2.VocabVersion:
    record, special = view.record, view.special
    return vocab_pb2.VocabVersion(
        version_id=record.version_id,
        parent_id=record.parent_id,
        size=record.size,
        create_time=record.create_time,
        display_name=record.display_name,
        change=vocab_pb2.VocabChange(
            added=[_piece_count(p) for p in record.added], removed=[_piece_count(p) for p in record.removed]
        ),
        tokenizer=common_pb2.ArtifactRef(uri=view.tokenizer_uri, sha256=view.tokenizer_sha256),
        slice_labels=record.slice_labels,
        tokenizer_json=view.tokenizer_json,
        special_tokens=vocab_pb2.SpecialTokens(
            reserved_ids=special.reserved_ids,
            unknown_id=special.unknown_id,
            mask_id=special.mask_id,
            pad_id=special.pad_id,
            cls_id=special.cls_id,
            sep_id=special.sep_id,
        ),
    )


def _observation_message(observation: Observation) -> vocab_pb2.ObserveSliceResponse:
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


class VocabServicer(vocab_pb2_grpc.VocabServiceServicer):
    """Every RPC of VocabService, over one VocabApp."""

    def __init__(self, app: VocabApp, limits: RequestLimits) -> None:
        self._app = app
        self._limits = limits

    def CreateVocabulary(
        self, request: vocab_pb2.CreateVocabularyRequest, context: grpc.ServicerContext
    ) -> vocab_pb2.CreateVocabularyResponse:
        origin = request.WhichOneof("origin")
        if origin == "tokenizer_dir":
            directory = request.tokenizer_dir
            record = self._app.create_from_directory(
                directory.uri, directory.sha256, request.display_name, request.lineage
            )
        elif origin == "training_corpus":
            record = self._app.create_from_corpus(
                corpus_from_message(request.training_corpus, "training_corpus"),
                vocab_size=request.vocab_size,
                cased=request.cased,
                display_name=request.display_name,
                lineage=request.lineage,
            )
        else:
            raise InvalidArgumentError("origin", "set tokenizer_dir (an existing tokenizer) or training_corpus")
        return vocab_pb2.CreateVocabularyResponse(version=_version_message(self._app.view(record)))

    def ObserveSlice(
        self, request_iterator: Iterator[vocab_pb2.ObserveSliceRequest], context: grpc.ServicerContext
    ) -> vocab_pb2.ObserveSliceResponse:
        first = next(request_iterator, None)
        if first is None:
            raise InvalidArgumentError("request", "the request stream carried no messages")
        observation = self._app.observe(
            first.version_id,
            corpus_from_message(first.corpus, "corpus"),
            _streamed_texts(request_iterator, self._limits.max_stream_bytes - first.ByteSize()),
            slice_label=first.slice_label,
            max_candidates=first.max_candidates,
            min_count=first.min_candidate_count,
            engine=engine_from_message(first.engine),
        )
        return _observation_message(observation)

    def ProposeUpdate(
        self, request: vocab_pb2.ProposeUpdateRequest, context: grpc.ServicerContext
    ) -> vocab_pb2.ProposeUpdateResponse:
        proposed = self._app.propose(
            UpdateRequest(
                version_id=request.version_id,
                observation_ids=list(request.observation_ids),
                k=request.k,
                min_count=request.min_count,
                history_observation_ids=list(request.history_observation_ids),
                protected_pieces=list(request.protected_pieces),
                protected_words_language=request.protected_words_language,
                protected_top_words=request.protected_top_words if request.HasField("protected_top_words") else None,
            )
        )
        return vocab_pb2.ProposeUpdateResponse(
            proposal_id=proposed.proposal.proposal_id,
            change=vocab_pb2.VocabChange(
                added=[_piece_count(p.to_json()) for p in proposed.change.added],
                removed=[_piece_count(p.to_json()) for p in proposed.change.removed],
            ),
            protected_piece_count=proposed.protected_piece_count,
        )

    def CommitUpdate(
        self, request: vocab_pb2.CommitUpdateRequest, context: grpc.ServicerContext
    ) -> vocab_pb2.CommitUpdateResponse:
        record = self._app.commit(request.proposal_id, request.display_name)
        return vocab_pb2.CommitUpdateResponse(version=_version_message(self._app.view(record)))

    def GetVersion(
        self, request: vocab_pb2.GetVersionRequest, context: grpc.ServicerContext
    ) -> vocab_pb2.GetVersionResponse:
        record = self._app.repository.get(request.version_id)
        view = self._app.view(record, include_tokenizer_json=request.include_tokenizer_json)
        return vocab_pb2.GetVersionResponse(version=_version_message(view))

    def ListVersions(
        self, request: vocab_pb2.ListVersionsRequest, context: grpc.ServicerContext
    ) -> vocab_pb2.ListVersionsResponse:
        versions, token = page_of(self._app.repository.list_versions(), request.page_size, request.page_token)
        return vocab_pb2.ListVersionsResponse(
            versions=[_version_message(self._app.view(record)) for record in versions], next_page_token=token
        )

    def DiffVersions(
        self, request: vocab_pb2.DiffVersionsRequest, context: grpc.ServicerContext
    ) -> vocab_pb2.DiffVersionsResponse:
        diff = self._app.diff(request.from_version_id, request.to_version_id)
        return vocab_pb2.DiffVersionsResponse(
            added=[vocab_pb2.PieceCount(piece=p, id=i) for i, p in diff.added],
            removed=[vocab_pb2.PieceCount(piece=p, id=i) for i, p in diff.removed],
            moved_count=diff.moved_count,
        )

    def MeasureDrift(
        self, request: vocab_pb2.MeasureDriftRequest, context: grpc.ServicerContext
    ) -> vocab_pb2.MeasureDriftResponse:
        report = self._app.measure_drift(
            request.before_observation_id,
            request.after_observation_id,
            top_n=request.top_n,
            list_size=request.list_size,
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
        batch = self._app.tokenize(
            request.version_id,
            request.texts,
            max_length=request.max_length,
            pad=request.pad,
            add_special_tokens=not request.omit_special_tokens,
        )
        return vocab_pb2.TokenizeTextsResponse(
            input_ids=array_to_tensor(batch.input_ids),
            attention_mask=array_to_tensor(batch.attention_mask),
            lengths=array_to_tensor(batch.lengths),
            offsets=array_to_tensor(batch.offsets),
        )

    def ExportVersion(
        self, request: vocab_pb2.ExportVersionRequest, context: grpc.ServicerContext
    ) -> vocab_pb2.ExportVersionResponse:
        uri = self._app.export(request.version_id, request.destination.uri)
        return vocab_pb2.ExportVersionResponse(directory=common_pb2.ArtifactRef(uri=uri))


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
        kind = message.corpus.WhichOneof("source")
        if kind in ("uri", "shards"):
            raise InvalidArgumentError(
                f"request[{index}].corpus.{kind}", "only the stream's first message may name a corpus file"
            )
        yield from message.corpus.texts.texts
