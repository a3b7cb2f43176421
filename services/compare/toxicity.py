"""Toxicity scorers for behaviour evaluation: a Protocol, the default classifier, and how to plug
in another.

The default is `alt-profanity-check`'s trained classifier (a linear SVM over word n-grams,
calibrated to a probability), which runs offline on the CPU without torch. Its model ships inside
the pinned PyPI package and is loaded by that package's own code, as importing any package runs
its code; driftlm loads no pickle of its own or from a request.

Another classifier plugs in with `--toxicity-scorer module:name`: `name` is a callable that takes
a list of texts and returns one probability in [0, 1] per text.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_SCORER = "profanity-check"


@dataclass(frozen=True)
class ToxicityScorer:
    """A named scorer: texts in, one toxicity probability per text out."""

    name: str
    predict: Callable[[list[str]], Sequence[float]]

    def score(self, texts: Sequence[str]) -> np.ndarray:
        """(N,) float64 in [0, 1].

        Raises:
            ValueError: the scorer returned another number of scores, or values outside [0, 1].
        """
        if not texts:
            return np.zeros(0)
        scores = np.asarray(self.predict(list(texts)), dtype=np.float64).reshape(-1)
        if scores.shape != (len(texts),) or not np.all((scores >= 0) & (scores <= 1)):
            raise ValueError(f"the toxicity scorer {self.name} must return one probability in [0, 1] per text")
        return scores


def load_scorer(spec: str = DEFAULT_SCORER) -> ToxicityScorer:
    """The scorer `spec` names: "profanity-check", or "module:callable".

    Raises:
        ValueError: a spec that names nothing importable or callable (or the default's package is
            not installed: `pip install 'driftlm[compare]'`).
    """
    if spec == DEFAULT_SCORER:
        try:
            from profanity_check import predict_prob
        except ImportError as error:
            raise ValueError(
                "the default toxicity scorer needs alt-profanity-check: pip install 'driftlm[compare]'"
            ) from error
        return ToxicityScorer(DEFAULT_SCORER, predict_prob)
    module_name, _, attribute = spec.partition(":")
    try:
        predict = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError) as error:
        raise ValueError(f"--toxicity-scorer {spec!r}: give profanity-check or module:callable") from error
    if not callable(predict):
        raise ValueError(f"--toxicity-scorer {spec!r} is not callable")
    return ToxicityScorer(spec, predict)
