"""The vocab service's bullets of the hardening issue, one table row each: what once crashed,
hung, answered INTERNAL or was silently accepted now gets the status that fits and a message
that names the field and the limit, never a file's content."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from driftlm.services.runtime.tensors import tensor_to_array
from driftlm.services.vocab.observation import SliceCounter
from driftlm.services.vocab.repository import VocabRepository
from driftlm.v1 import common_pb2, vocab_pb2, vocab_pb2_grpc

from .planted import register

Stub = vocab_pb2_grpc.VocabServiceStub
CODE = grpc.StatusCode

_SPECIALS = "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n"


def _fails(call: Callable[..., object], request: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call(request, timeout=60)
    return raised.value


def _directory(root: Path, files: dict[str, bytes]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (root / name).write_bytes(content)
    return root


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (
            {"vocab.txt": _SPECIALS.encode() + b"the\n", "tokenizer_config.json": b"{not json"},
            "tokenizer_config.json is not JSON",
        ),
        ({"vocab.txt": _SPECIALS.encode() + b"the\n", "tokenizer_config.json": b"null"}, "must hold a JSON object"),
        ({"vocab.txt": b""}, "vocab.txt is empty"),
        ({"vocab.txt": b"\n\n"}, "vocab.txt is empty"),
        ({"vocab.txt": _SPECIALS.encode() + b"caf\xe9\n"}, "vocab.txt is not UTF-8"),
        ({"vocab.txt": b"[PAD]\n[UNK]\n[CLS]\n[SEP]\nthe\n"}, "there is no mask token"),
        ({"tokenizer.json": b'{"secret": "line of content"}'}, "tokenizer.json is not a tokenizers JSON file"),
        ({}, "has neither tokenizer.json nor vocab.txt"),
    ],
    ids=[
        "config-not-json",
        "config-null",
        "empty-vocab",
        "blank-vocab",
        "latin1-vocab",
        "no-mask",
        "bad-json",
        "nothing",
    ],
)
def test_a_malformed_tokenizer_directory_is_invalid_argument(
    vocab_stub: Stub, tmp_path: Path, files: dict[str, bytes], message: str
) -> None:
    directory = _directory(tmp_path / "tokenizer", files)
    error = _fails(
        vocab_stub.CreateVocabulary,
        vocab_pb2.CreateVocabularyRequest(tokenizer_dir=common_pb2.ArtifactRef(uri=str(directory))),
    )
    assert error.code() == CODE.INVALID_ARGUMENT and message in error.details(), error.details()
    assert "line of content" not in error.details()


def test_a_tokenizer_json_with_id_gaps_or_without_unk_is_refused(vocab_stub: Stub, tmp_path: Path) -> None:
    import json

    from tokenizers import BertWordPieceTokenizer

    (tmp_path / "vocab.txt").write_text(_SPECIALS + "the\nof\n", encoding="utf-8")
    document = json.loads(BertWordPieceTokenizer(str(tmp_path / "vocab.txt")).to_str())
    for name, change in (("gap", {"of": 9}), ("no-unk", {"[UNK]": None})):
        broken = json.loads(json.dumps(document))
        for piece, index in change.items():
            if index is None:
                del broken["model"]["vocab"][piece]
                broken["model"]["vocab"]["extra"] = 1
            else:
                broken["model"]["vocab"][piece] = index
        directory = _directory(tmp_path / name, {"tokenizer.json": json.dumps(broken).encode()})
        error = _fails(
            vocab_stub.CreateVocabulary,
            vocab_pb2.CreateVocabularyRequest(tokenizer_dir=common_pb2.ArtifactRef(uri=str(directory))),
        )
        assert error.code() == CODE.INVALID_ARGUMENT, (name, error.details())


@pytest.mark.parametrize("size", [2**40, 2**63 - 1, 50])
def test_absurd_vocabulary_sizes_are_refused_before_tokenizers_sees_them(vocab_stub: Stub, size: int) -> None:
    """2**40 once aborted the process (a Rust panic); 2**63-1 hung the call."""
    corpus = common_pb2.CorpusSource(texts=common_pb2.TextBatch(texts=["some text to train on"] * 10))
    error = _fails(
        vocab_stub.CreateVocabulary, vocab_pb2.CreateVocabularyRequest(training_corpus=corpus, vocab_size=size)
    )
    assert error.code() == CODE.INVALID_ARGUMENT and "vocab_size: must be in [100, 1000000]" in error.details()


def test_one_huge_word_is_observed_in_linear_time(vocab_stub: Stub, planted_base: vocab_pb2.VocabVersion) -> None:
    """A 1 MB [UNK] word once took minutes (WordPiece training is quadratic in word length); words over
    100 characters are never candidates."""
    texts = ["🦜" * 1_000_000, "x" * 500_000 + " plain words"]
    request = vocab_pb2.ObserveSliceRequest(
        version_id=planted_base.version_id, corpus=common_pb2.CorpusSource(texts=common_pb2.TextBatch(texts=texts))
    )
    started = time.monotonic()
    observation = vocab_stub.ObserveSlice(iter([request]), timeout=60)
    assert time.monotonic() - started < 30  # a bound on a hang, not a benchmark
    assert all(len(c.piece) <= 100 for c in observation.top_candidates)


def test_a_stream_over_the_limit_or_naming_a_file_late_is_refused(
    vocab_stub: Stub, planted_base: vocab_pb2.VocabVersion, tmp_path: Path
) -> None:
    first = vocab_pb2.ObserveSliceRequest(version_id=planted_base.version_id)
    late_file = vocab_pb2.ObserveSliceRequest(
        corpus=common_pb2.CorpusSource(uri=common_pb2.ArtifactRef(uri=str(tmp_path / "x.txt")))
    )
    error = _fails(vocab_stub.ObserveSlice, iter([first, late_file]))
    assert error.code() == CODE.INVALID_ARGUMENT and "request[1].corpus.uri" in error.details()


def test_padding_one_long_text_among_many_empty_ones_is_refused_up_front(
    vocab_stub: Stub, planted_base: vocab_pb2.VocabVersion
) -> None:
    """One 200,000-piece text padded with 10,000 empty ones would be 2e9 cells (gigabytes)."""
    texts = ["the " * 200_000, *([""] * 10_000)]
    request = vocab_pb2.TokenizeTextsRequest(version_id=planted_base.version_id, texts=texts, pad=True)
    error = _fails(vocab_stub.TokenizeTexts, request)
    assert error.code() == CODE.RESOURCE_EXHAUSTED and "--max-message-mb" in error.details()
    unpadded = vocab_stub.TokenizeTexts(
        vocab_pb2.TokenizeTextsRequest(version_id=planted_base.version_id, texts=texts[:3]), timeout=60
    )
    assert unpadded.lengths.shape == [3]


@pytest.mark.parametrize("token", ["²", "-1", "1e3", "9" * 40, "\uff10"])
def test_a_page_token_we_did_not_issue_is_invalid(vocab_stub: Stub, token: str) -> None:
    error = _fails(vocab_stub.ListVersions, vocab_pb2.ListVersionsRequest(page_token=token))
    assert error.code() == CODE.INVALID_ARGUMENT and "page_token" in error.details()


@pytest.mark.parametrize(
    "version_id", ["x" * 300, "a/../b", "..", "v-\x00", "🦜", "/etc/passwd"], ids=lambda v: repr(v)[:12]
)
def test_ids_that_are_no_ids_name_nothing(vocab_stub: Stub, version_id: str) -> None:
    error = _fails(vocab_stub.GetVersion, vocab_pb2.GetVersionRequest(version_id=version_id))
    assert error.code() == CODE.NOT_FOUND


def test_a_failed_export_leaves_no_temporaries_and_exports_are_readable_by_others(
    vocab_stub: Stub, planted_base: vocab_pb2.VocabVersion, tmp_path: Path
) -> None:
    destination = tmp_path / "exported"
    written = vocab_stub.ExportVersion(
        vocab_pb2.ExportVersionRequest(
            version_id=planted_base.version_id, destination=common_pb2.ArtifactRef(uri=str(destination))
        )
    )
    assert written.directory.uri.endswith("exported")
    assert (destination.stat().st_mode & 0o777) == 0o777 & ~_umask()
    for file in destination.iterdir():
        assert (file.stat().st_mode & 0o777) == 0o666 & ~_umask(), file
    again = _fails(
        vocab_stub.ExportVersion,
        vocab_pb2.ExportVersionRequest(
            version_id=planted_base.version_id, destination=common_pb2.ArtifactRef(uri=str(destination))
        ),
    )
    assert again.code() == CODE.ALREADY_EXISTS
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def test_register_reads_only_what_it_may(vocab_stub: Stub, tmp_path: Path) -> None:
    """The planted base registers from the test's own directory, which the test roots allow."""
    from .planted import planted_base_directory

    assert register(vocab_stub, planted_base_directory(tmp_path / "base")).size > 0


def test_many_unknown_words_in_one_text_are_counted_in_one_pass_over_its_offsets(
    vocab_stub: Stub, vocab_store: Path, planted_base: vocab_pb2.VocabVersion
) -> None:
    """One text of 16k emoji took 18 s (its offsets were rebuilt for every [UNK]); now each text's
    offsets are read once, and every unknown word is still counted."""
    text = " ".join(["🦜"] * 3_000 + ["🦩"] * 2_000)

    class CountingEncoding:
        def __init__(self, encoding: Any) -> None:
            self.encoding, self.reads = encoding, 0

        @property
        def offsets(self) -> list[tuple[int, int]]:
            self.reads += 1
            return list(self.encoding.offsets)

    vocabulary, tokenizer = VocabRepository(vocab_store).load(planted_base.version_id)
    counter = SliceCounter(vocabulary, tokenizer)
    encoding = CountingEncoding(tokenizer.encode(text, add_special_tokens=False))
    ids = np.asarray(encoding.encoding.ids, dtype=np.int64)
    counter._count_unknown_words(ids, np.array([ids.size]), np.ones(1, dtype=np.int64), [text], [encoding])
    assert encoding.reads == 1
    assert counter.fragmented_words["🦜"] == 3_000 and counter.fragmented_words["🦩"] == 2_000

    request = vocab_pb2.ObserveSliceRequest(
        version_id=planted_base.version_id,
        corpus=common_pb2.CorpusSource(texts=common_pb2.TextBatch(texts=[" ".join(["🦜"] * 16_000)])),
    )
    started = time.monotonic()
    observation = vocab_stub.ObserveSlice(iter([request]), timeout=60)
    assert time.monotonic() - started < 30  # a bound on a hang, not a benchmark
    assert observation.text_count == 1 and observation.unknown_rate == 1.0


@pytest.mark.parametrize(
    "destination",
    [
        "vocab/children/B",  # once succeeded, and every later commit on B failed ("Is a directory")
        "trainer/models/driftlm/3",  # the model repository inference serves
        "cache/outgoing/x",
    ],
)
def test_the_services_own_subtrees_are_never_an_export_destination(
    vocab_stub: Stub, vocab_store: Path, planted_base: vocab_pb2.VocabVersion, destination: str
) -> None:
    error = _fails(
        vocab_stub.ExportVersion,
        vocab_pb2.ExportVersionRequest(
            version_id=planted_base.version_id, destination=common_pb2.ArtifactRef(uri=destination)
        ),
    )
    assert error.code() == CODE.PERMISSION_DENIED and "manage" in error.details()
    assert not (vocab_store / destination).exists()
    written = vocab_stub.ExportVersion(
        vocab_pb2.ExportVersionRequest(
            version_id=planted_base.version_id, destination=common_pb2.ArtifactRef(uri="exports/fine")
        )
    )
    assert Path(written.directory.uri.removeprefix("file://"), "tokenizer.json").is_file()


def test_a_link_in_a_granted_directory_to_a_file_outside_is_refused(vocab_stub: Stub, tmp_path: Path) -> None:
    """tokenizer_dir inside a read root whose tokenizer.json links to a file outside every root."""
    from .planted import planted_base_directory

    outside = Path(tempfile.mkdtemp(dir="/var/tmp"))
    try:
        source = planted_base_directory(outside / "real")
        linked = tmp_path / "linked"
        linked.mkdir()
        for entry in source.iterdir():
            (linked / entry.name).symlink_to(entry)
        error = _fails(
            vocab_stub.CreateVocabulary,
            vocab_pb2.CreateVocabularyRequest(tokenizer_dir=common_pb2.ArtifactRef(uri=str(linked))),
        )
        assert error.code() == CODE.PERMISSION_DENIED and "links outside" in error.details()
        assert "[UNK]" not in error.details()  # no file content in the message
    finally:
        shutil.rmtree(outside)


def test_a_vocabulary_trained_on_a_corpus_adds_cls_and_sep_as_the_contract_says(vocab_stub: Stub) -> None:
    """TokenizeTexts(["the of"]) on a corpus-trained version once gave [58, 81]: no [CLS]/[SEP]."""
    texts = ["the of and a the of"] * 50 + ["hello world again"] * 20
    version = vocab_stub.CreateVocabulary(
        vocab_pb2.CreateVocabularyRequest(
            training_corpus=common_pb2.CorpusSource(texts=common_pb2.TextBatch(texts=texts)), vocab_size=120
        )
    ).version
    special = version.special_tokens
    answer = vocab_stub.TokenizeTexts(
        vocab_pb2.TokenizeTextsRequest(version_id=version.version_id, texts=["the of", ""])
    )
    ids, lengths = tensor_to_array(answer.input_ids, "input_ids"), tensor_to_array(answer.lengths, "lengths")
    assert lengths.tolist() == [4, 2]
    assert [ids[0], ids[3], ids[4], ids[5]] == [special.cls_id, special.sep_id, special.cls_id, special.sep_id]
    bare = vocab_stub.TokenizeTexts(
        vocab_pb2.TokenizeTextsRequest(version_id=version.version_id, texts=["the of"], omit_special_tokens=True)
    )
    assert tensor_to_array(bare.lengths, "lengths").tolist() == [2]
