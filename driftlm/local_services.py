"""Start driftlm services as local processes, exactly as a container would run them.

`driftlm run` and the tests use this to get real servers on free loopback ports: each service is
`python -m driftlm serve NAME --port 0`, its JSON log goes to a file, and the port is read from
its "serving" line. Stopping sends SIGTERM, so the graceful-shutdown path is the one exercised.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from driftlm.health import check
from driftlm.services.runtime.security import PLAINTEXT


class ServiceStartError(RuntimeError):
    """A service process exited or did not report SERVING in time; the message quotes its log."""


@dataclass
class LocalService:
    """A running service process."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def target(self) -> str:
        """The gRPC target to dial."""
        return f"127.0.0.1:{self.port}"

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM, wait for the graceful exit; returns the exit code (SIGKILL after timeout_s)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return int(self.process.returncode)


def _serving_port(log_path: Path) -> int | None:
    for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict) and entry.get("msg") == "serving":
            return int(entry["port"])
    return None


def _wait_healthy(target: str, deadline: float) -> bool:
    while time.monotonic() < deadline:
        if check(target, PLAINTEXT, "", 2.0)[0]:
            return True
        time.sleep(0.1)
    return False


def start_service(
    name: str, store: Path, *, extra_args: tuple[str, ...] = (), timeout_s: float = 120.0
) -> LocalService:
    """Start `driftlm serve NAME --store STORE` on a free loopback port; wait until it is SERVING.

    Its log goes to STORE/logs/NAME.log.

    Raises:
        ServiceStartError: the process exited, or was not healthy within timeout_s.
    """
    log_path = store / "logs" / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "driftlm",
        "serve",
        name,
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--metrics-port",
        "0",
        "--store",
        str(store),
        *extra_args,
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        port = _serving_port(log_path)
        if port is not None and _wait_healthy(f"127.0.0.1:{port}", deadline):
            return LocalService(name, process, port, log_path)
        if process.poll() is not None:
            break
        time.sleep(0.1)
    process.kill()
    process.wait()
    tail = log_path.read_text(encoding="utf-8", errors="replace")[-2000:]
    raise ServiceStartError(
        f"the {name} service did not become SERVING (exit code {process.returncode}); its log ends:\n{tail}"
    )
