"""ScoreCandidates' application layer: checks the request, resolves the corpus and the destination,
and runs the scoring in this process or on the Ray cluster into one Parquet file."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from driftlm.services.core import store
from driftlm.services.core.artifacts import file_sha256
from driftlm.services.core.corpus import Corpus, corpus_paths, texts_of_files
from driftlm.services.core.engine import IN_PROCESS, Engine, EngineChoice, RayCluster
from driftlm.services.core.errors import InvalidArgumentError
from driftlm.services.core.paths import FileRoots
from driftlm.services.core.ray_corpus import text_blocks

from .candidate_files import scores_schema, write_scores
from .candidate_scoring import BlockScorer, ScoringSetup
from .checkpoints import CheckpointStore
from .peers import VocabPeer
from .run_context import vocabulary_of

# The mask fraction's range: each text is scored over ceil(1 / fraction) passes.
MIN_MASK_FRACTION, MAX_MASK_FRACTION = 0.05, 0.5
DEFAULT_MASK_FRACTION = 0.15


@dataclass(frozen=True)
class CandidateRequest:
    """What ScoreCandidates asks besides the checkpoint and the corpus."""

    baseline_checkpoint_id: str = ""
    destination: str = ""
    max_length: int = 0
    mask_fraction: float = 0.0
    seed: int = 0
    engine: EngineChoice = IN_PROCESS


@dataclass(frozen=True)
class CandidateScores:
    """Where ScoreCandidates wrote its file, and what it holds."""

    uri: str
    sha256: str
    rows: int
    wall_s: float


class CandidateScoring:
    """Scores corpora for the sampling strategies over the trainer's checkpoints."""

    def __init__(
        self,
        checkpoints: CheckpointStore,
        vocab: VocabPeer,
        roots: FileRoots,
        store_root: Path,
        device: torch.device,
        ray: RayCluster,
    ) -> None:
        self.checkpoints = checkpoints
        self.vocab = vocab
        self.roots = roots
        self.store_root = store_root
        self.device = device
        self.ray = ray

    def setup(self, checkpoint_id: str, request: CandidateRequest, max_length: int) -> ScoringSetup:
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
            max_length=max_length,
            mask_fraction=mask_fraction,
            seed=request.seed,
        )

    def score(
        self, checkpoint_id: str, corpus: Corpus, request: CandidateRequest, setup: ScoringSetup
    ) -> CandidateScores:
        """Score every non-blank text and write the file; in this process, or on the Ray cluster.

        Raises:
            InvalidArgumentError: the Ray engine asked for inline texts, or no text to score.
            (and what reading the corpus, writing the destination or reaching Ray raises)
        """
        started = time.perf_counter()
        paths = corpus_paths(corpus, self.roots, "corpus") if corpus.files else []
        if request.engine.engine is Engine.RAY and not paths:
            raise InvalidArgumentError(
                "corpus", "the Ray engine reads files: name the corpus as uri or shards, or ask for the local engine"
            )
        target, remote_uri = self._target(request.destination, checkpoint_id, setup, corpus)
        config: dict[str, Any] = store.read_json(self.checkpoints.directory(checkpoint_id) / "config.json")
        schema = scores_schema(int(config["hidden_size"]), baseline=setup.baseline_dir is not None)
        rows = 0
        try:
            if request.engine.engine is Engine.RAY:
                from .ray_scoring import score_on_ray  # Ray's client side only when asked for

                blocks = score_on_ray(
                    self.ray,
                    paths,
                    setup,
                    text_field=corpus.text_field,
                    corpus_format=corpus.corpus_format,
                    workers=request.engine.workers,
                )
                rows = write_scores(target, blocks, schema)
            else:
                scorer = BlockScorer(setup, self.device)
                shards = [
                    texts_of_files([p], "corpus", text_field=corpus.text_field, corpus_format=corpus.corpus_format)
                    for p in paths
                ] or [iter(corpus.texts)]
                rows = write_scores(
                    target,
                    (
                        scorer.score_block(shard, index, block)
                        for shard, texts in enumerate(shards)
                        for index, block in enumerate(text_blocks(texts))
                    ),
                    schema,
                )
            if rows == 0:
                raise InvalidArgumentError("corpus", "holds no text to score (every text is empty or blank)")
            uri = (
                target.as_uri()
                if remote_uri is None
                else self.roots.remote.publish(target, remote_uri, "destination.uri")
            )
            return CandidateScores(uri, file_sha256(target), rows, time.perf_counter() - started)
        finally:
            if remote_uri is not None:  # the local staging copy of an upload
                shutil.rmtree(target.parent, ignore_errors=True)
            elif rows == 0:
                target.unlink(missing_ok=True)

    def _target(
        self, destination: str, checkpoint_id: str, setup: ScoringSetup, corpus: Corpus
    ) -> tuple[Path, str | None]:
        """Where to write: the destination (a local staging file for an object-store URI), or by
        default a name in the store that follows from what is scored."""
        if destination:
            path, remote_uri = self.roots.staged_writable(destination, "destination.uri")
            return (path.with_suffix(".parquet") if remote_uri is not None else path), remote_uri
        identity = json.dumps(
            [checkpoint_id, setup.baseline_dir, setup.max_length, setup.mask_fraction, setup.seed, corpus.files,
             corpus.text_field, None if corpus.corpus_format is None else corpus.corpus_format.value,
             hashlib.sha256("\\0".join(corpus.texts).encode("utf-8", "surrogatepass")).hexdigest()]
        )  # fmt: skip
        name = f"{checkpoint_id}-{hashlib.sha256(identity.encode()).hexdigest()[:16]}.parquet"
        return self.store_root / "trainer" / "scores" / name, None
