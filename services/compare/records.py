"""Comparisons as the contract's `Comparison` message, kept as protobuf JSON in the store: one file
per comparison, written atomically, read back by id or listed newest first."""

from __future__ import annotations

from pathlib import Path

from google.protobuf import json_format

from driftlm.services.runtime import store
from driftlm.services.runtime.errors import NotFoundError
from driftlm.v1 import compare_pb2

from .app import ComparisonResult, Estimated, ModelKey
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


class ComparisonStore:
    """`<store>/compare/comparisons/<id>.json`."""

    def __init__(self, root: Path) -> None:
        self._directory = root / "compare" / "comparisons"

    def save(self, comparison: compare_pb2.Comparison) -> None:
        """Write the comparison (whole, durably)."""
        document = json_format.MessageToJson(comparison, preserving_proto_field_name=True)
        store.write_bytes_atomically(self._directory / f"{comparison.comparison_id}.json", document.encode("utf-8"))

    def get(self, comparison_id: str) -> compare_pb2.Comparison:
        """The stored comparison.

        Raises:
            NotFoundError: no comparison has that id (or it cannot be an id).
        """
        path = self._directory / f"{comparison_id}.json"
        if not store.is_stored_id(comparison_id) or not path.is_file():
            raise NotFoundError(f"no comparison {comparison_id[:80]!r}")
        return json_format.Parse(path.read_text(encoding="utf-8"), compare_pb2.Comparison())

    def all(self) -> list[compare_pb2.Comparison]:
        """Every stored comparison, newest first."""
        if not self._directory.is_dir():
            return []
        found = [
            json_format.Parse(path.read_text(encoding="utf-8"), compare_pb2.Comparison())
            for path in self._directory.glob("cmp-*.json")
        ]
        return sorted(found, key=lambda c: (c.created_at, c.comparison_id), reverse=True)
