"""`python -m benchmarks follow`: `driftlm follow` on the embedded stream, as a user runs it.

Two runs of the controller (the services started by it, MiniLM, `make run`'s budget, 2 threads):

    years   the stream dropped into the source a year at a time (each drop waits for the slice it
            closes): per slice, how long from the file landing to the slice closing (at most a
            poll interval), from closing to served, and each step's time
    soak    the whole stream there from the start, cut into 50 slices of 48 texts: the
            controller's resident memory after every slice (it must stay flat)

Writes results/follow.json; `make figures` draws docs/images/follow.png and the README table from it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from driftlm.loop.drifting_stream import write_stream
from driftlm.provenance import provenance

RESULTS = Path(__file__).parent / "results" / "follow.json"
POLL_S = 2.0
COMMON = ("--threads", "2", "--poll-interval-s", str(POLL_S), "--metrics-port", "0", "--metrics-host", "127.0.0.1")


def _controller(arguments: list[str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "driftlm", "follow", *arguments],
        stdout=subprocess.DEVNULL,
        stderr=log.open("ab"),
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _entries(log: Path) -> list[dict[str, Any]]:
    found = []
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            found.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return found


def _wait(log: Path, process: subprocess.Popen[bytes], message: str, **fields: Any) -> dict[str, Any]:
    while True:
        for entry in _entries(log):
            if entry.get("msg") == message and all(entry.get(k) == v for k, v in fields.items()):
                return entry
        if process.poll() is not None:
            raise SystemExit(f"the controller exited ({process.returncode}); see {log}")
        time.sleep(0.5)


def _seconds(entry: dict[str, Any]) -> float:
    return datetime.fromisoformat(entry["ts"].replace("Z", "+00:00")).timestamp()


def _drop(source: Path, name: str, rows: list[dict[str, Any]]) -> float:
    temporary = source / f".{name}.part"
    temporary.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    temporary.rename(source / name)
    return time.time()


def _years(work: Path, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    source, log = work / "years-source", work / "years.log"
    source.mkdir()
    years = sorted({r["time"][:4] for r in records})
    arguments = ["--source", str(source), "--store", str(work / "store"), "--name", "years", "--slice", "year"]
    process = _controller([*arguments, "--out", str(work / "years-out"), *COMMON], log)
    rows: list[dict[str, Any]] = []
    try:
        _wait(log, process, "service started", service="compare")  # the controller's services are up
        landed: dict[str, float] = {}
        closing = [*years[1:], str(int(years[-1]) + 1)]
        _drop(source, f"{years[0]}.jsonl", [r for r in records if r["time"].startswith(years[0])])
        for previous, year in zip(years, closing, strict=True):
            print(f"  dropping {year} (closes {previous})", flush=True)
            texts = [r for r in records if r["time"].startswith(year)] or [
                {"time": f"{year}-01-01", "text": "a new year"}
            ]
            landed[previous] = _drop(source, f"{year}.jsonl", texts)
            closed = _wait(log, process, "slice closed", slice=previous)
            done = _wait(log, process, "slice done", slice=previous)
            rows.append(
                {
                    "slice": previous,
                    "landed_to_closed_s": _seconds(closed) - landed[previous],
                    "closed_to_done_s": _seconds(done) - _seconds(closed),
                    "fired": done["fired"],
                    "served": done["served"],
                }
            )
    finally:
        process.terminate()
        process.wait(300)
    report = json.loads((work / "years-out" / "report.json").read_text(encoding="utf-8"))
    for row, record in zip(rows, report["slices"], strict=True):
        row["step_seconds"] = record["step_seconds"]
        row["promoted"] = bool(record["serving"] and record["serving"]["promoted"])
    return rows


def _soak(work: Path, records: list[dict[str, Any]], texts_per_slice: int) -> list[dict[str, Any]]:
    source, log = work / "soak-source", work / "soak.log"
    source.mkdir()
    _drop(source, "stream.jsonl", records)
    arguments = ["--source", str(source), "--store", str(work / "soak-store"), "--name", "soak"]
    arguments += ["--slice", str(texts_per_slice), "--once", "--out", str(work / "soak-out")]
    process = _controller([*arguments, *COMMON], log)
    if process.wait() != 0:
        raise SystemExit(f"the soak run failed; see {log}")
    report = json.loads((work / "soak-out" / "report.json").read_text(encoding="utf-8"))
    return [
        {
            "slice": r["slice"],
            "fired": r["fired"],
            "controller_rss_mib": r["controller_rss_bytes"] / 2**20,
            "seconds": sum(r["step_seconds"].values()),
        }
        for r in report["slices"]
    ]


def run() -> None:
    with tempfile.TemporaryDirectory(prefix="driftlm-follow-bench-", dir="/var/tmp") as scratch:
        work = Path(scratch)
        records = [json.loads(line) for line in write_stream(work / "stream.jsonl").read_text().splitlines()]
        started = time.perf_counter()
        years = _years(work, records)
        soak = _soak(work, records, texts_per_slice=len(records) // 50)
        result = {
            "command": "python -m benchmarks follow",
            "provenance": provenance(),
            "poll_interval_s": POLL_S,
            "years": years,
            "soak": soak,
            "wall_s": time.perf_counter() - started,
        }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    for row in years:
        print(
            f"  {row['slice']}: landed->closed {row['landed_to_closed_s']:.1f} s, closed->done "
            f"{row['closed_to_done_s']:.0f} s, fired {row['fired']}, promoted {row['promoted']}"
        )
    memory = [r["controller_rss_mib"] for r in soak]
    print(f"  soak: {len(soak)} slices, controller RSS {memory[0]:.0f} -> {memory[-1]:.0f} MiB (max {max(memory):.0f})")
