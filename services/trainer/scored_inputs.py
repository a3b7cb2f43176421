"""A ScoreCandidates file as an input: the trigger's per-token losses of a slice, and a run's first
candidate signal, read from what the cluster scored instead of scored again in this process.

A file is trusted only as far as it checks out: it must be of the checkpoint asked about, of as
many corpus files as the caller names, and every text read back must tokenize to the length the
file recorded for it (a file of another corpus, or of another version of it, fails that).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from tokenizers import Tokenizer

from driftlm.services.core.candidates import CandidatePool
from driftlm.services.core.corpus import Corpus, corpus_paths, texts_of_files
from driftlm.services.core.errors import FailedPreconditionError, InvalidArgumentError
from driftlm.services.core.paths import FileRoots
from driftlm.services.core.strategy import Strategy

from .candidate_files import ScoresFile
from .scoring import Occurrences
from .trigger import TriggerOptions

# The strategies whose first iteration a scores file can weigh, and the columns each reads.
CANDIDATE_COLUMNS = {
    Strategy.TOKEN_MLM_LOSS: ("mlm_loss",),
    Strategy.SENTENCE_EMBEDDING_SHIFT: ("baseline_cls", "cls"),
}


def check_scored(scores: ScoresFile, checkpoint_id: str, shards: int, corpus_field: str) -> None:
    """The file is of this checkpoint and of as many corpus files as the caller names.

    Raises:
        InvalidArgumentError: another checkpoint, or another number of corpus files.
    """
    scored = scores.scored_with
    if scored.checkpoint_id != checkpoint_id:
        raise InvalidArgumentError(
            scores.field, f"was scored with checkpoint {scored.checkpoint_id}, not {checkpoint_id}"
        )
    if scored.shards != shards:
        raise InvalidArgumentError(
            scores.field, f"was scored over {scored.shards} corpus file(s); {corpus_field} names {shards}"
        )


def check_weighs(scores: ScoresFile, strategy: Strategy) -> None:
    """The file holds what the strategy weighs its first candidates by.

    Raises:
        InvalidArgumentError: a strategy no file weighs, or the sentence shift without a baseline.
    """
    if strategy not in CANDIDATE_COLUMNS:
        raise InvalidArgumentError(
            scores.field,
            f"weighs the first candidates of the token_mlm_loss and sentence_embedding_shift strategies, "
            f"not of {strategy.value}",
        )
    if strategy is Strategy.SENTENCE_EMBEDDING_SHIFT and not scores.scored_with.baseline_checkpoint_id:
        raise InvalidArgumentError(
            scores.field, "was scored without a baseline: the sentence shift needs the [CLS] before and after"
        )


def _check_lengths(scores: ScoresFile, texts: Sequence[str], lengths: np.ndarray, tokenizer_json: str) -> None:
    """Every text tokenizes (truncated as the file was) to the pieces the file recorded."""
    tokenizer = Tokenizer.from_str(tokenizer_json)
    tokenizer.no_padding()
    tokenizer.enable_truncation(scores.scored_with.max_length)
    for start in range(0, len(texts), 4096):
        encoded = tokenizer.encode_batch(list(texts[start : start + 4096]))
        found = np.fromiter((len(e.ids) for e in encoded), dtype=np.int64, count=len(encoded))
        if not np.array_equal(found, lengths[start : start + len(encoded)]):
            raise FailedPreconditionError(
                f"{scores.field}: was not scored over this corpus (a text's pieces differ from the file's); "
                "score the corpus again with ScoreCandidates",
                reason="SCORES_OF_ANOTHER_CORPUS",
            )


def slice_sample_from_file(
    scores: ScoresFile,
    checkpoint_id: str,
    corpus: Corpus,
    roots: FileRoots,
    *,
    tokenizer_json: str,
    options: TriggerOptions,
) -> tuple[list[str], Occurrences]:
    """The trigger's sample from a scores file: up to max_texts rows drawn uniformly with the
    options' seed, their texts read back from the corpus and their masked occurrences from the file.

    Raises:
        InvalidArgumentError: a file of another checkpoint, number of files or mask fraction.
        FailedPreconditionError: the file does not match the corpus.
        (and what reading the corpus raises)
    """
    paths = corpus_paths(corpus, roots, "corpus") if corpus.files else []
    check_scored(scores, checkpoint_id, max(len(paths), 1), "corpus")
    if not np.isclose(scores.scored_with.mask_fraction, options.mask_fraction, rtol=0, atol=1e-9):
        raise InvalidArgumentError(
            scores.field,
            f"was scored with mask fraction {scores.scored_with.mask_fraction}; the request's is "
            f"{options.mask_fraction} (the trigger's memory compares losses at one fraction)",
        )
    shards = [
        texts_of_files([path], "corpus", text_field=corpus.text_field, corpus_format=corpus.corpus_format)
        for path in paths
    ] or [iter(corpus.texts)]
    rng = np.random.default_rng(options.seed)
    rows = np.sort(rng.choice(scores.rows, min(options.max_texts, scores.rows), replace=False))
    picked = scores.columns(("shard", "line", "length", "token_ids", "token_losses"), rows)
    texts = _texts_at(scores, shards, picked["shard"], picked["line"])
    if not texts:
        raise InvalidArgumentError(scores.field, "holds no scored text")
    _check_lengths(scores, texts, picked["length"].astype(np.int64), tokenizer_json)
    counts = np.fromiter((len(row) for row in picked["token_ids"]), dtype=np.int64, count=len(rows))
    occurrences = Occurrences(
        token_ids=np.concatenate([*picked["token_ids"], np.empty(0, np.int32)]).astype(np.int64),
        losses=np.concatenate([*picked["token_losses"], np.empty(0, np.float32)]).astype(np.float64),
        texts=np.repeat(np.arange(len(rows)), counts),
    )
    return texts, occurrences


def _texts_at(
    scores: ScoresFile, shards: Sequence[Iterable[str]], shard_of: np.ndarray, lines: np.ndarray
) -> list[str]:
    """The texts at (shard, line), in the order given (lines ascending within each shard)."""
    texts: list[str] = [""] * len(lines)
    for shard, corpus_texts in enumerate(shards):
        wanted = np.flatnonzero(shard_of == shard)
        if not len(wanted):
            continue
        cursor = 0
        for line, text in enumerate(corpus_texts):
            while cursor < len(wanted) and lines[wanted[cursor]] == line:
                texts[wanted[cursor]] = text
                cursor += 1
            if cursor == len(wanted):
                break
        if cursor < len(wanted):
            raise FailedPreconditionError(
                f"{scores.field}: names line {int(lines[wanted[cursor]])} of corpus file {shard}, "
                "which is shorter; score the corpus again with ScoreCandidates",
                reason="SCORES_OF_ANOTHER_CORPUS",
            )
    return texts


def first_candidate_pool(
    scores: ScoresFile,
    strategy: Strategy,
    pool_lengths: np.ndarray,
    candidates: np.ndarray,
    *,
    max_length: int,
    same_vocabulary: bool,
) -> CandidatePool:
    """The first iteration's candidate pool, weighed by the file: its losses, or its [CLS] before
    (the baseline) and after (the checkpoint). Rows of the file are the pool's texts, in order;
    their lengths are compared too when the run trains on the vocabulary the file was scored in.

    Raises:
        InvalidArgumentError: a strategy the file cannot weigh, or a file scored without a baseline.
        FailedPreconditionError: the file's rows are not the pool's texts.
    """
    check_weighs(scores, strategy)
    file_lengths = scores.columns(("length",))["length"].astype(np.int64)
    # Each side truncated to the other's length: texts match whatever each one cut them to.
    if len(file_lengths) != len(pool_lengths) or (
        same_vocabulary
        and not np.array_equal(
            np.minimum(file_lengths, max_length), np.minimum(pool_lengths, scores.scored_with.max_length)
        )
    ):
        raise FailedPreconditionError(
            f"{scores.field}: its {len(file_lengths)} rows are not the slices' {len(pool_lengths)} texts; "
            "score the slices, in the run's order, with ScoreCandidates",
            reason="SCORES_OF_ANOTHER_CORPUS",
        )
    columns = scores.columns(CANDIDATE_COLUMNS[strategy], candidates)
    lengths = pool_lengths[candidates]
    if strategy is Strategy.TOKEN_MLM_LOSS:
        return CandidatePool(lengths=lengths, losses=columns["mlm_loss"].astype(np.float32))
    return CandidatePool(lengths=lengths, old_cls=columns["baseline_cls"], new_cls=columns["cls"])
