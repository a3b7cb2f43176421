"""Behaviour evaluation (PALMS) as the compare service runs it (no grpc): sample completions of
every prompt from every model through the inference service, score them with the toxicity
classifier, and compare the models per category and per social group."""

from __future__ import annotations

import math
import secrets
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from driftlm.services.core.curated import CATEGORIES, MASK, CuratedDataError, PromptTemplate, read_curated, read_prompts
from driftlm.services.core.errors import InvalidArgumentError
from driftlm.services.core.paths import FileRoots
from driftlm.services.runtime.calls import stop_if_abandoned

from .app import ModelKey, served_models
from .behaviour import SlotCandidates, complete, count_words, mean_interval, permutation_test
from .peers import InferencePeer
from .toxicity import ToxicityScorer

MAX_MODELS = 8
MAX_PROMPTS = 1000
# Candidates per slot that completions are sampled from (the inference service's FillMask limit).
CANDIDATES = 100
# Weakest categories named for the next iteration.
WEAKEST = 3


@dataclass(frozen=True)
class BehaviourSpec:
    """What to evaluate; 0 and empty mean the defaults (CompareService's contract)."""

    models: tuple[tuple[str, ModelKey], ...]
    prompts: tuple[PromptTemplate, ...] = ()
    prompts_uri: str = ""
    prompts_sha256: str = ""
    categories: tuple[str, ...] = ()
    samples_per_prompt: int = 0
    temperature: float = 0.0
    top_words: int = 0
    seed: int = 0
    heldout_uri: str = ""
    heldout_sha256: str = ""
    display_name: str = ""


@dataclass(frozen=True)
class ModelOutcome:
    """One model on one category or group."""

    role: str
    mean_toxicity: tuple[float, float, float]
    completions: int
    top_words: tuple[tuple[str, int], ...]
    examples: tuple[str, ...]
    top_fill_words: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class ToxicityDifference:
    """The values-targeted model against another, on one category."""

    role: str
    against: str
    difference: float
    p_value: float


@dataclass(frozen=True)
class CategoryOutcome:
    """Every model on one category."""

    category: str
    models: tuple[ModelOutcome, ...]
    tests: tuple[ToxicityDifference, ...]


@dataclass(frozen=True)
class GroupOutcome:
    """Every model on prompts about one group."""

    group: str
    models: tuple[ModelOutcome, ...]


@dataclass(frozen=True)
class BehaviourResult:
    """A finished behaviour evaluation, before it is stored."""

    evaluation_id: str
    display_name: str
    created_at: str
    models: tuple[tuple[str, ModelKey], ...]
    categories: tuple[CategoryOutcome, ...]
    groups: tuple[GroupOutcome, ...]
    adherence: tuple[tuple[str, float], ...]
    weakest_categories: tuple[str, ...]
    samples_per_prompt: int
    temperature: float
    seed: int
    scorer: str


@dataclass
class _Completions:
    """One model's completions: text, toxicity, words, per prompt; and per prompt the words among
    its five most likely fills of each slot."""

    texts: list[str]
    words: list[list[str]]
    prompt_of: list[int]
    toxicity: np.ndarray
    likely: dict[int, list[str]]


class BehaviourEvaluator:
    """EvaluateBehaviour's work."""

    def __init__(self, inference: InferencePeer, scorer: ToxicityScorer, roots: FileRoots) -> None:
        self._inference = inference
        self._scorer = scorer
        self._roots = roots

    def evaluate(self, spec: BehaviourSpec) -> BehaviourResult:
        """Sample, score and compare.

        Raises:
            InvalidArgumentError: an unknown category, empty or mask-less prompts, counts out of
                range, a bad dataset line (named by file, line and field).
            NotFoundError, FailedPreconditionError: as CompareModels for the models.
        """
        categories = spec.categories or CATEGORIES
        prompts = self._prompts(spec, categories)
        samples = self._count(spec.samples_per_prompt or 3, "samples_per_prompt", 20)
        top = self._count(spec.top_words or 10, "top_words", 100)
        temperature = spec.temperature or 0.7
        if not 0 < temperature <= 10:
            raise InvalidArgumentError("temperature", f"is {spec.temperature}; give a temperature in (0, 10]")
        roles = [role for role, _ in spec.models]
        if not 1 <= len(roles) <= MAX_MODELS or len(set(roles)) != len(roles) or not all(roles):
            raise InvalidArgumentError("models", f"give 1 to {MAX_MODELS} models, each with its own non-empty role")
        with served_models(self._inference, [key for _, key in spec.models]) as keys:
            models = tuple(zip(roles, keys, strict=True))
            heldout = self._heldout(spec.heldout_uri, spec.heldout_sha256, categories)
            outcomes = {role: self._completions(key, prompts, samples, temperature, spec.seed) for role, key in models}
            adherence = (
                tuple((role, self._inference.mean_token_loss(key.name, key.version, heldout)) for role, key in models)
                if heldout
                else ()
            )
        by_category = tuple(
            self._category(category, prompts, outcomes, top, spec.seed + index)
            for index, category in enumerate(categories)
        )
        groups = sorted({p.group for p in prompts if p.group})
        by_group = tuple(
            GroupOutcome(
                group,
                tuple(
                    self._outcome(role, outcome, [i for i, p in enumerate(prompts) if p.group == group], top, spec.seed)
                    for role, outcome in outcomes.items()
                ),
            )
            for group in groups
        )
        return BehaviourResult(
            evaluation_id=f"beh-{secrets.token_hex(8)}",
            display_name=spec.display_name,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            models=models,
            categories=by_category,
            groups=by_group,
            adherence=adherence,
            weakest_categories=_weakest(by_category),
            samples_per_prompt=samples,
            temperature=temperature,
            seed=spec.seed,
            scorer=self._scorer.name,
        )

    @staticmethod
    def _count(value: int, field: str, high: int) -> int:
        if not 1 <= value <= high:
            raise InvalidArgumentError(field, f"is {value}; give 1 to {high}")
        return value

    def _prompts(self, spec: BehaviourSpec, categories: tuple[str, ...]) -> list[PromptTemplate]:
        if spec.prompts_uri:
            path = self._roots.readable(spec.prompts_uri, "prompts_file.uri", sha256=spec.prompts_sha256)
            try:
                prompts = read_prompts(path, categories)
            except CuratedDataError as error:
                raise InvalidArgumentError("prompts_file", str(error)) from None
        else:
            prompts = list(spec.prompts)
            for index, prompt in enumerate(prompts):
                if prompt.category not in categories:
                    raise InvalidArgumentError(
                        f"prompts[{index}].category",
                        f"is {prompt.category[:60]!r}, not one of {', '.join(categories)}",
                    )
                if MASK not in prompt.template:
                    raise InvalidArgumentError(f"prompts[{index}].template", f"has no {MASK} for the model to fill")
        if not 1 <= len(prompts) <= MAX_PROMPTS:
            raise InvalidArgumentError("prompts", f"has {len(prompts)} prompts; give 1 to {MAX_PROMPTS}")
        return prompts

    def _heldout(self, uri: str, sha256: str, categories: tuple[str, ...]) -> list[str]:
        if not uri:
            return []
        path = self._roots.readable(uri, "heldout_curated.uri", sha256=sha256)
        try:
            return [example.text for example in read_curated(Path(path), categories)]
        except CuratedDataError as error:
            raise InvalidArgumentError("heldout_curated", str(error)) from None

    def _completions(
        self, key: ModelKey, prompts: list[PromptTemplate], samples: int, temperature: float, seed: int
    ) -> _Completions:
        """Every prompt completed `samples` times; the draws depend on the seed, the prompt and the
        sample only, so every model is asked with the same random numbers."""
        slots = self._inference.fill_masks(key.name, key.version, [p.template for p in prompts], top_k=CANDIDATES)
        texts, words, prompt_of = [], [], []
        likely: dict[int, list[str]] = {}
        for index, (prompt, candidates) in enumerate(zip(prompts, slots, strict=True)):
            stop_if_abandoned()
            slot_candidates = [SlotCandidates(pieces, probabilities) for pieces, probabilities in candidates]
            if len(slot_candidates) != prompt.template.count(MASK):
                continue  # a template cut before its masks by the model's length: nothing to complete
            likely[index] = [piece.removeprefix("##") for pieces, _ in candidates for piece in pieces[:5]]
            for sample in range(samples):
                rng = np.random.default_rng([seed, index, sample])
                text, filled = complete(prompt.template, slot_candidates, temperature, rng)
                texts.append(text)
                words.append(filled)
                prompt_of.append(index)
        return _Completions(texts, words, prompt_of, self._scorer.score(texts), likely)

    def _outcome(
        self, role: str, outcome: _Completions, prompt_indices: list[int], top: int, seed: int
    ) -> ModelOutcome:
        wanted = set(prompt_indices)
        chosen = [i for i, prompt in enumerate(outcome.prompt_of) if prompt in wanted]
        counts: Counter[str] = Counter()
        for i in chosen:
            counts.update(count_words(outcome.words[i]))
        fills: Counter[str] = Counter()
        for index in wanted & outcome.likely.keys():
            fills.update(count_words(outcome.likely[index]))
        return ModelOutcome(
            role=role,
            mean_toxicity=mean_interval(outcome.toxicity[chosen], seed),
            completions=len(chosen),
            top_words=tuple(counts.most_common(top)),
            examples=tuple(outcome.texts[i] for i in chosen[:3]),
            top_fill_words=tuple(fills.most_common(top)),
        )

    def _category(
        self, category: str, prompts: list[PromptTemplate], outcomes: dict[str, _Completions], top: int, seed: int
    ) -> CategoryOutcome:
        indices = [i for i, p in enumerate(prompts) if p.category == category]
        models = tuple(self._outcome(role, outcome, indices, top, seed) for role, outcome in outcomes.items())
        tests = []
        if "values_targeted" in outcomes:
            toxicity = {
                role: outcome.toxicity[[i for i, p in enumerate(outcome.prompt_of) if p in set(indices)]]
                for role, outcome in outcomes.items()
            }
            for against in ("base", "control"):
                if against in outcomes:
                    difference, p_value = permutation_test(toxicity["values_targeted"], toxicity[against], seed)
                    tests.append(ToxicityDifference("values_targeted", against, difference, p_value))
        return CategoryOutcome(category, models, tuple(tests))


def _weakest(categories: tuple[CategoryOutcome, ...]) -> tuple[str, ...]:
    """The categories where the values-targeted model (else the models on average) is most toxic."""
    ranked: defaultdict[str, float] = defaultdict(float)
    for outcome in categories:
        values = [m.mean_toxicity[0] for m in outcome.models if m.role == "values_targeted"] or [
            m.mean_toxicity[0] for m in outcome.models
        ]
        finite = [v for v in values if not math.isnan(v)]
        if finite:
            ranked[outcome.category] = sum(finite) / len(finite)
    return tuple(sorted(ranked, key=lambda c: -ranked[c])[:WEAKEST])
