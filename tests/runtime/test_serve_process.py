"""`driftlm serve` as a real process: start, metrics, graceful SIGTERM, refusal to start."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from driftlm.local_services import LocalService, start_service
from driftlm.services.runtime.tensors import array_to_tensor
from driftlm.services.sampling.client import SamplingClient
from driftlm.v1 import sampling_pb2, sampling_pb2_grpc


@pytest.fixture
def service(tmp_path: Path) -> Iterator[LocalService]:
    running = start_service("sampling", tmp_path, extra_args=("--grace-s", "20", "--metrics-host", "127.0.0.1"))
    yield running
    running.stop()


def _metrics_port(log_path: Path) -> int:
    import json

    for line in log_path.read_text().splitlines():
        entry = json.loads(line)
        if entry.get("msg") == "serving":
            return int(entry["metrics_port"])
    raise AssertionError("no serving line")


def test_metrics_count_calls_and_errors(service: LocalService) -> None:
    with SamplingClient(service.target) as client:
        client.draw(np.ones(10), k=2)
        with pytest.raises(grpc.RpcError):
            client.draw(np.zeros(10), k=2)
    with urllib.request.urlopen(f"http://127.0.0.1:{_metrics_port(service.log_path)}/metrics", timeout=10) as response:
        text = response.read().decode()
    assert 'driftlm_rpc_handled_total{code="OK",method="DrawSample",service="driftlm.v1.SamplingService"} 1.0' in text
    assert (
        'driftlm_rpc_errors_total{code="INVALID_ARGUMENT",method="DrawSample",service="driftlm.v1.SamplingService"} 1.0'
        in text
    )
    assert 'driftlm_rpc_duration_seconds_count{method="DrawSample",service="driftlm.v1.SamplingService"} 2.0' in text


def test_sigterm_lets_an_in_flight_call_finish_then_exits_zero(service: LocalService) -> None:
    """A client stream is open when SIGTERM arrives; its remaining chunks still get an answer."""
    weights = np.random.default_rng(0).random(1000)
    first_chunk_sent = threading.Event()
    may_finish = threading.Event()

    def requests() -> Iterator[sampling_pb2.DrawSampleRequest]:
        yield sampling_pb2.DrawSampleRequest(weights=array_to_tensor(weights[:500]), k=10, seed=4)
        first_chunk_sent.set()
        may_finish.wait(30)
        yield sampling_pb2.DrawSampleRequest(weights=array_to_tensor(weights[500:]))

    with grpc.insecure_channel(service.target) as channel:
        stub = sampling_pb2_grpc.SamplingServiceStub(channel)
        future = stub.DrawSample.future(requests(), timeout=60)
        assert first_chunk_sent.wait(30)
        time.sleep(0.3)  # let the server start the handler
        service.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert service.process.poll() is None, "the server quit before its in-flight call ended"
        with pytest.raises(grpc.RpcError) as refused, grpc.insecure_channel(service.target) as late_channel:
            sampling_pb2_grpc.SamplingServiceStub(late_channel).DrawSample(
                iter([sampling_pb2.DrawSampleRequest(weights=array_to_tensor(weights), k=1)]), timeout=5
            )
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        may_finish.set()
        drawn = np.frombuffer(future.result().indices.data, "<i8")
    assert drawn.shape == (10,)
    assert service.process.wait(30) == 0
    assert '"msg": "stopped"' in service.log_path.read_text()


def test_serve_refuses_a_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "driftlm",
                "serve",
                "sampling",
                "--port",
                str(port),
                "--no-metrics",
                "--store",
                str(tmp_path),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    assert result.returncode == 1
    assert (
        f"driftlm serve sampling: cannot listen on 127.0.0.1:{port}: the port is in use or the host is not local"
        in result.stderr
    )


def test_environment_variables_configure_serve(tmp_path: Path) -> None:
    """DRIFTLM_* variables stand in for flags, as in a container."""
    env = {
        **os.environ,
        "DRIFTLM_PORT": "0",
        "DRIFTLM_NO_METRICS": "1",
        "DRIFTLM_STORE": str(tmp_path / "store"),
        "PYTHONUNBUFFERED": "1",
    }
    command = [sys.executable, "-m", "driftlm", "serve", "sampling"]
    with subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env) as process:
        try:
            assert process.stderr is not None
            line = next(line for line in process.stderr if '"msg": "serving"' in line)
            assert '"metrics_port": null' in line and str(tmp_path / "store") in line
            assert (tmp_path / "store").is_dir()
        finally:
            process.send_signal(signal.SIGINT)
            assert process.wait(30) == 0


def test_the_sampling_client_needs_no_numba() -> None:
    """Other services talk to sampling through the client; it must not drag in the kernels."""
    code = "import sys, driftlm.services.sampling.client; assert 'numba' not in sys.modules, 'numba imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_sigterm_ends_a_call_that_outlives_the_grace(tmp_path: Path) -> None:
    """A client stream that never ends: after --grace-s the call is cancelled and the process exits
    (a long vocab call once kept it 23 s past a 5 s grace)."""
    service = start_service("sampling", tmp_path, extra_args=("--grace-s", "1"))
    sent = threading.Event()

    def never_ending() -> Iterator[sampling_pb2.DrawSampleRequest]:
        yield sampling_pb2.DrawSampleRequest(weights=array_to_tensor(np.ones(10)), k=1)
        sent.set()
        time.sleep(60)

    try:
        with grpc.insecure_channel(service.target) as channel:
            future = sampling_pb2_grpc.SamplingServiceStub(channel).DrawSample.future(never_ending(), timeout=60)
            assert sent.wait(30)
            time.sleep(0.3)
            started = time.monotonic()
            service.process.send_signal(signal.SIGTERM)
            assert service.process.wait(30) == 0
            assert time.monotonic() - started < 1 + 5  # the grace, and a margin for a loaded machine
            assert isinstance(future.exception(timeout=30), grpc.RpcError)
    finally:
        service.stop()


def test_a_frozen_peer_costs_a_call_its_peer_timeout_and_health_keeps_answering(tmp_path: Path) -> None:
    """The vocab service stopped (SIGSTOP) under a trainer: the trainer's call gives up after
    --peer-timeout-s with UNAVAILABLE (worth a retry), and the trainer's health answers meanwhile."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from driftlm.v1 import trainer_pb2, trainer_pb2_grpc, vocab_pb2_grpc

    from ..trainer.conftest import TINY_BERT
    from ..vocab.planted import planted_base_directory, register

    store = tmp_path / "store"
    vocab = start_service("vocab", store, extra_args=("--read-root", str(tmp_path)))
    trainer = start_service(
        "trainer", store, extra_args=("--vocab-endpoint", vocab.target, "--peer-timeout-s", "2", "--grace-s", "2")
    )
    try:
        with grpc.insecure_channel(vocab.target) as channel:
            base = register(vocab_pb2_grpc.VocabServiceStub(channel), planted_base_directory(tmp_path / "base"))
        vocab.process.send_signal(signal.SIGSTOP)
        with grpc.insecure_channel(trainer.target) as channel:
            request = trainer_pb2.CreateCheckpointRequest(model_config_json=TINY_BERT, vocab_version_id=base.version_id)
            future = trainer_pb2_grpc.TrainerServiceStub(channel).CreateCheckpoint.future(request, timeout=60)
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            started = time.monotonic()
            error = future.exception(timeout=60)
            assert isinstance(error, grpc.RpcError) and error.code() == grpc.StatusCode.UNAVAILABLE, error
            assert time.monotonic() - started < 2 + 8
    finally:
        vocab.process.send_signal(signal.SIGCONT)
        trainer.stop()
        vocab.stop()


# `driftlm serve vocab` whose ListVersions is stuck in a call that never looks at its cancellation,
# like a long Rust call inside a library.
_STUCK_SERVE = """
import sys, time
from driftlm.services.vocab.servicer import VocabServicer
VocabServicer.ListVersions = lambda self, request, context: time.sleep(120)
from driftlm.commands import main
main(sys.argv[1:])
"""


def test_sigterm_does_not_wait_for_a_handler_stuck_in_a_library(tmp_path: Path) -> None:
    """The grace bounds shutdown even when a handler never returns: the process exits 0 once the
    grace and a second for cancelled handlers have passed."""
    from driftlm.v1 import vocab_pb2, vocab_pb2_grpc

    command = [sys.executable, "-c", _STUCK_SERVE, "serve", "vocab", "--port", "0", "--no-metrics", "--grace-s", "1"]
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(
        [*command, "--store", str(tmp_path)], stderr=subprocess.PIPE, text=True, env=environment
    ) as process:
        assert process.stderr is not None
        port = next(int(line.split('"port": ')[1].split(",")[0]) for line in process.stderr if '"serving"' in line)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stuck = vocab_pb2_grpc.VocabServiceStub(channel).ListVersions.future(
                vocab_pb2.ListVersionsRequest(), timeout=120
            )
            time.sleep(0.5)
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            assert process.wait(60) == 0
            assert time.monotonic() - started < 1 + 1 + 4  # grace, the second for cancelled handlers, a margin
            assert isinstance(stuck.exception(timeout=30), grpc.RpcError)
