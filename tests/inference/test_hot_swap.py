"""Versioned hot swap: a new version loads beside the serving one, the default switches at once,
the old one drains and unloads, and 16 clients calling all along see no failure. A version that
cannot load is reported with its reason while the serving one keeps serving."""

from __future__ import annotations

import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from driftlm.services.vocab.tokenizer_sources import train_tokenizer
from driftlm.v1 import grpc_predict_v2_pb2 as oip
from driftlm.v1 import inference_pb2

from ..vocab.planted import FILLER
from .conftest import ANSWERS, CUE, MODEL, Planted, Server

CLIENTS = 16


class Load:
    """CLIENTS threads calling FillMask (half) and ModelInfer (half) until stopped."""

    def __init__(self, server: Server) -> None:
        self.failures: list[str] = []
        self.answers: Counter[tuple[int, str]] = Counter()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._call, args=(server, i)) for i in range(CLIENTS)]
        for thread in self._threads:
            thread.start()

    def _call(self, server: Server, index: int) -> None:
        fill = inference_pb2.FillMaskRequest(
            model=inference_pb2.ModelTarget(name=MODEL), texts=[f"the of and {CUE} [MASK] in is was"], top_k=1
        )
        infer = oip.ModelInferRequest(
            model_name=MODEL,
            inputs=[oip.ModelInferRequest.InferInputTensor(name="input_ids", datatype="INT64", shape=[1, 4])],
            outputs=[oip.ModelInferRequest.InferRequestedOutputTensor(name="cls_embedding")],
            raw_input_contents=[np.array([2, 10, 11, 3], "<i8").tobytes()],
        )
        while not self._stop.is_set():
            try:
                if index % 2:
                    answer = server.stub.FillMask(fill, timeout=30)
                    seen = (answer.version, answer.predictions[0].candidates[0].piece)
                else:
                    seen = (int(server.oip.ModelInfer(infer, timeout=30).model_version), "")
            except grpc.RpcError as error:
                with self._lock:
                    self.failures.append(f"{error.code()}: {error.details()}")
                continue
            with self._lock:
                self.answers[seen] += 1

    def settle(self, seconds: float) -> int:
        """Let the load run; returns how many calls were answered meanwhile."""
        before = sum(self.answers.values())
        time.sleep(seconds)
        return sum(self.answers.values()) - before

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)


def _publish(planted: Planted, repository: Path, version: int) -> None:
    """What an ExportOnnx of the version does to the repository: its directories appear."""
    for name in (MODEL, f"{MODEL}_int8"):
        shutil.copytree(planted.repository / name / str(version), repository / name / str(version))


def _versions(server: Server) -> list[tuple[int, int, bool]]:
    models = server.stub.ListModels(inference_pb2.ListModelsRequest(name=MODEL)).models
    return [(m.version, m.state, m.is_default) for m in models]


def test_swap_under_load_fails_no_request(planted: Planted, serve: Callable[..., Server], tmp_path: Path) -> None:
    repository = planted.copy_to(tmp_path / "repository", versions=(1,))
    server = serve(repository)
    load = Load(server)
    try:
        assert load.settle(1.0) > 0
        _publish(planted, repository, 2)
        server.oip.RepositoryModelLoad(oip.RepositoryModelLoadRequest(model_name=MODEL))
        assert load.settle(1.0) > 0
    finally:
        load.stop()
    assert load.failures == []
    # Before the swap version 1 answered with its word, after it version 2 with its own.
    assert load.answers[(1, ANSWERS[1])] > 0 and load.answers[(2, ANSWERS[2])] > 0 and load.answers[(2, "")] > 0
    assert set(load.answers) <= {(1, ANSWERS[1]), (2, ANSWERS[2]), (1, ""), (2, "")}
    # The policy (latest 1) retired version 1: drained, then unloaded.
    assert _versions(server) == [(2, inference_pb2.MODEL_STATE_READY, True)]


def test_a_reload_with_nothing_new_changes_nothing(
    planted: Planted, serve: Callable[..., Server], tmp_path: Path
) -> None:
    """The null case of a swap: no new version in the repository, so the serving one stays, loaded once."""
    server = serve(planted.copy_to(tmp_path / "repository", versions=(1,)))
    load = Load(server)
    try:
        for _ in range(3):
            server.oip.RepositoryModelLoad(oip.RepositoryModelLoadRequest(model_name=MODEL))
        assert load.settle(0.5) > 0
    finally:
        load.stop()
    assert load.failures == [] and set(load.answers) <= {(1, ANSWERS[1]), (1, "")}
    assert _versions(server) == [(1, inference_pb2.MODEL_STATE_READY, True)]


def test_load_model_switches_the_default_and_keeps_the_old_version_callable(
    planted: Planted, serve: Callable[..., Server], tmp_path: Path
) -> None:
    server = serve(planted.copy_to(tmp_path / "repository"))  # both versions: the policy serves 2
    assert _versions(server) == [(2, inference_pb2.MODEL_STATE_READY, True)]
    loaded = server.stub.LoadModel(inference_pb2.LoadModelRequest(name=MODEL, version=1)).model
    assert (loaded.version, loaded.is_default, loaded.vocab_size, loaded.hidden_size) == (1, False, 162, 32)

    def top(version: int = 0) -> tuple[int, str]:
        request = inference_pb2.FillMaskRequest(
            model=inference_pb2.ModelTarget(name=MODEL, version=version), texts=[f"the of and {CUE} [MASK] in"]
        )
        answer = server.stub.FillMask(request)
        return answer.version, answer.predictions[0].candidates[0].piece

    assert (top(), top(1)) == ((2, ANSWERS[2]), (1, ANSWERS[1]))
    server.stub.LoadModel(
        inference_pb2.LoadModelRequest(name=MODEL, version=1, make_default=True, unload_previous=True)
    )
    assert top() == (1, ANSWERS[1])
    assert _versions(server) == [(1, inference_pb2.MODEL_STATE_READY, True)]
    unloaded = server.stub.UnloadModel(inference_pb2.UnloadModelRequest(name=MODEL)).models
    assert [m.version for m in unloaded] == [1]
    with pytest.raises(grpc.RpcError) as gone:
        top()
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND and "LoadModel" in gone.value.details()


def _corrupt_file(directory: Path) -> None:
    (directory / "model.onnx").write_bytes(b"\x08\x07not an onnx graph" * 50)


def _other_inputs(directory: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["pixels"], ["logits"])],
        "other",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, [None, 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 3])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(directory / "model.onnx"))


def _other_tokenizer(directory: Path) -> None:
    texts = [" ".join(FILLER[i:] + FILLER[:i]) for i in range(len(FILLER))] * 3
    (directory / "tokenizer.json").write_text(train_tokenizer(texts, vocab_size=150, cased=False), encoding="utf-8")


def _no_tokenizer(directory: Path) -> None:
    (directory / "tokenizer.json").unlink()


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (_corrupt_file, "model.onnx does not load in ONNX Runtime"),
        (_other_inputs, "a served model takes int64 input_ids and attention_mask"),
        (_other_tokenizer, "this version's tokenizer is not the model's vocabulary"),
        (_no_tokenizer, "tokenizer.json is missing"),
    ],
)
def test_a_version_that_cannot_load_is_reported_and_the_serving_one_keeps_serving(
    planted: Planted,
    serve: Callable[..., Server],
    tmp_path: Path,
    damage: Callable[[Path], None],
    reason: str,
) -> None:
    repository = planted.copy_to(tmp_path / "repository", versions=(1,))
    server = serve(repository)
    load = Load(server)
    try:
        _publish(planted, repository, 2)
        damage(repository / MODEL / "2")
        with pytest.raises(grpc.RpcError) as failed:
            server.oip.RepositoryModelLoad(oip.RepositoryModelLoadRequest(model_name=MODEL))
        assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert reason in failed.value.details()
        assert load.settle(0.5) > 0
    finally:
        load.stop()
    assert load.failures == []
    assert set(load.answers) <= {(1, ANSWERS[1]), (1, "")}
    models = server.stub.ListModels(inference_pb2.ListModelsRequest(name=MODEL)).models
    assert [(m.version, m.state, m.is_default) for m in models] == [
        (1, inference_pb2.MODEL_STATE_READY, True),
        (2, inference_pb2.MODEL_STATE_UNAVAILABLE, False),
    ]
    assert reason in models[1].reason
    assert not server.oip.ModelReady(oip.ModelReadyRequest(name=MODEL, version="2")).ready
    assert server.oip.ModelReady(oip.ModelReadyRequest(name=MODEL)).ready
    index = server.oip.RepositoryIndex(oip.RepositoryIndexRequest()).models
    assert (MODEL, "2", "UNAVAILABLE") in {(m.name, m.version, m.state) for m in index}
    with pytest.raises(grpc.RpcError) as asked:
        server.stub.FillMask(
            inference_pb2.FillMaskRequest(model=inference_pb2.ModelTarget(name=MODEL, version=2), texts=["[MASK]"])
        )
    assert asked.value.code() == grpc.StatusCode.FAILED_PRECONDITION and reason in asked.value.details()
