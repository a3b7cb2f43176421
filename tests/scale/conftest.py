"""A local Ray cluster started by the tests (2 CPUs), and a sharded corpus of real-like text."""

from __future__ import annotations

import gzip
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from driftlm.loop.drifting_stream import write_stream

# Token authentication, as an operator runs it: the cluster and its drivers (here, the test's
# services) share a token through the environment, which Ray reads when it is first imported.
assert "ray" not in sys.modules, "Ray was imported before the scale tests could give it their token"
os.environ.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_USAGE_STATS_ENABLED": "0"})
ray = pytest.importorskip("ray", reason="the Ray engine's tests need driftlm[ray]")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="session")
def ray_address() -> Iterator[str]:
    """`ray start --head` on loopback with 2 CPUs, for the session; stopped (and its files removed)
    at the end. Its temporary folder is short: Ray's socket paths must fit in 107 bytes."""
    port = _free_port()
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    ray_cli = Path(sys.executable).parent / "ray"
    head = subprocess.Popen(
        [
            str(ray_cli), "start", "--head", "--block", f"--port={port}",
            "--num-cpus=2", "--num-gpus=0", "--include-dashboard=false", f"--temp-dir={temp}",
            "--object-store-memory=200000000", "--disable-usage-stats",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=dict(os.environ),
    )  # fmt: skip
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if head.poll() is not None:
                raise RuntimeError(f"ray start exited with {head.returncode}") from None
            time.sleep(0.5)
    yield address
    ray.shutdown()
    head.terminate()
    try:
        head.wait(60)
    except subprocess.TimeoutExpired:
        head.kill()
        head.wait()
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="session")
def shards(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The drifting stream's texts with the awkward cases of real text (Unicode, emoji, empty and
    very long lines, duplicates), split unevenly across three files of three formats; the first
    is longer than one block (16,384 texts), so blocks and shards both matter."""
    folder = tmp_path_factory.mktemp("shards")
    texts = [
        json.loads(line)["text"] for line in write_stream(folder / "stream.jsonl", seed=11).read_text().splitlines()
    ]
    awkward = ["", "   ", "naïve café — déjà vu", "東京で新しいカメラを買った", "🦜🦜 parrots #birds", "x" * 5000]
    corpus = (texts * 10 + awkward * 50)[:24_000]
    first, second, third = corpus[:17_000], corpus[17_000:23_990], corpus[23_990:]
    one = folder / "part-0.jsonl"
    one.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in first), encoding="utf-8")
    two = folder / "part-1.txt.gz"
    two.write_bytes(gzip.compress("".join(t.replace("\n", " ") + "\n" for t in second).encode()))
    three = folder / "part-2.jsonl"
    three.write_text("".join(json.dumps({"text": t}) + "\n" for t in third), encoding="utf-8")
    return [one, two, three]
