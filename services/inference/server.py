"""The inference service's server: `driftlm serve inference`.

One server, two contracts over the same loaded versions: driftlm.v1.InferenceService (texts in)
and inference.GRPCInferenceService (the Open Inference Protocol: tensors in, Triton's clients).
"""

from __future__ import annotations

import grpc

from driftlm.services.runtime.bootstrap import ServiceBinding, build_server
from driftlm.services.runtime.config import ServeConfig
from driftlm.v1 import grpc_predict_v2_pb2 as oip
from driftlm.v1 import grpc_predict_v2_pb2_grpc as oip_grpc
from driftlm.v1 import inference_pb2, inference_pb2_grpc

from .app import InferenceApp
from .model import RuntimeOptions
from .oip_servicer import OpenInferenceServicer
from .registry import ModelRegistry, ServingOptions
from .repository import ModelRepository
from .servicer import InferenceServicer

_DRIFTLM = inference_pb2.DESCRIPTOR.services_by_name["InferenceService"]
_OIP = oip.DESCRIPTOR.services_by_name["GRPCInferenceService"]
SERVICE_NAME = _DRIFTLM.full_name
OIP_SERVICE_NAME = _OIP.full_name
# Calls that load a model take a heavy-call slot; so do calls that run one when each runs alone.
# With dynamic batching the batcher's one thread per version bounds the graph runs, and the heavy
# slots would only cap how many requests can merge: there, the in-flight bound is the limit.
_LOADS_DRIFTLM, _RUNS_DRIFTLM = (
    frozenset({"LoadModel"}),
    frozenset({"FillMask", "EmbedTexts", "ComputeTokenLoss", "ComputeLogits"}),
)
_LOADS_OIP, _RUNS_OIP = frozenset({"RepositoryModelLoad"}), frozenset({"ModelInfer"})


def create_server(address: str = "127.0.0.1:0", config: ServeConfig | None = None) -> tuple[grpc.Server, int]:
    """A started inference server on `address` serving the models of config's model repository.

    Every model of the repository is loaded by its config.pbtxt's version policy before the server
    starts; a version that fails is listed with its reason and the server starts anyway.
    """
    config = config or ServeConfig()
    options = ServingOptions(
        runtime=RuntimeOptions.parse(config.ort_threads, config.ort_optimization, config.ort_provider),
        dynamic_batching=config.dynamic_batching,
        drain_timeout_s=config.grace_s,
    )
    registry = ModelRegistry(ModelRepository(config.inference_repository), options)
    app = InferenceApp(registry, max_message_bytes=config.max_message_bytes, poll_interval_s=config.repository_poll_s)
    app.load_repository()
    bindings = [
        ServiceBinding(
            SERVICE_NAME,
            lambda server: inference_pb2_grpc.add_InferenceServiceServicer_to_server(InferenceServicer(app), server),
            heavy_methods=_LOADS_DRIFTLM if config.dynamic_batching else _LOADS_DRIFTLM | _RUNS_DRIFTLM,
        ),
        ServiceBinding(
            OIP_SERVICE_NAME,
            lambda server: oip_grpc.add_GRPCInferenceServiceServicer_to_server(OpenInferenceServicer(app), server),
            heavy_methods=_LOADS_OIP if config.dynamic_batching else _LOADS_OIP | _RUNS_OIP,
        ),
    ]
    try:
        return build_server(bindings, address, config, closers=[app.close])
    except BaseException:
        app.close(0)
        raise
