"""driftlm's text tasks on a served version: fill masks, embed, score by masked-LM loss, logits.

Texts are tokenized with the version's own tokenizer (Rust `tokenizers`, no torch); the graph runs
through the version's batcher, a bounded number of rows at a time, and each row keeps only what the
task needs (the logits at its masks, its [CLS] state...), so a request's memory stays bounded.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from tokenizers import Encoding

from driftlm.services.core.errors import InvalidArgumentError, ResourceExhaustedError
from driftlm.services.core.pseudo_likelihood import CorpusScore, masked_copy, plan_copies, summarise, text_scores
from driftlm.services.runtime.calls import stop_if_abandoned

from .batching import Row, RowOutputs
from .model import LoadedModel

# Texts one request may carry, and characters one text may have (a longer one is never a sentence).
MAX_TEXTS = 256
MAX_TEXT_CHARS = 1_000_000
MAX_TOP_K = 100
DEFAULT_TOP_K = 5
# Logit rows one ComputeLogits call may return.
MAX_POSITIONS = 4096
# Masks one FillMask call may fill (its answer: up to MAX_TOP_K candidates each).
MAX_FILL_POSITIONS = 4096


class Served(Protocol):
    """A leased version: its model and how to run rows through it."""

    @property
    def model(self) -> LoadedModel | None: ...

    @property
    def max_batch_size(self) -> int: ...

    def run(self, rows: list[Row], outputs: tuple[str, ...]) -> list[RowOutputs]: ...


def _model(served: Served) -> LoadedModel:
    assert served.model is not None  # a leased version is loaded
    return served.model


def encode(model: LoadedModel, texts: Sequence[str], *, truncate: bool, field: str = "texts") -> list[Encoding]:
    """The texts' encodings, cut to the model's max_length when `truncate`.

    Raises:
        InvalidArgumentError: no text, too many, one too long in characters, one without a piece,
            or (without truncate) one longer than max_length pieces.
    """
    if not texts:
        raise InvalidArgumentError(field, "is empty; send at least one text")
    if len(texts) > MAX_TEXTS:
        raise InvalidArgumentError(field, f"has {len(texts)} texts; send at most {MAX_TEXTS} per call")
    for index, text in enumerate(texts):
        if len(text) > MAX_TEXT_CHARS:
            raise InvalidArgumentError(
                field, f"text {index} has {len(text):,} characters; at most {MAX_TEXT_CHARS:,} are taken"
            )
    encodings: list[Encoding] = model.truncating_tokenizer.encode_batch(list(texts))
    for index, encoding in enumerate(encodings):
        if not encoding.ids:  # a tokenizer that adds no [CLS]/[SEP], and a text with nothing it keeps
            raise InvalidArgumentError(
                field, f"text {index} has no pieces under this model's tokenizer (empty, or only characters it drops)"
            )
    if not truncate:
        for index, encoding in enumerate(encodings):
            if encoding.overflowing:
                raise InvalidArgumentError(
                    field,
                    f"text {index} is longer than the model's {model.max_length} pieces; shorten it or set truncate",
                    reason="TEXT_TOO_LONG",
                )
    return encodings


def _run_in_chunks(served: Served, rows: list[Row], outputs: tuple[str, ...], chunk: int) -> list[RowOutputs]:
    """Run rows a chunk at a time, stopping when the caller has gone."""
    results: list[RowOutputs] = []
    for start in range(0, len(rows), chunk):
        stop_if_abandoned()
        results += served.run(rows[start : start + chunk], outputs)
    return results


def _chunk(served: Served) -> int:
    return served.max_batch_size


def _ids(encoding: Encoding) -> np.ndarray:
    return np.asarray(encoding.ids, dtype=np.int64)


@dataclass(frozen=True)
class MaskFill:
    """The candidates at one mask."""

    text_index: int
    char_offset: int
    position: int
    # (k,) ids, their pieces and probabilities, most likely first.
    token_ids: np.ndarray
    pieces: tuple[str, ...]
    probabilities: np.ndarray


def _softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (logits (P, V) float32)."""
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    probabilities: np.ndarray = exp / exp.sum(axis=-1, keepdims=True)
    return probabilities


def fill_mask(served: Served, texts: Sequence[str], *, top_k: int, truncate: bool) -> list[MaskFill]:
    """The top_k pieces at every mask token of every text.

    Raises:
        InvalidArgumentError: top_k out of range, or a text without a mask (after truncation).
        ResourceExhaustedError: more than MAX_FILL_POSITIONS masks in all.
    """
    model = _model(served)
    top_k = top_k or DEFAULT_TOP_K
    if not 1 <= top_k <= MAX_TOP_K:
        raise InvalidArgumentError("top_k", f"is {top_k}; ask for 1..{MAX_TOP_K} candidates (0 means {DEFAULT_TOP_K})")
    encodings = encode(model, texts, truncate=truncate)
    masks = [np.flatnonzero(_ids(encoding) == model.mask_id) for encoding in encodings]
    for index, positions in enumerate(masks):
        if positions.size == 0:
            raise InvalidArgumentError(
                "texts", f"text {index} has no {model.mask_token} within its first {model.max_length} pieces"
            )
    positions_total = sum(positions.size for positions in masks)
    if positions_total > MAX_FILL_POSITIONS:
        raise ResourceExhaustedError(
            f"the texts hold {positions_total:,} masks; one call fills at most {MAX_FILL_POSITIONS:,}: send fewer",
            reason="TOO_MANY_MASKS",
        )
    rows = [Row(_ids(encoding), pick=positions) for encoding, positions in zip(encodings, masks, strict=True)]
    fills = []
    k = min(top_k, model.vocab_size)
    chunk = _chunk(served)
    # A chunk's logits at its masks are reduced to the top k before the next chunk runs: the
    # logits of every mask of a call at once (256 texts of 62 masks: 1.9 GB on MiniLM) never exist.
    for start in range(0, len(rows), chunk):
        stop_if_abandoned()
        for offset, result in enumerate(served.run(rows[start : start + chunk], ("logits",))):
            index = start + offset
            encoding, positions = encodings[index], masks[index]
            probabilities = _softmax(result["logits"])
            for position, row in zip(positions.tolist(), probabilities, strict=True):
                best = np.argpartition(-row, k - 1)[:k]
                best = best[np.argsort(-row[best], kind="stable")]
                pieces = tuple(model.vocabulary.pieces[token] for token in best.tolist())
                fills.append(MaskFill(index, encoding.offsets[position][0], position, best, pieces, row[best]))
    return fills


def embed(served: Served, texts: Sequence[str], *, mean: bool, truncate: bool) -> np.ndarray:
    """(N, H) float32: each text's [CLS] state, or with `mean` the mean state of its non-special
    pieces (zeros when it has none), as the trainer's EmbedTexts computes it."""
    model = _model(served)
    encodings = encode(model, texts, truncate=truncate)
    output = "last_hidden_state" if mean else "cls_embedding"
    rows = [Row(_ids(encoding)) for encoding in encodings]
    results = _run_in_chunks(served, rows, (output,), _chunk(served))
    if not mean:
        return np.stack([result[output] for result in results]).astype(np.float32)
    embeddings = np.zeros((len(texts), model.hidden_size), dtype=np.float32)
    for index, (row, result) in enumerate(zip(rows, results, strict=True)):
        keep = ~model.special[row.ids]
        if keep.any():
            embeddings[index] = result[output][keep].mean(axis=0)
    return embeddings


@dataclass(frozen=True)
class TokenLoss:
    """Every text's piece losses and the corpus' pseudo-log-likelihood figures."""

    # Per text: (T,) ids, (T,) loss in nats (0 for specials), (T,) scored.
    token_ids: list[np.ndarray]
    losses: list[np.ndarray]
    scored: list[np.ndarray]
    corpus: CorpusScore


def token_loss(served: Served, texts: Sequence[str], *, truncate: bool) -> TokenLoss:
    """Each piece masked in turn (and with its word's later pieces, l2r): per-piece loss and PLL,
    the same bookkeeping as the trainer's ScorePseudoLikelihood (core/pseudo_likelihood.py)."""
    model = _model(served)
    encodings = encode(model, texts, truncate=truncate)
    copies = plan_copies(encodings, model.special)
    sums = np.zeros((len(texts), 2))
    losses = [np.zeros(len(encoding.ids)) for encoding in encodings]
    chunk = _chunk(served)
    for start in range(0, len(copies), chunk):
        part = copies[start : start + chunk]
        rows = [
            Row(
                np.asarray(
                    masked_copy(
                        encodings[c.text].ids, encodings[c.text].word_ids, c.position, l2r=c.l2r, mask_id=model.mask_id
                    ),
                    dtype=np.int64,
                ),
                pick=np.array([c.position]),
            )
            for c in part
        ]
        results = _run_in_chunks(served, rows, ("logits",), chunk)
        for c, result in zip(part, results, strict=True):
            logits = result["logits"][0].astype(np.float64)
            top = logits.max()
            log_probability = logits[encodings[c.text].ids[c.position]] - top - np.log(np.exp(logits - top).sum())
            sums[c.text, int(c.l2r)] += log_probability
            if not c.l2r:
                losses[c.text][c.position] = -log_probability
    return TokenLoss(
        token_ids=[_ids(encoding) for encoding in encodings],
        losses=losses,
        scored=[~model.special[_ids(encoding)] for encoding in encodings],
        corpus=summarise(text_scores(texts, encodings, model.special, sums)),
    )


@dataclass(frozen=True)
class PositionLogits:
    """Logits at asked positions."""

    # (P, V) float32, (P,) text index, (P,) position, (P,) piece id there.
    logits: np.ndarray
    text_indices: np.ndarray
    positions: np.ndarray
    token_ids: np.ndarray


def drawn_positions(ids: np.ndarray, special: np.ndarray, text: str, fraction: float, seed: int) -> np.ndarray:
    """A seeded `fraction` (at least one) of the text's non-special positions, ascending.

    The draw depends on the seed, the text and its piece count only, so models that share a
    vocabulary mask the same positions whichever request or batch the text arrives in.
    """
    candidates = np.flatnonzero(~special[ids])
    if candidates.size == 0:
        return candidates
    count = max(1, round(fraction * candidates.size))
    rng = np.random.default_rng([seed, zlib.crc32(text.encode("utf-8")), candidates.size])
    return np.sort(rng.choice(candidates, size=count, replace=False))


def logits_at(
    served: Served,
    texts: Sequence[str],
    positions: Sequence[Sequence[int]],
    *,
    truncate: bool,
    max_bytes: int,
    mask_fraction: float = 0.0,
    seed: int = 0,
) -> PositionLogits:
    """The vocabulary logits at each text's positions: those given; else, with `mask_fraction`, a
    drawn share of its pieces, masked (token_ids then holds the original pieces); else its masks.

    Raises:
        InvalidArgumentError: a position outside its text, a text without positions or masks, a
            mask_fraction outside [0, 1).
        ResourceExhaustedError: more rows than MAX_POSITIONS or than fit in `max_bytes`.
    """
    model = _model(served)
    if not 0.0 <= mask_fraction < 1.0:  # NaN fails too
        raise InvalidArgumentError("mask_fraction", f"is {mask_fraction}; give a fraction in (0, 1), or 0 for none")
    encodings = encode(model, texts, truncate=truncate)
    rows, picks = [], []
    for index, (text, encoding, wanted) in enumerate(zip(texts, encodings, positions, strict=True)):
        ids = _ids(encoding)
        if len(wanted):
            pick = np.asarray(wanted, dtype=np.int64)
        elif mask_fraction > 0:
            pick = drawn_positions(ids, model.special, text, mask_fraction, seed)
        else:
            pick = np.flatnonzero(ids == model.mask_id)
            if pick.size == 0:
                raise InvalidArgumentError("texts", f"text {index} names no position and has no {model.mask_token}")
        if pick.size and (pick.min() < 0 or pick.max() >= len(ids)):
            raise InvalidArgumentError(
                "texts", f"text {index} has {len(ids)} pieces; its positions must be in 0..{len(ids) - 1}"
            )
        shown = ids.copy()
        if mask_fraction > 0 and not len(wanted):
            shown[pick] = model.mask_id
        rows.append(Row(shown, pick=pick))
        picks.append(pick)
    total = sum(len(pick) for pick in picks)
    size = total * model.vocab_size * 4
    if total > MAX_POSITIONS or size > max_bytes:
        raise ResourceExhaustedError(
            f"{total} positions of {model.vocab_size} logits is {size / 2**20:.1f} MiB; one answer takes at most "
            f"{MAX_POSITIONS} positions and {max_bytes / 2**20:.0f} MiB (the server's --max-message-mb): "
            "split the request"
        )
    wanted_rows = [i for i, pick in enumerate(picks) if pick.size]
    results = _run_in_chunks(served, [rows[i] for i in wanted_rows], ("logits",), _chunk(served))
    logits = [result["logits"] for result in results]
    return PositionLogits(
        logits=np.concatenate(logits).astype(np.float32) if logits else np.zeros((0, model.vocab_size), np.float32),
        text_indices=np.concatenate([np.full(len(p), i, dtype=np.int32) for i, p in enumerate(picks)]),
        positions=np.concatenate(picks).astype(np.int32),
        token_ids=np.concatenate([_ids(e)[p] for e, p in zip(encodings, picks, strict=True)]).astype(np.int64),
    )
