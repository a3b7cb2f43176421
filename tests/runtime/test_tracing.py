"""OpenTelemetry: one slice of work is one trace through vocab, trainer, sampling, inference and
compare (real servers and clients, spans kept in memory); with tracing off nothing changes and
OpenTelemetry is not even imported."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from driftlm.local_services import start_service
from driftlm.services.compare.client import CompareClient
from driftlm.services.compare.server import create_server as create_compare_server
from driftlm.services.inference.client import InferenceClient
from driftlm.services.inference.server import create_server as create_inference_server
from driftlm.services.runtime import tracing
from driftlm.services.runtime.config import ServeConfig
from driftlm.services.runtime.security import PLAINTEXT
from driftlm.services.sampling.client import SamplingClient
from driftlm.v1 import common_pb2, trainer_pb2, trainer_pb2_grpc, vocab_pb2, vocab_pb2_grpc

from ..inference.conftest import CUE, MODEL, Planted
from ..trainer.conftest import Stack, new_slice, run_request, stack  # noqa: F401  # `stack` is a fixture

exporting = pytest.importorskip("opentelemetry.sdk.trace.export.in_memory_span_exporter")
SERVICES = {f"driftlm.v1.{name}Service" for name in ("Vocab", "Trainer", "Sampling", "Inference", "Compare")}


@pytest.fixture
def spans() -> Iterator[exporting.InMemorySpanExporter]:
    """Tracing on, into memory, for the servers and channels the test makes (listed before them)."""
    exporter = exporting.InMemorySpanExporter()
    tracing.enable("driftlm-test", exporter=exporter)
    yield exporter
    tracing.disable()


def test_a_slice_is_one_trace_through_all_five_services(
    spans: exporting.InMemorySpanExporter,
    stack: Stack,  # noqa: F811
    planted: Planted,
    tmp_path: Path,
) -> None:
    inference, inference_port = create_inference_server(
        "127.0.0.1:0", ServeConfig(store=tmp_path, model_repository=planted.copy_to(tmp_path / "repository", (1,)))
    )
    compare, compare_port = create_compare_server(
        "127.0.0.1:0", ServeConfig(store=tmp_path, inference_endpoint=f"127.0.0.1:{inference_port}")
    )
    texts = new_slice(3, texts=60)
    try:
        with tracing.span("slice 2024", slice="2024"):
            vocab = vocab_pb2_grpc.VocabServiceStub(PLAINTEXT.channel(stack.vocab_target))
            corpus = common_pb2.CorpusSource(texts=common_pb2.TextBatch(texts=texts))
            vocab.ObserveSlice(
                iter([vocab_pb2.ObserveSliceRequest(version_id=stack.base_version.version_id, corpus=corpus)])
            )
            trainer = trainer_pb2_grpc.TrainerServiceStub(PLAINTEXT.channel(stack.trainer_target))
            request = run_request(
                stack,
                [stack.slice_file("2024", texts)],
                strategy=common_pb2.SAMPLING_STRATEGY_TOKEN_EMBEDDING_SHIFT,  # asks the sampling service
                steps_per_iteration=1,
            )
            run = trainer.StartRun(request).run
            for update in trainer.WatchRun(trainer_pb2.WatchRunRequest(run_id=run.run_id), timeout=600):
                last = update.run
            assert last.state == trainer_pb2.RUN_STATE_SUCCEEDED, last.error_message
            with InferenceClient(f"127.0.0.1:{inference_port}") as client:
                client.fill_mask(MODEL, [f"{CUE} [MASK] in"])
            with CompareClient(f"127.0.0.1:{compare_port}") as client:
                client.compare([MODEL], MODEL, {"held-out": [f"the {CUE} word is here"] * 4}, seed=1)
    finally:
        compare.stop(grace=None)
        inference.stop(grace=None)
    finished = spans.get_finished_spans()
    (root,) = [s for s in finished if s.name == "slice 2024"]
    in_trace = [s for s in finished if s.context.trace_id == root.context.trace_id]
    served = {str(s.attributes.get("rpc.service")) for s in in_trace if s.kind.name == "SERVER"}
    assert served >= SERVICES, served
    # The trainer's run thread carries the StartRun call's context: its peer calls are in the trace.
    by_id = {s.context.span_id: s for s in in_trace}
    sampling = [
        s
        for s in in_trace
        if s.kind.name == "SERVER" and s.attributes.get("rpc.service") == "driftlm.v1.SamplingService"
    ]
    assert sampling

    def ancestors(span: object) -> list[str]:
        names, current = [], span
        while current is not None and current.parent is not None:  # type: ignore[attr-defined]
            current = by_id.get(current.parent.span_id)  # type: ignore[attr-defined]
            names.append(current.name if current is not None else "?")
        return names

    assert "/driftlm.v1.TrainerService/StartRun" in ancestors(sampling[0])
    compares = [s for s in in_trace if s.name == "/driftlm.v1.CompareService/CompareModels" and s.kind.name == "SERVER"]
    logits = [s for s in in_trace if s.name == "/driftlm.v1.InferenceService/ComputeLogits" and s.kind.name == "SERVER"]
    assert compares and logits and "/driftlm.v1.CompareService/CompareModels" in ancestors(logits[0])


def test_with_tracing_off_nothing_of_opentelemetry_is_loaded() -> None:
    """The default: servers and channels are plain, and the packages are not even imported."""
    script = """
import sys
from driftlm.services.runtime import tracing
from driftlm.services.runtime.security import PLAINTEXT
from driftlm.services.sampling.client import SamplingClient
from driftlm.services.sampling.server import create_server
from driftlm.services.sampling.client import SamplingClient
import numpy as np
server, port = create_server("127.0.0.1:0")
with SamplingClient(f"127.0.0.1:{port}", timeout_s=30) as client:
    client.draw(np.ones(4), k=2, seed=0)
server.stop(grace=None)
assert not tracing.enabled() and tracing.server_interceptors() == []
loaded = sorted(m for m in sys.modules if m.startswith("opentelemetry"))
assert not loaded, loaded
print("plain")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "plain", done.stderr[-2000:]


def test_serve_refuses_to_start_tracing_without_opentelemetry(tmp_path: Path) -> None:
    """An endpoint given where the packages are missing is an error at start, not silence."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import sys\n"
        "class _Blocked:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'opentelemetry':\n"
        "            raise ImportError('not installed here')\n"
        "sys.meta_path.insert(0, _Blocked())\n",
        encoding="utf-8",
    )
    done = subprocess.run(
        [sys.executable, "-m", "driftlm", "serve", "sampling", "--port", "0", "--no-metrics", "--store", str(tmp_path),
         "--otlp-endpoint", "http://127.0.0.1:4317"],
        capture_output=True, text=True, timeout=120, check=False, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 1 and "pip install 'driftlm[otel]'" in done.stderr, done.stderr[-2000:]


def test_serve_sends_its_spans_to_an_otlp_collector(tmp_path: Path) -> None:
    """The real exporter: `driftlm serve --otlp-endpoint` delivers its spans (flushed on SIGTERM)
    to a collector, here a gRPC server speaking OTLP's TraceService on the loopback."""
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    received: list[trace_service_pb2.ExportTraceServiceRequest] = []

    class Collector(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request: Any, context: grpc.ServicerContext) -> Any:  # the OTLP method
            received.append(request)
            return trace_service_pb2.ExportTraceServiceResponse()

    collector = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Collector(), collector)
    port = collector.add_insecure_port("127.0.0.1:0")
    collector.start()
    try:
        service = start_service("sampling", tmp_path, extra_args=("--otlp-endpoint", f"http://127.0.0.1:{port}"))
        try:
            with SamplingClient(service.target, timeout_s=30) as client:
                client.draw(np.ones(4), k=2, seed=0)
        finally:
            assert service.stop() == 0
    finally:
        collector.stop(grace=None)
    spans = {
        (attribute.value.string_value, span.name)
        for request in received
        for resource_spans in request.resource_spans
        for attribute in resource_spans.resource.attributes
        if attribute.key == "service.name"
        for scope in resource_spans.scope_spans
        for span in scope.spans
    }
    assert ("driftlm-sampling", "/driftlm.v1.SamplingService/DrawSample") in spans, spans
