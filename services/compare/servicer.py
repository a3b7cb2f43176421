"""CompareService over gRPC: unpack the request, call the app, store and return the record."""

from __future__ import annotations

import grpc

from driftlm.services.core.corpus import corpus_from_message
from driftlm.services.core.curated import PromptTemplate
from driftlm.services.core.errors import InvalidArgumentError
from driftlm.services.runtime.paging import page_of
from driftlm.v1 import compare_pb2, compare_pb2_grpc

from .app import CompareApp, ComparisonSpec, Gate, ModelKey, Slice
from .evaluation import BehaviourEvaluator, BehaviourSpec
from .records import RecordStore, behaviour_message, to_message


def _key(ref: compare_pb2.ModelRef) -> ModelKey:
    return ModelKey(ref.name, ref.version)


def _gate_basis(basis: int) -> bool:
    """Whether the gate checks the intervals' bounds (an unknown basis is refused)."""
    if basis not in (
        compare_pb2.GATE_BASIS_UNSPECIFIED,
        compare_pb2.GATE_BASIS_POINT,
        compare_pb2.GATE_BASIS_INTERVAL_BOUND,
    ):
        raise InvalidArgumentError(
            "gate.basis", f"is {basis}; give GATE_BASIS_POINT or GATE_BASIS_INTERVAL_BOUND (unspecified: point)"
        )
    return basis == compare_pb2.GATE_BASIS_INTERVAL_BOUND


def _gate(gate: compare_pb2.PromotionGate) -> Gate:
    return Gate(
        min_top1_agreement=gate.min_top1_agreement if gate.HasField("min_top1_agreement") else None,
        max_kl=gate.max_kl if gate.HasField("max_kl") else None,
        max_accuracy_drop=gate.max_accuracy_drop if gate.HasField("max_accuracy_drop") else None,
        on_bound=_gate_basis(gate.basis),
    )


class CompareServicer(compare_pb2_grpc.CompareServiceServicer):
    """Maps messages to CompareApp calls and the store."""

    def __init__(
        self,
        app: CompareApp,
        evaluator: BehaviourEvaluator,
        records: RecordStore[compare_pb2.Comparison],
        evaluations: RecordStore[compare_pb2.BehaviourEvaluation],
    ) -> None:
        self._app = app
        self._evaluator = evaluator
        self._records = records
        self._evaluations = evaluations

    def CompareModels(
        self, request: compare_pb2.CompareModelsRequest, context: grpc.ServicerContext
    ) -> compare_pb2.CompareModelsResponse:
        spec = ComparisonSpec(
            teachers=tuple(_key(t) for t in request.teachers),
            student=_key(request.student),
            slices=tuple(Slice(s.label, corpus_from_message(s.corpus, "slices.corpus")) for s in request.slices),
            mask_fraction=request.mask_fraction,
            seed=request.seed,
            max_texts_per_slice=request.max_texts_per_slice,
            independent_student=_key(request.independent_student) if request.HasField("independent_student") else None,
            gate=_gate(request.gate),
            bootstrap_samples=request.bootstrap_samples,
            display_name=request.display_name,
        )
        comparison = to_message(self._app.compare(spec))
        self._records.save(comparison.comparison_id, comparison)
        return compare_pb2.CompareModelsResponse(comparison=comparison)

    def GetComparison(
        self, request: compare_pb2.GetComparisonRequest, context: grpc.ServicerContext
    ) -> compare_pb2.GetComparisonResponse:
        return compare_pb2.GetComparisonResponse(comparison=self._records.get(request.comparison_id))

    def ListComparisons(
        self, request: compare_pb2.ListComparisonsRequest, context: grpc.ServicerContext
    ) -> compare_pb2.ListComparisonsResponse:
        page, token = page_of(self._records.all(), request.page_size, request.page_token)
        return compare_pb2.ListComparisonsResponse(comparisons=list(page), next_page_token=token)

    def EvaluateBehaviour(
        self, request: compare_pb2.EvaluateBehaviourRequest, context: grpc.ServicerContext
    ) -> compare_pb2.EvaluateBehaviourResponse:
        spec = BehaviourSpec(
            models=tuple((m.role, _key(m.model)) for m in request.models),
            prompts=tuple(PromptTemplate(p.category, p.template, p.group) for p in request.prompts),
            prompts_uri=request.prompts_file.uri,
            prompts_sha256=request.prompts_file.sha256,
            categories=tuple(request.categories),
            samples_per_prompt=request.samples_per_prompt,
            temperature=request.temperature,
            top_words=request.top_words,
            seed=request.seed,
            heldout_uri=request.heldout_curated.uri,
            heldout_sha256=request.heldout_curated.sha256,
            display_name=request.display_name,
        )
        evaluation = behaviour_message(self._evaluator.evaluate(spec))
        self._evaluations.save(evaluation.evaluation_id, evaluation)
        return compare_pb2.EvaluateBehaviourResponse(evaluation=evaluation)

    def GetBehaviourEvaluation(
        self, request: compare_pb2.GetBehaviourEvaluationRequest, context: grpc.ServicerContext
    ) -> compare_pb2.GetBehaviourEvaluationResponse:
        return compare_pb2.GetBehaviourEvaluationResponse(evaluation=self._evaluations.get(request.evaluation_id))
