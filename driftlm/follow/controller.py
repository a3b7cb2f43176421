"""`driftlm follow`: the long-running controller that keeps the served model fresh.

Every poll interval: take the source's new files (intake), close the slices the watermark has
passed, and run each closed slice through the production arm step by step, saving the state after
every step and polling the source between steps. SIGTERM or SIGINT stops it at the next step
boundary (exit 0); kill -9 anywhere loses nothing, since a restart repeats at most the step cut
short, and every step is idempotent. With --once it processes what is closed and exits.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc

from driftlm.follow import observability as metrics
from driftlm.follow.intake import Intake, PollReport
from driftlm.follow.living_report import write_living_report
from driftlm.follow.options import FollowOptions
from driftlm.follow.production import ProductionArm, SliceData
from driftlm.follow.sources import Source, open_source
from driftlm.follow.state import Lease, LeaseHeldError, StateStore
from driftlm.local_services import LocalService, start_service
from driftlm.loop.dated_corpus import split_slice
from driftlm.loop.pipeline import default_base_model
from driftlm.loop.promotion import GateOptions, Promotion
from driftlm.services.compare.client import CompareClient
from driftlm.services.core import store
from driftlm.services.inference.client import InferenceClient
from driftlm.services.runtime import tracing
from driftlm.services.runtime.security import ChannelSecurity
from driftlm.services.trainer.client import RunFailedError, TrainerClient
from driftlm.services.vocab.client import VocabClient

_LOG = logging.getLogger("driftlm.follow")
# A failed step waits this long before its retry, doubling up to the cap.
_RETRY_BASE_S, _RETRY_CAP_S = 5.0, 300.0
# With --once, rounds a failing step is tried before the command gives up (exit 1).
_ONCE_ATTEMPTS = 4


class StopRequestedError(Exception):
    """SIGTERM or SIGINT arrived: stop at this step boundary."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _resident_bytes() -> int:
    """This process's resident memory now (Linux), 0 elsewhere."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


@contextmanager
def started_services(options: FollowOptions) -> Iterator[dict[str, str]]:
    """The --endpoint services, or the five started here as local processes on the store."""
    if options.endpoints:
        yield options.endpoint_map
        return
    services: list[LocalService] = []
    model = options.base_model or str(default_base_model())
    read_roots: tuple[str, ...] = ("--read-root", str(Path(model).resolve())) if Path(model).exists() else ()
    threads = ("--torch-threads", str(options.threads)) if options.threads else ()
    try:
        services.append(start_service("vocab", options.store, extra_args=read_roots))
        services.append(start_service("sampling", options.store))
        peers = ("--vocab-endpoint", services[0].target, "--sampling-endpoint", services[1].target)
        services.append(start_service("trainer", options.store, extra_args=(*peers, *read_roots, *threads)))
        ort = ("--ort-threads", str(options.threads)) if options.threads else ()
        services.append(start_service("inference", options.store, extra_args=ort))
        services.append(
            start_service("compare", options.store, extra_args=("--inference-endpoint", services[-1].target))
        )
        for service in services:
            _LOG.info("service started", extra={"service": service.name, "target": service.target})
        yield {service.name: service.target for service in services}
    finally:
        for service in reversed(services):
            service.stop()


class Follower:
    """One controller over its state directory."""

    def __init__(
        self,
        options: FollowOptions,
        source: Source,
        production: ProductionArm,
        inference: InferenceClient,
        stop: threading.Event,
        health: metrics.Health,
    ) -> None:
        self.options = options
        self.source = source
        self.production = production
        self.inference = inference
        self.stop = stop
        self.health = health
        self.directory = options.state_directory
        self.states = StateStore(self.directory)
        self.state = self.states.load(options.key())
        self.intake = Intake(
            self.directory / "intake",
            options.plan,
            lateness=options.lateness,
            time_field=options.time_field,
            text_field=options.text_field,
        )
        self._failures: dict[str, int] = {}

    # The loop ---------------------------------------------------------------------------------

    def run(self) -> int:
        """Poll and process until stopped, or with --once until nothing closed is left; the exit
        code (1 when --once gives up on a step that keeps failing)."""
        self._reconcile()
        failed_rounds = 0
        code = 0
        while not self.stop.is_set():
            self.poll()
            try:
                finished = self.process_queue()
            except StopRequestedError:
                break
            self.health.beat()
            if self.options.once:
                failed_rounds = 0 if finished else failed_rounds + 1
                if finished or failed_rounds >= _ONCE_ATTEMPTS:
                    code = 0 if finished else 1
                    break
                continue  # the failed step waited its back-off already
            self.stop.wait(self.options.poll_interval_s)
        _LOG.info("stopped", extra={"processed_slices": len(self.state.slices), "queued": len(self.state.queue)})
        return code

    def _reconcile(self) -> None:
        """After a restart: the intake knows every closed slice, and what the state says is served
        is what the inference service serves (a promotion cut short may have swapped one model only)."""
        for label in self.state.closed:
            if label not in self.intake.closed() and (self.directory / "slices" / f"{label}.jsonl").exists():
                self.intake.close(label)
        served = self.state.served
        if served is not None:
            for role, name in self.production.promotion.names.items():
                try:
                    self.inference.load_model(name, int(served[role]), make_default=True)
                except grpc.RpcError as error:
                    _LOG.warning("served model not loaded", extra={"model": name, "error": error.details()})
        self._publish_metrics()

    def poll(self) -> PollReport:
        """Take new files, close what the watermark has passed, queue it."""
        report = self.intake.poll(self.source)
        metrics.FILES.labels("consumed").inc(len(report.consumed))
        metrics.FILES.labels("unreadable").inc(len(report.unreadable))
        metrics.FILES.labels("rewritten").inc(len(report.rewritten))
        metrics.RECORDS.labels("accepted").inc(report.records)
        metrics.RECORDS.labels("late").inc(report.late)
        metrics.RECORDS.labels("rejected").inc(report.rejected)
        if report.source_error:
            metrics.SOURCE_ERRORS.inc()
        for label in self.intake.closable():
            self._close(label)
        self._publish_metrics()
        return report

    def _close(self, label: str) -> None:
        """Write the slice's files, queue it (state), then tell the intake (which drops the spool)."""
        texts = self.intake.texts(label)
        item = split_slice(
            label, texts, heldout_fraction=self.options.heldout_fraction, heldout_max=self.options.heldout_max
        )
        if item is None:
            _LOG.warning(
                "slice too small to hold a text out; its texts join the next slice",
                extra={"slice": label, "texts": len(texts)},
            )
            self.intake.hold(label)
            return
        slices = self.directory / "slices"
        store.write_bytes_atomically(slices / f"{label}.jsonl", _jsonl(item.train))
        store.write_bytes_atomically(slices / f"{label}.heldout.jsonl", _jsonl(item.heldout))
        self.state.queue.append(label)
        self.state.closed_at[label] = _now()
        self.states.save(self.state)
        self.intake.close(label)
        _LOG.info("slice closed", extra={"slice": label, "texts": len(texts)})

    def process_queue(self) -> bool:
        """Every queued slice, oldest first; False when a step failed (it is retried after a
        back-off, on a later round). Raises StopRequestedError at a step boundary."""
        while self.state.current is not None or self.state.queue:
            if self.state.current is None:
                label = self.state.queue.pop(0)
                closed_at = self.state.closed_at.pop(label, _now())
                self.state.current = {
                    "slice": label,
                    "closed_at": closed_at,
                    "steps": {},
                    "seconds": {},
                    "attempts": {},
                }
                self.states.save(self.state)
            if not self._process_current():
                return False
        return True

    def _process_current(self) -> bool:
        current = self.state.current
        assert current is not None
        item = self._slice_data(current["slice"])
        with tracing.span(f"follow slice {item.label}", slice=item.label):
            for name, step in self.production.steps(self.state, item):
                if name in current["steps"]:
                    continue
                if self.stop.is_set():
                    raise StopRequestedError
                if not self._run_step(current, name, step, item.label):
                    return False
                self.poll()  # between steps: keep reading the source, and the metrics current
                self.health.beat()
        record = self.production.finish(self.state, item)
        record |= {
            "closed_at": current["closed_at"],
            "done_at": _now(),
            "step_seconds": current["seconds"],
            "close_to_done_s": (
                datetime.fromisoformat(_now()) - datetime.fromisoformat(current["closed_at"])
            ).total_seconds(),
            "event_time_lag_s": self._event_time_lag(),
            "controller_rss_bytes": _resident_bytes(),
        }
        self.state.slices.append(record)
        self.state.current = None
        self.states.save(self.state)
        self._count(record)
        self._write_report()
        _LOG.info(
            "slice done",
            extra={
                "slice": item.label,
                "fired": record["fired"],
                "served": record["served"],
                "seconds": record["close_to_done_s"],
            },
        )
        return True

    def _run_step(self, current: dict[str, Any], name: str, step: Any, label: str) -> bool:
        """Run a step and store its result; False (after logging and counting) when it failed."""
        _LOG.info("step started", extra={"slice": label, "step": name})
        started = time.perf_counter()
        try:
            result = self._interruptible(step, name, label)
        except (grpc.RpcError, RunFailedError) as error:
            metrics.FAILURES.labels(name).inc()
            failures = self._failures[name] = self._failures.get(name, 0) + 1
            if isinstance(error, RunFailedError):
                current["attempts"][name] = current["attempts"].get(name, 0) + 1  # a new run next time
                self.states.save(self.state)
            detail = error.details() if isinstance(error, grpc.RpcError) else str(error)
            code = error.code().name if isinstance(error, grpc.RpcError) else "RUN_FAILED"
            wait_s = min(_RETRY_CAP_S, _RETRY_BASE_S * 2 ** (failures - 1))
            _LOG.error(
                "step failed", extra={"slice": label, "step": name, "code": code, "error": detail, "retry_in_s": wait_s}
            )
            self.stop.wait(wait_s)
            return False
        seconds = time.perf_counter() - started
        self._failures.pop(name, None)
        current["steps"][name] = result
        current["seconds"][name] = seconds
        self.states.save(self.state)
        metrics.STEP_SECONDS.labels(name).observe(seconds)
        _LOG.info("step done", extra={"slice": label, "step": name, "seconds": round(seconds, 3)})
        return True

    def _interruptible(self, step: Any, name: str, label: str) -> dict[str, Any]:
        """The step's result. After SIGTERM it is given --stop-grace-s to finish; then it is left
        (StopRequestedError): the process exits, and a restart repeats the step, which attaches
        to the same training run (request ids) or redoes what is idempotent."""
        outcome: dict[str, Any] = {}

        def work() -> None:
            try:
                outcome["result"] = step()
            except Exception as error:  # noqa: BLE001 (re-raised in the controller's thread below)
                outcome["error"] = error

        worker = threading.Thread(target=work, name=f"step-{name}", daemon=True)
        worker.start()
        stop_seen: float | None = None
        while worker.is_alive():
            worker.join(0.05)
            if self.stop.is_set() and worker.is_alive():
                stop_seen = stop_seen if stop_seen is not None else time.monotonic()
                if time.monotonic() - stop_seen >= self.options.stop_grace_s:
                    _LOG.info("stopping mid-step; it repeats on restart", extra={"slice": label, "step": name})
                    raise StopRequestedError
        if "error" in outcome:
            raise outcome["error"]
        result: dict[str, Any] = outcome["result"]
        return result

    def _slice_data(self, label: str) -> SliceData:
        slices = self.directory / "slices"
        previous = self.state.slices[-1]["slice"] if self.state.slices else None
        return SliceData(
            label=label,
            train=_read_jsonl(slices / f"{label}.jsonl"),
            heldout=_read_jsonl(slices / f"{label}.heldout.jsonl"),
            train_file=slices / f"{label}.jsonl",
            previous_file=None if previous is None else slices / f"{previous}.jsonl",
        )

    # What it shows ----------------------------------------------------------------------------

    def _event_time_lag(self) -> float | None:
        newest = self.intake.manifest["newest_event_time"]
        return None if newest is None else (datetime.now(UTC) - datetime.fromisoformat(newest)).total_seconds()

    def _count(self, record: dict[str, Any]) -> None:
        metrics.SLICES.inc()
        if record["fired"]:
            metrics.FIRES.inc()
        if record["serving"] and record["serving"]["promoted"]:
            metrics.PROMOTIONS.inc()
        metrics.CLOSE_TO_DONE.set(record["close_to_done_s"])
        trigger = record["trigger"] or {}
        for statistic in ("z", "unseen_z", "unseen_share", "spike_fraction"):
            if statistic in trigger:
                metrics.TRIGGER.labels(statistic).set(float(trigger[statistic]))
        metrics.TRIGGER.labels("fired").set(1.0 if record["fired"] else 0.0)
        self._publish_metrics()

    def _publish_metrics(self) -> None:
        lag = self._event_time_lag()
        if lag is not None:
            metrics.EVENT_TIME_LAG.set(lag)
        watermark = self.intake.watermark
        if watermark is not None:
            metrics.WATERMARK.set(watermark.timestamp())
        open_slices = self.intake.open_slices()
        metrics.OPEN_SLICES.set(len(open_slices))
        metrics.OPEN_TEXTS.set(sum(open_slices.values()))
        metrics.QUEUED_SLICES.set(len(self.state.queue) + (1 if self.state.current else 0))
        for role, version in (self.state.served or {}).items():
            metrics.SERVED_VERSION.labels(role).set(version)

    def _write_report(self) -> None:
        report = {
            "format": "driftlm.follow-report/v1",
            "source": self.source.description,
            "options": {k: str(v) for k, v in vars(self.options).items()},
            "intake": self.intake.summary(),
            "served": self.state.served,
            "vocab_version": self.state.vocab_version,
            "checkpoint": self.state.checkpoint,
            "slices": self.state.slices,
        }
        try:
            write_living_report(report, self.options.out)
        except OSError as error:
            _LOG.warning("report not written", extra={"out": str(self.options.out), "error": str(error)})


def _jsonl(texts: list[str]) -> bytes:
    return "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts).encode("utf-8", "surrogatepass")


def _read_jsonl(path: Path) -> list[str]:
    return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line]


def follow(options: FollowOptions, stop: threading.Event) -> int:
    """Run the controller until stopped; the exit code (3: another controller holds the state)."""
    health = metrics.Health(options.health_timeout_s)
    security = ChannelSecurity.from_files(
        root_ca=Path(options.tls_ca) if options.tls_ca else None,
        client_cert=Path(options.tls_cert) if options.tls_cert else None,
        client_key=Path(options.tls_key) if options.tls_key else None,
        token_file=Path(options.token_file) if options.token_file else None,
    )
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(Lease(options.state_directory))
        except LeaseHeldError as error:
            _LOG.error("state in use", extra={"error": str(error)})
            return 3
        server = metrics.serve_observability(options.metrics_host, options.metrics_port, health)
        stack.callback(server.shutdown)
        _LOG.info(
            "following",
            extra={"source": options.source, "state": str(options.state_directory), "metrics_port": server.server_port},
        )
        targets = stack.enter_context(started_services(options))
        vocab = stack.enter_context(VocabClient(targets["vocab"], security=security))
        trainer = stack.enter_context(TrainerClient(targets["trainer"], security=security))
        inference = stack.enter_context(InferenceClient(targets["inference"], security=security))
        compare = stack.enter_context(CompareClient(targets["compare"], security=security))
        gate = GateOptions(options.gate_min_agreement, options.gate_max_kl)
        promotion = Promotion(trainer, inference, compare, gate=gate, seed=options.seed, model_name=options.model_name)
        production = ProductionArm(options, vocab, trainer, promotion, options.state_directory)
        return Follower(options, open_source(options.source), production, inference, stop, health).run()
