"""Planted corpora: a base vocabulary as vocab.txt, and slices where words appear and vanish."""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np

from driftlm.v1 import common_pb2, vocab_pb2, vocab_pb2_grpc

FILLER = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "was",
    "for",
    "on",
    "that",
    "with",
    "as",
    "by",
    "at",
    "from",
    "this",
    "have",
    "not",
    "are",
    "but",
    "his",
    "they",
    "which",
    "one",
    "you",
    "were",
    "her",
    "all",
    "she",
    "there",
    "would",
    "their",
    "we",
    "him",
    "been",
    "has",
    "when",
    "who",
    "will",
    "more",
    "no",
    "if",
    "out",
    "so",
    "said",
    "what",
    "up",
    "its",
    "about",
    "into",
    "than",
    "them",
    "can",
    "only",
    "other",
    "new",
    "some",
    "could",
    "time",
    "these",
    "two",
    "may",
    "then",
    "do",
    "first",
    "any",
    "my",
    "now",
    "such",
]
VANISHING = ["zorblax", "quintessa", "brontide", "velcrath"]
EMERGING = ["glimmerfox", "tarnquill", "ostravine", "pellucidor"]


def planted_base_directory(directory: Path) -> Path:
    """A BERT vocab.txt: specials, every letter and digit (and their ## forms), filler and old words."""
    characters = string.ascii_lowercase + string.digits + ".,!?'#"
    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    pieces += list(characters) + ["##" + c for c in characters] + FILLER + VANISHING
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("\n".join(pieces) + "\n", encoding="utf-8")
    return directory


def planted_slice(rng: np.random.Generator, words: list[str], *, texts: int = 600) -> list[str]:
    """Sentences of filler words, each with a planted word drawn by the given (distinct) weights."""
    weights = np.arange(len(words), 0, -1, dtype=float) if words else np.array([])
    sentences = []
    for _ in range(texts):
        sentence = list(rng.choice(FILLER, rng.integers(5, 15)))
        if words:
            sentence.insert(int(rng.integers(0, len(sentence))), str(rng.choice(words, p=weights / weights.sum())))
        sentences.append(" ".join(sentence))
    return sentences


def texts_message(texts: list[str]) -> common_pb2.CorpusSource:
    return common_pb2.CorpusSource(texts=common_pb2.TextBatch(texts=texts))


def observe(
    stub: vocab_pb2_grpc.VocabServiceStub, version_id: str, texts: list[str], label: str = ""
) -> vocab_pb2.ObserveSliceResponse:
    request = vocab_pb2.ObserveSliceRequest(version_id=version_id, slice_label=label, corpus=texts_message(texts))
    return stub.ObserveSlice(iter([request]))


def register(stub: vocab_pb2_grpc.VocabServiceStub, directory: Path, name: str = "") -> vocab_pb2.VocabVersion:
    request = vocab_pb2.CreateVocabularyRequest(
        tokenizer_dir=common_pb2.ArtifactRef(uri=str(directory)), display_name=name
    )
    return stub.CreateVocabulary(request).version
