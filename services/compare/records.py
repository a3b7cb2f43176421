"""Comparisons as the contract's `Comparison` message, kept as protobuf JSON in the store: one file
per comparison, written atomically, read back by id or listed newest first."""

from __future__ import annotations

from pathlib import Path
from typing import Generic, TypeVar

from google.protobuf import json_format

from driftlm.services.core import store
from driftlm.services.core.errors import NotFoundError
from driftlm.v1 import compare_pb2

from .app import ComparisonResult, Estimated, ModelKey
from .evaluation import BehaviourResult, ModelOutcome
from .fidelity import ModelFigures


def _ref(key: ModelKey) -> compare_pb2.ModelRef:
    return compare_pb2.ModelRef(name=key.name, version=key.version)


def _estimate(point: float | None, low: float | None, high: float | None) -> compare_pb2.Estimate:
    def clean(value: float | None) -> float:
        return 0.0 if value is None else value

    return compare_pb2.Estimate(value=clean(point), low=clean(low), high=clean(high))


def _quality(key: ModelKey, point: ModelFigures, low: ModelFigures, high: ModelFigures) -> compare_pb2.ModelQuality:
    return compare_pb2.ModelQuality(
        model=_ref(key),
        top1_accuracy=_estimate(point.top1_accuracy, low.top1_accuracy, high.top1_accuracy),
        top5_accuracy=_estimate(point.top5_accuracy, low.top5_accuracy, high.top5_accuracy),
        expected_calibration_error=_estimate(
            point.expected_calibration_error, low.expected_calibration_error, high.expected_calibration_error
        ),
    )


def _slice(result: ComparisonResult, estimated: Estimated) -> compare_pb2.SliceComparison:
    point, low, high = estimated.point, estimated.low, estimated.high
    teacher = result.teachers[0] if len(result.teachers) == 1 else ModelKey("ensemble", 0)
    message = compare_pb2.SliceComparison(
        label=estimated.label,
        texts=estimated.texts,
        positions=point.positions,
        top1_agreement=_estimate(point.top1_agreement, low.top1_agreement, high.top1_agreement),
        kl_teacher_student=_estimate(point.kl_teacher_student, low.kl_teacher_student, high.kl_teacher_student),
        teacher=_quality(teacher, point.teacher, low.teacher, high.teacher),
        student=_quality(result.student, point.student, low.student, high.student),
    )
    if result.independent_student is not None and point.independent_student is not None:
        assert low.independent_student is not None and high.independent_student is not None
        message.independent_top1_agreement.CopyFrom(
            _estimate(point.independent_top1_agreement, low.independent_top1_agreement, high.independent_top1_agreement)
        )
        message.independent_kl_teacher_student.CopyFrom(
            _estimate(
                point.independent_kl_teacher_student,
                low.independent_kl_teacher_student,
                high.independent_kl_teacher_student,
            )
        )
        message.independent_student.CopyFrom(
            _quality(
                result.independent_student, point.independent_student, low.independent_student, high.independent_student
            )
        )
    return message


def to_message(result: ComparisonResult) -> compare_pb2.Comparison:
    """The result as the contract's message."""
    message = compare_pb2.Comparison(
        comparison_id=result.comparison_id,
        display_name=result.display_name,
        created_at=result.created_at,
        teachers=[_ref(t) for t in result.teachers],
        student=_ref(result.student),
        mask_fraction=result.mask_fraction,
        seed=result.seed,
        slices=[_slice(result, s) for s in result.slices],
        overall=_slice(result, result.overall),
        gate=compare_pb2.GateDecision(passed=result.gate.passed, reasons=list(result.gate.reasons)),
    )
    if result.independent_student is not None:
        message.independent_student.CopyFrom(_ref(result.independent_student))
    return message


Record = TypeVar("Record", compare_pb2.Comparison, compare_pb2.BehaviourEvaluation)


class RecordStore(Generic[Record]):
    """`<store>/compare/<kind>/<id>.json`: one kind of record, each file written whole."""

    def __init__(self, root: Path, kind: str, message: type[Record]) -> None:
        self._directory = root / "compare" / kind
        self._message: type[Record] = message
        self._what = kind.removesuffix("s").replace("_", " ")

    def save(self, record_id: str, record: Record) -> None:
        """Write the record (whole, durably)."""
        document = json_format.MessageToJson(record, preserving_proto_field_name=True)
        store.write_bytes_atomically(self._directory / f"{record_id}.json", document.encode("utf-8"))

    def get(self, record_id: str) -> Record:
        """The stored record.

        Raises:
            NotFoundError: no record has that id (or it cannot be an id).
        """
        path = self._directory / f"{record_id}.json"
        if not store.is_stored_id(record_id) or not path.is_file():
            raise NotFoundError(f"no {self._what} {record_id[:80]!r}")
        record = self._message()
        json_format.Parse(path.read_text(encoding="utf-8"), record)
        return record

    def all(self) -> list[Record]:
        """Every stored record, newest first."""
        if not self._directory.is_dir():
            return []
        found = [
            json_format.Parse(p.read_text(encoding="utf-8"), self._message()) for p in self._directory.glob("*.json")
        ]
        return sorted(found, key=lambda r: r.created_at, reverse=True)


def comparisons(root: Path) -> RecordStore[compare_pb2.Comparison]:
    """Where comparisons are kept."""
    return RecordStore(root, "comparisons", compare_pb2.Comparison)


def behaviour_evaluations(root: Path) -> RecordStore[compare_pb2.BehaviourEvaluation]:
    """Where behaviour evaluations are kept."""
    return RecordStore(root, "behaviour_evaluations", compare_pb2.BehaviourEvaluation)


def _model_behaviour(outcome: ModelOutcome) -> compare_pb2.ModelBehaviour:
    mean, low, high = outcome.mean_toxicity
    return compare_pb2.ModelBehaviour(
        role=outcome.role,
        mean_toxicity=_estimate(mean, low, high),
        completions=outcome.completions,
        top_words=[compare_pb2.WordCount(word=word, count=count) for word, count in outcome.top_words],
        examples=list(outcome.examples),
        top_fill_words=[compare_pb2.WordCount(word=word, count=count) for word, count in outcome.top_fill_words],
    )


def behaviour_message(result: BehaviourResult) -> compare_pb2.BehaviourEvaluation:
    """The behaviour evaluation as the contract's message."""
    return compare_pb2.BehaviourEvaluation(
        evaluation_id=result.evaluation_id,
        display_name=result.display_name,
        created_at=result.created_at,
        models=[compare_pb2.RoleModel(role=role, model=_ref(key)) for role, key in result.models],
        categories=[
            compare_pb2.CategoryBehaviour(
                category=c.category,
                models=[_model_behaviour(m) for m in c.models],
                tests=[
                    compare_pb2.ToxicityTest(
                        role=t.role,
                        against=t.against,
                        difference=t.difference,
                        p_value=t.p_value,
                        significant=t.p_value < 0.05,
                    )
                    for t in c.tests
                ],
            )
            for c in result.categories
        ],
        groups=[
            compare_pb2.GroupBehaviour(group=g.group, models=[_model_behaviour(m) for m in g.models])
            for g in result.groups
        ],
        adherence=[compare_pb2.Adherence(role=role, loss=loss) for role, loss in result.adherence],
        weakest_categories=list(result.weakest_categories),
        samples_per_prompt=result.samples_per_prompt,
        temperature=result.temperature,
        seed=result.seed,
        scorer=result.scorer,
    )
