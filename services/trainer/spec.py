"""What a run was asked to do, as a frozen dataclass stored with the run (JSON)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, fields
from typing import Any

from driftlm.services.core.strategy import Strategy

from .vocab_move import EmbeddingInit


class RunKind(enum.Enum):
    """Training, distillation, or fine-tuning on a curated dataset (PALMS)."""

    MLM = "mlm"
    DISTILL = "distill"
    CURATED = "curated"


@dataclass(frozen=True)
class RunSpec:
    """A run's parameters, validated (see servicer) and with defaults filled in."""

    kind: RunKind
    base_checkpoint_id: str
    vocab_version_id: str
    slices: tuple[str, ...]
    strategy: Strategy
    iterations: int
    steps_per_iteration: int
    batch_size: int
    learning_rate: float
    seed: int
    text_field: str = "text"
    replay_slices: tuple[str, ...] = ()
    replay_fraction: float = 0.0
    max_length: int = 128
    mask_fraction: float = 0.15
    sampling_alpha: float = 0.75
    top_x: int = 100
    candidate_pool_size: int = 0
    embedding_init: EmbeddingInit = EmbeddingInit.FVT
    teacher_checkpoint_ids: tuple[str, ...] = field(default_factory=tuple)
    distill_alpha: float = 0.5
    temperature: float = 2.0
    display_name: str = ""
    # Batches of random sentences instead of sentences of similar length (see _iteration_order).
    random_batches: bool = False
    # Texts held out to calibrate the trigger's loss tests; 0 means min(1000, a tenth of the slices' texts).
    reference_texts: int = 0
    # Weight of the base checkpoint's memory in the new one's.
    memory_decay: float = 0.5
    # Trained texts scored for the token-loss memory.
    memory_texts: int = 20_000
    # Only the MLM head's transform and bias train (a new head's warm-up).
    head_only: bool = False
    # The caller's idempotency key (StartRunRequest.request_id); empty: none.
    request_id: str = ""
    # A ScoreCandidates file that weighs the first iteration's candidates; empty: none.
    candidate_scores: str = ""

    @property
    def total_steps(self) -> int:
        return self.iterations * self.steps_per_iteration

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = (
                value.value if isinstance(value, enum.Enum) else list(value) if isinstance(value, tuple) else value
            )
        return out

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> RunSpec:
        values = {"random_batches": True, **record}  # runs stored before grouping existed drew at random
        # A spec written by hand (`driftlm train --spec`) may leave out what has a default.
        for name, kind in (("kind", RunKind), ("strategy", Strategy), ("embedding_init", EmbeddingInit)):
            if name in values:
                values[name] = kind(values[name])
        for name in ("slices", "replay_slices", "teacher_checkpoint_ids"):
            if name in values:
                values[name] = tuple(values[name])
        return cls(**values)
