"""A Python client of CompareService.

Example:
    >>> with CompareClient("127.0.0.1:50055") as compare:  # doctest: +SKIP
    ...     result = compare.compare(["driftlm"], "driftlm-student", {"2024": held_out_texts},
    ...                              min_top1_agreement=0.8)
    ...     result.gate.passed, result.overall.top1_agreement.value
    (True, 0.87)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import grpc

from driftlm.services.runtime.channel import ServiceClient
from driftlm.services.runtime.security import PLAINTEXT, ChannelSecurity
from driftlm.v1 import common_pb2, compare_pb2, compare_pb2_grpc

Model = str | tuple[str, int]


def _ref(model: Model) -> compare_pb2.ModelRef:
    name, version = (model, 0) if isinstance(model, str) else model
    return compare_pb2.ModelRef(name=name, version=version)


class CompareClient(ServiceClient):
    """Calls a compare service; errors surface as grpc.RpcError with the server's status.

    Models are names (their default version) or (name, version) pairs.
    """

    def __init__(
        self, target: str | grpc.Channel, *, timeout_s: float | None = 3600.0, security: ChannelSecurity = PLAINTEXT
    ) -> None:
        super().__init__(target, timeout_s=timeout_s, security=security)
        self._stub = compare_pb2_grpc.CompareServiceStub(self._channel)

    def compare(
        self,
        teachers: Sequence[Model],
        student: Model,
        slices: Mapping[str, Sequence[str] | common_pb2.CorpusSource],
        *,
        independent_student: Model | None = None,
        min_top1_agreement: float | None = None,
        max_kl: float | None = None,
        max_accuracy_drop: float | None = None,
        basis: compare_pb2.GateBasis.ValueType = compare_pb2.GATE_BASIS_POINT,
        mask_fraction: float = 0.0,
        seed: int = 0,
        max_texts_per_slice: int = 0,
        bootstrap_samples: int = 0,
        display_name: str = "",
    ) -> compare_pb2.Comparison:
        """Compare the student with the teachers on each labelled slice (texts, or a corpus file)."""
        held_out = [
            compare_pb2.HeldOutSlice(
                label=label,
                corpus=source
                if isinstance(source, common_pb2.CorpusSource)
                else common_pb2.CorpusSource(texts=common_pb2.TextBatch(texts=list(source))),
            )
            for label, source in slices.items()
        ]
        gate = compare_pb2.PromotionGate(basis=basis)
        if min_top1_agreement is not None:
            gate.min_top1_agreement = min_top1_agreement
        if max_kl is not None:
            gate.max_kl = max_kl
        if max_accuracy_drop is not None:
            gate.max_accuracy_drop = max_accuracy_drop
        request = compare_pb2.CompareModelsRequest(
            teachers=[_ref(t) for t in teachers],
            student=_ref(student),
            slices=held_out,
            mask_fraction=mask_fraction,
            seed=seed,
            max_texts_per_slice=max_texts_per_slice,
            gate=gate,
            bootstrap_samples=bootstrap_samples,
            display_name=display_name,
        )
        if independent_student is not None:
            request.independent_student.CopyFrom(_ref(independent_student))
        response: compare_pb2.CompareModelsResponse = self._stub.CompareModels(request, timeout=self._timeout())
        return response.comparison

    def evaluate_behaviour(
        self,
        models: Mapping[str, Model],
        prompts_file: str,
        *,
        heldout_curated: str = "",
        categories: Sequence[str] = (),
        samples_per_prompt: int = 0,
        temperature: float = 0.0,
        top_words: int = 0,
        seed: int = 0,
        display_name: str = "",
    ) -> compare_pb2.BehaviourEvaluation:
        """Behaviour of each model (by role: base, values_targeted, control, ...) on the prompts file."""
        request = compare_pb2.EvaluateBehaviourRequest(
            models=[compare_pb2.RoleModel(role=role, model=_ref(model)) for role, model in models.items()],
            prompts_file=common_pb2.ArtifactRef(uri=prompts_file),
            heldout_curated=common_pb2.ArtifactRef(uri=heldout_curated) if heldout_curated else None,
            categories=list(categories),
            samples_per_prompt=samples_per_prompt,
            temperature=temperature,
            top_words=top_words,
            seed=seed,
            display_name=display_name,
        )
        response: compare_pb2.EvaluateBehaviourResponse = self._stub.EvaluateBehaviour(request, timeout=self._timeout())
        return response.evaluation

    def get(self, comparison_id: str) -> compare_pb2.Comparison:
        """A stored comparison."""
        request = compare_pb2.GetComparisonRequest(comparison_id=comparison_id)
        response: compare_pb2.GetComparisonResponse = self._stub.GetComparison(request, timeout=self._timeout())
        return response.comparison

    def list(self, page_size: int = 0, page_token: str = "") -> tuple[list[compare_pb2.Comparison], str]:
        """A page of stored comparisons, newest first, and the next page's token."""
        request = compare_pb2.ListComparisonsRequest(page_size=page_size, page_token=page_token)
        response = self._stub.ListComparisons(request, timeout=self._timeout())
        return list(response.comparisons), response.next_page_token
