"""A Python client of VocabService: streams slices in chunks, returns messages and NumPy arrays.

Example:
    >>> vocab = VocabClient("127.0.0.1:50051")  # doctest: +SKIP
    >>> base = vocab.register_directory("/models/minilm")  # doctest: +SKIP
    >>> seen = vocab.observe(base.version_id, texts_of_2024, slice_label="2024")  # doctest: +SKIP
    >>> proposal = vocab.propose(base.version_id, [seen.observation_id], k=500)  # doctest: +SKIP
    >>> v1 = vocab.commit(proposal.proposal_id, display_name="2024")  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import grpc
import numpy as np

from driftlm.services.runtime.channel import ServiceClient
from driftlm.services.runtime.security import PLAINTEXT, ChannelSecurity
from driftlm.services.runtime.tensors import DEFAULT_CHUNK_BYTES, tensor_to_array
from driftlm.v1 import common_pb2, vocab_pb2, vocab_pb2_grpc


def _text_chunks(texts: Iterable[str], chunk_bytes: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    size = 0
    for text in texts:
        chunk.append(text)
        size += len(text.encode("utf-8", "surrogatepass")) + 8
        if size >= chunk_bytes:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


class VocabClient(ServiceClient):
    """Calls a vocab service; errors surface as grpc.RpcError with the server's status."""

    def __init__(
        self,
        target: str | grpc.Channel,
        *,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        timeout_s: float | None = 3600.0,
        security: ChannelSecurity = PLAINTEXT,
    ) -> None:
        # A version's tokenizer.json comes back whole (GetVersion): allow more than gRPC's 4 MiB.
        super().__init__(
            target,
            timeout_s=timeout_s,
            options=[("grpc.max_receive_message_length", 256 << 20)],
            security=security,
        )
        self._stub = vocab_pb2_grpc.VocabServiceStub(self._channel)
        self._chunk_bytes = chunk_bytes

    def register_directory(
        self, directory: str | Path, *, display_name: str = "", lineage: str = ""
    ) -> vocab_pb2.VocabVersion:
        """Register a Hugging Face tokenizer directory (on the service's machine) as a base version
        (of its own chain under a `lineage`)."""
        request = vocab_pb2.CreateVocabularyRequest(
            tokenizer_dir=common_pb2.ArtifactRef(uri=str(directory)), display_name=display_name, lineage=lineage
        )
        response: vocab_pb2.CreateVocabularyResponse = self._stub.CreateVocabulary(request, timeout=self._timeout())
        return response.version

    def train(
        self, texts: Sequence[str], *, vocab_size: int = 0, cased: bool = False, display_name: str = ""
    ) -> vocab_pb2.VocabVersion:
        """Train a base WordPiece vocabulary on `texts`."""
        corpus = common_pb2.CorpusSource(texts=common_pb2.TextBatch(texts=list(texts)))
        request = vocab_pb2.CreateVocabularyRequest(
            training_corpus=corpus, vocab_size=vocab_size, cased=cased, display_name=display_name
        )
        response: vocab_pb2.CreateVocabularyResponse = self._stub.CreateVocabulary(request, timeout=self._timeout())
        return response.version

    def observe(
        self,
        version_id: str,
        texts: Iterable[str] = (),
        *,
        corpus_path: str | Path | None = None,
        text_field: str = "",
        slice_label: str = "",
        max_candidates: int = 0,
        min_candidate_count: int = 0,
    ) -> vocab_pb2.ObserveSliceResponse:
        """Observe a slice: `texts` streamed in chunks, and/or a corpus file on the service's machine."""
        first = vocab_pb2.ObserveSliceRequest(
            version_id=version_id,
            slice_label=slice_label,
            max_candidates=max_candidates,
            min_candidate_count=min_candidate_count,
        )
        if corpus_path is not None:
            first.corpus.uri.uri = str(corpus_path)
            first.corpus.text_field = text_field

        def requests() -> Iterator[vocab_pb2.ObserveSliceRequest]:
            yield first
            for chunk in _text_chunks(texts, self._chunk_bytes):
                yield vocab_pb2.ObserveSliceRequest(
                    corpus=common_pb2.CorpusSource(texts=common_pb2.TextBatch(texts=chunk))
                )

        response: vocab_pb2.ObserveSliceResponse = self._stub.ObserveSlice(requests(), timeout=self._timeout())
        return response

    def propose(
        self,
        version_id: str,
        observation_ids: Sequence[str],
        *,
        k: int,
        min_count: int = 0,
        protected: Sequence[str] = (),
        history_observation_ids: Sequence[str] = (),
        language: str = "",
        protected_top_words: int | None = None,
    ) -> vocab_pb2.ProposeUpdateResponse:
        """Propose swapping up to k pieces; the pieces of `language`'s most frequent words (en:
        20,000 unless protected_top_words says otherwise) stay."""
        request = vocab_pb2.ProposeUpdateRequest(
            version_id=version_id,
            observation_ids=list(observation_ids),
            k=k,
            min_count=min_count,
            protected_pieces=list(protected),
            history_observation_ids=list(history_observation_ids),
            protected_words_language=language,
        )
        if protected_top_words is not None:
            request.protected_top_words = protected_top_words
        response: vocab_pb2.ProposeUpdateResponse = self._stub.ProposeUpdate(request, timeout=self._timeout())
        return response

    def commit(self, proposal_id: str, *, display_name: str = "") -> vocab_pb2.VocabVersion:
        """Commit a proposal as a new version."""
        request = vocab_pb2.CommitUpdateRequest(proposal_id=proposal_id, display_name=display_name)
        response: vocab_pb2.CommitUpdateResponse = self._stub.CommitUpdate(request, timeout=self._timeout())
        return response.version

    def get(self, version_id: str, *, include_tokenizer_json: bool = False) -> vocab_pb2.VocabVersion:
        """One version."""
        request = vocab_pb2.GetVersionRequest(version_id=version_id, include_tokenizer_json=include_tokenizer_json)
        response: vocab_pb2.GetVersionResponse = self._stub.GetVersion(request, timeout=self._timeout())
        return response.version

    def list_versions(self) -> list[vocab_pb2.VocabVersion]:
        """Every version, newest first (all pages)."""
        versions: list[vocab_pb2.VocabVersion] = []
        token = ""
        while True:
            page = self._stub.ListVersions(vocab_pb2.ListVersionsRequest(page_token=token), timeout=self._timeout())
            versions.extend(page.versions)
            token = page.next_page_token
            if not token:
                return versions

    def drift(
        self, before_observation_id: str, after_observation_id: str, *, top_n: int = 0
    ) -> vocab_pb2.MeasureDriftResponse:
        """Drift between two observations."""
        request = vocab_pb2.MeasureDriftRequest(
            before_observation_id=before_observation_id, after_observation_id=after_observation_id, top_n=top_n
        )
        response: vocab_pb2.MeasureDriftResponse = self._stub.MeasureDrift(request, timeout=self._timeout())
        return response

    def tokenize(
        self,
        version_id: str,
        texts: Sequence[str],
        *,
        pad: bool = True,
        max_length: int = 0,
        add_special_tokens: bool = True,
    ) -> dict[str, np.ndarray]:
        """{"input_ids", "attention_mask", "lengths", "offsets"} as arrays (see TokenizeTextsResponse)."""
        request = vocab_pb2.TokenizeTextsRequest(
            version_id=version_id,
            texts=list(texts),
            pad=pad,
            max_length=max_length,
            omit_special_tokens=not add_special_tokens,
        )
        response = self._stub.TokenizeTexts(request, timeout=self._timeout())
        return {
            name: tensor_to_array(getattr(response, name), name)
            for name in ("input_ids", "attention_mask", "lengths", "offsets")
        }

    def export(self, version_id: str, destination: str | Path) -> str:
        """Export a version as a Hugging Face tokenizer directory; returns its URI."""
        request = vocab_pb2.ExportVersionRequest(
            version_id=version_id, destination=common_pb2.ArtifactRef(uri=str(destination))
        )
        return str(self._stub.ExportVersion(request, timeout=self._timeout()).directory.uri)
