"""The inference service needs neither torch nor transformers: its extra does not pull them in,
and `driftlm serve inference` answers both contracts in a process where importing them fails."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest

from driftlm.local_services import start_service
from driftlm.v1 import grpc_predict_v2_pb2 as oip
from driftlm.v1 import grpc_predict_v2_pb2_grpc, inference_pb2, inference_pb2_grpc

from ..distributions import extra_closure
from .conftest import ANSWERS, CUE, MODEL, Planted

FORBIDDEN = {"torch", "transformers"}
BLOCKER = """
import sys

class _Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "transformers"}:
            raise ImportError(f"{name} is not installed in the inference image")
        return None

sys.meta_path.insert(0, _Blocked())
"""


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("inference", {"onnxruntime", "tokenizers", "grpcio", "numpy"}),
        ("compare", {"alt-profanity-check", "scikit-learn"}),
    ],
)
def test_the_serving_extras_pull_in_no_torch(extra: str, expected: set[str]) -> None:
    pulled = extra_closure(extra)
    assert expected <= pulled
    assert not pulled & FORBIDDEN, pulled & FORBIDDEN


def test_serve_inference_runs_where_torch_cannot_be_imported(
    planted: Planted, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER, encoding="utf-8")
    monkeypatch.setenv("PYTHONPATH", str(site))
    repository = planted.copy_to(tmp_path / "repository", versions=(1,))
    service = start_service("inference", tmp_path / "store", extra_args=("--model-repository", str(repository)))
    try:
        with grpc.insecure_channel(service.target) as channel:
            fill = inference_pb2_grpc.InferenceServiceStub(channel).FillMask(
                inference_pb2.FillMaskRequest(
                    model=inference_pb2.ModelTarget(name=MODEL), texts=[f"the of and {CUE} [MASK] in"]
                ),
                timeout=60,
            )
            assert fill.predictions[0].candidates[0].piece == ANSWERS[1]
            infer = grpc_predict_v2_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                oip.ModelInferRequest(
                    model_name=MODEL,
                    inputs=[oip.ModelInferRequest.InferInputTensor(name="input_ids", datatype="INT64", shape=[1, 3])],
                    raw_input_contents=[np.array([2, 10, 3], "<i8").tobytes()],
                ),
                timeout=60,
            )
            assert [o.name for o in infer.outputs] == ["logits", "cls_embedding", "last_hidden_state"]
    finally:
        assert service.stop() == 0
    assert "is not installed in the inference image" not in service.log_path.read_text(encoding="utf-8")
