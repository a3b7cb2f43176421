"""Corpus passes on Ray (ScoreCandidates, PLL of a corpus): actors (one CPU each) score blocks of
the corpus's files with the same block scorer as the trainer's process, and the service writes
their rows in corpus order."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from driftlm.services.core.corpus import CorpusFormat
from driftlm.services.core.engine import RayCluster, single_threaded_worker
from driftlm.services.core.ray_corpus import map_blocks

from .candidate_scoring import BlockScoring, ScoringSetup


class _ScoringActor:
    """Ray Data actor: a block of texts in, its scored rows out (by a BlockScorer or a
    BlockPseudoLikelihood: any class built from (setup, device) with score_block)."""

    def __init__(self, scorer: Callable[[ScoringSetup, torch.device], BlockScoring], setup: ScoringSetup) -> None:
        single_threaded_worker()
        torch.set_num_threads(1)
        self.scorer = scorer(setup, torch.device("cpu"))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        [shard], [block], [texts] = batch["shard"].tolist(), batch["block"].tolist(), batch["texts"]
        return self.scorer.score_block(int(shard), int(block), [str(text) for text in texts])


def score_on_ray(
    cluster: RayCluster,
    paths: list[Path],
    scorer: Callable[[ScoringSetup, torch.device], BlockScoring],
    setup: ScoringSetup,
    *,
    text_field: str,
    corpus_format: CorpusFormat | None,
    workers: int,
) -> Iterator[dict[str, np.ndarray]]:
    """The scored rows of the files, block by block in corpus order.

    Raises:
        FailedPreconditionError, UnavailableError: no cluster configured, Ray missing, unreachable.
        InvalidArgumentError, NotFoundError: a file a worker could not read as a corpus.
    """
    return map_blocks(
        cluster,
        paths,
        _ScoringActor,
        {"scorer": scorer, "setup": setup},
        text_field=text_field,
        corpus_format=corpus_format,
        workers=workers,
    )
