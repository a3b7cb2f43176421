"""Observing a slice: how often each piece of a version is used, and which new pieces it wants.

One pass of `encode_batch` (Rust, all cores) gives the usage counts. Candidate new pieces come
from the words the version cannot hold whole: every word split into two or more pieces (or into
[UNK]) is counted whole, and a WordPiece model with the version's normaliser, pre-tokeniser and
continuation prefix is trained on exactly those words, weighted by their counts. A candidate's
count is how often the slice would use it: a whole word's frequency, or the weighted use of a
trained piece when those words are tokenized with the slice's model. So a frequent name or
hashtag enters whole, and a frequent new stem or suffix (`##gpt`) enters as a piece.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tokenizers import Tokenizer, models, trainers

from driftlm.services.core.ray_corpus import DIGEST_BLOCK_TEXTS
from driftlm.services.core.vocabulary import WordPieceVocabulary
from driftlm.services.runtime.calls import stop_if_abandoned

# Texts tokenized per encode_batch call: many, to keep every core busy and to find repeated texts;
# at most BATCH_CHARACTERS of them (about 150 MB of encodings), to bound memory on slices of any
# size and texts of any length.
BATCH_TEXTS = 65_536
BATCH_CHARACTERS = 8_000_000
# Powers of a 64-bit odd constant, to hash a word's piece ids (wrapping arithmetic).
_HASH_BASE = np.uint64(0x9E3779B97F4A7C15)
_MAX_HASHED_PIECES = 128
_HASH_POWERS = np.cumprod(np.concatenate(([1], np.full(_MAX_HASHED_PIECES - 1, _HASH_BASE))).astype(np.uint64))
# The slice model learns from this many times max_candidates of the most frequent fragmented words.
_SLICE_MODEL_HEADROOM = 2
# Longer words never become candidates: BERT's WordPiece turns a word over 100 characters into [UNK]
# whole, no vocabulary has such pieces, and training on one is quadratic in its length (one
# 128k-character [UNK] word took 14 s, 1 MB minutes).
MAX_CANDIDATE_CHARS = 100


@dataclass
class Observation:
    """What one slice uses under one version."""

    observation_id: str
    version_id: str
    slice_label: str
    text_count: int
    piece_count: int
    word_count: int
    unknown_count: int
    # (V,) int64 occurrences of each id.
    counts: np.ndarray
    # (piece, count), most frequent first; pieces the version lacks.
    candidates: list[tuple[str, int]] = field(default_factory=list)

    @property
    def unknown_rate(self) -> float:
        """Fraction of pieces that are [UNK]."""
        return self.unknown_count / self.piece_count if self.piece_count else 0.0

    @property
    def pieces_per_word(self) -> float:
        """Mean pieces per word."""
        return self.piece_count / self.word_count if self.word_count else 0.0

    def to_json(self) -> dict[str, Any]:
        """A JSON-able record (counts stored sparsely)."""
        used = np.flatnonzero(self.counts)
        return {
            "observation_id": self.observation_id,
            "version_id": self.version_id,
            "slice_label": self.slice_label,
            "text_count": self.text_count,
            "piece_count": self.piece_count,
            "word_count": self.word_count,
            "unknown_count": self.unknown_count,
            "vocab_size": int(self.counts.shape[0]),
            "counts": {"ids": used.tolist(), "values": self.counts[used].tolist()},
            "candidates": [[piece, count] for piece, count in self.candidates],
        }

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> Observation:
        """The inverse of to_json."""
        counts = np.zeros(int(record["vocab_size"]), dtype=np.int64)
        counts[np.asarray(record["counts"]["ids"], dtype=np.int64)] = record["counts"]["values"]
        return cls(
            observation_id=record["observation_id"],
            version_id=record["version_id"],
            slice_label=record["slice_label"],
            text_count=int(record["text_count"]),
            piece_count=int(record["piece_count"]),
            word_count=int(record["word_count"]),
            unknown_count=int(record["unknown_count"]),
            counts=counts,
            candidates=[(str(piece), int(count)) for piece, count in record["candidates"]],
        )


def _batches(texts: Iterable[str]) -> Iterator[list[str]]:
    batch: list[str] = []
    characters = 0
    for text in texts:
        batch.append(text)
        characters += len(text)
        if len(batch) == BATCH_TEXTS or characters >= BATCH_CHARACTERS:
            yield batch
            batch, characters = [], 0
    if batch:
        yield batch


def block_digest(texts: list[str]) -> bytes:
    """SHA-256 of one block's texts, in order."""
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8", "surrogatepass") + b"\0")
    return digest.digest()


@dataclass
class PartialObservation:
    """Counts over part of a slice (some blocks of some shards), mergeable in any order: what a
    worker of a distributed engine returns, and what the local engine accumulates."""

    counts: np.ndarray
    fragmented_words: Counter[str] = field(default_factory=Counter)
    text_count: int = 0
    # (shard, block, SHA-256 of the block's texts) of every block counted.
    blocks: list[tuple[int, int, bytes]] = field(default_factory=list)

    def merge(self, other: PartialObservation) -> None:
        """Add another part's counts (the parts must not overlap)."""
        self.counts += other.counts
        self.fragmented_words.update(other.fragmented_words)
        self.text_count += other.text_count
        self.blocks.extend(other.blocks)

    def digest(self, options: str) -> str:
        """A hex id of the texts (block by block, in shard order) and the options."""
        digest = hashlib.sha256()
        for shard, block, block_sha in sorted(self.blocks):
            digest.update(f"{shard}:{block}:".encode() + block_sha)
        digest.update(options.encode())
        return digest.hexdigest()


class SliceCounter:
    """Counts blocks of texts into a PartialObservation."""

    def __init__(self, vocabulary: WordPieceVocabulary, tokenizer: Tokenizer) -> None:
        self.vocabulary = vocabulary
        self.tokenizer = tokenizer
        self.partial = PartialObservation(np.zeros(vocabulary.size, dtype=np.int64))
        self.continuation = np.asarray(vocabulary.continuation_mask, dtype=bool)
        # Hash of a run of piece ids -> its word, so a word is spelled out once per slice.
        self._words_by_hash: dict[int, str] = {}

    @property
    def fragmented_words(self) -> Counter[str]:
        return self.partial.fragmented_words

    def add_shard(self, shard: int, texts: Iterable[str]) -> None:
        """Count one shard's texts as they stream in, hashing them block by block as
        ray_corpus.text_blocks cuts them; between batches it stops when the call it serves is
        cancelled or past its deadline."""
        digest, in_block, block_index = hashlib.sha256(), 0, 0
        batch: list[str] = []
        characters = 0
        for text in texts:
            digest.update(text.encode("utf-8", "surrogatepass") + b"\0")
            in_block += 1
            if in_block == DIGEST_BLOCK_TEXTS:
                self.partial.blocks.append((shard, block_index, digest.digest()))
                digest, in_block, block_index = hashlib.sha256(), 0, block_index + 1
            batch.append(text)
            characters += len(text)
            if len(batch) == BATCH_TEXTS or characters >= BATCH_CHARACTERS:
                stop_if_abandoned()
                self.add(batch)
                batch, characters = [], 0
        if in_block:
            self.partial.blocks.append((shard, block_index, digest.digest()))
        stop_if_abandoned()
        if batch:
            self.add(batch)

    def add_block(self, shard: int, block_index: int, texts: list[str]) -> None:
        """Count one block of ray_corpus.text_blocks (what a Ray worker is handed)."""
        self.partial.blocks.append((shard, block_index, block_digest(texts)))
        for batch in _batches(texts):
            self.add(batch)

    def add(self, texts: list[str]) -> None:
        """Count one batch. Repeated texts (retweets, boilerplate) are encoded once and weighted."""
        self.partial.text_count += len(texts)
        repeats = Counter(texts)
        distinct = list(repeats)
        multiplicity = np.fromiter(repeats.values(), dtype=np.int64, count=len(distinct))
        encodings = self.tokenizer.encode_batch(distinct, add_special_tokens=False)
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
        ids = np.fromiter((i for e in encodings for i in e.ids), dtype=np.int64, count=int(lengths.sum()))
        token_weights = np.repeat(multiplicity, lengths)
        counts = self.partial.counts
        counts += np.bincount(ids, weights=token_weights, minlength=counts.shape[0]).astype(np.int64)
        self._count_fragmented_words(ids, lengths, token_weights)
        self._count_unknown_words(ids, lengths, multiplicity, distinct, encodings)

    def _count_fragmented_words(self, ids: np.ndarray, lengths: np.ndarray, token_weights: np.ndarray) -> None:
        """Count words split into 2+ pieces: runs of a word-start piece and continuation pieces."""
        if ids.size == 0:
            return
        starts_mask = ~self.continuation[ids]
        text_starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))[lengths > 0]
        starts_mask[text_starts] = True  # a text never continues the previous one
        starts = np.flatnonzero(starts_mask)
        run_lengths = np.diff(np.append(starts, ids.size))
        multi = (run_lengths >= 2) & (run_lengths <= _MAX_HASHED_PIECES)
        if not multi.any():
            return
        run_starts, run_lengths = starts[multi], run_lengths[multi]
        # Positions of every token of every multi-piece run, and its position within the run.
        run_offsets = np.cumsum(run_lengths) - run_lengths
        within = np.arange(run_lengths.sum()) - np.repeat(run_offsets, run_lengths)
        token_positions = np.repeat(run_starts, run_lengths) + within
        terms = (ids[token_positions].astype(np.uint64) + np.uint64(1)) * _HASH_POWERS[within]
        hashes = np.add.reduceat(terms, run_offsets)
        unique_hashes, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
        occurrences = np.bincount(inverse, weights=token_weights[run_starts]).astype(np.int64)
        pieces, prefix = self.vocabulary.pieces, self.vocabulary.prefix
        for key, run, occurrence in zip(unique_hashes.tolist(), first.tolist(), occurrences.tolist(), strict=True):
            word = self._words_by_hash.get(key)
            if word is None:
                start = int(run_starts[run])
                run_ids = ids[start : start + int(run_lengths[run])].tolist()
                word = pieces[run_ids[0]] + "".join(pieces[i][len(prefix) :] for i in run_ids[1:])
                self._words_by_hash[key] = word
            if len(word) <= MAX_CANDIDATE_CHARS:
                self.fragmented_words[word] += occurrence

    def _count_unknown_words(
        self, ids: np.ndarray, lengths: np.ndarray, multiplicity: np.ndarray, texts: list[str], encodings: list[Any]
    ) -> None:
        """Words that became [UNK] (characters the version lacks) are counted whole, normalised."""
        unknown_positions = np.flatnonzero(ids == self.vocabulary.unknown_id)
        if unknown_positions.size == 0:
            return
        text_of = np.searchsorted(np.cumsum(lengths), unknown_positions, side="right")
        first_token = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        normalizer = self.tokenizer.normalizer
        # An Encoding builds its offsets list anew on every access: fetch each text's once (one text
        # of 16k emoji took 18 s when they were fetched per unknown piece).
        offsets_of: dict[int, list[tuple[int, int]]] = {}
        for position, text_index in zip(unknown_positions.tolist(), text_of.tolist(), strict=True):
            offsets = offsets_of.get(text_index)
            if offsets is None:
                stop_if_abandoned()
                offsets = offsets_of[text_index] = encodings[text_index].offsets
            start, end = offsets[position - int(first_token[text_index])]
            if end - start > MAX_CANDIDATE_CHARS:
                continue
            word = texts[text_index][start:end]
            self.fragmented_words[normalizer.normalize_str(word) if normalizer else word] += int(
                multiplicity[text_index]
            )


def _slice_model_candidates(
    vocabulary: WordPieceVocabulary, tokenizer: Tokenizer, words: Counter[str], max_candidates: int
) -> Counter[str]:
    """Train WordPiece on the most frequent fragmented words (weighted); the use of each new piece.

    The slice model sees the 2 * max_candidates most frequent fragmented words: rarer words
    cannot make a candidate frequent, and the long tail is what makes training slow.
    """
    frequent = dict(words.most_common(_SLICE_MODEL_HEADROOM * max_candidates))
    slice_model = Tokenizer(
        models.WordPiece(unk_token=vocabulary.unknown_token, continuing_subword_prefix=vocabulary.prefix)
    )
    slice_model.normalizer = tokenizer.normalizer
    slice_model.pre_tokenizer = tokenizer.pre_tokenizer
    trainer = trainers.WordPieceTrainer(
        vocab_size=max_candidates,
        min_frequency=2,
        special_tokens=[vocabulary.unknown_token],
        continuing_subword_prefix=vocabulary.prefix,
        show_progress=False,
    )
    # A word repeated `count` times in one text gives the trainer its frequency.
    slice_model.train_from_iterator((" ".join([word] * count) for word, count in frequent.items()), trainer)
    distinct = list(frequent)
    encodings = slice_model.encode_batch(distinct, add_special_tokens=False)
    lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
    ids = np.fromiter((i for e in encodings for i in e.ids), dtype=np.int64, count=int(lengths.sum()))
    weights = np.repeat(np.fromiter(frequent.values(), dtype=np.int64, count=len(distinct)), lengths)
    usage = np.bincount(ids, weights=weights, minlength=slice_model.get_vocab_size()).astype(np.int64)
    known = vocabulary.piece_ids
    return Counter(
        {
            piece: int(usage[index])
            for piece, index in slice_model.get_vocab().items()
            if usage[index] and piece not in known
        }
    )


def observe_slice(
    vocabulary: WordPieceVocabulary,
    tokenizer: Tokenizer,
    texts: Iterable[str],
    *,
    version_id: str,
    slice_label: str,
    max_candidates: int,
    min_candidate_count: int,
) -> Observation:
    """Count a slice's use of a version and find its candidate new pieces (the texts as one shard).

    `tokenizer` is the version's, without truncation or padding. The observation id is a hash of
    the version, the options and the texts, so the same slice observed twice has the same id.
    Between batches it stops when the call it serves is cancelled or past its deadline.
    """
    counter = SliceCounter(vocabulary, tokenizer)
    counter.add_shard(0, texts)
    return finish_observation(
        vocabulary,
        tokenizer,
        counter.partial,
        version_id=version_id,
        slice_label=slice_label,
        max_candidates=max_candidates,
        min_candidate_count=min_candidate_count,
    )


def finish_observation(
    vocabulary: WordPieceVocabulary,
    tokenizer: Tokenizer,
    partial: PartialObservation,
    *,
    version_id: str,
    slice_label: str,
    max_candidates: int,
    min_candidate_count: int,
) -> Observation:
    """The observation of a whole slice from its merged counts: the candidates are found once, on
    every fragmented word of the slice, so parts counted apart give the same candidates."""
    stop_if_abandoned()
    words = partial.fragmented_words
    candidates = _slice_model_candidates(vocabulary, tokenizer, words, max_candidates) if words else Counter()
    for word, count in words.items():  # a frequent word may enter whole
        if word not in vocabulary.piece_ids:
            candidates[word] = max(candidates[word], count)
    ranked = sorted(
        ((piece, count) for piece, count in candidates.items() if count >= min_candidate_count and piece.strip()),
        key=lambda item: (-item[1], item[0]),
    )[:max_candidates]
    counts = partial.counts
    word_starts = ~np.asarray(vocabulary.continuation_mask, dtype=bool)
    options = f"{version_id}\0{slice_label}\0{max_candidates}\0{min_candidate_count}"
    return Observation(
        observation_id=f"obs-{partial.digest(options)[:16]}",
        version_id=version_id,
        slice_label=slice_label,
        text_count=partial.text_count,
        piece_count=int(counts.sum()),
        word_count=int(counts[word_starts].sum()),
        unknown_count=int(counts[vocabulary.unknown_id]),
        counts=counts,
        candidates=ranked,
    )
