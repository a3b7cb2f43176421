"""The compare service's server: `driftlm serve compare`; it calls the inference service at
`--inference-endpoint` for the models' logits."""

from __future__ import annotations

import grpc

from driftlm.services.runtime.bootstrap import ServiceBinding, build_server
from driftlm.services.runtime.config import ServeConfig
from driftlm.v1 import compare_pb2, compare_pb2_grpc

from .app import CompareApp
from .evaluation import BehaviourEvaluator
from .records import behaviour_evaluations, comparisons
from .remote import RemoteInference
from .servicer import CompareServicer
from .toxicity import load_scorer

SERVICE_NAME = compare_pb2.DESCRIPTOR.services_by_name["CompareService"].full_name


def create_server(address: str = "127.0.0.1:0", config: ServeConfig | None = None) -> tuple[grpc.Server, int]:
    """A started compare server on `address`.

    Raises:
        ValueError: no inference endpoint is configured (the comparisons need its logits), or the
            toxicity scorer cannot be loaded.
    """
    config = config or ServeConfig()
    if not config.inference_endpoint:
        raise ValueError("the compare service needs --inference-endpoint (host:port of the inference service)")
    inference = RemoteInference(
        config.inference_endpoint, security=config.peer_security(), timeout_s=config.peer_timeout_s
    )
    app = CompareApp(inference, config.roots)
    evaluator = BehaviourEvaluator(inference, load_scorer(config.toxicity_scorer), config.roots)
    servicer = CompareServicer(app, evaluator, comparisons(config.store), behaviour_evaluations(config.store))
    binding = ServiceBinding(
        SERVICE_NAME,
        lambda server: compare_pb2_grpc.add_CompareServiceServicer_to_server(servicer, server),
        heavy_methods=frozenset({"CompareModels", "EvaluateBehaviour"}),
    )
    return build_server([binding], address, config, closers=[lambda _timeout: inference.close()])
