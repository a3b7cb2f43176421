"""The corpus passes' application layer (ScoreCandidates, and ScorePseudoLikelihood over a corpus):
checks the request, resolves the corpus and the destination, and runs the pass in this process or
on the Ray cluster into one Parquet file."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from driftlm.services.core import store
from driftlm.services.core.artifacts import file_sha256
from driftlm.services.core.corpus import Corpus, corpus_paths, texts_of_files
from driftlm.services.core.engine import IN_PROCESS, Engine, EngineChoice, RayCluster
from driftlm.services.core.errors import InvalidArgumentError
from driftlm.services.core.paths import FileRoots
from driftlm.services.core.pseudo_likelihood import CorpusScore, TextScore, summarise
from driftlm.services.core.ray_corpus import text_blocks

from .candidate_files import (
    CANDIDATES,
    METADATA_KEY,
    PSEUDO_LIKELIHOOD,
    PSEUDO_LIKELIHOOD_SUMS,
    ScoredWith,
    pseudo_likelihood_schema,
    scores_schema,
    write_scores,
)
from .candidate_scoring import BlockScorer, BlockScoring, ScoringSetup
from .checkpoints import CheckpointStore
from .peers import VocabPeer
from .pseudo_likelihood import BlockPseudoLikelihood
from .run_context import vocabulary_of

# The mask fraction's range: each text is scored over ceil(1 / fraction) passes.
MIN_MASK_FRACTION, MAX_MASK_FRACTION = 0.05, 0.5
DEFAULT_MASK_FRACTION = 0.15


@dataclass(frozen=True)
class CorpusPassRequest:
    """What a corpus pass asks besides the checkpoint and the corpus (PLL reads the destination,
    the pieces per text and the engine only)."""

    baseline_checkpoint_id: str = ""
    destination: str = ""
    max_length: int = 0
    mask_fraction: float = 0.0
    seed: int = 0
    engine: EngineChoice = IN_PROCESS


@dataclass(frozen=True)
class ScoresWritten:
    """Where ScoreCandidates wrote its file, and what it holds."""

    uri: str
    sha256: str
    rows: int
    wall_s: float


class CorpusPasses:
    """Scores corpora for the sampling strategies over the trainer's checkpoints."""

    def __init__(
        self,
        checkpoints: CheckpointStore,
        vocab: VocabPeer,
        roots: FileRoots,
        store_root: Path,
        device: torch.device,
        ray: RayCluster,
        *,
        max_length: Callable[[str, int], int],
        lock: threading.Lock,
    ) -> None:
        """`max_length(checkpoint_id, asked)` resolves and checks the pieces per text; `lock` is
        held while the local engine scores (its models share this process's threads)."""
        self.checkpoints = checkpoints
        self.vocab = vocab
        self.roots = roots
        self.store_root = store_root
        self.device = device
        self.ray = ray
        self._max_length = max_length
        self._lock = lock

    def setup(self, checkpoint_id: str, request: CorpusPassRequest) -> ScoringSetup:
        """What the scorers need, the request checked.

        Raises:
            NotFoundError: no such checkpoint or baseline.
            InvalidArgumentError: a baseline of another vocabulary, a mask fraction or seed out of range.
        """
        record = self.checkpoints.record(checkpoint_id)
        baseline_dir = None
        if request.baseline_checkpoint_id:
            baseline = self.checkpoints.record(request.baseline_checkpoint_id)
            if baseline.vocab_version_id != record.vocab_version_id:
                raise InvalidArgumentError(
                    "baseline_checkpoint_id",
                    f"uses vocab version {baseline.vocab_version_id} and the checkpoint {record.vocab_version_id}; "
                    "[CLS] embeddings are compared over one vocabulary",
                )
            baseline_dir = str(self.checkpoints.directory(request.baseline_checkpoint_id))
        mask_fraction = request.mask_fraction or DEFAULT_MASK_FRACTION
        if not MIN_MASK_FRACTION <= mask_fraction <= MAX_MASK_FRACTION:
            raise InvalidArgumentError(
                "mask_fraction",
                f"must be in [{MIN_MASK_FRACTION}, {MAX_MASK_FRACTION}] (0 means {DEFAULT_MASK_FRACTION}), "
                f"got {mask_fraction}",
            )
        if request.seed < 0:
            raise InvalidArgumentError("seed", f"must be >= 0, got {request.seed}")
        vocabulary = vocabulary_of(self.vocab.version(record.vocab_version_id))
        return ScoringSetup(
            model_dir=str(self.checkpoints.directory(checkpoint_id)),
            baseline_dir=baseline_dir,
            tokenizer_json=vocabulary.tokenizer_json,
            special=vocabulary.special.numpy().copy(),
            mask_id=vocabulary.mask_id,
            pad_id=vocabulary.pad_id,
            max_length=self._max_length(checkpoint_id, request.max_length),
            mask_fraction=mask_fraction,
            seed=request.seed,
        )

    def score(self, checkpoint_id: str, corpus: Corpus, request: CorpusPassRequest) -> ScoresWritten:
        """Score every non-blank text for the strategies and the trigger (ScoreCandidates).

        Raises:
            InvalidArgumentError: the Ray engine asked for inline texts, or no text to score.
            (and what reading the corpus, writing the destination or reaching Ray raises)
        """
        setup = self.setup(checkpoint_id, request)
        paths = self._paths(corpus, request.engine)
        config: dict[str, Any] = store.read_json(self.checkpoints.directory(checkpoint_id) / "config.json")
        scored_with = ScoredWith(
            kind=CANDIDATES,
            checkpoint_id=checkpoint_id,
            baseline_checkpoint_id=request.baseline_checkpoint_id,
            max_length=setup.max_length,
            mask_fraction=setup.mask_fraction,
            seed=setup.seed,
            shards=max(len(paths), 1),
        )
        schema = scores_schema(int(config["hidden_size"]), scored_with)
        return self._corpus_pass(BlockScorer, setup, corpus, paths, request, schema)

    def pseudo_likelihoods(
        self, checkpoint_id: str, corpus: Corpus, request: CorpusPassRequest, *, texts_too: bool = False
    ) -> tuple[ScoresWritten, CorpusScore]:
        """PLL and PLL-word-l2r of every non-blank text (ScorePseudoLikelihood with a corpus): the
        per-text figures in a file, the corpus's in the answer.

        Raises:
            InvalidArgumentError: texts sent beside the corpus (texts_too); and as score.
        """
        if texts_too:
            raise InvalidArgumentError("corpus", "send texts or a corpus, not both")
        setup = self.setup(checkpoint_id, request)
        paths = self._paths(corpus, request.engine)
        scored_with = ScoredWith(
            kind=PSEUDO_LIKELIHOOD,
            checkpoint_id=checkpoint_id,
            baseline_checkpoint_id="",
            max_length=setup.max_length,
            mask_fraction=0.0,
            seed=0,
            shards=max(len(paths), 1),
        )
        totals = np.zeros(len(PSEUDO_LIKELIHOOD_SUMS))

        def add(block: dict[str, np.ndarray]) -> None:
            totals[:] += [float(block[name].sum()) for name in PSEUDO_LIKELIHOOD_SUMS]

        written = self._corpus_pass(
            BlockPseudoLikelihood, setup, corpus, paths, request, pseudo_likelihood_schema(scored_with), add
        )
        total, l2r, pieces, words, characters = totals.tolist()
        return written, summarise([TextScore(total, l2r, int(pieces), int(words), int(characters))])

    def _paths(self, corpus: Corpus, engine: EngineChoice) -> list[Path]:
        """The corpus's files (none for inline texts, which the Ray engine cannot read)."""
        paths = corpus_paths(corpus, self.roots, "corpus") if corpus.files else []
        if engine.engine is Engine.RAY and not paths:
            raise InvalidArgumentError(
                "corpus", "the Ray engine reads files: name the corpus as uri or shards, or ask for the local engine"
            )
        return paths

    def _corpus_pass(
        self,
        scorer: Callable[[ScoringSetup, torch.device], BlockScoring],
        setup: ScoringSetup,
        corpus: Corpus,
        paths: list[Path],
        request: CorpusPassRequest,
        schema: pa.Schema,
        on_block: Callable[[dict[str, np.ndarray]], None] = lambda block: None,
    ) -> ScoresWritten:
        """Every block of the corpus through `scorer`, here or on Ray, into one Parquet file."""
        started = time.perf_counter()
        kind = json.loads(schema.metadata[METADATA_KEY])["kind"]
        target, remote_uri = self._target(request.destination, kind, setup, corpus)
        rows = 0
        try:
            if request.engine.engine is Engine.RAY:
                from .ray_scoring import score_on_ray  # Ray's client side only when asked for

                blocks: Iterator[dict[str, np.ndarray]] = score_on_ray(
                    self.ray,
                    paths,
                    scorer,
                    setup,
                    text_field=corpus.text_field,
                    corpus_format=corpus.corpus_format,
                    workers=request.engine.workers,
                )
            else:
                local = scorer(setup, self.device)
                shards = [
                    texts_of_files([p], "corpus", text_field=corpus.text_field, corpus_format=corpus.corpus_format)
                    for p in paths
                ] or [iter(corpus.texts)]
                blocks = (
                    local.score_block(shard, index, block)
                    for shard, texts in enumerate(shards)
                    for index, block in enumerate(text_blocks(texts))
                )
            if request.engine.engine is Engine.RAY:
                rows = write_scores(target, _observed(blocks, on_block), schema)
            else:
                with self._lock:
                    rows = write_scores(target, _observed(blocks, on_block), schema)
            if rows == 0:
                raise InvalidArgumentError("corpus", "holds no text to score (every text is empty or blank)")
            uri = (
                target.as_uri()
                if remote_uri is None
                else self.roots.remote.publish(target, remote_uri, "destination.uri")
            )
            return ScoresWritten(uri, file_sha256(target), rows, time.perf_counter() - started)
        finally:
            if remote_uri is not None:  # the local staging copy of an upload
                shutil.rmtree(target.parent, ignore_errors=True)
            elif rows == 0:
                target.unlink(missing_ok=True)

    def _target(self, destination: str, kind: str, setup: ScoringSetup, corpus: Corpus) -> tuple[Path, str | None]:
        """Where to write: the destination (a local staging file for an object-store URI), or by
        default a name in the store that follows from what is scored."""
        if destination:
            path, remote_uri = self.roots.staged_writable(destination, "destination.uri")
            return (path.with_suffix(".parquet") if remote_uri is not None else path), remote_uri
        identity = json.dumps(
            [kind, setup.model_dir, setup.baseline_dir, setup.max_length, setup.mask_fraction, setup.seed, corpus.files,
             corpus.text_field, None if corpus.corpus_format is None else corpus.corpus_format.value,
             hashlib.sha256("\\0".join(corpus.texts).encode("utf-8", "surrogatepass")).hexdigest()]
        )  # fmt: skip
        prefix = "" if kind == CANDIDATES else "pll-"
        name = f"{prefix}{Path(setup.model_dir).name}-{hashlib.sha256(identity.encode()).hexdigest()[:16]}.parquet"
        return self.store_root / "trainer" / "scores" / name, None


def _observed(
    blocks: Iterable[dict[str, np.ndarray]], on_block: Callable[[dict[str, np.ndarray]], None]
) -> Iterator[dict[str, np.ndarray]]:
    for block in blocks:
        on_block(block)
        yield block
