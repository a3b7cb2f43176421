"""Timing, device description and result files shared by every benchmark suite.

A case times our code and the baseline a user would otherwise reach for, on the same data in the
same run, and records ratio = baseline time / our time (above 1: we are faster).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numba
import numpy as np
from rich.console import Console
from rich.table import Table

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Case:
    """One measured comparison."""

    name: str
    value: float | None  # None: not reached
    unit: str
    baseline: str
    baseline_value: float
    ratio: float
    device: dict[str, Any]


def median_ms(function: Callable[[], object], *, repeats: int = 7, warmup: int = 1, idle_s: float = 0.0) -> float:
    """Median wall time of `function` in milliseconds, after `warmup` untimed calls (JIT, caches).

    `idle_s` sleeps before each timed call, as a service idles between requests (thread pools go to
    sleep, and waking them is part of what a caller waits for)."""
    for _ in range(warmup):
        function()
    samples = []
    for _ in range(repeats):
        time.sleep(idle_s)
        start = time.perf_counter()
        function()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def describe_device() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "numba_threads": numba.get_num_threads(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
    }


def compare(name: str, ours_ms: float, baseline: str, baseline_ms: float, device: dict[str, Any]) -> Case:
    """A time case: ratio = baseline_ms / ours_ms."""
    return Case(name, round(ours_ms, 3), "ms", baseline, round(baseline_ms, 3), round(baseline_ms / ours_ms, 3), device)


def write_results(suite: str, cases: list[Case]) -> Path:
    """Write results/<suite>.json (a list of cases) and print them as a table."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{suite}.json"
    path.write_text(json.dumps([asdict(case) for case in cases], indent=2) + "\n")
    table = Table(title=f"{suite} ({cases[0].device['cpu']}, {cases[0].device['cores']} cores)" if cases else suite)
    # a value of None means the case's goal was not reached
    for column in ("case", "driftlm", "baseline", "baseline time", "ratio"):
        table.add_column(column, justify="left" if column in ("case", "baseline") else "right")
    for case in cases:
        value = "not reached" if case.value is None else f"{case.value:,.2f} {case.unit}"
        table.add_row(case.name, value, case.baseline, f"{case.baseline_value:,.2f} {case.unit}", f"{case.ratio:.2f}x")
    Console(width=160).print(table)
    return path
