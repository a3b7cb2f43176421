"""inference.GRPCInferenceService (the Open Inference Protocol) over gRPC: Triton's and KServe's
clients call the same loaded versions as driftlm's text API."""

from __future__ import annotations

import grpc
import numpy as np

from driftlm.services.core.errors import InvalidArgumentError, NotFoundError
from driftlm.services.core.model_repository import INPUTS
from driftlm.services.core.version import VERSION
from driftlm.v1 import grpc_predict_v2_pb2 as oip
from driftlm.v1 import grpc_predict_v2_pb2_grpc as oip_grpc

from .app import InferenceApp
from .model import LoadedModel
from .oip_tensors import INPUT_DATATYPE, OUTPUT_DATATYPE, output_tensors, parse_version, read_inputs
from .registry import State

SERVER_NAME = "driftlm"
EXTENSIONS = ("model_repository",)
PLATFORM = "onnxruntime_onnx"


def _output_shape(name: str, vocab_size: int, hidden_size: int) -> list[int]:
    return {"logits": [-1, -1, vocab_size], "cls_embedding": [-1, hidden_size]}.get(name, [-1, -1, hidden_size])


def _repository(name: str, app: InferenceApp) -> None:
    """The only repository is the server's: empty or its directory's name."""
    if name and name != app.registry.repository.root.name:
        raise NotFoundError(f"this server has one model repository, {app.registry.repository.root.name!r}")


class OpenInferenceServicer(oip_grpc.GRPCInferenceServiceServicer):
    """Maps Open Inference Protocol messages to InferenceApp calls."""

    def __init__(self, app: InferenceApp) -> None:
        self._app = app

    def ServerLive(self, request: oip.ServerLiveRequest, context: grpc.ServicerContext) -> oip.ServerLiveResponse:
        return oip.ServerLiveResponse(live=True)

    def ServerReady(self, request: oip.ServerReadyRequest, context: grpc.ServicerContext) -> oip.ServerReadyResponse:
        return oip.ServerReadyResponse(ready=self._app.registry.all_ready())

    def ModelReady(self, request: oip.ModelReadyRequest, context: grpc.ServicerContext) -> oip.ModelReadyResponse:
        return oip.ModelReadyResponse(ready=self._app.registry.is_ready(request.name, parse_version(request.version)))

    def ServerMetadata(
        self, request: oip.ServerMetadataRequest, context: grpc.ServicerContext
    ) -> oip.ServerMetadataResponse:
        return oip.ServerMetadataResponse(name=SERVER_NAME, version=VERSION, extensions=list(EXTENSIONS))

    def ModelMetadata(
        self, request: oip.ModelMetadataRequest, context: grpc.ServicerContext
    ) -> oip.ModelMetadataResponse:
        _version, model = self._app.model(request.name, parse_version(request.version))
        ready = [str(info.version) for info in self._app.list_models(request.name) if info.state is State.READY]
        return oip.ModelMetadataResponse(
            name=request.name,
            versions=ready,
            platform=PLATFORM,
            inputs=[
                oip.ModelMetadataResponse.TensorMetadata(name=name, datatype=INPUT_DATATYPE, shape=[-1, -1])
                for name in INPUTS
            ],
            outputs=[
                oip.ModelMetadataResponse.TensorMetadata(
                    name=name, datatype=OUTPUT_DATATYPE, shape=_output_shape(name, model.vocab_size, model.hidden_size)
                )
                for name in model.output_names
            ],
        )

    def ModelInfer(self, request: oip.ModelInferRequest, context: grpc.ServicerContext) -> oip.ModelInferResponse:
        if not request.model_name:
            raise InvalidArgumentError("model_name", "is empty; name a model of the repository")

        def inputs(model: LoadedModel, max_batch_size: int) -> tuple[np.ndarray, np.ndarray]:
            read = read_inputs(
                request, max_batch_size=max_batch_size, max_length=model.max_length, vocab_size=model.vocab_size
            )
            return read.input_ids, read.attention_mask

        result = self._app.infer(
            request.model_name, parse_version(request.model_version), inputs, [o.name for o in request.outputs]
        )
        tensors, raw = output_tensors(result.outputs)
        return oip.ModelInferResponse(
            model_name=request.model_name,
            model_version=str(result.version),
            id=request.id,
            outputs=tensors,
            raw_output_contents=raw,
        )

    def RepositoryIndex(
        self, request: oip.RepositoryIndexRequest, context: grpc.ServicerContext
    ) -> oip.RepositoryIndexResponse:
        _repository(request.repository_name, self._app)
        known = {(info.name, info.version): info for info in self._app.list_models()}
        entries = []
        for name in self._app.registry.repository.model_names():
            versions = [info for (model, _), info in sorted(known.items()) if model == name]
            if not versions and not request.ready:
                entries.append(
                    oip.RepositoryIndexResponse.ModelIndex(name=name, state="UNAVAILABLE", reason="unloaded")
                )
            entries += [
                oip.RepositoryIndexResponse.ModelIndex(
                    name=name, version=str(info.version), state=info.state.value, reason=info.reason
                )
                for info in versions
                if not request.ready or info.state is State.READY
            ]
        return oip.RepositoryIndexResponse(models=entries)

    def RepositoryModelLoad(
        self, request: oip.RepositoryModelLoadRequest, context: grpc.ServicerContext
    ) -> oip.RepositoryModelLoadResponse:
        _repository(request.repository_name, self._app)
        self._app.registry.reload(request.model_name)
        return oip.RepositoryModelLoadResponse()

    def RepositoryModelUnload(
        self, request: oip.RepositoryModelUnloadRequest, context: grpc.ServicerContext
    ) -> oip.RepositoryModelUnloadResponse:
        _repository(request.repository_name, self._app)
        self._app.registry.unload(request.model_name)
        return oip.RepositoryModelUnloadResponse()
