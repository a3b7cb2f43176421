"""An inference server over the planted models and students made from them, and a compare server
calling it: real servers on 127.0.0.1, real ONNX Runtime sessions, students really trained."""

from __future__ import annotations

import copy
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForMaskedLM

from driftlm.services.compare.server import create_server as create_compare_server
from driftlm.services.inference.server import create_server as create_inference_server
from driftlm.services.runtime.config import ServeConfig
from driftlm.services.trainer.export import export_onnx
from driftlm.services.vocab.tokenizer_sources import train_tokenizer
from driftlm.v1 import compare_pb2_grpc, inference_pb2, inference_pb2_grpc

from ..inference.conftest import ANSWERS, MODEL, Planted, planted_texts
from ..vocab.planted import FILLER


def shuffled_outputs(model: BertForMaskedLM, seed: int) -> BertForMaskedLM:
    """The model with its vocabulary projection's rows permuted: same encoder, scrambled answers."""
    scrambled = copy.deepcopy(model)
    order = torch.from_numpy(np.random.default_rng(seed).permutation(model.config.vocab_size))
    decoder = scrambled.cls.predictions.decoder
    with torch.no_grad():
        decoder.weight = nn.Parameter(decoder.weight[order].clone())  # no longer tied to the input embeddings
        scrambled.cls.predictions.bias = nn.Parameter(scrambled.cls.predictions.bias[order].clone())
        decoder.bias = scrambled.cls.predictions.bias
    return scrambled.eval()


def train_student(planted: Planted, teacher: BertForMaskedLM | None, seed: int) -> BertForMaskedLM:
    """A 1-layer student trained on a few planted texts: on the teacher's distributions at the masked
    positions (distilled, KL at temperature 1), or on the original pieces (without the teacher)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(planted.tokenizer_json)
    torch.manual_seed(seed)
    student = BertForMaskedLM(
        BertConfig(
            vocab_size=tokenizer.get_vocab_size(),
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
        )
    )
    texts = planted_texts(ANSWERS[1], np.random.default_rng(seed), count=16)
    ids = torch.tensor([e.ids for e in tokenizer.encode_batch(texts)])
    mask_id = tokenizer.token_to_id("[MASK]")
    optimizer = torch.optim.AdamW(student.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    student.train()
    for _ in range(80):
        masked = torch.rand(ids.shape, generator=generator) < 0.3
        masked[:, 0] = masked[:, -1] = False
        inputs = ids.masked_fill(masked, mask_id)
        logits = student(input_ids=inputs).logits[masked]
        if teacher is None:
            loss = nn.functional.cross_entropy(logits, ids[masked])
        else:
            with torch.no_grad():
                target = teacher(input_ids=inputs).logits[masked].softmax(-1)
            loss = nn.functional.kl_div(logits.log_softmax(-1), target, reduction="batchmean")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return student.eval()


def other_vocabulary_model() -> tuple[BertForMaskedLM, str]:
    texts = [" ".join(FILLER[i:] + FILLER[:i]) for i in range(len(FILLER))] * 3
    tokenizer_json = train_tokenizer(texts, vocab_size=150, cased=False)
    from tokenizers import Tokenizer

    size = Tokenizer.from_str(tokenizer_json).get_vocab_size()
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    return BertForMaskedLM(config).eval(), tokenizer_json


@pytest.fixture(scope="session")
def compare_repository(planted: Planted, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The planted model (versions 1 and 2) and: shuffled, distilled, undistilled, other-vocab."""
    repository = tmp_path_factory.mktemp("compare") / "repository"
    shutil.copytree(planted.repository / MODEL, repository / MODEL)
    teacher = planted.models[1]
    export_onnx(shuffled_outputs(teacher, seed=3), planted.tokenizer_json, repository, "shuffled")
    export_onnx(train_student(planted, teacher, seed=4), planted.tokenizer_json, repository, "distilled")
    export_onnx(train_student(planted, None, seed=4), planted.tokenizer_json, repository, "undistilled")
    other, other_json = other_vocabulary_model()
    export_onnx(other, other_json, repository, "othervocab")
    for name in ("shuffled", "distilled", "undistilled", "othervocab"):
        shutil.rmtree(repository / f"{name}_int8")
    return repository


@dataclass
class Services:
    """The compare and inference servers and their stubs."""

    compare: compare_pb2_grpc.CompareServiceStub
    inference: inference_pb2_grpc.InferenceServiceStub
    compare_target: str
    store: Path


@pytest.fixture
def services(compare_repository: Path, tmp_path: Path) -> Iterator[Services]:
    store = tmp_path / "store"
    inference_server, inference_port = create_inference_server(
        "127.0.0.1:0", ServeConfig(store=store, model_repository=compare_repository)
    )
    compare_server, compare_port = create_compare_server(
        "127.0.0.1:0", ServeConfig(store=store, inference_endpoint=f"127.0.0.1:{inference_port}")
    )
    try:
        with (
            grpc.insecure_channel(f"127.0.0.1:{compare_port}") as compare_channel,
            grpc.insecure_channel(f"127.0.0.1:{inference_port}") as inference_channel,
        ):
            inference = inference_pb2_grpc.InferenceServiceStub(inference_channel)
            inference.LoadModel(inference_pb2.LoadModelRequest(name=MODEL, version=1))  # beside 2, the default
            yield Services(
                compare_pb2_grpc.CompareServiceStub(compare_channel), inference, f"127.0.0.1:{compare_port}", store
            )
    finally:
        compare_server.stop(grace=None)
        inference_server.stop(grace=None)
