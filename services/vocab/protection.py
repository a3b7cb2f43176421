"""The pieces a language's most frequent words need: no update removes them.

An update removes the pieces least used in recent history. A slice that happens not to use
`women` or `season` for a few months would otherwise cost the vocabulary their pieces, and after
three years of monthly updates of 400 pieces, 886 of English's 5,000 most frequent words had lost
one. So the pieces that the most frequent words of the base's language (wordfreq's list) need,
under the base tokenizer and under the version being updated, are kept whatever their recent use.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import wordfreq
from tokenizers import Tokenizer

# Protect no words.
NO_LANGUAGE = "none"
DEFAULT_LANGUAGE = "en"
DEFAULT_TOP_WORDS = 20_000
MAX_TOP_WORDS = 1_000_000


class UnknownLanguageError(ValueError):
    """wordfreq has no word list for the language."""


def common_words(language: str, top_words: int) -> list[str]:
    """The `top_words` most frequent words of `language` (wordfreq's codes: en, de, fr, ...).

    Raises:
        UnknownLanguageError: wordfreq has no list for it; the message names those it has.
    """
    if language == NO_LANGUAGE or top_words == 0:
        return []
    available = wordfreq.available_languages()
    if language not in available:
        raise UnknownLanguageError(
            f"wordfreq has no word list for {language[:40]!r}; choose one of {', '.join(sorted(available))}, "
            f"or {NO_LANGUAGE!r} to protect no words"
        )
    return list(wordfreq.top_n_list(language, top_words))


def pieces_of(tokenizers: Iterable[str], language: str, top_words: int) -> set[str]:
    """Every piece any of the tokenizers (tokenizer.json documents) cuts the language's
    `top_words` most frequent words into.

    Raises:
        UnknownLanguageError: see common_words.
    """
    return set().union(*(_pieces(tokenizer_json, language, top_words) for tokenizer_json in tokenizers))


@functools.lru_cache(maxsize=16)
def _pieces(tokenizer_json: str, language: str, top_words: int) -> frozenset[str]:
    """One tokenizer's pieces of the words; cached, as a chain's base is asked at every update."""
    words = common_words(language, top_words)
    if not words:
        return frozenset()
    tokenizer = Tokenizer.from_str(tokenizer_json)
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return frozenset(piece for e in tokenizer.encode_batch(words, add_special_tokens=False) for piece in e.tokens)
