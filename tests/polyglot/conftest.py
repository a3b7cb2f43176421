"""All five services on 127.0.0.1 for the clients of other languages: the trainer's stack (vocab,
sampling, trainer), an inference service on the planted model, and a compare service on it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from driftlm.services.compare.server import create_server as create_compare_server
from driftlm.services.inference.server import create_server as create_inference_server
from driftlm.services.runtime.config import ServeConfig

from ..inference.conftest import MODEL, Planted
from ..trainer.conftest import Stack, stack  # noqa: F401  # `stack` is a fixture


def repository_with(planted: Planted, directory: Path, *, renamed: str = "") -> Path:
    """The planted model's version 1, under the name `renamed` when given."""
    repository = planted.copy_to(directory, (1,))
    if renamed:
        (repository / MODEL).rename(repository / renamed)
        config = repository / renamed / "config.pbtxt"
        config.write_text(
            config.read_text(encoding="utf-8").replace(f'name: "{MODEL}"', f'name: "{renamed}"'), encoding="utf-8"
        )
    return repository


@pytest.fixture
def targets(stack: Stack, planted: Planted, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:  # noqa: F811
    """host:port of each service; a test marked `serving_name("x")` gets the model served as x."""
    marker = request.node.get_closest_marker("serving_name")
    repository = repository_with(planted, tmp_path / "repository", renamed=marker.args[0] if marker else "")
    inference, inference_port = create_inference_server(
        "127.0.0.1:0", ServeConfig(store=stack.store, model_repository=repository)
    )
    compare, compare_port = create_compare_server(
        "127.0.0.1:0", ServeConfig(store=stack.store, inference_endpoint=f"127.0.0.1:{inference_port}")
    )
    try:
        yield {
            "vocab": stack.vocab_target,
            "sampling": stack.sampling_target,
            "trainer": stack.trainer_target,
            "inference": f"127.0.0.1:{inference_port}",
            "compare": f"127.0.0.1:{compare_port}",
        }
    finally:
        compare.stop(grace=None)
        inference.stop(grace=None)
