"""Container-aware sizing on fake cgroup trees (v1 and v2) laid out as the kernel shows them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from driftlm.services.runtime.resources import (
    cgroup_cpu_quota,
    cgroup_memory_available,
    memory_available,
    usable_cpus,
)

GIB = 1 << 30


def _tree(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    return root


MEMINFO = "MemTotal:       65536000 kB\nMemAvailable:   33554432 kB"  # 32 GiB free on the host


@pytest.mark.parametrize(
    ("files", "cgroup_free", "free"),
    [
        # (files under the root, what the cgroup leaves, what memory_available says)
        (  # v2, a container with its cgroup mounted at /sys/fs/cgroup: 4 GiB limit, 1 GiB used
            {
                "proc/self/cgroup": "0::/",
                "sys/fs/cgroup/memory.max": str(4 * GIB),
                "sys/fs/cgroup/memory.current": str(GIB),
                "proc/meminfo": MEMINFO,
            },
            3 * GIB,
            3 * GIB,
        ),
        (  # v2 seen from the host: the process's own cgroup path
            {
                "proc/self/cgroup": "0::/system.slice/trainer.service",
                "sys/fs/cgroup/system.slice/trainer.service/memory.max": str(2 * GIB),
                "sys/fs/cgroup/system.slice/trainer.service/memory.current": str(GIB // 2),
                "sys/fs/cgroup/memory.max": "max",
                "proc/meminfo": MEMINFO,
            },
            GIB + GIB // 2,
            GIB + GIB // 2,
        ),
        (  # v2 without a limit: the host's MemAvailable
            {"proc/self/cgroup": "0::/", "sys/fs/cgroup/memory.max": "max", "proc/meminfo": MEMINFO},
            None,
            32 * GIB,
        ),
        (  # v1: 8 GiB limit, 6 GiB used
            {
                "proc/self/cgroup": "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc",
                "sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes": str(8 * GIB),
                "sys/fs/cgroup/memory/docker/abc/memory.usage_in_bytes": str(6 * GIB),
                "proc/meminfo": MEMINFO,
            },
            2 * GIB,
            2 * GIB,
        ),
        (  # v1 unlimited: the kernel's page-rounded maximum
            {
                "proc/self/cgroup": "12:memory:/",
                "sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712",
                "proc/meminfo": MEMINFO,
            },
            None,
            32 * GIB,
        ),
        (  # a limit above what the host has free: the host's figure wins
            {
                "proc/self/cgroup": "0::/",
                "sys/fs/cgroup/memory.max": str(64 * GIB),
                "sys/fs/cgroup/memory.current": "0",
                "proc/meminfo": MEMINFO,
            },
            64 * GIB,
            32 * GIB,
        ),
        ({}, None, None),  # nothing readable (not Linux): unknown
    ],
)
def test_memory_available_reads_the_cgroup_before_the_host(
    tmp_path: Path, files: dict[str, str], cgroup_free: int | None, free: int | None
) -> None:
    root = _tree(tmp_path, files)
    assert cgroup_memory_available(root) == cgroup_free
    assert memory_available(root) == free


@pytest.mark.parametrize(
    ("files", "quota"),
    [
        ({"proc/self/cgroup": "0::/", "sys/fs/cgroup/cpu.max": "150000 100000"}, 1.5),
        ({"proc/self/cgroup": "0::/", "sys/fs/cgroup/cpu.max": "max 100000"}, None),
        (
            {
                "proc/self/cgroup": "4:cpu,cpuacct:/docker/abc",
                "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "100000",
                "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000",
            },
            1.0,
        ),
        (
            {
                "proc/self/cgroup": "4:cpu,cpuacct:/",
                "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "-1",
                "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000",
            },
            None,
        ),
        ({}, None),
    ],
)
def test_cpu_quota_from_cgroup_v1_and_v2(tmp_path: Path, files: dict[str, str], quota: float | None) -> None:
    assert cgroup_cpu_quota(_tree(tmp_path, files)) == quota


def test_threads_follow_the_quota_and_the_affinity(tmp_path: Path) -> None:
    affinity = len(os.sched_getaffinity(0))
    half_cpu = _tree(tmp_path / "half", {"proc/self/cgroup": "0::/", "sys/fs/cgroup/cpu.max": "50000 100000"})
    assert usable_cpus(half_cpu) == 1  # a fraction of a CPU still runs one thread
    many = _tree(tmp_path / "many", {"proc/self/cgroup": "0::/", "sys/fs/cgroup/cpu.max": "6400000 100000"})
    assert usable_cpus(many) == affinity  # 64 CPUs of quota, but only `affinity` to run on
    assert usable_cpus(tmp_path / "none") == affinity
