"""Bad input to the vocab service: the right status code, a message a person can act on."""

from __future__ import annotations

import threading
from pathlib import Path

import grpc
import numpy as np
import pytest

from driftlm.v1 import common_pb2, vocab_pb2, vocab_pb2_grpc

from .planted import EMERGING, FILLER, VANISHING, observe, planted_slice

Stub = vocab_pb2_grpc.VocabServiceStub
INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND


def _fails(call: object, request: object, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.RpcError) as raised:
        call(request)  # type: ignore[operator]
    assert raised.value.code() == code, raised.value.details()
    return str(raised.value.details())


def test_unknown_names_are_not_found(vocab_stub: Stub, planted_base: vocab_pb2.VocabVersion) -> None:
    message = "vocab version 'v-0000000000000000' does not exist; ListVersions shows the versions there are"
    assert (
        _fails(vocab_stub.GetVersion, vocab_pb2.GetVersionRequest(version_id="v-0000000000000000"), NOT_FOUND)
        == message
    )
    assert (
        _fails(vocab_stub.TokenizeTexts, vocab_pb2.TokenizeTextsRequest(version_id="v-0000000000000000"), NOT_FOUND)
        == message
    )
    observe_unknown = iter([vocab_pb2.ObserveSliceRequest(version_id="v-0000000000000000")])
    assert _fails(vocab_stub.ObserveSlice, observe_unknown, NOT_FOUND) == message
    assert (
        _fails(
            vocab_stub.ProposeUpdate,
            vocab_pb2.ProposeUpdateRequest(version_id=planted_base.version_id, observation_ids=["obs-x"]),
            NOT_FOUND,
        )
        == "observation 'obs-x' does not exist; ObserveSlice returns observation ids"
    )
    assert _fails(vocab_stub.CommitUpdate, vocab_pb2.CommitUpdateRequest(proposal_id="../etc"), NOT_FOUND) == (
        "proposal '../etc' does not exist; ProposeUpdate returns proposal ids"
    )


@pytest.mark.parametrize("k", [-1, 10_000])
def test_k_out_of_range(vocab_stub: Stub, planted_base: vocab_pb2.VocabVersion, k: int) -> None:
    observation = observe(vocab_stub, planted_base.version_id, ["the glimmerfox"] * 3)
    request = vocab_pb2.ProposeUpdateRequest(
        version_id=planted_base.version_id, observation_ids=[observation.observation_id], k=k
    )
    assert _fails(vocab_stub.ProposeUpdate, request, INVALID) == (
        f"k: must be in [0, {planted_base.size}] (the vocabulary's size), got {k}"
    )


def test_protected_pieces_shrink_what_can_be_removed(vocab_stub: Stub, planted_base: vocab_pb2.VocabVersion) -> None:
    """k is an upper bound: fewer pieces swap when fewer may go (the filler words are among
    English's most frequent, so by default only the made-up words may)."""
    observation = observe(vocab_stub, planted_base.version_id, ["the glimmerfox"] * 3)
    request = vocab_pb2.ProposeUpdateRequest(
        version_id=planted_base.version_id,
        observation_ids=[observation.observation_id],
        k=1,
        protected_pieces=["zorblax", "quintessa", "brontide", "velcrath"],
        protected_words_language="none",
    )
    removed = vocab_stub.ProposeUpdate(request).change.removed
    assert len(removed) == 1  # something is removed, and it is not a protected piece
    assert removed[0].piece not in {"zorblax", "quintessa", "brontide", "velcrath"}
    # With the filler words protected as English's most frequent too, nothing is left to remove.
    request.ClearField("protected_words_language")
    response = vocab_stub.ProposeUpdate(request)
    assert not response.change.removed and not response.change.added
    assert response.protected_piece_count >= 4 + len(set(FILLER))
    request.ClearField("protected_pieces")
    assert next(p.piece for p in vocab_stub.ProposeUpdate(request).change.removed) in VANISHING


def test_malformed_and_missing_corpus_files(
    vocab_stub: Stub, planted_base: vocab_pb2.VocabVersion, tmp_path: Path
) -> None:
    bad = tmp_path / "slice.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": "fine"}\n{"text": oops}\n')

    def request(path: Path) -> object:
        corpus = common_pb2.CorpusSource(uri=common_pb2.ArtifactRef(uri=str(path)))
        return iter([vocab_pb2.ObserveSliceRequest(version_id=planted_base.version_id, corpus=corpus)])

    assert (
        _fails(vocab_stub.ObserveSlice, request(bad), INVALID)
        == f"corpus: {bad} line 3: not valid JSON (Expecting value)"
    )
    missing = tmp_path / "missing.jsonl"
    assert _fails(vocab_stub.ObserveSlice, request(missing), NOT_FOUND) == f"corpus.uri.uri: nothing at {missing}"
    assert vocab_stub.GetVersion(
        vocab_pb2.GetVersionRequest(version_id=planted_base.version_id)
    ).version.size  # still serving


def test_observation_of_another_version(vocab_stub: Stub, planted_base: vocab_pb2.VocabVersion) -> None:
    texts = planted_slice(np.random.default_rng(0), EMERGING)
    first = observe(vocab_stub, planted_base.version_id, texts)
    proposal = vocab_stub.ProposeUpdate(
        vocab_pb2.ProposeUpdateRequest(version_id=planted_base.version_id, observation_ids=[first.observation_id], k=2)
    )
    child = vocab_stub.CommitUpdate(vocab_pb2.CommitUpdateRequest(proposal_id=proposal.proposal_id)).version
    message = _fails(
        vocab_stub.ProposeUpdate,
        vocab_pb2.ProposeUpdateRequest(version_id=child.version_id, observation_ids=[first.observation_id], k=1),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert message == (
        f"observation {first.observation_id} counted version {planted_base.version_id}, not {child.version_id}; "
        f"observe the slice with {child.version_id} first"
    )


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (vocab_pb2.CreateVocabularyRequest(), "origin: set tokenizer_dir (an existing tokenizer) or training_corpus"),
        (
            vocab_pb2.CreateVocabularyRequest(
                training_corpus=common_pb2.CorpusSource(texts=common_pb2.TextBatch(texts=["a b"])), vocab_size=50
            ),
            "vocab_size: must be in [100, 1000000] (0 means 30522), got 50",
        ),
        (
            vocab_pb2.CreateVocabularyRequest(
                training_corpus=common_pb2.CorpusSource(texts=common_pb2.TextBatch(texts=["", " "]))
            ),
            "training_corpus: has no text to train on",
        ),
    ],
)
def test_create_vocabulary_bad_input(
    vocab_stub: Stub, request_: vocab_pb2.CreateVocabularyRequest, message: str
) -> None:
    assert _fails(vocab_stub.CreateVocabulary, request_, INVALID) == message


def test_a_directory_without_a_tokenizer(vocab_stub: Stub, tmp_path: Path) -> None:
    request = vocab_pb2.CreateVocabularyRequest(tokenizer_dir=common_pb2.ArtifactRef(uri=str(tmp_path)))
    assert (
        _fails(vocab_stub.CreateVocabulary, request, INVALID)
        == f"tokenizer_dir: {tmp_path} has neither tokenizer.json nor vocab.txt"
    )


def test_other_bad_arguments(vocab_stub: Stub, planted_base: vocab_pb2.VocabVersion, vocab_store: Path) -> None:
    version = planted_base.version_id
    assert (
        _fails(vocab_stub.ListVersions, vocab_pb2.ListVersionsRequest(page_token="abc"), INVALID)
        == "page_token: is not a token this service returned"
    )
    assert (
        _fails(vocab_stub.ListVersions, vocab_pb2.ListVersionsRequest(page_size=5000), INVALID)
        == "page_size: must be in [1, 1000] (0 means 100), got 5000"
    )
    assert _fails(
        vocab_stub.TokenizeTexts, vocab_pb2.TokenizeTextsRequest(version_id=version, texts=["a"], max_length=2), INVALID
    ) == ("max_length: must leave room for text after the 2 special tokens")
    assert _fails(vocab_stub.ProposeUpdate, vocab_pb2.ProposeUpdateRequest(version_id=version, k=1), INVALID) == (
        "observation_ids: name at least one observation of the version"
    )
    assert _fails(vocab_stub.ObserveSlice, iter([]), INVALID) == "request: the request stream carried no messages"
    destination = common_pb2.ArtifactRef(uri="exported")
    vocab_stub.ExportVersion(vocab_pb2.ExportVersionRequest(version_id=version, destination=destination))
    message = _fails(
        vocab_stub.ExportVersion,
        vocab_pb2.ExportVersionRequest(version_id=version, destination=destination),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    assert message == f"destination.uri: {vocab_store / 'exported'} exists; export to a new directory"


def test_two_commits_on_one_parent_one_wins(vocab_stub: Stub, planted_base: vocab_pb2.VocabVersion) -> None:
    observation = observe(vocab_stub, planted_base.version_id, planted_slice(np.random.default_rng(1), EMERGING))
    proposals = [
        vocab_stub.ProposeUpdate(
            vocab_pb2.ProposeUpdateRequest(
                version_id=planted_base.version_id, observation_ids=[observation.observation_id], k=k
            )
        ).proposal_id
        for k in (2, 3)
    ]
    outcomes: list[object] = []
    start = threading.Barrier(len(proposals))

    def commit(proposal_id: str) -> None:
        start.wait()
        try:
            outcomes.append(
                vocab_stub.CommitUpdate(vocab_pb2.CommitUpdateRequest(proposal_id=proposal_id)).version.version_id
            )
        except grpc.RpcError as error:
            outcomes.append(error)

    threads = [threading.Thread(target=commit, args=(p,)) for p in proposals]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [o for o in outcomes if isinstance(o, str)]
    losers = [o for o in outcomes if isinstance(o, grpc.RpcError)]
    assert len(winners) == 1 and len(losers) == 1
    assert losers[0].code() == grpc.StatusCode.ABORTED
    assert f"already has a child, {winners[0]}" in str(losers[0].details())
    # The winning commit, repeated, is idempotent.
    listed = vocab_stub.ListVersions(vocab_pb2.ListVersionsRequest()).versions
    assert [v.version_id for v in listed if v.parent_id == planted_base.version_id] == winners


def test_a_lineage_of_its_own_is_updated_on_its_own(
    vocab_stub: Stub, planted_base: vocab_pb2.VocabVersion, tmp_path: Path
) -> None:
    """Two owners of one base (an experiment and a production controller) each keep a chain."""
    directory = tmp_path / "planted-base"  # where the planted_base fixture wrote it
    request = vocab_pb2.CreateVocabularyRequest(tokenizer_dir=common_pb2.ArtifactRef(uri=str(directory)))
    request.lineage = "follow/production"
    own = vocab_stub.CreateVocabulary(request).version
    assert own.version_id != planted_base.version_id and own.size == planted_base.size
    assert vocab_stub.CreateVocabulary(request).version.version_id == own.version_id  # idempotent
    children = []
    for base, k in ((planted_base, 2), (own, 3)):  # each base takes its own, different update
        observation = observe(vocab_stub, base.version_id, planted_slice(np.random.default_rng(1), EMERGING))
        proposal = vocab_stub.ProposeUpdate(
            vocab_pb2.ProposeUpdateRequest(
                version_id=base.version_id, observation_ids=[observation.observation_id], k=k
            )
        )
        children.append(
            vocab_stub.CommitUpdate(vocab_pb2.CommitUpdateRequest(proposal_id=proposal.proposal_id)).version
        )
    assert [c.parent_id for c in children] == [planted_base.version_id, own.version_id]
    for bad in ("x" * 65, "two words", "ünïcode", "lineage:x"):
        request.lineage = bad
        with pytest.raises(grpc.RpcError) as refused:
            vocab_stub.CreateVocabulary(request)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "lineage" in str(refused.value.details())
