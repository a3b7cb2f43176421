"""Where a corpus-scale pass runs: the service's own process, or the operator's Ray cluster.

The cluster's address is the operator's (`--ray-address`), never the caller's: a Ray driver runs
what the cluster sends it, so a caller who could name a cluster could run code in the service.
One connection per process, opened on the first call that asks for Ray; Ray is an optional extra
(`driftlm[ray]`) and a service without it still serves every local call.
"""

from __future__ import annotations

import enum
import logging
import os
import threading
from dataclasses import dataclass
from typing import Any

from driftlm.v1 import common_pb2

from .errors import FailedPreconditionError, InvalidArgumentError, UnavailableError

# Workers a call may ask for.
MAX_WORKERS = 1024


class Engine(enum.Enum):
    LOCAL = "local"
    RAY = "ray"


@dataclass(frozen=True)
class EngineChoice:
    """The engine a call asked for, and for Ray its workers (0: one per CPU of the cluster)."""

    engine: Engine = Engine.LOCAL
    workers: int = 0


IN_PROCESS = EngineChoice()


def engine_from_message(options: common_pb2.EngineOptions, field: str = "engine") -> EngineChoice:
    """A request's EngineOptions, checked.

    Raises:
        InvalidArgumentError: an engine this version does not know, or workers out of range.
    """
    engines = {
        common_pb2.CORPUS_ENGINE_UNSPECIFIED: Engine.LOCAL,
        common_pb2.CORPUS_ENGINE_LOCAL: Engine.LOCAL,
        common_pb2.CORPUS_ENGINE_RAY: Engine.RAY,
    }
    if options.engine not in engines:
        raise InvalidArgumentError(f"{field}.engine", f"is not a CorpusEngine this service knows: {options.engine}")
    if not 0 <= options.workers <= MAX_WORKERS:
        raise InvalidArgumentError(f"{field}.workers", f"must be in [0, {MAX_WORKERS}], got {options.workers}")
    return EngineChoice(engines[options.engine], options.workers)


class RayCluster:
    """The operator's Ray cluster, connected to once, on first use."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._lock = threading.Lock()
        self._connected = False

    def connect(self) -> Any:
        """The `ray` module, connected.

        Raises:
            FailedPreconditionError: no address configured, or Ray not installed.
            UnavailableError: the cluster cannot be reached.
        """
        if not self.address:
            raise FailedPreconditionError(
                "this service was started without --ray-address (DRIFTLM_RAY_ADDRESS), so it runs every pass "
                "in its own process; ask for the local engine, or restart it with the address of a Ray cluster",
                reason="RAY_NOT_CONFIGURED",
            )
        try:
            import ray
            import ray.data
        except ImportError:
            raise FailedPreconditionError(
                "Ray is not installed where this service runs; install driftlm[ray]", reason="RAY_NOT_INSTALLED"
            ) from None
        with self._lock:
            if not self._connected:
                try:
                    ray.init(
                        address=self.address,
                        namespace="driftlm",
                        log_to_driver=False,
                        ignore_reinit_error=True,
                        logging_level=logging.WARNING,
                    )
                except (ConnectionError, RuntimeError, ValueError) as error:
                    raise UnavailableError(
                        f"the Ray cluster at --ray-address {self.address} cannot be reached: {error}",
                        reason="RAY_UNAVAILABLE",
                    ) from None
                context = ray.data.DataContext.get_current()
                context.enable_progress_bars = False
                context.execution_options.preserve_order = True
                self._connected = True
        return ray

    def workers(self, requested: int) -> int:
        """The workers to start: as requested, or one per CPU of the cluster."""
        ray = self.connect()
        return requested or max(1, int(ray.cluster_resources().get("CPU", 1)))


def actor_pool(ray: Any, workers: int) -> Any:
    """Up to `workers` actors, started as blocks wait for them (a corpus of one block needs one)."""
    return ray.data.ActorPoolStrategy(min_size=1, max_size=workers)


def single_threaded_worker() -> None:
    """Called first in a Ray worker that holds one CPU: the Rust tokenizer and PyTorch must not each
    start a thread per core of the machine beside the cluster's other workers."""
    os.environ["RAYON_NUM_THREADS"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
