"""The compare application layer (no grpc): check a request against what the inference service
serves, stream every slice through the models a chunk of texts at a time, add up the tallies,
bootstrap the intervals, decide the gate, and keep the record."""

from __future__ import annotations

import contextlib
import itertools
import math
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from driftlm.services.core.corpus import (
    Corpus,
    open_corpus,
)
from driftlm.services.core.errors import FailedPreconditionError, InvalidArgumentError, ResourceExhaustedError
from driftlm.services.core.paths import FileRoots
from driftlm.services.runtime.calls import stop_if_abandoned

from .fidelity import Figures, Layout, bootstrap, figures, percentile_figures, position_rows
from .peers import InferencePeer, ServedModel

DEFAULT_MASK_FRACTION = 0.15
DEFAULT_MAX_TEXTS = 2000
MAX_TEXTS = 20_000
MAX_TEACHERS = 8
MAX_SLICES = 50
DEFAULT_BOOTSTRAP = 1000
MAX_BOOTSTRAP = 10_000
# Texts per call to the inference service at first; halved when an answer would be too large.
_FIRST_CHUNK = 16


@dataclass(frozen=True)
class ModelKey:
    """A model and version (0: the default)."""

    name: str
    version: int = 0


@dataclass(frozen=True)
class Gate:
    """Thresholds; None: not checked. on_bound: check the unfavourable end of each figure's 95%
    interval (agreement's lower, KL's and the accuracy drop's upper) instead of the point."""

    min_top1_agreement: float | None = None
    max_kl: float | None = None
    max_accuracy_drop: float | None = None
    on_bound: bool = False


@dataclass(frozen=True)
class Slice:
    """A held-out slice."""

    label: str
    corpus: Corpus


@dataclass(frozen=True)
class ComparisonSpec:
    """What to compare, validated by CompareApp.compare."""

    teachers: tuple[ModelKey, ...]
    student: ModelKey
    slices: tuple[Slice, ...]
    mask_fraction: float = 0.0
    seed: int = 0
    max_texts_per_slice: int = 0
    independent_student: ModelKey | None = None
    gate: Gate = field(default_factory=Gate)
    bootstrap_samples: int = 0
    display_name: str = ""


@dataclass(frozen=True)
class Estimated:
    """A figure set and its 95% bootstrap intervals (per figure: low, high)."""

    label: str
    texts: int
    point: Figures
    low: Figures
    high: Figures
    # Top-1 accuracy of the teacher minus the student's: the point and its 95% interval.
    accuracy_drop: tuple[float, float, float] = (math.nan, math.nan, math.nan)


@dataclass(frozen=True)
class GateResult:
    """The gate's decision and a line per threshold."""

    passed: bool
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class ComparisonResult:
    """A finished comparison, before it is stored."""

    comparison_id: str
    display_name: str
    created_at: str
    teachers: tuple[ModelKey, ...]
    student: ModelKey
    independent_student: ModelKey | None
    mask_fraction: float
    seed: int
    slices: tuple[Estimated, ...]
    overall: Estimated
    gate: GateResult


def estimate(layout: Layout, label: str, rows: np.ndarray, samples: int, seed: int) -> Estimated:
    """Figures of the texts' tally rows (only texts with a masked position count) and intervals."""
    rows = rows[rows[:, 0] > 0]
    point = figures(layout, rows.sum(axis=0) if len(rows) else np.zeros(layout.width))
    resampled = bootstrap(layout, rows, samples, seed) if len(rows) else []
    drops = np.array([s.teacher.top1_accuracy - s.student.top1_accuracy for s in resampled])
    drops = drops[~np.isnan(drops)]
    return Estimated(
        label,
        len(rows),
        point,
        percentile_figures(resampled, 2.5, point),
        percentile_figures(resampled, 97.5, point),
        (
            point.teacher.top1_accuracy - point.student.top1_accuracy,
            float(np.percentile(drops, 2.5)) if drops.size else math.nan,
            float(np.percentile(drops, 97.5)) if drops.size else math.nan,
        ),
    )


def decide(gate: Gate, overall: Estimated) -> GateResult:
    """Every set threshold against the figures over all slices (or their intervals' bounds)."""
    reasons, passed = [], True
    bound = gate.on_bound
    checks = [
        (
            "top-1 agreement" + (" (95% lower bound)" if bound else ""),
            (overall.low if bound else overall.point).top1_agreement,
            gate.min_top1_agreement,
            ">=",
        ),
        (
            "KL(teacher || student)" + (" (95% upper bound)" if bound else ""),
            (overall.high if bound else overall.point).kl_teacher_student,
            gate.max_kl,
            "<=",
        ),
        (
            "top-1 accuracy drop" + (" (95% upper bound)" if bound else ""),
            overall.accuracy_drop[2 if bound else 0],
            gate.max_accuracy_drop,
            "<=",
        ),
    ]
    for name, value, threshold, sense in checks:
        if threshold is None:
            continue
        met = value >= threshold if sense == ">=" else value <= threshold  # NaN meets nothing
        passed = passed and met
        reasons.append(f"{name} {value:.4f} {'meets' if met else 'fails'} {sense} {threshold:.4f}")
    return GateResult(passed, tuple(reasons))


def _check_fraction(name: str, value: float | None, high: float = 1.0) -> None:
    if value is not None and not 0.0 <= value <= high:  # NaN fails too
        raise InvalidArgumentError(f"gate.{name}", f"is {value}; give a value in [0, {high:g}]")


@contextlib.contextmanager
def served_models(inference: InferencePeer, wanted: Sequence[ModelKey]) -> Iterator[list[ModelKey]]:
    """The models with the versions that will answer (0: the default), for the block's length. A
    model of the inference service's repository that is not loaded is loaded for the block (beside
    what is served, not as a default) and unloaded after it.

    Raises:
        NotFoundError: neither served nor in the inference service's repository.
        FailedPreconditionError: it fails to load, or the models have vocabularies of different sizes.
    """
    served = inference.ready_models()
    loaded: list[ServedModel] = []
    try:
        resolved, sizes = [], set()
        for key in wanted:
            match = [
                m
                for m in [*served, *loaded]
                if m.name == key.name and (m.version == key.version or (not key.version and m.is_default))
            ]
            if not match:
                loaded.append(inference.load(key.name, key.version))
                match = loaded[-1:]
            resolved.append(ModelKey(match[0].name, match[0].version))
            sizes.add(match[0].vocab_size)
        if len(sizes) > 1:
            raise FailedPreconditionError(
                f"the models have vocabularies of different sizes ({sorted(sizes)}); predictions compare only "
                "over one vocabulary (models of different vocab versions are not supported)",
                reason="DIFFERENT_VOCABULARIES",
            )
        yield resolved
    finally:
        for model in loaded:
            inference.unload(model.name, model.version)


class CompareApp:
    """Everything CompareService does."""

    def __init__(self, inference: InferencePeer, roots: FileRoots) -> None:
        self._inference = inference
        self.roots = roots

    def compare(self, spec: ComparisonSpec) -> ComparisonResult:
        """Compare, slice by slice.

        Raises:
            InvalidArgumentError: a count or fraction out of range, a slice without text.
            NotFoundError: a model or version neither served by the inference service nor in its
                repository.
            FailedPreconditionError: models of different vocabularies.
        """
        spec = self._validated(spec)
        wanted = [*spec.teachers, spec.student, *([spec.independent_student] if spec.independent_student else [])]
        layout = Layout(independent=spec.independent_student is not None)
        per_slice, all_rows = [], []
        with served_models(self._inference, wanted) as models:
            for index, held_out in enumerate(spec.slices):
                rows = self._slice_rows(models, layout, held_out, spec)
                label = held_out.label or str(index)
                per_slice.append(estimate(layout, label, rows, spec.bootstrap_samples, spec.seed + index))
                all_rows.append(rows)
        overall = estimate(layout, "all", np.concatenate(all_rows), spec.bootstrap_samples, spec.seed)
        teachers, student, independent = models[: len(spec.teachers)], models[len(spec.teachers)], None
        if spec.independent_student is not None:
            independent = models[-1]
        return ComparisonResult(
            comparison_id=f"cmp-{secrets.token_hex(8)}",
            display_name=spec.display_name,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            teachers=tuple(teachers),
            student=student,
            independent_student=independent,
            mask_fraction=spec.mask_fraction,
            seed=spec.seed,
            slices=tuple(per_slice),
            overall=overall,
            gate=decide(spec.gate, overall),
        )

    def _validated(self, spec: ComparisonSpec) -> ComparisonSpec:
        if not 1 <= len(spec.teachers) <= MAX_TEACHERS:
            raise InvalidArgumentError("teachers", f"has {len(spec.teachers)}; give 1 to {MAX_TEACHERS} teachers")
        for name, key in [("student", spec.student), *(("teachers", t) for t in spec.teachers)]:
            if not key.name:
                raise InvalidArgumentError(name, "names no model")
            if key.version < 0:
                raise InvalidArgumentError(name, "has a negative version; 0 means the default")
        if not 1 <= len(spec.slices) <= MAX_SLICES:
            raise InvalidArgumentError("slices", f"has {len(spec.slices)}; give 1 to {MAX_SLICES} held-out slices")
        fraction = spec.mask_fraction or DEFAULT_MASK_FRACTION
        if not 0.0 < fraction < 1.0:
            raise InvalidArgumentError("mask_fraction", f"is {spec.mask_fraction}; give a fraction in (0, 1)")
        texts = spec.max_texts_per_slice or DEFAULT_MAX_TEXTS
        if not 1 <= texts <= MAX_TEXTS:
            raise InvalidArgumentError(
                "max_texts_per_slice", f"is {texts}; give 1 to {MAX_TEXTS} (0: {DEFAULT_MAX_TEXTS})"
            )
        samples = spec.bootstrap_samples or DEFAULT_BOOTSTRAP
        if not 1 <= samples <= MAX_BOOTSTRAP:
            raise InvalidArgumentError("bootstrap_samples", f"is {samples}; give 1 to {MAX_BOOTSTRAP}")
        _check_fraction("min_top1_agreement", spec.gate.min_top1_agreement)
        _check_fraction("max_accuracy_drop", spec.gate.max_accuracy_drop)
        _check_fraction("max_kl", spec.gate.max_kl, high=math.inf)
        return ComparisonSpec(
            spec.teachers,
            spec.student,
            spec.slices,
            fraction,
            spec.seed,
            texts,
            spec.independent_student,
            spec.gate,
            samples,
            spec.display_name,
        )

    def _texts(self, held_out: Slice, limit: int) -> list[str]:
        return list(itertools.islice(open_corpus(held_out.corpus, self.roots, "slices.corpus"), limit))

    def _slice_rows(
        self, models: Sequence[ModelKey], layout: Layout, held_out: Slice, spec: ComparisonSpec
    ) -> np.ndarray:
        """(texts, layout.width) tallies of one slice, streamed through the models chunk by chunk."""
        texts = self._texts(held_out, spec.max_texts_per_slice)
        if not any(text.strip() for text in texts):
            raise InvalidArgumentError(
                "slices", f"slice {held_out.label or '(unlabelled)'!r} holds no text to compare on"
            )
        rows = np.zeros((len(texts), layout.width))
        teachers = len(spec.teachers)
        start, chunk = 0, _FIRST_CHUNK
        while start < len(texts):
            stop_if_abandoned()
            part = texts[start : start + chunk]
            try:
                answers = [
                    self._inference.masked_logits(
                        m.name, m.version, part, mask_fraction=spec.mask_fraction, seed=spec.seed
                    )
                    for m in models
                ]
            except ResourceExhaustedError:
                if chunk == 1:
                    raise
                chunk = max(1, chunk // 2)
                continue
            first = answers[0]
            for answer in answers[1:]:
                if not (
                    np.array_equal(answer.labels, first.labels)
                    and np.array_equal(answer.text_indices, first.text_indices)
                ):
                    raise FailedPreconditionError(
                        "the models cut the texts into different pieces: they do not share one vocabulary",
                        reason="DIFFERENT_VOCABULARIES",
                    )
            if len(first.labels):
                position = position_rows(
                    layout,
                    [a.logits for a in answers[:teachers]],
                    answers[teachers].logits,
                    first.labels,
                    answers[teachers + 1].logits if layout.independent else None,
                )
                np.add.at(rows, start + first.text_indices, position)
            start += len(part)
        return rows
