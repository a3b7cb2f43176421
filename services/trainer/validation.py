"""StartRun's request checked field by field and turned into a RunSpec; every refusal names the field.

What depends on the store (the base checkpoint's positions and vocab version, the teachers) is
checked by the app when the run starts.
"""

from __future__ import annotations

import math
from pathlib import Path

from driftlm.services.core.curated import CuratedDataError, read_curated
from driftlm.services.core.errors import InvalidArgumentError
from driftlm.services.core.paths import FileRoots
from driftlm.services.core.strategy import Strategy
from driftlm.v1 import common_pb2, trainer_pb2

from .candidate_files import ScoresFile
from .scored_inputs import check_scored, check_weighs
from .spec import RunKind, RunSpec
from .vocab_move import EmbeddingInit

# The run kinds, by their proto value (the servicer maps them back).
KINDS = {
    trainer_pb2.RUN_KIND_MLM: RunKind.MLM,
    trainer_pb2.RUN_KIND_DISTILL: RunKind.DISTILL,
    trainer_pb2.RUN_KIND_CURATED: RunKind.CURATED,
}
_INITS = {
    trainer_pb2.EMBEDDING_INIT_UNSPECIFIED: EmbeddingInit.FVT,
    trainer_pb2.EMBEDDING_INIT_FVT: EmbeddingInit.FVT,
    trainer_pb2.EMBEDDING_INIT_MEAN_COVARIANCE: EmbeddingInit.MEAN_COVARIANCE,
}
MAX_BATCH_SIZE = 65_536
MAX_STEPS = 10_000_000
# Longest sequence any supported model takes; a checkpoint's own positions bound it further.
MAX_LENGTH = 8192
# Candidates scored per iteration (ListSelections returns each with its weight).
MAX_CANDIDATES = 1_000_000
# Trained texts scored at a run's end for the trigger's memory.
MAX_MEMORY_TEXTS = 1_000_000
# Longest idempotency key StartRun takes (a UUID is 36).
MAX_REQUEST_ID = 128


def _count(value: int, field: str, *, low: int = 1, high: int = MAX_STEPS) -> int:
    if not low <= value <= high:
        raise InvalidArgumentError(field, f"must be in [{low}, {high}], got {value}")
    return value


def _fraction(value: float, field: str, *, low: float, high: float, closed_high: bool = True) -> float:
    inside = low <= value <= high if closed_high else low <= value < high
    if not inside:  # also NaN
        bracket = "]" if closed_high else ")"
        raise InvalidArgumentError(field, f"must be in [{low}, {high}{bracket}, got {value}")
    return value


def run_spec(request: trainer_pb2.StartRunRequest, *, roots: FileRoots) -> RunSpec:
    """The validated spec; an empty vocab_version_id and a max_length of 0 are resolved by the app.

    Raises:
        InvalidArgumentError: an impossible or missing parameter.
        NotFoundError: a slice file does not exist.
    """
    if request.kind not in KINDS:
        raise InvalidArgumentError("kind", "must be RUN_KIND_MLM, RUN_KIND_DISTILL or RUN_KIND_CURATED")
    kind = KINDS[request.kind]
    # Distillation and curated runs train on every sentence alike: they may leave the strategy unset.
    if kind is not RunKind.MLM and request.strategy == common_pb2.SAMPLING_STRATEGY_UNSPECIFIED:
        strategy = Strategy.UNIFORM
    else:
        strategy = Strategy.from_proto(request.strategy, "strategy")
    if request.embedding_init not in _INITS:
        allowed = ", ".join(trainer_pb2.EmbeddingInit.Name(value) for value in _INITS)
        raise InvalidArgumentError("embedding_init", f"must be one of {allowed}, got {request.embedding_init}")
    if not request.slices:
        raise InvalidArgumentError("slices", "name at least one corpus file to train on")
    slices = tuple(
        str(roots.readable(ref.uri, f"slices[{i}].uri", sha256=ref.sha256)) for i, ref in enumerate(request.slices)
    )
    if kind is RunKind.CURATED:
        for index, path in enumerate(slices):
            try:
                read_curated(Path(path), categories=None)
            except CuratedDataError as error:
                raise InvalidArgumentError(f"slices[{index}]", str(error)) from None
    replay = tuple(
        str(roots.readable(ref.uri, f"replay_slices[{i}].uri", sha256=ref.sha256))
        for i, ref in enumerate(request.replay_slices)
    )
    candidate_scores = _candidate_scores(request, kind, strategy, len(slices), roots)
    if not (math.isfinite(request.learning_rate) and 0 < request.learning_rate <= 1):
        raise InvalidArgumentError("learning_rate", f"must be in (0, 1], got {request.learning_rate}")
    if request.max_length:
        _count(request.max_length, "max_length", low=4, high=MAX_LENGTH)
    mask_fraction = request.mask_fraction or 0.15
    _fraction(mask_fraction, "mask_fraction", low=0.0, high=1.0, closed_high=False)
    if kind is RunKind.DISTILL:
        if not request.teacher_checkpoint_ids:
            raise InvalidArgumentError("teacher_checkpoint_ids", "a distillation run needs at least one teacher")
        if request.temperature < 0 or not math.isfinite(request.temperature):
            raise InvalidArgumentError("temperature", f"must be > 0 (0 means 2), got {request.temperature}")
    return RunSpec(
        kind=kind,
        base_checkpoint_id=request.base_checkpoint_id,
        vocab_version_id=request.vocab_version_id,
        slices=slices,
        strategy=strategy,
        iterations=_count(request.iterations, "iterations", high=100_000),
        steps_per_iteration=_count(request.steps_per_iteration, "steps_per_iteration"),
        batch_size=_count(request.batch_size, "batch_size", high=MAX_BATCH_SIZE),
        learning_rate=request.learning_rate,
        seed=request.seed,
        text_field=request.text_field or "text",
        replay_slices=replay,
        replay_fraction=_fraction(request.replay_fraction, "replay_fraction", low=0.0, high=1.0, closed_high=False),
        max_length=request.max_length,
        mask_fraction=mask_fraction,
        sampling_alpha=_fraction(
            request.sampling_alpha if request.HasField("sampling_alpha") else 0.75, "sampling_alpha", low=0.0, high=1.0
        ),
        top_x=_count(request.top_x or 100, "top_x", high=10_000_000),
        candidate_pool_size=_count(request.candidate_pool_size, "candidate_pool_size", low=0, high=MAX_CANDIDATES),
        embedding_init=_INITS[request.embedding_init],
        teacher_checkpoint_ids=tuple(request.teacher_checkpoint_ids),
        distill_alpha=_fraction(request.distill_alpha, "distill_alpha", low=0.0, high=1.0),
        temperature=request.temperature or 2.0,
        display_name=request.display_name,
        random_batches=request.random_batches,
        reference_texts=_count(request.reference_texts, "reference_texts", low=0, high=100_000),
        memory_decay=_fraction(
            request.memory_decay if request.HasField("memory_decay") else 0.5, "memory_decay", low=0.0, high=1.0
        ),
        memory_texts=_count(request.memory_texts or 20_000, "memory_texts", high=MAX_MEMORY_TEXTS),
        head_only=request.head_only,
        request_id=_request_id(request.request_id),
        candidate_scores=candidate_scores,
    )


def _candidate_scores(
    request: trainer_pb2.StartRunRequest, kind: RunKind, strategy: Strategy, slices: int, roots: FileRoots
) -> str:
    """The path of the run's scores file, checked against its base, slices and strategy; "" for none."""
    if not request.HasField("candidate_scores"):
        return ""
    if kind is not RunKind.MLM:
        raise InvalidArgumentError("candidate_scores", "weighs an MLM run's first candidates; this run draws uniformly")
    path = roots.readable(request.candidate_scores.uri, "candidate_scores.uri", sha256=request.candidate_scores.sha256)
    scores = ScoresFile(path, "candidate_scores")
    check_weighs(scores, strategy)
    check_scored(scores, request.base_checkpoint_id, slices, "slices")
    return str(path)


def _request_id(value: str) -> str:
    """The idempotency key, checked: printable ASCII, at most MAX_REQUEST_ID characters."""
    if len(value) > MAX_REQUEST_ID or not all(" " <= c <= "~" for c in value):
        raise InvalidArgumentError(
            "request_id", f"must be at most {MAX_REQUEST_ID} printable ASCII characters (a UUID, say)"
        )
    return value
