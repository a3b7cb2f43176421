"""Words of a text as the vocabulary's tokenizer sees them, hashed: what the trigger's novelty signal
counts.

A word is what the tokenizer's normaliser and pre-tokeniser make of the text (for BERT: lowercased,
accents stripped, split at whitespace and punctuation), before WordPiece cuts it into pieces. So a
word is the same string under every vocabulary version of one base, and `chatgpt` is one new word
whether the vocabulary spells it `chat ##gp ##t` or, after an update, `chatgpt`. Only words with a
letter count: numbers, bug ids and punctuation are new in almost every line of real text and
would drown the signal.

Words are hashed to 64 bits (BLAKE2b) so that a memory of millions of words is two flat arrays.
Each word also carries the number of pieces the vocabulary cuts it into: a word the model holds
whole (`editor`) is less news to it than one it must spell out (`auto ##pk ##gt ##est`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer


def word_hash(word: str) -> int:
    """The word's 64-bit hash (stable across processes and machines, unlike `hash`)."""
    return int.from_bytes(hashlib.blake2b(word.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


@dataclass(frozen=True)
class TextWords:
    """The distinct words of each of N texts, hashed.

    hashes[offsets[i]:offsets[i + 1]] are text i's distinct word hashes (uint64), unordered, and
    pieces[...] the pieces the vocabulary cuts each of them into.
    """

    hashes: np.ndarray  # (sum of distinct words per text,) uint64
    offsets: np.ndarray  # (N + 1,) int64
    pieces: np.ndarray  # (len(hashes),) int64, >= 1
    # Each hash's word, to name the words a signal is about.
    spelling: dict[int, str]

    def __len__(self) -> int:
        return int(self.offsets.shape[0]) - 1

    def words_per_text(self) -> np.ndarray:
        """(N,) distinct words of each text."""
        return np.diff(self.offsets)

    def text_of_each_hash(self) -> np.ndarray:
        """(len(hashes),) the text each hash belongs to."""
        return np.repeat(np.arange(len(self), dtype=np.int64), self.words_per_text())

    def subset(self, texts: Sequence[int]) -> TextWords:
        """The words of some texts only, renumbered in the order given."""
        rows = [np.arange(self.offsets[i], self.offsets[i + 1]) for i in texts]
        lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
        taken = np.concatenate(rows) if rows else np.empty(0, np.int64)
        return TextWords(
            self.hashes[taken], np.concatenate(([0], np.cumsum(lengths))), self.pieces[taken], self.spelling
        )

    @classmethod
    def joined(cls, first: TextWords, second: TextWords) -> TextWords:
        """The texts of `first`, then those of `second`."""
        return cls(
            np.concatenate([first.hashes, second.hashes]),
            np.concatenate([first.offsets, second.offsets[1:] + first.offsets[-1]]),
            np.concatenate([first.pieces, second.pieces]),
            {**first.spelling, **second.spelling},
        )

    def document_frequency(self) -> tuple[np.ndarray, np.ndarray]:
        """The distinct hashes (ascending) and how many texts hold each."""
        hashes, counts = np.unique(self.hashes, return_counts=True)
        return hashes, counts.astype(np.float64)


class WordSplitter:
    """Splits texts into words with a tokenizer's normaliser and pre-tokeniser, and counts the
    pieces its model cuts each word into."""

    def __init__(self, tokenizer_json: str) -> None:
        tokenizer = Tokenizer.from_str(tokenizer_json)
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self._tokenizer = tokenizer
        self._normalizer = tokenizer.normalizer
        self._pre_tokenizer = tokenizer.pre_tokenizer

    def words(self, text: str) -> list[str]:
        """The words of a text that hold a letter, in order, repeats kept."""
        normalised = self._normalizer.normalize_str(text) if self._normalizer is not None else text
        if self._pre_tokenizer is None:
            pieces: Iterable[str] = normalised.split()
        else:
            pieces = (word for word, _ in self._pre_tokenizer.pre_tokenize_str(normalised))
        return [word for word in pieces if any(character.isalpha() for character in word)]

    def text_words(self, texts: Iterable[str]) -> TextWords:
        """Each text's distinct words, hashed, with their pieces."""
        known: dict[str, int] = {}  # word -> its number among the distinct words
        numbers: list[int] = []
        offsets = [0]
        for text in texts:
            for word in dict.fromkeys(self.words(text)):
                numbers.append(known.setdefault(word, len(known)))
            offsets.append(len(numbers))
        distinct = list(known)
        encodings = self._tokenizer.encode_batch(distinct, add_special_tokens=False) if distinct else []
        word_hashes = np.array([word_hash(word) for word in distinct], dtype=np.uint64)
        word_pieces = np.array([max(len(e.ids), 1) for e in encodings], dtype=np.int64)
        chosen = np.array(numbers, dtype=np.int64)
        return TextWords(
            word_hashes[chosen] if distinct else np.empty(0, np.uint64),
            np.array(offsets, dtype=np.int64),
            word_pieces[chosen] if distinct else np.empty(0, np.int64),
            {int(h): word for h, word in zip(word_hashes.tolist(), distinct, strict=True)},
        )
