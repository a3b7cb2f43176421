"""The fidelity, accuracy and calibration math against SciPy and NumPy on random logits."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.special import softmax
from scipy.stats import entropy

from driftlm.services.compare.fidelity import CALIBRATION_BINS, Layout, bootstrap, figures, position_rows


def _reference_ece(probabilities: np.ndarray, labels: np.ndarray) -> float:
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0, 1, CALIBRATION_BINS + 1)
    total = 0.0
    for low, high in itertools.pairwise(edges):
        inside = (confidence >= low) & ((confidence < high) if high < 1 else (confidence <= high))
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return total


@pytest.mark.parametrize("members", [1, 3])
def test_figures_equal_the_scipy_reference(members: int) -> None:
    rng = np.random.default_rng(members)
    positions, vocab = 400, 50
    teachers = [rng.normal(scale=3, size=(positions, vocab)).astype(np.float32) for _ in range(members)]
    student = (teachers[0] + rng.normal(scale=2, size=(positions, vocab))).astype(np.float32)
    labels = rng.integers(0, vocab, positions)
    layout = Layout(independent=False)
    rows = position_rows(layout, teachers, student, labels)
    # Tallies split across texts add up to the same figures.
    texts = np.zeros((7, layout.width))
    np.add.at(texts, rng.integers(0, 7, positions), rows)
    result = figures(layout, texts.sum(axis=0))

    teacher = np.mean([softmax(t.astype(np.float64), axis=1) for t in teachers], axis=0)  # mean of softmaxes
    student_p = softmax(student.astype(np.float64), axis=1)
    assert result.positions == positions
    assert result.top1_agreement == pytest.approx(np.mean(teacher.argmax(1) == student_p.argmax(1)), abs=1e-12)
    assert result.kl_teacher_student == pytest.approx(np.mean(entropy(teacher, student_p, axis=1)), abs=1e-6)
    for mine, probabilities in ((result.teacher, teacher), (result.student, student_p)):
        assert mine.top1_accuracy == pytest.approx(np.mean(probabilities.argmax(1) == labels), abs=1e-12)
        top5 = np.argsort(-probabilities, axis=1)[:, :5]
        assert mine.top5_accuracy == pytest.approx(np.mean((top5 == labels[:, None]).any(1)), abs=1e-12)
        assert mine.expected_calibration_error == pytest.approx(_reference_ece(probabilities, labels), abs=1e-6)


def test_a_model_against_itself_agrees_fully_with_no_divergence() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(100, 30))
    labels = rng.integers(0, 30, 100)
    layout = Layout(independent=True)
    result = figures(layout, position_rows(layout, [logits], logits, labels, logits).sum(axis=0))
    assert result.top1_agreement == result.independent_top1_agreement == 1.0
    assert result.kl_teacher_student == pytest.approx(0.0, abs=1e-12)
    assert result.student == result.teacher


def test_shuffled_outputs_agree_at_chance() -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(scale=3, size=(2000, 40))
    shuffled = logits[:, rng.permutation(40)]
    layout = Layout(independent=False)
    result = figures(layout, position_rows(layout, [logits], shuffled, rng.integers(0, 40, 2000)).sum(axis=0))
    assert result.top1_agreement < 0.1 and result.kl_teacher_student > 1.0


def test_bootstrap_intervals_cover_the_figure_and_narrow_with_more_texts() -> None:
    rng = np.random.default_rng(2)
    layout = Layout(independent=False)

    def widths(texts: int) -> tuple[float, float, float]:
        logits = rng.normal(size=(texts * 5, 20))
        student = logits + rng.normal(size=logits.shape)
        rows = position_rows(layout, [logits], student, rng.integers(0, 20, len(logits)))
        tallies = np.zeros((texts, layout.width))
        np.add.at(tallies, np.repeat(np.arange(texts), 5), rows)
        point = figures(layout, tallies.sum(axis=0)).top1_agreement
        agreements = [f.top1_agreement for f in bootstrap(layout, tallies, 300, seed=0)]
        low, high = np.percentile(agreements, [2.5, 97.5])
        return point, low, high

    point, low, high = widths(40)
    assert low <= point <= high
    _, many_low, many_high = widths(1000)
    assert many_high - many_low < (high - low) / 3


def test_figures_round_trip_through_their_vector_and_percentiles_skip_missing_ones() -> None:
    from driftlm.services.compare.fidelity import figure_vector, figures_from_vector, percentile_figures

    rng = np.random.default_rng(3)
    logits = rng.normal(size=(50, 10))
    for independent in (False, True):
        layout = Layout(independent=independent)
        rows = position_rows(layout, [logits], logits + 1, rng.integers(0, 10, 50), logits if independent else None)
        result = figures(layout, rows.sum(axis=0))
        assert figures_from_vector(figure_vector(result), result.positions, independent) == result
        median = percentile_figures([result, result, result], 50, result)
        assert median == result
    empty = figures(Layout(independent=False), np.zeros(Layout(independent=False).width))
    assert np.isnan(percentile_figures([], 50, empty).top1_agreement)
