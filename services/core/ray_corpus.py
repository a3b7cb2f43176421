"""A corpus's files as blocks of texts for the Ray engine, cut where the local engine cuts them.

A block is DIGEST_BLOCK_TEXTS consecutive texts of one shard (the last block of a shard may be
shorter), named (shard, block). The local engine hashes and scores in the same blocks, so both
engines give the same ids and the same per-text seeds whatever the number of workers. Workers read
the files themselves: they must see the paths the service resolved (a shared volume).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .corpus import CorpusError, CorpusFormat, read_texts
from .engine import RayCluster, actor_pool
from .errors import InvalidArgumentError, NotFoundError

# Texts per block: the unit of hashing, and what one worker is handed at once.
DIGEST_BLOCK_TEXTS = 16_384


def text_blocks(texts: Iterable[str]) -> Iterator[list[str]]:
    """A shard's texts in blocks of DIGEST_BLOCK_TEXTS."""
    block: list[str] = []
    for text in texts:
        block.append(text)
        if len(block) == DIGEST_BLOCK_TEXTS:
            yield block
            block = []
    if block:
        yield block


def _read_blocks(
    batch: dict[str, np.ndarray], text_field: str, corpus_format: CorpusFormat | None
) -> Iterator[dict[str, list[Any]]]:
    """Ray Data UDF: one row per block of each shard named in the batch."""
    for shard, path in zip(batch["shard"].tolist(), batch["path"].tolist(), strict=True):
        texts = read_texts(Path(path), text_field=text_field, corpus_format=corpus_format)
        for index, block in enumerate(text_blocks(texts)):
            yield {"shard": [shard], "block": [index], "texts": [block]}


def shard_blocks(ray: Any, paths: list[Path], text_field: str, corpus_format: CorpusFormat | None) -> Any:
    """A Ray Dataset of the files' blocks (columns shard, block, texts), one read task per file.

    Reading asks for no CPU of its own: then Ray does not fuse it into the workers that follow
    (one long file's blocks still spread over every worker), and workers holding every CPU of the
    cluster never starve the reads that feed them."""
    shards = ray.data.from_items(
        [{"shard": index, "path": str(path)} for index, path in enumerate(paths)],
        override_num_blocks=len(paths),
    )
    return shards.map_batches(
        _read_blocks, batch_size=1, num_cpus=0, fn_kwargs={"text_field": text_field, "corpus_format": corpus_format}
    )


def map_blocks(
    cluster: RayCluster,
    paths: list[Path],
    actor: type,
    constructor_kwargs: dict[str, Any],
    *,
    text_field: str,
    corpus_format: CorpusFormat | None,
    workers: int,
) -> Iterator[dict[str, np.ndarray]]:
    """The files' blocks through `actor` (a Ray Data callable class, one CPU each, up to `workers`
    of them), its outputs block by block in corpus order.

    Raises:
        FailedPreconditionError, UnavailableError: no cluster configured, Ray missing, unreachable.
        InvalidArgumentError, NotFoundError: a file a worker could not read as a corpus.
    """
    ray = cluster.connect()
    mapped = shard_blocks(ray, paths, text_field, corpus_format).map_batches(
        actor,
        batch_size=1,
        compute=actor_pool(ray, cluster.workers(workers)),
        num_cpus=1,
        fn_constructor_kwargs=constructor_kwargs,
    )
    try:
        yield from mapped.iter_batches(batch_size=None, batch_format="numpy")
    except Exception as error:  # a worker's error arrives wrapped in Ray's
        meant = raised_by_workers(error, "corpus")
        if meant is error:
            raise
        raise meant from error


def raised_by_workers(error: BaseException, field: str) -> BaseException:
    """What a failed Ray job means to the caller: the corpus error a worker hit, named as the local
    engine names it, or the error itself (our bug: INTERNAL)."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, CorpusError):  # Ray's subclass of it reads as the whole traceback
            return InvalidArgumentError(field, str(CorpusError(cause.path, cause.location, cause.problem)))
        if isinstance(cause, FileNotFoundError):
            return NotFoundError(f"{field}: a worker of the Ray cluster found no file at {cause.filename}")
        cause = getattr(cause, "cause", None) or cause.__cause__
    return error
