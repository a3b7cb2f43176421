"""A Ray cluster on this machine, for tests and benchmarks of the Ray engine (`ray start --head`).

It runs with token authentication, as an operator's cluster should: the token goes into this
process's environment, where Ray reads it on its first import, and so to the services this
process starts (their `--ray-address` is the address yielded).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def use_token_authentication() -> None:
    """Give this process (and the cluster it starts) a fresh token; call before Ray is imported.

    Raises:
        RuntimeError: Ray was imported already, and would ignore the token.
    """
    if "ray" in sys.modules:
        raise RuntimeError("Ray was imported before its token was set; call use_token_authentication() first")
    os.environ.update(
        {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_USAGE_STATS_ENABLED": "0"}
    )


@contextmanager
def local_ray_cluster(cpus: int, *, object_store_bytes: int = 200_000_000) -> Iterator[str]:
    """A head node with `cpus` CPUs and no GPU until the block ends; yields its address. Its
    temporary folder is short: Ray's socket paths must fit in 107 bytes."""
    if os.environ.get("RAY_AUTH_MODE") != "token":
        use_token_authentication()
    port = _free_port()
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    head = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", f"--port={port}",
            f"--num-cpus={cpus}", "--num-gpus=0", "--include-dashboard=false", f"--temp-dir={temp}",
            f"--object-store-memory={object_store_bytes}", "--disable-usage-stats",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the cluster's processes stop with it
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if head.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"ray start did not come up (exit {head.poll()})") from None
                time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        if "ray" in sys.modules:
            sys.modules["ray"].shutdown()
        # `ray start --block` gives its processes 30 s to stop after SIGTERM; a test cluster has
        # nothing to save, so its process group gets two seconds, then SIGKILL.
        _signal_group(head, signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            head.wait(2)
        _signal_group(head, signal.SIGKILL)
        head.wait()
        shutil.rmtree(temp, ignore_errors=True)


def _signal_group(process: subprocess.Popen[bytes], signum: signal.Signals) -> None:
    with suppress(ProcessLookupError):  # the whole group is gone already
        os.killpg(process.pid, signum)
