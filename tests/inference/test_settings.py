"""What the server reads from a model's config.pbtxt and from its own flags, and the batcher's
bookkeeping: rows of different lengths and requests merged into one run each get their own answer."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import REGISTRY

from driftlm.services.core.model_repository import ModelShape, config_pbtxt
from driftlm.services.inference.batching import DynamicBatcher, Row, run_rows
from driftlm.services.inference.metrics import VersionMetrics
from driftlm.services.inference.model import ModelLoadError, RuntimeOptions
from driftlm.services.inference.repository import ModelConfigError, ModelSettings, parse_settings
from driftlm.v1 import inference_pb2

from .conftest import MODEL, Planted, Server

OURS = config_pbtxt("m", ModelShape(vocab_size=100, hidden_size=8))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # what ExportOnnx writes: newest version, batching with its delay
        (OURS, ModelSettings(32, True, 0.002, latest=1)),
        # every version
        (OURS.replace("latest: { num_versions: 1 }", "all: { }"), ModelSettings(32, True, 0.002, latest=None)),
        # chosen versions
        (
            OURS.replace("latest: { num_versions: 1 }", "specific: { versions: [1, 3] }"),
            ModelSettings(32, True, 0.002, latest=None, specific=(1, 3)),
        ),
        # no batching section: each request alone
        (
            'platform: "onnxruntime_onnx"\nmax_batch_size: 4\n',
            ModelSettings(4, False, 0.0, latest=1),
        ),
        # Triton's backend spelling
        ('backend: "onnxruntime"\nmax_batch_size: 2\ndynamic_batching { }', ModelSettings(2, True, 0.0, latest=1)),
    ],
)
def test_config_pbtxt_settings(text: str, expected: ModelSettings) -> None:
    assert parse_settings(text) == expected


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('platform: "tensorrt_plan"\nmax_batch_size: 8', "onnxruntime_onnx"),
        ('platform: "onnxruntime_onnx"\nmax_batch_size: 0', "max_batch_size >= 1"),
        ('platform: "onnxruntime_onnx"', "max_batch_size >= 1"),
    ],
)
def test_config_pbtxt_the_server_cannot_serve(text: str, words: str) -> None:
    with pytest.raises(ModelConfigError, match=words):
        parse_settings(text)


def test_version_policies_choose_versions() -> None:
    available = [1, 2, 5]
    assert ModelSettings(1, False, 0.0, latest=2).wanted(available) == [2, 5]
    assert ModelSettings(1, False, 0.0, latest=None).wanted(available) == available
    assert ModelSettings(1, False, 0.0, latest=None, specific=(2, 9)).wanted(available) == [2]


@pytest.mark.parametrize(
    ("threads", "level", "provider", "words"),
    [(0, "fast", "cpu", "optimisation"), (0, "all", "tpu", "execution provider"), (-1, "all", "cpu", "threads")],
)
def test_runtime_options_refuse_what_onnx_runtime_has_not(threads: int, level: str, provider: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        RuntimeOptions.parse(threads, level, provider)


def test_cuda_on_a_host_without_it_fails_at_start() -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this host has CUDA")
    with pytest.raises(ModelLoadError, match="onnxruntime-gpu"):
        RuntimeOptions.parse(0, "all", "cuda")
    assert RuntimeOptions.parse(0, "all", "auto").providers() == ["CPUExecutionProvider"]


def _echo(ids: np.ndarray, mask: np.ndarray, outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
    """A graph whose logits at (b, t) are [id, mask, width] and whose [CLS] state is the row's sum."""
    width = np.full(ids.shape, ids.shape[1])
    return {
        "logits": np.stack([ids, mask, width], axis=-1).astype(np.float32),
        "cls_embedding": (ids * mask).sum(axis=1, keepdims=True).astype(np.float32),
    }


def test_rows_run_shortest_first_in_bounded_batches_and_come_back_in_order() -> None:
    rows = [Row(np.arange(1, n + 1), pick=np.array([n - 1])) for n in (5, 1, 3, 2, 4)]
    results = run_rows(_echo, rows, ("logits", "cls_embedding"), max_rows=2, vocab_size=3)
    # Each row's last piece, unpadded mask, and the width of the batch it ran in: (1, 2), (3, 4), (5).
    assert [r["logits"][0].tolist() for r in results] == [[5, 1, 5], [1, 1, 2], [3, 1, 4], [2, 1, 2], [4, 1, 4]]
    assert [float(r["cls_embedding"][0]) for r in results] == [15, 1, 6, 3, 10]


def test_the_batcher_merges_concurrent_requests_and_answers_each_its_own() -> None:
    calls: list[int] = []

    def counting(ids: np.ndarray, mask: np.ndarray, outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
        calls.append(len(ids))
        return _echo(ids, mask, outputs)

    batcher = DynamicBatcher(
        counting, max_batch_size=32, max_queue_delay_s=0.2, vocab_size=3, metrics=VersionMetrics("echo", 1)
    )
    answers: dict[int, float] = {}

    def ask(n: int) -> None:
        answers[n] = float(batcher.run([Row(np.arange(n + 1))], ("cls_embedding",))[0]["cls_embedding"][0])

    threads = [threading.Thread(target=ask, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    batcher.close()
    assert answers == {n: n * (n + 1) / 2 for n in range(8)}
    assert sum(calls) == 8 and len(calls) < 8  # merged, each row once
    runs = REGISTRY.get_sample_value("driftlm_inference_batch_rows_count", {"model": "echo", "version": "1"})
    waits = REGISTRY.get_sample_value("driftlm_inference_queue_seconds_count", {"model": "echo", "version": "1"})
    assert (runs, waits) == (len(calls), 8)


def test_concurrent_text_requests_of_different_lengths_match_their_lone_answers(version_one: Server) -> None:
    texts = [" ".join(["the"] * n + ["[MASK]"]) for n in range(1, 13)]
    target = inference_pb2.ModelTarget(name=MODEL)

    def embed(text: str) -> bytes:
        return version_one.stub.EmbedTexts(inference_pb2.EmbedTextsRequest(model=target, texts=[text])).embeddings.data

    alone = {text: embed(text) for text in texts}
    together: dict[str, bytes] = {}
    threads = [threading.Thread(target=lambda t=t: together.__setitem__(t, embed(t))) for t in texts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for text in texts:
        np.testing.assert_allclose(np.frombuffer(together[text], "<f4"), np.frombuffer(alone[text], "<f4"), atol=1e-4)


def test_new_versions_are_swapped_in_by_the_repository_poll(
    planted: Planted, serve: Callable[..., Server], tmp_path: Path
) -> None:
    import shutil
    import time

    repository = planted.copy_to(tmp_path / "repository", versions=(1,))
    server = serve(repository, repository_poll_s=0.2)
    shutil.copytree(planted.repository / MODEL / "2", repository / MODEL / "2")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        models = server.stub.ListModels(inference_pb2.ListModelsRequest(name=MODEL)).models
        if [(m.version, m.is_default) for m in models] == [(2, True)]:
            break
        time.sleep(0.1)
    assert [(m.version, m.is_default, m.state) for m in models] == [(2, True, inference_pb2.MODEL_STATE_READY)]
