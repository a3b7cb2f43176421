"""A downstream check of an encoder, as the paper judges updated models: a linear probe.

A multinomial logistic regression (L2, full-batch gradient descent on standardised features) is fit
on sentence embeddings of a slice's labelled training texts and scored on its labelled held-out
texts: macro-F1 and macro one-vs-rest AUC, each with a 95% bootstrap interval over the held-out
texts. A linear probe measures what the encoder represents, not what a fine-tune could learn on
top of it, and is cheap enough to run for every arm on every slice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from driftlm.loop.intervals import LEVEL, RESAMPLES

_STEPS = 300
_LEARNING_RATE = 0.5
_L2 = 1e-3


@dataclass(frozen=True)
class ProbeScore:
    """A probe's figures on held-out texts, with 95% bootstrap intervals."""

    macro_f1: float
    macro_f1_low: float
    macro_f1_high: float
    auc: float
    auc_low: float
    auc_high: float
    train_texts: int
    test_texts: int


def fit_probe(features: np.ndarray, labels: np.ndarray, classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(weights (H, C), bias (C,), (mean, std) of the features) of a softmax regression."""
    mean, std = features.mean(0), features.std(0) + 1e-6
    x = (features - mean) / std
    targets = np.eye(classes)[labels]
    weights, bias = np.zeros((x.shape[1], classes)), np.zeros(classes)
    for _ in range(_STEPS):
        gradient = _softmax(x @ weights + bias) - targets  # (N, C)
        weights -= _LEARNING_RATE * (x.T @ gradient / len(x) + _L2 * weights)
        bias -= _LEARNING_RATE * gradient.mean(0)
    return weights, bias, np.stack([mean, std])


def predict_probabilities(probe: tuple[np.ndarray, np.ndarray, np.ndarray], features: np.ndarray) -> np.ndarray:
    """(N, C) class probabilities."""
    weights, bias, scaling = probe
    return _softmax((features - scaling[0]) / scaling[1] @ weights + bias)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted: np.ndarray = np.exp(logits - logits.max(1, keepdims=True))
    normalised: np.ndarray = shifted / shifted.sum(1, keepdims=True)
    return normalised


def macro_f1(labels: np.ndarray, predicted: np.ndarray, classes: int) -> float:
    """The mean over classes present in labels or predictions of each class's F1."""
    scores = []
    for c in range(classes):
        true_positive = float(np.sum((predicted == c) & (labels == c)))
        support = float(np.sum(labels == c)) + float(np.sum(predicted == c))
        if support:
            scores.append(2 * true_positive / support)
    return float(np.mean(scores)) if scores else 0.0


def macro_auc(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean one-vs-rest ROC AUC over classes with both positives and negatives (rank formula, ties
    counted half); NaN when no class has both."""
    aucs = []
    for c in range(probabilities.shape[1]):
        positive = labels == c
        if positive.all() or not positive.any():
            continue
        ranks = _ranks(probabilities[:, c])
        n_positive, n_negative = positive.sum(), (~positive).sum()
        aucs.append((ranks[positive].sum() - n_positive * (n_positive + 1) / 2) / (n_positive * n_negative))
    return float(np.mean(aucs)) if aucs else float("nan")


def _ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their mean rank."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - counts + 1 + ends) / 2)[inverse]


def probe_score(
    train: np.ndarray, train_labels: list[str], test: np.ndarray, test_labels: list[str], *, seed: int = 0
) -> ProbeScore:
    """Fit on train, score on test; labels are strings (the classes are those of the training set)."""
    classes = sorted(set(train_labels))
    index = {label: i for i, label in enumerate(classes)}
    y_train = np.array([index[label] for label in train_labels])
    known = np.array([label in index for label in test_labels])  # a class unseen in training cannot be predicted
    y_test = np.array([index.get(label, -1) for label in test_labels])
    probabilities = predict_probabilities(fit_probe(train, y_train, len(classes)), test)
    predicted = probabilities.argmax(1)
    rows = np.random.default_rng(seed).integers(0, len(test), (RESAMPLES, len(test)))
    f1s = np.array([macro_f1(y_test[r], predicted[r], len(classes)) for r in rows])
    aucs = np.array([macro_auc(y_test[r][known[r]], probabilities[r][known[r]]) for r in rows])
    tail = (1 - LEVEL) / 2 * 100
    f1_low, f1_high = np.percentile(f1s, [tail, 100 - tail])
    finite = aucs[np.isfinite(aucs)]
    auc_low, auc_high = np.percentile(finite, [tail, 100 - tail]) if finite.size else (np.nan, np.nan)
    return ProbeScore(
        macro_f1=macro_f1(y_test, predicted, len(classes)),
        macro_f1_low=float(f1_low),
        macro_f1_high=float(f1_high),
        auc=macro_auc(y_test[known], probabilities[known]),
        auc_low=float(auc_low),
        auc_high=float(auc_high),
        train_texts=len(train),
        test_texts=len(test),
    )
