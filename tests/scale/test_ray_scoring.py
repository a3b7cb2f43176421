"""The Ray engine's candidate scores equal the trainer's own: rows exactly, scores to 1e-5.

A trainer with the test's Ray cluster scores a sharded corpus of real-like text with a tiny BERT
and a baseline of the same vocabulary, in its process and on two Ray workers.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pyarrow.parquet as pq
import pytest

from driftlm.services.core.artifacts import file_sha256
from driftlm.services.core.corpus import read_texts
from driftlm.services.runtime.config import ServeConfig
from driftlm.services.trainer.client import TrainerClient
from driftlm.services.trainer.server import create_server as create_trainer_server
from driftlm.services.vocab.server import create_server as create_vocab_server
from driftlm.v1 import common_pb2, trainer_pb2, vocab_pb2_grpc

from ..trainer.conftest import TINY_BERT
from ..vocab.planted import planted_base_directory, register


@dataclass
class Trainer:
    client: TrainerClient
    checkpoint: str
    baseline: str
    store: Path


@pytest.fixture(scope="module")
def trainer(
    tmp_path_factory: pytest.TempPathFactory, test_roots: dict[str, Any], ray_address: str
) -> Iterator[Trainer]:
    folder = tmp_path_factory.mktemp("scoring")
    store = folder / "store"
    vocab_server, vocab_port = create_vocab_server("127.0.0.1:0", ServeConfig(store=store, **test_roots))
    trainer_server, trainer_port = create_trainer_server(
        "127.0.0.1:0",
        ServeConfig(store=store, vocab_endpoint=f"127.0.0.1:{vocab_port}", ray_address=ray_address, **test_roots),
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{vocab_port}") as channel:
            base = register(vocab_pb2_grpc.VocabServiceStub(channel), planted_base_directory(folder / "base"))
        with TrainerClient(f"127.0.0.1:{trainer_port}") as client:
            checkpoints = [
                client._stub.CreateCheckpoint(
                    trainer_pb2.CreateCheckpointRequest(
                        model_config_json=TINY_BERT, vocab_version_id=base.version_id, seed=seed
                    )
                ).checkpoint.checkpoint_id
                for seed in (1, 2)
            ]
            yield Trainer(client, checkpoints[0], checkpoints[1], store)
    finally:
        trainer_server.stop(grace=None)
        vocab_server.stop(grace=None)


def _table(response: trainer_pb2.ScoreCandidatesResponse) -> dict[str, Any]:
    return _table_of(Path(response.scores.uri.removeprefix("file://")), response.scores.sha256)


def _table_of(path: Path, sha256: str) -> dict[str, Any]:
    assert file_sha256(path) == sha256
    table = pq.read_table(path)
    return {
        name: np.asarray(values) if name not in ("token_ids", "token_losses") else [np.asarray(v) for v in values]
        for name in table.column_names
        for values in [table.column(name).to_pylist()]
    }


def test_ray_scores_equal_local(trainer: Trainer, shards: list[Path], tmp_path: Path) -> None:
    def score(engine: int, workers: int = 0, destination: str = "") -> trainer_pb2.ScoreCandidatesResponse:
        return trainer.client.score_candidates(
            trainer.checkpoint,
            shards,
            baseline_checkpoint_id=trainer.baseline,
            destination=destination,
            max_length=32,
            mask_fraction=0.5,  # two masked passes a text: the engines compared at half the cost of seven
            seed=3,
            engine=engine,
            workers=workers,
        )

    local = _table(score(common_pb2.CORPUS_ENGINE_LOCAL, destination=str(tmp_path / "local.parquet")))
    on_ray = _table(score(common_pb2.CORPUS_ENGINE_RAY, workers=2, destination=str(tmp_path / "ray.parquet")))
    assert len(local["line"]) == sum(1 for f in shards for t in read_texts(f) if t.strip()) > 20_000
    for column in ("shard", "line", "length"):
        assert np.array_equal(on_ray[column], local[column]), column
    for column in ("mlm_loss", "cls", "baseline_cls", "cls_shift"):
        np.testing.assert_allclose(on_ray[column], local[column], rtol=0, atol=1e-5, err_msg=column)
    # The trigger's per-token statistics: the same occurrences, losses to 1e-5, the text's mean
    # (a text of nothing but [UNK] has no piece to predict: no occurrence, and a loss of 0).
    for ray_ids, local_ids, ray_losses, local_losses, mean in zip(
        on_ray["token_ids"], local["token_ids"], on_ray["token_losses"], local["token_losses"], local["mlm_loss"],
        strict=True,
    ):  # fmt: skip
        assert np.array_equal(ray_ids, local_ids)
        np.testing.assert_allclose(ray_losses, local_losses, rtol=0, atol=1e-5)
        assert abs((np.mean(local_losses) if len(local_losses) else 0.0) - mean) < 1e-5
    assert sum(len(ids) > 0 for ids in local["token_ids"]) > 0.95 * len(local["line"])
    # What the scores must show: losses of a fresh model near ln(V), two differently seeded models
    # apart, and every line of the first shard in order.
    assert np.all(np.isfinite(local["mlm_loss"])) and local["mlm_loss"].mean() > 1.0
    assert local["cls_shift"].mean() > 0.01
    first = local["shard"] == 0
    assert np.all(np.diff(local["line"][first]) > 0)


def test_a_model_against_itself_shifts_nothing(trainer: Trainer, shards: list[Path]) -> None:
    """The null case of the sentence shift: the same checkpoint before and after."""
    response = trainer.client.score_candidates(
        trainer.checkpoint,
        shards[2:],
        baseline_checkpoint_id=trainer.checkpoint,
        max_length=32,
        engine=common_pb2.CORPUS_ENGINE_RAY,
    )
    scores = _table(response)
    assert response.scored_count == len(scores["line"]) > 0
    np.testing.assert_allclose(scores["cls_shift"], 0.0, atol=1e-6)
    assert response.scores.uri.startswith((trainer.store / "trainer" / "scores").as_uri())


def test_scoring_refuses_bad_requests(trainer: Trainer, shards: list[Path], tmp_path: Path) -> None:
    cases = {
        "mask_fraction": ({"mask_fraction": 0.9}, grpc.StatusCode.INVALID_ARGUMENT),
        "checkpoint": ({"checkpoint_id": "ckpt-0000000000000000"}, grpc.StatusCode.NOT_FOUND),
        "destination": (
            {"destination": common_pb2.ArtifactRef(uri="/etc/scores.parquet")},
            grpc.StatusCode.PERMISSION_DENIED,
        ),
    }
    for name, (fields, code) in cases.items():
        request = trainer_pb2.ScoreCandidatesRequest(
            checkpoint_id=trainer.checkpoint,
            corpus=common_pb2.CorpusSource(uri=common_pb2.ArtifactRef(uri=str(shards[2]))),
            engine=common_pb2.EngineOptions(engine=common_pb2.CORPUS_ENGINE_RAY),
        )
        request.MergeFrom(trainer_pb2.ScoreCandidatesRequest(**fields))
        with pytest.raises(grpc.RpcError) as raised:
            trainer.client._stub.ScoreCandidates(request, timeout=60)
        assert raised.value.code() == code, name
    blank = tmp_path / "blank.txt"
    blank.write_text("\n   \n\n", encoding="utf-8")
    with pytest.raises(grpc.RpcError) as raised:
        trainer.client.score_candidates(trainer.checkpoint, [blank])
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "no text to score" in str(raised.value.details())


def test_ray_pseudo_likelihood_equals_local(trainer: Trainer, shards: list[Path]) -> None:
    """PLL-word-l2r of a held-out corpus (two shards, two formats) on two Ray workers and in the
    trainer's process: the same rows, the figures to 1e-5 (no randomness: only float order)."""

    def score(engine: int, workers: int = 0) -> tuple[trainer_pb2.ScorePseudoLikelihoodResponse, dict[str, Any]]:
        response = trainer.client.corpus_pseudo_likelihood(
            trainer.checkpoint, shards[1:], max_length=8, engine=engine, workers=workers
        )
        return response, _table_of(Path(response.scores.uri.removeprefix("file://")), response.scores.sha256)

    local, local_rows = score(common_pb2.CORPUS_ENGINE_LOCAL)
    on_ray, ray_rows = score(common_pb2.CORPUS_ENGINE_RAY, workers=2)
    assert local.scored_count == on_ray.scored_count == len(local_rows["line"]) > 6_000
    for column in ("shard", "line", "pieces", "words", "characters"):
        assert np.array_equal(ray_rows[column], local_rows[column]), column
    for column in ("log_likelihood", "word_l2r_log_likelihood"):
        np.testing.assert_allclose(ray_rows[column], local_rows[column], rtol=0, atol=1e-5, err_msg=column)
    for name in ("log_likelihood_per_word", "word_l2r_log_likelihood_per_word", "pseudo_perplexity"):
        assert getattr(on_ray, name) == pytest.approx(getattr(local, name), rel=1e-6), name
    assert local.word_l2r_log_likelihood_per_word < 0 and np.all(local_rows["log_likelihood"] <= 0)
