"""A model repository holding tiny BERTs really trained on a planted association and exported by
the trainer's own export (fp32 and int8), and a real inference server on 127.0.0.1 serving it."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForMaskedLM

from driftlm.services.inference.server import create_server
from driftlm.services.runtime.config import ServeConfig
from driftlm.services.trainer.export import export_onnx
from driftlm.services.vocab.tokenizer_sources import load_tokenizer_directory
from driftlm.v1 import grpc_predict_v2_pb2_grpc, inference_pb2_grpc

from ..vocab.planted import FILLER, planted_base_directory

MODEL = "planted"
# Version 1 learns that "quintessa" is followed by "zorblax"; version 2 that it is followed by "brontide".
ANSWERS = {1: "zorblax", 2: "brontide"}
CUE = "quintessa"


def planted_texts(answer: str, rng: np.random.Generator, count: int = 64) -> list[str]:
    """Filler sentences in which the cue is always followed by the answer."""
    texts = []
    for _ in range(count):
        before, after = rng.choice(FILLER, 3), rng.choice(FILLER, 3)
        texts.append(" ".join([*before, CUE, answer, *after]))
    return texts


def train_planted(tokenizer_json: str, answer: str, seed: int) -> BertForMaskedLM:
    """A 2-layer BERT trained until it predicts `answer` after the cue (real torch steps)."""
    from tokenizers import Tokenizer

    torch.manual_seed(seed)
    tokenizer = Tokenizer.from_str(tokenizer_json)
    vocab_size = tokenizer.get_vocab_size()
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    model = BertForMaskedLM(config)
    texts = planted_texts(answer, np.random.default_rng(seed))
    encodings = tokenizer.encode_batch(texts)
    ids = torch.tensor([e.ids for e in encodings])  # every text has 3 + 2 + 3 words: one length
    mask_id = tokenizer.token_to_id("[MASK]")
    answer_id = tokenizer.token_to_id(answer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(150):
        labels = ids.clone()
        masked = (torch.rand(ids.shape, generator=generator) < 0.15) | (ids == answer_id)
        masked[:, 0] = masked[:, -1] = False
        labels[~masked] = -100
        inputs = ids.masked_fill(masked, mask_id)
        loss = model(input_ids=inputs, attention_mask=torch.ones_like(ids), labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@dataclass
class Planted:
    """The repository, its tokenizer, and the torch models behind versions 1 and 2."""

    repository: Path
    tokenizer_json: str
    models: dict[int, BertForMaskedLM]

    def copy_to(self, target: Path, versions: tuple[int, ...] = (1, 2)) -> Path:
        """A fresh repository with the planted model's config and the given versions."""
        shutil.copytree(self.repository, target)
        for name in (MODEL, f"{MODEL}_int8"):
            for version in (1, 2):
                if version not in versions:
                    shutil.rmtree(target / name / str(version))
        return target


def build_planted(root: Path) -> Planted:
    """Train versions 1 and 2 and export them into `root`/repository (the session's `planted` fixture)."""
    tokenizer_json = load_tokenizer_directory(planted_base_directory(root / "tokenizer"))
    repository = root / "repository"
    models = {}
    for version, answer in ANSWERS.items():
        models[version] = train_planted(tokenizer_json, answer, seed=version)
        export_onnx(models[version], tokenizer_json, repository, MODEL, version)
    return Planted(repository, tokenizer_json, models)


@dataclass
class Server:
    """A running inference server and stubs of both its contracts."""

    target: str
    server: grpc.Server
    stub: inference_pb2_grpc.InferenceServiceStub
    oip: grpc_predict_v2_pb2_grpc.GRPCInferenceServiceStub


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start servers on a repository: serve(repository, **ServeConfig fields) -> Server."""
    started: list[tuple[grpc.Server, grpc.Channel]] = []

    def start(repository: Path, **fields: object) -> Server:
        config = ServeConfig(store=tmp_path / "store", model_repository=repository, **fields)  # type: ignore[arg-type]
        server, port = create_server("127.0.0.1:0", config)
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        started.append((server, channel))
        return Server(
            f"127.0.0.1:{port}",
            server,
            inference_pb2_grpc.InferenceServiceStub(channel),
            grpc_predict_v2_pb2_grpc.GRPCInferenceServiceStub(channel),
        )

    yield start
    for server, channel in started:
        channel.close()
        server.stop(grace=None)


@pytest.fixture
def version_one(planted: Planted, serve: Callable[..., Server], tmp_path: Path) -> Server:
    """A server on a repository with only version 1 of the planted model (and of its int8 copy)."""
    return serve(planted.copy_to(tmp_path / "repository", versions=(1,)))
