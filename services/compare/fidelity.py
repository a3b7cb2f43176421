"""Fidelity, accuracy and calibration of masked-token predictions (Stanton et al., "Does Knowledge
Distillation Really Work?", NeurIPS 2021), as tallies per text that add up exactly.

Everything a figure needs is a sum over masked positions, so each text is reduced to a row of
sums (`Tally`), batches are added as they arrive (no logits are kept), and a bootstrap resample is
a weighted sum of the rows: the same arithmetic gives the figure and its interval.

- top-1 agreement: the student's most likely piece is the teacher's;
- KL(teacher || student) = sum_v p_t(v) (log p_t(v) - log p_s(v)), in nats; an ensemble teacher's
  p_t is the mean of its members' softmaxes (not of their logits);
- top-1 / top-5 accuracy against the original piece;
- expected calibration error: positions binned by top-1 probability into CALIBRATION_BINS equal
  bins of [0, 1]; ECE = sum_b (n_b / n) |acc_b - conf_b| = sum_b |correct_b - confidence_b| / n.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

CALIBRATION_BINS = 15
# Columns of a model's quality tally: top-1 hits, top-5 hits, then per bin: count, summed
# confidence, hits.
_QUALITY = 2 + 3 * CALIBRATION_BINS


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """(P, V) float64 log-probabilities of (P, V) logits."""
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    result: np.ndarray = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return result


def ensemble_log_probabilities(members: Sequence[np.ndarray]) -> np.ndarray:
    """(P, V) log of the mean of the members' softmaxes (each (P, V) logits)."""
    stacked = np.stack([log_softmax(logits) for logits in members])
    top = stacked.max(axis=0)
    result: np.ndarray = top + np.log(np.exp(stacked - top).mean(axis=0))
    return result


def quality_columns(log_probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(P, 2 + 3 * bins) per position: top-1 hit, top-5 hit, and its calibration bin's columns."""
    count = len(labels)
    top1 = log_probabilities.argmax(axis=-1)
    hit1 = top1 == labels
    k = min(5, log_probabilities.shape[-1])
    top5 = np.argpartition(-log_probabilities, k - 1, axis=-1)[:, :k]
    hit5 = (top5 == labels[:, None]).any(axis=-1)
    confidence = np.exp(log_probabilities[np.arange(count), top1])
    bins = np.minimum((confidence * CALIBRATION_BINS).astype(np.int64), CALIBRATION_BINS - 1)
    columns = np.zeros((count, _QUALITY))
    columns[:, 0], columns[:, 1] = hit1, hit5
    rows = np.arange(count)
    columns[rows, 2 + 3 * bins] = 1.0
    columns[rows, 3 + 3 * bins] = confidence
    columns[rows, 4 + 3 * bins] = hit1
    return columns


def agreement_columns(teacher: np.ndarray, student: np.ndarray) -> np.ndarray:
    """(P, 2) per position: top-1 agreement and KL(teacher || student), from log-probabilities."""
    probabilities = np.exp(teacher)
    # p log p is 0 where p is 0 (an underflowed probability), whatever log q is.
    kl = np.where(probabilities > 0, probabilities * (teacher - student), 0.0).sum(axis=-1)
    return np.stack([teacher.argmax(axis=-1) == student.argmax(axis=-1), np.maximum(kl, 0.0)], axis=-1)


@dataclass(frozen=True)
class Layout:
    """Where each figure's sums sit in a tally row."""

    independent: bool

    @property
    def width(self) -> int:
        # positions; teacher quality; student agreement (2) and quality; [independent agreement and quality]
        return 1 + _QUALITY + (2 + _QUALITY) * (2 if self.independent else 1)

    def teacher(self) -> int:
        return 1

    def student(self, independent: bool = False) -> int:
        return 1 + _QUALITY + (2 + _QUALITY) * int(independent)


def position_rows(
    layout: Layout,
    teachers: Sequence[np.ndarray],
    student: np.ndarray,
    labels: np.ndarray,
    independent: np.ndarray | None = None,
) -> np.ndarray:
    """(P, layout.width) per masked position, from each model's (P, V) logits and the labels."""
    teacher = ensemble_log_probabilities(teachers)
    parts = [np.ones((len(labels), 1)), quality_columns(teacher, labels)]
    for model in (student, independent) if layout.independent else (student,):
        assert model is not None
        log_probabilities = log_softmax(model)
        parts += [agreement_columns(teacher, log_probabilities), quality_columns(log_probabilities, labels)]
    return np.concatenate(parts, axis=1)


@dataclass(frozen=True)
class ModelFigures:
    """A model's figures from summed columns."""

    top1_accuracy: float
    top5_accuracy: float
    expected_calibration_error: float


@dataclass(frozen=True)
class Figures:
    """Every figure of a comparison, from one row of sums."""

    positions: int
    top1_agreement: float
    kl_teacher_student: float
    teacher: ModelFigures
    student: ModelFigures
    independent_top1_agreement: float | None
    independent_kl_teacher_student: float | None
    independent_student: ModelFigures | None


def _model_figures(sums: np.ndarray, positions: float) -> ModelFigures:
    bins = sums[2:].reshape(CALIBRATION_BINS, 3)
    return ModelFigures(
        top1_accuracy=float(sums[0] / positions),
        top5_accuracy=float(sums[1] / positions),
        expected_calibration_error=float(np.abs(bins[:, 2] - bins[:, 1]).sum() / positions),
    )


def figures(layout: Layout, sums: np.ndarray) -> Figures:
    """The figures of summed tally rows (a (width,) vector); NaN everywhere when no position."""
    positions = float(sums[0])
    if positions == 0:
        sums = np.full_like(sums, np.nan, dtype=np.float64)
        positions = np.nan
    teacher = _model_figures(sums[layout.teacher() : layout.teacher() + _QUALITY], positions)
    start = layout.student()
    student = _model_figures(sums[start + 2 : start + 2 + _QUALITY], positions)
    independent = None
    if layout.independent:
        other = layout.student(independent=True)
        independent = (
            float(sums[other] / positions),
            float(sums[other + 1] / positions),
            _model_figures(sums[other + 2 : other + 2 + _QUALITY], positions),
        )
    return Figures(
        positions=0 if np.isnan(positions) else int(positions),
        top1_agreement=float(sums[start] / positions),
        kl_teacher_student=float(sums[start + 1] / positions),
        teacher=teacher,
        student=student,
        independent_top1_agreement=independent[0] if independent else None,
        independent_kl_teacher_student=independent[1] if independent else None,
        independent_student=independent[2] if independent else None,
    )


def bootstrap(layout: Layout, texts: np.ndarray, samples: int, seed: int) -> list[Figures]:
    """The figures of `samples` resamples of the texts' tally rows ((N, width)), drawn with
    replacement; each resample is a multinomial weighting of the rows, done in chunks."""
    rng = np.random.default_rng(seed)
    count = len(texts)
    results: list[Figures] = []
    for start in range(0, samples, 100):
        size = min(100, samples - start)
        weights = rng.multinomial(count, np.full(count, 1.0 / count), size=size) if count else np.zeros((size, 0))
        results += [figures(layout, row) for row in weights @ texts]
    return results


def figure_vector(result: Figures) -> np.ndarray:
    """(13,) every figure in a fixed order (NaN where there is none: no independent student)."""
    models = [result.teacher, result.student, result.independent_student]
    values = [result.top1_agreement, result.kl_teacher_student, result.independent_top1_agreement]
    values += [result.independent_kl_teacher_student]
    for model in models:
        values += (
            [np.nan] * 3
            if model is None
            else [model.top1_accuracy, model.top5_accuracy, model.expected_calibration_error]
        )
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def figures_from_vector(vector: np.ndarray, positions: int, independent: bool) -> Figures:
    """The inverse of figure_vector."""
    models = [ModelFigures(*(float(x) for x in vector[4 + 3 * i : 7 + 3 * i])) for i in range(3)]
    return Figures(
        positions=positions,
        top1_agreement=float(vector[0]),
        kl_teacher_student=float(vector[1]),
        teacher=models[0],
        student=models[1],
        independent_top1_agreement=float(vector[2]) if independent else None,
        independent_kl_teacher_student=float(vector[3]) if independent else None,
        independent_student=models[2] if independent else None,
    )


def percentile_figures(samples: Sequence[Figures], q: float, point: Figures) -> Figures:
    """The q-th percentile of every figure over the samples, figure by figure (NaN ones skipped;
    NaN where no sample has the figure)."""
    width = figure_vector(point).size
    matrix = np.array([figure_vector(sample) for sample in samples]).reshape(len(samples), width)
    percentiles = np.full(width, np.nan)
    for column in range(width):
        values = matrix[:, column][~np.isnan(matrix[:, column])]
        if values.size:
            percentiles[column] = np.percentile(values, q)
    return figures_from_vector(percentiles, point.positions, point.independent_student is not None)
