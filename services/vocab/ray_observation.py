"""Observing a slice on Ray: workers count blocks of the corpus's files into partial observations,
and the service merges them; the candidates are then found once, on the merged counts, so the
observation equals (and has the same id as) the local engine's."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from driftlm.services.core.corpus import CorpusFormat
from driftlm.services.core.engine import RayCluster, single_threaded_worker
from driftlm.services.core.ray_corpus import map_blocks
from driftlm.services.core.vocabulary import WordPieceVocabulary
from driftlm.services.runtime.calls import stop_if_abandoned

from .observation import PartialObservation, SliceCounter


class _BlockCounter:
    """Ray Data actor: a block of texts in, its partial observation out (as columns)."""

    def __init__(self, tokenizer_json: str) -> None:
        single_threaded_worker()
        self.vocabulary = WordPieceVocabulary(tokenizer_json)
        self.tokenizer = Tokenizer.from_str(tokenizer_json)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        columns: dict[str, list[Any]] = {
            name: [] for name in ("shard", "block", "digest", "texts", "ids", "counts", "words", "word_counts")
        }
        for shard, block, texts in zip(batch["shard"].tolist(), batch["block"].tolist(), batch["texts"], strict=True):
            counter = SliceCounter(self.vocabulary, self.tokenizer)
            counter.add_block(shard, block, [str(text) for text in texts])
            partial = counter.partial
            used = np.flatnonzero(partial.counts)
            columns["shard"].append(shard)
            columns["block"].append(block)
            columns["digest"].append(partial.blocks[0][2])
            columns["texts"].append(partial.text_count)
            columns["ids"].append(used)
            columns["counts"].append(partial.counts[used])
            columns["words"].append(list(partial.fragmented_words))
            columns["word_counts"].append(list(partial.fragmented_words.values()))
        return columns


def observe_on_ray(
    cluster: RayCluster,
    paths: list[Path],
    tokenizer_json: str,
    *,
    text_field: str,
    corpus_format: CorpusFormat | None,
    workers: int,
) -> PartialObservation:
    """The merged partial observation of the files (shards 0..len(paths)-1), counted on Ray.

    Raises:
        FailedPreconditionError, UnavailableError: no cluster configured, Ray missing, unreachable.
        InvalidArgumentError, NotFoundError: a file a worker could not read as a corpus.
    """
    vocabulary = WordPieceVocabulary(tokenizer_json)
    total = PartialObservation(np.zeros(vocabulary.size, dtype=np.int64))
    blocks = map_blocks(
        cluster,
        paths,
        _BlockCounter,
        {"tokenizer_json": tokenizer_json},
        text_field=text_field,
        corpus_format=corpus_format,
        workers=workers,
    )
    for batch in blocks:
        stop_if_abandoned()
        for row in range(len(batch["shard"])):
            part = PartialObservation(
                np.bincount(batch["ids"][row], weights=batch["counts"][row], minlength=vocabulary.size).astype(
                    np.int64
                ),
                Counter(dict(zip(batch["words"][row].tolist(), batch["word_counts"][row].tolist(), strict=True))),
                int(batch["texts"][row]),
                [(int(batch["shard"][row]), int(batch["block"][row]), bytes(batch["digest"][row]))],
            )
            total.merge(part)
    return total
