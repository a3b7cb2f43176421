"""Closing the loop: after the adaptive arm trains on a slice, distil a smaller student from it,
export both, compare them on the slice's held-out texts, and serve the student (and its teacher)
only when the fidelity gate passes; otherwise keep serving what was served and say why.

    teacher ckpt --ExportOnnx--> driftlm/<v>          student ckpt --ExportOnnx--> driftlm-student/<w>
                 \\__ StartRun(kind=distill) from the previous student (first: the base's lower layers)
    inference.LoadModel(both) -> compare.CompareModels(teacher, student, held-out) -> gate
    passed: LoadModel(make_default, unload_previous) for both; failed: UnloadModel the candidates
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import grpc

from driftlm.services.compare.client import CompareClient
from driftlm.services.core.strategy import Strategy
from driftlm.services.inference.client import InferenceClient
from driftlm.services.trainer.client import TrainerClient
from driftlm.v1 import compare_pb2, trainer_pb2

TEACHER_MODEL = "driftlm"
STUDENT_MODEL = "driftlm-student"
# With --ensemble-teachers: the previous teacher, moved to the new vocabulary, served for the
# comparison only (the ensemble's second member).
PREVIOUS_TEACHER_MODEL = "driftlm-previous-teacher"
# A run that only moves a checkpoint to a new vocabulary: one step at a learning rate that changes
# no weight measurably (the trainer moves embeddings as a run starts).
_MOVE_LEARNING_RATE = 1e-12


@dataclass(frozen=True)
class GateOptions:
    """The promotion gate's thresholds; None: not checked."""

    min_top1_agreement: float | None = 0.5
    max_kl: float | None = None
    max_accuracy_drop: float | None = None
    # Check each threshold against the unfavourable end of its 95% interval, not the point.
    on_bound: bool = False


def cut_model_directory(source: Path, directory: Path, layers: int) -> Path:
    """A copy of a model directory cut to its first `layers` layers (0: half of them, at least one):
    the first student's start, as DistilBERT starts from its teacher's layers (and its MLM head).
    The weights file is the source's; transformers loads the first layers and ignores the rest."""
    config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    config["num_hidden_layers"] = layers or max(1, int(config.get("num_hidden_layers", 2)) // 2)
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (source / name).exists():
            shutil.copyfile(source / name, directory / name)
    (directory / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return directory


def local_directory(uri: str) -> Path | None:
    """The directory a file:// URI names, when it is on this machine."""
    path = Path(url2pathname(urlparse(uri).path))
    return path if (path / "config.json").is_file() else None


def _estimate(message: compare_pb2.Estimate) -> dict[str, float]:
    return {"value": message.value, "low": message.low, "high": message.high}


def _seconds(call: Any) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


class Promotion:
    """The serving half of the loop, over the trainer, inference and compare services."""

    def __init__(
        self,
        trainer: TrainerClient,
        inference: InferenceClient,
        compare: CompareClient,
        *,
        gate: GateOptions,
        seed: int,
        model_name: str = TEACHER_MODEL,
    ) -> None:
        self.trainer = trainer
        self.inference = inference
        self.compare = compare
        self.gate = gate
        self.seed = seed
        # The served models' names: the teacher's, and `<name>-student`.
        self.names = {"teacher": model_name, "student": f"{model_name}-student"}

    def moved(self, train: Any, label: str, checkpoint: str, vocab_version: str, slice_ref: Any) -> str:
        """The checkpoint on `vocab_version` (itself when it is on it already)."""
        if self.trainer.checkpoint(checkpoint).vocab_version_id == vocab_version:
            return checkpoint
        run: trainer_pb2.RunStatus = train(
            label,
            base_checkpoint_id=checkpoint,
            vocab_version_id=vocab_version,
            slices=[slice_ref],
            strategy=Strategy.UNIFORM.proto,
            steps=1,
            learning_rate=_MOVE_LEARNING_RATE,
        )
        return run.checkpoint_id

    def distil(
        self,
        train: Any,
        label: str,
        student: str,
        teachers: list[str],
        vocab_version: str,
        slice_ref: Any,
        steps: int,
    ) -> str:
        """Distil the student (moved to the teachers' vocabulary) from the teachers (an ensemble:
        the mean of their probabilities) on the slice; the new checkpoint."""
        run: trainer_pb2.RunStatus = train(
            label,
            kind=trainer_pb2.RUN_KIND_DISTILL,
            base_checkpoint_id=student,
            vocab_version_id=vocab_version,
            teacher_checkpoint_ids=teachers,
            slices=[slice_ref],
            strategy=Strategy.UNIFORM.proto,
            steps=steps,
        )
        return run.checkpoint_id

    def promote(
        self,
        teacher: str,
        student: str,
        heldout: list[str],
        label: str,
        served: dict[str, int] | None,
        previous_teacher: str | None = None,
        *,
        versions: dict[str, int] | None = None,
    ) -> dict[str, Any]:
        """Export both, load them beside what is served, compare, and serve them if the gate passes.

        `served` is what is served now ({"teacher": v, "student": w}) or None; the returned record
        says what is served afterwards and why. With `previous_teacher` (on the teacher's
        vocabulary) the student is compared with the ensemble of both teachers, as it was distilled.
        With `versions` ({"teacher": v, "student": w}) the exports take those versions, so that a
        retry after a crash repeats the same promotion (every step of it is idempotent then).
        """
        asked = versions or {"teacher": 0, "student": 0}
        exported = {
            "teacher": self.trainer.export_onnx(teacher, model_name=self.names["teacher"], version=asked["teacher"]),
            "student": self.trainer.export_onnx(student, model_name=self.names["student"], version=asked["student"]),
        }
        candidate = {role: int(answer.version) for role, answer in exported.items()}
        names = self.names
        for role, name in names.items():
            self.inference.load_model(name, candidate[role])
        teachers: list[tuple[str, int]] = [(names["teacher"], candidate["teacher"])]
        if previous_teacher is not None:
            member = int(self.trainer.export_onnx(previous_teacher, model_name=PREVIOUS_TEACHER_MODEL).version)
            self.inference.load_model(PREVIOUS_TEACHER_MODEL, member)
            teachers.append((PREVIOUS_TEACHER_MODEL, member))
        comparison = self.compare.compare(
            teachers,
            (names["student"], candidate["student"]),
            {label: heldout},
            min_top1_agreement=self.gate.min_top1_agreement,
            max_kl=self.gate.max_kl,
            max_accuracy_drop=self.gate.max_accuracy_drop,
            basis=compare_pb2.GATE_BASIS_INTERVAL_BOUND if self.gate.on_bound else compare_pb2.GATE_BASIS_POINT,
            seed=self.seed,
            display_name=f"{label}: student {candidate['student']} against teacher {candidate['teacher']}",
        )
        speeds = {
            role: _seconds(
                lambda name=name, role=role: self.inference.embed(name, heldout, version=candidate[role], truncate=True)
            )
            for role, name in names.items()
        }
        sizes = {role: _file_size(answer.model.uri) for role, answer in exported.items()}
        if previous_teacher is not None:
            self._unload(*teachers[1])  # compared with, never served
        if comparison.gate.passed:
            for role, name in names.items():
                self.inference.load_model(name, candidate[role], make_default=True, unload_previous=True)
            now_served: dict[str, int] | None = candidate
        else:
            for role, name in names.items():
                if served is None or served[role] != candidate[role]:
                    self._unload(name, candidate[role])
            now_served = served
        overall = comparison.overall
        return {
            "candidate": candidate,
            "teachers": [f"{name}/{version}" for name, version in teachers],
            "served": now_served,
            "promoted": comparison.gate.passed,
            "gate": list(comparison.gate.reasons) or ["no threshold set"],
            "comparison_id": comparison.comparison_id,
            "positions": overall.positions,
            "top1_agreement": _estimate(overall.top1_agreement),
            "kl_teacher_student": _estimate(overall.kl_teacher_student),
            "teacher_top1": _estimate(overall.teacher.top1_accuracy),
            "student_top1": _estimate(overall.student.top1_accuracy),
            "teacher_ece": _estimate(overall.teacher.expected_calibration_error),
            "student_ece": _estimate(overall.student.expected_calibration_error),
            "size_ratio": sizes["student"] / sizes["teacher"] if sizes["teacher"] and sizes["student"] else None,
            "speed_ratio": speeds["teacher"] / speeds["student"] if speeds["student"] else None,
        }

    def _unload(self, name: str, version: int) -> None:
        """Unload a candidate; one a crashed attempt unloaded already is fine."""
        try:
            self.inference.unload_model(name, version)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:
                raise


def _file_size(uri: str) -> int:
    """Bytes of an exported file (a file:// URI); 0 when it is not on this machine (services elsewhere)."""
    try:
        return Path(url2pathname(urlparse(uri).path)).stat().st_size
    except OSError:
        return 0
