"""kill -9 anywhere, restart: the final state equals an uninterrupted run's.

One run is killed at five points in turn (mid-intake, mid-training of the first slice, mid-export,
mid-training after a vocabulary update, mid-promotion) and stopped by SIGTERM mid-distillation,
restarted after each; another runs through
on its own services and store. Slices, vocabulary versions, checkpoints, the served versions and
the report must be the same (timings aside)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from driftlm.services.inference.client import InferenceClient
from driftlm.services.vocab.client import VocabClient
from driftlm.v1 import trainer_pb2, trainer_pb2_grpc

from .conftest import TRAINING, Controller, drop, event, services

# Figures that measure time (or name a one-off record) rather than what was computed.
_TIMINGS = {"closed_at", "done_at", "step_seconds", "close_to_done_s", "event_time_lag_s", "controller_rss_bytes"}
_SERVING_TIMINGS = {"speed_ratio", "comparison_id"}


def _without_timings(record: dict[str, Any]) -> dict[str, Any]:
    kept = {k: v for k, v in record.items() if k not in _TIMINGS}
    if kept.get("serving"):
        kept["serving"] = {k: v for k, v in kept["serving"].items() if k not in _SERVING_TIMINGS}
    return kept


def _drained(controller: Controller) -> list[dict[str, Any]]:
    """The log entries the controller wrote that no wait_for has read yet."""
    entries = []
    while not controller.events.empty():
        entries.append(controller.events.get())
    return entries


def _checkpoint_name(directory: Path) -> str:
    """A trained checkpoint's id (it follows from the run's request id); an imported one's name
    (its id follows from the directory it came from, which is in the store)."""
    record = json.loads((directory / "checkpoint.json").read_text())
    return directory.name if record["run_id"] else f"imported {record['display_name']}"


def _await_running_run(endpoints: list[str], timeout_s: float = 120) -> None:
    """Returns once the trainer holds a run in RUNNING, so that a signal sent now lands mid-training
    (a fixed delay after "step started" missed runs that take half a second)."""
    targets = dict(e.split("=", 1) for e in endpoints if "=" in e)
    with grpc.insecure_channel(targets["trainer"]) as channel:
        trainer = trainer_pb2_grpc.TrainerServiceStub(channel)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            runs = trainer.ListRuns(trainer_pb2.ListRunsRequest(page_size=5), timeout=10).runs
            if any(run.state == trainer_pb2.RUN_STATE_RUNNING for run in runs):
                return
            time.sleep(0.005)
    raise AssertionError(f"no run reached RUNNING in {timeout_s} s")


def _final(store: Path, endpoints: list[str]) -> dict[str, Any]:
    targets = dict(e.split("=", 1) for e in endpoints if "=" in e)
    state = json.loads((store / "follow" / "crash" / "state.json").read_text())
    report = json.loads((store.parent / f"{store.name}-out" / "report.json").read_text())
    with VocabClient(targets["vocab"]) as vocab, InferenceClient(targets["inference"]) as inference:
        versions = sorted(v.version_id for v in vocab.list_versions())
        served = sorted((m.name, m.version) for m in inference.list_models() if m.is_default)
    return {
        "state": {**state, "slices": [_without_timings(s) for s in state["slices"]]},
        "report": [_without_timings(s) for s in report["slices"]],
        "vocab_versions": versions,
        "checkpoints": sorted(_checkpoint_name(p) for p in (store / "trainer" / "checkpoints").iterdir()),
        "model_versions": sorted(
            str(p.relative_to(store / "trainer" / "models"))
            for p in (store / "trainer" / "models").glob("*/*")
            if p.is_dir()
        ),
        "served": served,
    }


def test_kill_9_at_five_points_changes_nothing(
    tmp_path: Path, tiny_model: Path, stream_years: dict[str, list[dict[str, Any]]]
) -> None:
    source = tmp_path / "source"
    drop(source, "2016", stream_years["2016"], "2016")
    drop(source, "2017a", stream_years["2021"][:200], "2017")
    drop(source, "2017b", stream_years["2021"][200:], "2017", compress=False)
    drop(source, "2018", stream_years["2018"][:1], "2018")

    def arguments(store: Path, endpoints: list[str]) -> list[str]:
        return [
            "--source", str(source), "--store", str(store), "--name", "crash", "--out", str(tmp_path / f"{store.name}-out"),
            "--slice", "year", "--once", "--base-model", str(tiny_model), "--metrics-port", "0",
            "--metrics-host", "127.0.0.1", *TRAINING, *endpoints,
        ]  # fmt: skip

    reference_store = tmp_path / "reference"
    with services(reference_store, tiny_model) as endpoints:
        assert Controller(arguments(reference_store, endpoints), tmp_path / "reference.log").wait() == 0
        reference = _final(reference_store, endpoints)
    assert [s["slice"] for s in reference["report"]] == ["2016", "2017"]
    assert reference["report"][1]["fired"] and reference["served"] == [("driftlm", 2), ("driftlm-student", 2)]

    # (the log entry to wait for, then: "run" waits until the trainer is mid-run, a delay in seconds,
    # and how to stop: kill -9, or SIGTERM with no grace)
    points: list[tuple[Callable[[dict[str, Any]], bool], float | str, str]] = [
        (event("file consumed", file="2017a.jsonl.gz"), 0.0, "kill"),  # mid-intake
        (event("step started", slice="2016", step="train"), "run", "kill"),  # mid-training
        (event("step started", slice="2016", step="promote"), 0.5, "kill"),  # mid-export
        (event("step started", slice="2017", step="train"), "run", "kill"),  # mid-training on a new vocabulary
        (event("step started", slice="2017", step="distil"), "run", "term"),  # mid-distillation, no grace
        (event("step started", slice="2017", step="promote"), 2.0, "kill"),  # mid-promotion (exported, comparing)
    ]
    killed_store = tmp_path / "killed"
    with services(killed_store, tiny_model) as endpoints:
        log = tmp_path / "killed.log"
        for matches, when, how in points:
            controller = Controller([*arguments(killed_store, endpoints), "--stop-grace-s", "0"], log)
            controller.wait_for(matches)
            if when == "run":
                _await_running_run(endpoints)
            else:
                time.sleep(float(when))
            if how == "kill":
                controller.kill()
                continue
            assert controller.stop() == 0  # SIGTERM: the step is left at once, and the controller exits 0
            left = controller.seen + _drained(controller)
            assert any(e.get("msg") == "stopping mid-step; it repeats on restart" for e in left)
        assert Controller(arguments(killed_store, endpoints), log).wait() == 0
        killed = _final(killed_store, endpoints)
    for part in reference:
        assert killed[part] == reference[part], part
