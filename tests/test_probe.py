"""The downstream probe: skill where labels follow the embeddings, chance (inside the intervals)
where they do not."""

from __future__ import annotations

import numpy as np
import pytest

from driftlm.loop.probe import macro_auc, macro_f1, probe_score


def _embeddings(rng: np.random.Generator, labels: list[str], signal: float) -> np.ndarray:
    """Gaussian embeddings whose first dimension moves with the label by `signal` sd."""
    features = rng.normal(size=(len(labels), 16))
    classes = sorted(set(labels))
    features[:, 0] += signal * np.array([classes.index(label) for label in labels])
    return features


def test_a_probe_finds_a_label_the_embeddings_carry() -> None:
    rng = np.random.default_rng(0)
    train_labels = [str(x) for x in rng.choice(["pos", "neg"], 200)]
    test_labels = [str(x) for x in rng.choice(["pos", "neg"], 100)]
    score = probe_score(
        _embeddings(rng, train_labels, 4.0), train_labels, _embeddings(rng, test_labels, 4.0), test_labels
    )
    assert score.macro_f1 > 0.9 and score.auc > 0.95
    assert score.macro_f1_low <= score.macro_f1 <= score.macro_f1_high and score.auc_low > 0.9


def test_no_skill_where_the_labels_are_noise() -> None:
    """The null: labels independent of the embeddings. The intervals must hold chance."""
    rng = np.random.default_rng(1)
    train_labels = [str(x) for x in rng.choice(["a", "b", "c"], 300)]
    test_labels = [str(x) for x in rng.choice(["a", "b", "c"], 150)]
    score = probe_score(
        _embeddings(rng, train_labels, 0.0), train_labels, _embeddings(rng, test_labels, 0.0), test_labels
    )
    assert score.auc_low < 0.5 < score.auc_high
    assert score.macro_f1_low < 1 / 3 < score.macro_f1_high


@pytest.mark.parametrize(
    ("labels", "probabilities", "auc"),
    [
        ([0, 0, 1, 1], [[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.1, 0.9]], 1.0),  # perfect ranking
        ([0, 0, 1, 1], [[0.5, 0.5]] * 4, 0.5),  # all tied: half credit
        ([0, 1, 0, 1], [[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.1, 0.9]], 0.75),  # 3 of 4 pairs in order
    ],
)
def test_macro_auc(labels: list[int], probabilities: list[list[float]], auc: float) -> None:
    assert macro_auc(np.array(labels), np.array(probabilities)) == pytest.approx(auc)


def test_macro_f1_counts_every_class_seen() -> None:
    # class 0: F1 2/3 (tp 1, support 1 + 2); class 1: F1 0 (tp 0, support 1 + 0); class 2 absent.
    assert macro_f1(np.array([0, 1]), np.array([0, 0]), 3) == pytest.approx(1 / 3)
