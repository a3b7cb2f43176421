"""The trigger's novelty signals: new words, which is what drift in a text stream mostly is.

Two tests, each against the checkpoint's word memory (word_memory.py):

- **the share of unseen words**: of the pieces of the slice's words (each text's distinct words,
  pooled over its texts), the share that belong to words the memory has not seen (decayed count
  below 1), against the same share on the trained texts themselves, each judged against all the
  others (leave one out: exact for texts of the training period). Its standard error counts
  texts, not words, so a long text full of new identifiers is one unit. Diffuse novelty (many
  new words, each rare) fires this one. Measured on real changelogs (benchmarks/trigger_power.py,
  60 splits each), at 600 texts with a fifth from ten years later: 0.62 of slices fired when each
  text's share of unseen words was averaged, 0.83 when words were pooled over texts, 0.90 when
  counted in pieces. Counting pieces weighs a word by how foreign it is to the model: the common
  English words that a small memory happens not to hold (`editor`, `prefer`) are one piece each,
  an era's jargon (`python3`, `autopkgtest`, `riscv64`) several.
- **new words, each on its own**: a word that is rare in the memory (in fewer than
  max(1, RARE_SHARE x remembered texts) texts) but held by many of the slice's texts. Under no
  change, slice and memory are texts of one period, so given how many texts hold a word in all,
  the number in the slice is binomial with the slice's share of texts, and its upper tail is exact
  (an incomplete beta function, which also takes the memory's decayed, fractional counts). The
  words are tested with Benjamini-Hochberg over the words that could be significant at all
  (Tarone): a word in 3 texts cannot be, and does not dilute the test of one in 30. `chatgpt` in
  12 texts of a slice and none of the memory fires it.

Words common in the memory are never tested one by one, so a known word that merely grows more
frequent (a product that sells better) does not fire; a rare one that becomes common does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import special

from .significance import benjamini_hochberg, log_level, tarone_tests
from .word_memory import WordMemory
from .words import TextWords

# A word is unseen when its decayed text count is below this.
UNSEEN_BELOW = 1.0
# A word is rare in the memory, and tested on its own, below this share of the remembered texts.
RARE_SHARE = 0.001


@dataclass(frozen=True)
class NovelWord:
    """A word rare in the memory that a significant share of the slice's texts hold."""

    word: str
    # Texts of the slice holding it, and their share of the slice's texts.
    slice_texts: int
    slice_share: float
    # Remembered texts holding it (decayed), and their share of the remembered texts.
    memory_texts: float
    memory_share: float
    # Probability of so many of its texts falling in the slice if nothing had changed.
    p_value: float


@dataclass(frozen=True)
class WordTest:
    """The per-word test over a slice."""

    # The most significant first (at most `top` of them), and how many there were in all.
    novel_words: list[NovelWord]
    novel_word_count: int
    # Words that could reach significance (Tarone's m), and the p-value the first one had to reach.
    words_tested: int
    p_threshold: float


@dataclass(frozen=True)
class UnseenShare:
    """The share of a set of texts' pieces that belong to words a memory has not seen, pooled.

    `share` = pieces of unseen words / pieces of all words (each text's distinct words);
    `unit_variance` is the variance of the texts' linearised contributions
    (unseen pieces - share * pieces) / mean pieces, so that share's standard error is
    sqrt(unit_variance / texts) whatever the texts' lengths."""

    share: float
    unit_variance: float
    texts: int


def unseen_share(words: TextWords, memory: WordMemory, *, leave_one_out: bool = False) -> UnseenShare:
    """The texts' share of pieces in unseen words (decayed count below UNSEEN_BELOW); texts without
    a word are left out. With leave_one_out the texts are in the memory (weight 1) and each is
    judged against the others."""
    counts = memory.lookup(words.hashes) - (1.0 if leave_one_out else 0.0)
    text_of = words.text_of_each_hash()
    pieces = words.pieces.astype(np.float64)
    unseen = np.bincount(text_of, weights=pieces * (counts < UNSEEN_BELOW), minlength=len(words))
    per_text = np.bincount(text_of, weights=pieces, minlength=len(words))
    has_words = per_text > 0
    unseen, per_text = unseen[has_words], per_text[has_words]
    texts = int(per_text.size)
    if texts == 0:
        return UnseenShare(0.0, 0.0, 0)
    share = float(unseen.sum() / per_text.sum())
    linearised = (unseen - share * per_text) / per_text.mean()
    return UnseenShare(share, float(linearised.var(ddof=1)) if texts >= 2 else 0.0, texts)


def new_word_test(words: TextWords, memory: WordMemory, *, level: float, min_texts: int, top: int) -> WordTest:
    """The words of the slice rare in the memory and held by significantly many of its texts."""
    slice_texts = int(np.count_nonzero(words.words_per_text()))
    if slice_texts == 0 or memory.texts <= 0:
        return WordTest([], 0, 0, 0.0)
    in_slice = slice_texts / (slice_texts + memory.texts)
    hashes, held = words.document_frequency()
    remembered = memory.lookup(hashes)
    elsewhere = memory.texts_with[~np.isin(memory.hashes, hashes, assume_unique=True)]
    # A word's smallest p-value comes when all its texts fall in the slice: in_slice ** total.
    log_min_p = np.concatenate([held + remembered, elsewhere]) * math.log(in_slice)
    tests = tarone_tests(log_min_p, level)
    testable = log_min_p[: hashes.size] <= log_level(level) - math.log(tests)
    candidate = testable & (held >= min_texts) & (remembered < max(UNSEEN_BELOW, RARE_SHARE * memory.texts))
    p_values = np.ones(hashes.size)
    # P(X >= held), X ~ Binomial(held + remembered, in_slice): the regularised incomplete beta.
    p_values[candidate] = special.betainc(held[candidate], remembered[candidate] + 1.0, in_slice)
    rejected = np.zeros(hashes.size, dtype=bool)
    rejected[testable] = benjamini_hochberg(p_values[testable], level, tests=tests)
    order = np.flatnonzero(rejected)[np.argsort(p_values[rejected], kind="stable")][:top]
    novel = [
        NovelWord(
            word=words.spelling.get(int(hashes[i]), ""),
            slice_texts=int(held[i]),
            slice_share=float(held[i]) / slice_texts,
            memory_texts=float(remembered[i]),
            memory_share=float(remembered[i]) / memory.texts,
            p_value=float(p_values[i]),
        )
        for i in order
    ]
    return WordTest(novel, int(rejected.sum()), tests, level / tests)
