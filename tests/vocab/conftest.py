"""A vocab server over a temporary store, and a planted base vocabulary registered in it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from driftlm.services.runtime.config import ServeConfig
from driftlm.services.vocab.server import create_server
from driftlm.v1 import vocab_pb2, vocab_pb2_grpc

from .planted import planted_base_directory, register


@pytest.fixture
def vocab_store(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def vocab_stub(vocab_store: Path, test_roots: dict[str, Any]) -> Iterator[vocab_pb2_grpc.VocabServiceStub]:
    server, port = create_server("127.0.0.1:0", ServeConfig(store=vocab_store, **test_roots))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield vocab_pb2_grpc.VocabServiceStub(channel)
    server.stop(grace=None)


@pytest.fixture
def planted_base(vocab_stub: vocab_pb2_grpc.VocabServiceStub, tmp_path: Path) -> vocab_pb2.VocabVersion:
    return register(vocab_stub, planted_base_directory(tmp_path / "planted-base"), "planted")
