"""The inference application layer (no grpc): the registry of served versions, the text tasks and
the Open Inference Protocol's inference, and the thread that watches the repository for new versions.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from driftlm.services.core.errors import DriftlmError, InvalidArgumentError, ResourceExhaustedError

from . import text
from .batching import Row
from .model import LoadedModel
from .registry import ModelRegistry, VersionInfo

_LOG = logging.getLogger("driftlm.inference")
# (the serving version's model, its max_batch_size) -> (B, T) ids and mask, checked against them.
ReadInputs = Callable[[LoadedModel, int], tuple[np.ndarray, np.ndarray]]
# Room in an answer for everything but the logits.
_ANSWER_OVERHEAD = 1 << 20


@dataclass(frozen=True)
class Inferred:
    """What ran and what it gave."""

    version: int
    # (name, array) in the order asked.
    outputs: list[tuple[str, np.ndarray]]


class InferenceApp:
    """Everything the inference servicers call."""

    def __init__(self, registry: ModelRegistry, *, max_message_bytes: int, poll_interval_s: float = 0.0) -> None:
        self.registry = registry
        self._max_answer_bytes = max(max_message_bytes - _ANSWER_OVERHEAD, 1)
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        if poll_interval_s > 0:
            self._poller = threading.Thread(
                target=self._poll, args=(poll_interval_s,), name="repository-poll", daemon=True
            )
            self._poller.start()

    def load_repository(self) -> None:
        """Serve every model of the repository by its policy (at start); failures are recorded."""
        for name in self.registry.repository.model_names():
            try:
                self.registry.reload(name)
            except DriftlmError as error:
                _LOG.warning("model not served", extra={"model": name, "reason": str(error)})

    def _poll(self, interval_s: float) -> None:
        """Reload every model now and then: new versions are swapped in as they are exported."""
        while not self._stop.wait(interval_s):
            try:
                self.load_repository()
            except Exception:  # noqa: BLE001  # a bug must not stop the swaps that follow; it is logged
                _LOG.exception("repository poll failed")

    def close(self, timeout_s: float | None = None) -> None:
        """Stop polling and unload every version (after their requests in flight)."""
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout_s)
        self.registry.close(timeout_s)

    # driftlm's text API ------------------------------------------------------------------------

    def fill_mask(
        self, name: str, version: int, texts: Sequence[str], *, top_k: int, truncate: bool
    ) -> tuple[int, list[text.MaskFill]]:
        with self.registry.lease(name, version) as served:
            return served.version, text.fill_mask(served, texts, top_k=top_k, truncate=truncate)

    def embed(
        self, name: str, version: int, texts: Sequence[str], *, mean: bool, truncate: bool
    ) -> tuple[int, np.ndarray]:
        with self.registry.lease(name, version) as served:
            return served.version, text.embed(served, texts, mean=mean, truncate=truncate)

    def token_loss(
        self, name: str, version: int, texts: Sequence[str], *, truncate: bool
    ) -> tuple[int, text.TokenLoss]:
        with self.registry.lease(name, version) as served:
            return served.version, text.token_loss(served, texts, truncate=truncate)

    def logits(
        self,
        name: str,
        version: int,
        texts: Sequence[str],
        positions: Sequence[Sequence[int]],
        *,
        truncate: bool,
        mask_fraction: float = 0.0,
        seed: int = 0,
    ) -> tuple[int, text.PositionLogits]:
        with self.registry.lease(name, version) as served:
            result = text.logits_at(
                served,
                texts,
                positions,
                truncate=truncate,
                max_bytes=self._max_answer_bytes,
                mask_fraction=mask_fraction,
                seed=seed,
            )
            return served.version, result

    # The Open Inference Protocol -----------------------------------------------------------------

    def model(self, name: str, version: int) -> tuple[int, LoadedModel]:
        """A ready version's number and model (for its metadata)."""
        with self.registry.lease(name, version) as served:
            assert served.model is not None
            return served.version, served.model

    def infer(self, name: str, version: int, read_inputs: ReadInputs, outputs: Sequence[str]) -> Inferred:
        """Run the graph on the (B, T) ids and mask `read_inputs` gives for the version that serves
        the request (it checks them against that version's limits); `outputs` empty means all.

        Raises:
            InvalidArgumentError: an output the model does not have (and what read_inputs raises).
            ResourceExhaustedError: the outputs would not fit in one answer.
        """
        with self.registry.lease(name, version) as served:
            model = served.model
            assert model is not None
            input_ids, attention_mask = read_inputs(model, served.max_batch_size)
            wanted = tuple(outputs) or model.output_names
            for output in wanted:
                if output not in model.output_names:
                    raise InvalidArgumentError(
                        "outputs", f"asks for {output[:64]!r}; the model gives {', '.join(model.output_names)}"
                    )
            batch, length = input_ids.shape
            sizes = {
                "logits": batch * length * model.vocab_size * 4,
                "cls_embedding": batch * model.hidden_size * 4,
                "last_hidden_state": batch * length * model.hidden_size * 4,
            }
            size = sum(sizes[output] for output in wanted)
            if size > self._max_answer_bytes:
                raise ResourceExhaustedError(
                    f"the outputs asked for are {size / 2**20:.1f} MiB; one answer carries at most "
                    f"{self._max_answer_bytes / 2**20:.0f} MiB (the server's --max-message-mb): send fewer rows "
                    "or ask only for cls_embedding"
                )
            rows = [Row(ids, mask) for ids, mask in zip(input_ids, attention_mask, strict=True)]
            results = served.run(rows, tuple(sorted(set(wanted))))
            return Inferred(served.version, [(o, np.stack([r[o] for r in results])) for o in wanted])

    def list_models(self, name: str = "") -> list[VersionInfo]:
        return self.registry.describe(name)
