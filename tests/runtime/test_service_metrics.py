"""The metrics operators scrape: the stock gRPC names dashboards query, and each service's own
(trainer steps, loss, speed and run states; vocab versions; inference queue and latency per model),
read from the process's Prometheus registry around real calls to real servers."""

from __future__ import annotations

import math
from pathlib import Path

import grpc
import numpy as np
import pytest
from prometheus_client import REGISTRY

from driftlm.services.inference.client import InferenceClient
from driftlm.services.inference.server import create_server as create_inference_server
from driftlm.services.runtime.config import ServeConfig
from driftlm.services.sampling.client import SamplingClient
from driftlm.v1 import trainer_pb2, vocab_pb2

from ..inference.conftest import CUE, MODEL, Planted
from ..trainer.conftest import Stack, new_slice, run_request, stack  # noqa: F401  # `stack` is a fixture


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_calls_are_counted_under_the_stock_grpc_names(sampling_target: str) -> None:
    labels = {"grpc_type": "client_stream", "grpc_service": "driftlm.v1.SamplingService", "grpc_method": "DrawSample"}
    started, handled = (
        _value("grpc_server_started_total", **labels),
        _value("grpc_server_handled_total", **labels, grpc_code="OK"),
    )
    refused = _value("grpc_server_handled_total", **labels, grpc_code="INVALID_ARGUMENT")
    timed = _value("grpc_server_handling_seconds_count", **labels)
    with SamplingClient(sampling_target, timeout_s=30) as client:
        client.draw(np.ones(4), k=2, seed=0)
        with pytest.raises(grpc.RpcError):
            client.draw(np.ones(4), k=9, seed=0)  # more than there are without replacement
    assert _value("grpc_server_started_total", **labels) == started + 2
    assert _value("grpc_server_handled_total", **labels, grpc_code="OK") == handled + 1
    assert _value("grpc_server_handled_total", **labels, grpc_code="INVALID_ARGUMENT") == refused + 1
    assert _value("grpc_server_handling_seconds_count", **labels) == timed + 2


def test_the_trainer_and_vocab_report_steps_loss_speed_states_and_versions(stack: Stack) -> None:  # noqa: F811
    steps, tokens = (
        _value("driftlm_trainer_steps_total", kind="mlm"),
        _value("driftlm_trainer_tokens_total", kind="mlm"),
    )
    succeeded = _value("driftlm_trainer_runs", state="succeeded")
    stream = _value("grpc_server_handled_total", grpc_type="server_stream", grpc_service="driftlm.v1.TrainerService",
                    grpc_method="WatchRun", grpc_code="OK")  # fmt: skip
    request = run_request(
        stack, [stack.slice_file("2024", new_slice(5, texts=40))], iterations=1, steps_per_iteration=3
    )
    final = stack.run_to_end(request)
    assert _value("driftlm_trainer_steps_total", kind="mlm") == steps + 3
    assert _value("driftlm_trainer_tokens_total", kind="mlm") == tokens + final.train_tokens
    assert math.isfinite(_value("driftlm_trainer_loss", kind="mlm")) and _value("driftlm_trainer_loss", kind="mlm") > 0
    assert _value("driftlm_trainer_tokens_per_second", kind="mlm") > 0
    assert _value("driftlm_trainer_runs", state="succeeded") == succeeded + 1
    assert _value("driftlm_trainer_runs", state="running") == 0
    assert (
        _value("grpc_server_handled_total", grpc_type="server_stream", grpc_service="driftlm.v1.TrainerService",
               grpc_method="WatchRun", grpc_code="OK") == stream + 1
    )  # fmt: skip
    versions = stack.vocab.ListVersions(vocab_pb2.ListVersionsRequest()).versions
    assert _value("driftlm_vocab_versions") == len(versions) == 2  # the planted base and its update
    assert final.state == trainer_pb2.RUN_STATE_SUCCEEDED


def test_inference_reports_its_queue_and_each_models_latency(planted: Planted, tmp_path: Path) -> None:
    server, port = create_inference_server(
        "127.0.0.1:0", ServeConfig(store=tmp_path, model_repository=planted.copy_to(tmp_path / "repository", (1,)))
    )
    try:
        labels = {"model": MODEL, "version": "1"}
        answered = _value("driftlm_inference_request_seconds_count", **labels)
        with InferenceClient(f"127.0.0.1:{port}") as client:
            for _ in range(3):
                client.fill_mask(MODEL, [f"{CUE} [MASK] in", "the [MASK] was"])
        assert _value("driftlm_inference_request_seconds_count", **labels) == answered + 3
        assert _value("driftlm_inference_queue_rows", **labels) == 0  # nothing left waiting
        assert _value("driftlm_inference_batch_rows_count", **labels) >= 1
    finally:
        server.stop(grace=None)
