"""The loop's state between slices, as typed records (pipeline-state.json, `driftlm.pipeline-state/v1`).

The state is what a restarted `driftlm run` continues from: the base, each arm's latest checkpoint,
the adaptive arm's vocabulary, the observations drift is measured against, what is served, and one
SliceRecord per finished slice (which the report carries unchanged). Each record reads and writes
its own JSON, so the file's format is the records' and nothing else indexes it by string.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from driftlm.services.core.strategy import Strategy

STATE_FORMAT = "driftlm.pipeline-state/v1"


class ArmKind(enum.Enum):
    """How an arm follows the stream (its name in the report: `static`, `incremental`,
    `incremental+vocab[:strategy]`, `scratch`)."""

    STATIC = "static"
    INCREMENTAL = "incremental"
    ADAPTIVE = "incremental+vocab"
    SCRATCH = "scratch"

    @classmethod
    def of(cls, name: str) -> ArmKind:
        return cls(name.split(":", 1)[0])


def arm_names(strategies: tuple[Strategy, ...], scratch: bool) -> list[str]:
    """The arms of a run, in report order: one adaptive arm per strategy."""
    adaptive = [adaptive_arm((s,), one_of=len(strategies)) for s in strategies]
    return [ArmKind.STATIC.value, ArmKind.INCREMENTAL.value, *adaptive, *([ArmKind.SCRATCH.value] if scratch else [])]


def adaptive_arm(strategies: tuple[Strategy, ...], *, one_of: int = 0) -> str:
    """The arm the trigger scores and the serving half distils: the first strategy's adaptive arm
    (named by its strategy only when a run has several)."""
    several = (one_of or len(strategies)) > 1
    return f"{ArmKind.ADAPTIVE.value}:{strategies[0].short_name}" if several else ArmKind.ADAPTIVE.value


def arm_strategy(name: str, default: Strategy) -> Strategy:
    """The strategy an adaptive arm trains with."""
    return Strategy.from_name(name.split(":", 1)[1]) if ":" in name else default


@dataclass(frozen=True)
class ArmRecord:
    """An arm's latest checkpoint and what it has cost so far."""

    checkpoint: str
    train_tokens: int
    wall_s: float

    def to_json(self) -> dict[str, Any]:
        return {"checkpoint": self.checkpoint, "train_tokens": self.train_tokens, "wall_s": self.wall_s}

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> ArmRecord:
        return cls(str(record["checkpoint"]), int(record["train_tokens"]), float(record["wall_s"]))


@dataclass(frozen=True)
class BaseRecord:
    """The base model every arm starts from, and how its MLM head was warmed up."""

    model: str
    checkpoint: str
    vocab_version: str
    new_mlm_head: bool
    head_steps: int

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "checkpoint": self.checkpoint,
            "vocab_version": self.vocab_version,
            "new_mlm_head": self.new_mlm_head,
            "head_steps": self.head_steps,
        }

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> BaseRecord:
        return cls(
            str(record["model"]),
            str(record["checkpoint"]),
            str(record["vocab_version"]),
            bool(record["new_mlm_head"]),
            int(record["head_steps"]),
        )


@dataclass(frozen=True)
class SliceRecord:
    """One finished slice, as the report shows it (report.py documents the nested figures).

    The first slice trains the base and is evaluated by no arm: it has no comparisons and no
    serving entry (`evaluated` False).
    """

    slice: str
    texts: int
    heldout_texts: int
    # The trigger's decision and statistics (trigger_record); None for the first slice.
    trigger: dict[str, Any] | None
    # The adaptive arm's vocabulary after the slice and the drift measures.
    vocab: dict[str, Any]
    # Per arm: held-out figures, probe, cost.
    arms: dict[str, dict[str, Any]]
    evaluated: bool = True
    # Paired differences between arms, with intervals.
    comparisons: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The serving half's record (promotion.py); None when the loop does not serve.
    serving: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        record = {
            "slice": self.slice,
            "texts": self.texts,
            "heldout_texts": self.heldout_texts,
            "trigger": self.trigger,
            "vocab": self.vocab,
            "arms": self.arms,
        }
        if self.evaluated:
            record |= {"comparisons": self.comparisons, "serving": self.serving}
        return record

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> SliceRecord:
        return cls(
            slice=str(record["slice"]),
            texts=int(record["texts"]),
            heldout_texts=int(record["heldout_texts"]),
            trigger=record["trigger"],
            vocab=dict(record["vocab"]),
            arms=dict(record["arms"]),
            evaluated="comparisons" in record,
            comparisons=dict(record.get("comparisons") or {}),
            serving=record.get("serving"),
        )


@dataclass
class PipelineState:
    """Where the loop stands after its last finished slice."""

    base: BaseRecord
    # The adaptive arms' vocabulary version (the chain the trigger's updates extend).
    vocab_version: str
    arms: dict[str, ArmRecord]
    # Observations of the first and of the latest slice under the base vocabulary (drift).
    first_observation: str
    previous_observation: str
    slices: list[SliceRecord]
    # What the serving half serves, the student it distils into and the teacher it last used.
    served: dict[str, Any] | None = None
    student: str | None = None
    teacher: str | None = None

    def to_json(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "format": STATE_FORMAT,
            "base": self.base.to_json(),
            "vocab_version": self.vocab_version,
            "arms": {name: arm.to_json() for name, arm in self.arms.items()},
            "first_observation": self.first_observation,
            "previous_observation": self.previous_observation,
            "slices": [s.to_json() for s in self.slices],
        }
        for name in ("served", "student", "teacher"):
            if getattr(self, name) is not None:
                record[name] = getattr(self, name)
        return record

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> PipelineState:
        """Raises ValueError for a file of another format."""
        if record.get("format") != STATE_FORMAT:
            raise ValueError(f"not a {STATE_FORMAT} file (format {record.get('format')!r})")
        return cls(
            base=BaseRecord.from_json(record["base"]),
            vocab_version=str(record["vocab_version"]),
            arms={name: ArmRecord.from_json(arm) for name, arm in record["arms"].items()},
            first_observation=str(record["first_observation"]),
            previous_observation=str(record["previous_observation"]),
            slices=[SliceRecord.from_json(s) for s in record["slices"]],
            served=record.get("served"),
            student=record.get("student"),
            teacher=record.get("teacher"),
        )
