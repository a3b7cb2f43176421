"""A local Ray cluster started by the tests (2 CPUs), and a sharded corpus of real-like text."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from driftlm.local_ray import local_ray_cluster, use_token_authentication
from driftlm.loop.drifting_stream import write_stream

use_token_authentication()  # before Ray's first import
import ray  # noqa: E402, F401  # driftlm[ray], part of the dev install: these tests must run, not skip


@pytest.fixture(scope="session")
def ray_address() -> Iterator[str]:
    """`ray start --head` with 2 CPUs, token-authenticated, for the session."""
    with local_ray_cluster(2) as address:
        yield address


@pytest.fixture(scope="session")
def shards(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The drifting stream's texts with the awkward cases of real text (Unicode, emoji, empty and
    very long lines, duplicates), split unevenly across three files of two formats; the first
    is longer than one block (16,384 texts), so blocks and shards both matter."""
    folder = tmp_path_factory.mktemp("shards")
    texts = [
        json.loads(line)["text"] for line in write_stream(folder / "stream.jsonl", seed=11).read_text().splitlines()
    ]
    awkward = ["", "   ", "naïve café — déjà vu", "東京で新しいカメラを買った", "🦜🦜 parrots #birds", "x" * 5000]
    corpus = [awkward[i % len(awkward)] if i % 97 == 0 else text for i, text in enumerate((texts * 10)[:24_000])]
    first, second, third = corpus[:17_000], corpus[17_000:23_990], corpus[23_990:]
    one = folder / "part-0.jsonl"
    one.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in first), encoding="utf-8")
    two = folder / "part-1.txt.gz"
    two.write_bytes(gzip.compress("".join(t.replace("\n", " ") + "\n" for t in second).encode()))
    three = folder / "part-2.jsonl"
    three.write_text("".join(json.dumps({"text": t}) + "\n" for t in third), encoding="utf-8")
    return [one, two, three]
