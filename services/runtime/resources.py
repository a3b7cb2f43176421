"""What this process may really use, inside a container: memory and CPUs.

A container sees the host's /proc/meminfo and os.cpu_count(), not its own limits. Sizing a batch
by the host's free memory gets the process OOM-killed at the cgroup limit, and starting one
PyTorch thread per host core under a 2-CPU quota makes every step slower (threads wait for
their quota). So both read the cgroup first, v2 (`memory.max`, `cpu.max`) or v1
(`memory.limit_in_bytes`, `cpu.cfs_quota_us`), of this process's own cgroup path.

Every function takes the filesystem root, so tests can hand them a fake tree.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

# Kernels report "no limit" in v1 as a huge page-rounded number; anything above this is unlimited.
_UNLIMITED = 1 << 60


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None


def _cgroup_paths(root: Path) -> dict[str, str]:
    """Controller ("" for the v2 unified hierarchy) -> this process's path in it."""
    paths: dict[str, str] = {}
    for line in (_read(root / "proc/self/cgroup") or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            for controller in parts[1].split(",") if parts[1] else [""]:
                paths[controller] = parts[2]
    return paths


def _candidates(root: Path, controller: str, own: str | None) -> list[Path]:
    """Where a controller's files may be: the process's own cgroup, then the mount's root (a
    container usually sees its own cgroup mounted at /sys/fs/cgroup)."""
    base = root / "sys/fs/cgroup" / controller if controller else root / "sys/fs/cgroup"
    found = [base / own.lstrip("/")] if own and own != "/" else []
    return [*found, base]


def _integer(text: str | None) -> int | None:
    if text is None or not text.lstrip("-").isdigit():
        return None
    return int(text)


def cgroup_memory_available(root: Path = Path("/")) -> int | None:
    """Bytes the cgroup still allows (limit - usage), or None when no limit applies."""
    paths = _cgroup_paths(root)
    for directory in _candidates(root, "", paths.get("")):
        limit = _read(directory / "memory.max")
        if limit is not None:
            if limit == "max":
                return None
            used = _integer(_read(directory / "memory.current")) or 0
            bound = _integer(limit)
            return None if bound is None else max(bound - used, 0)
    for directory in _candidates(root, "memory", paths.get("memory")):
        bound = _integer(_read(directory / "memory.limit_in_bytes"))
        if bound is not None:
            if bound >= _UNLIMITED:
                return None
            used = _integer(_read(directory / "memory.usage_in_bytes")) or 0
            return max(bound - used, 0)
    return None


def host_memory_available(root: Path = Path("/")) -> int | None:
    """MemAvailable of /proc/meminfo, in bytes."""
    for line in (_read(root / "proc/meminfo") or "").splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


def memory_available(root: Path = Path("/")) -> int | None:
    """The smaller of what the cgroup allows and what the host has free; None when neither is known."""
    known = [b for b in (cgroup_memory_available(root), host_memory_available(root)) if b is not None]
    return min(known) if known else None


def cgroup_cpu_quota(root: Path = Path("/")) -> float | None:
    """CPUs the cgroup's CFS quota allows (quota / period), or None when unlimited."""
    paths = _cgroup_paths(root)
    for directory in _candidates(root, "", paths.get("")):
        text = _read(directory / "cpu.max")
        if text is not None:
            quota, _, period = text.partition(" ")
            if quota == "max" or not quota.isdigit() or not period.isdigit() or int(period) == 0:
                return None
            return int(quota) / int(period)
    for controller in ("cpu,cpuacct", "cpu", "cpuacct,cpu"):
        for directory in _candidates(root, controller, paths.get("cpu")):
            quota_us = _integer(_read(directory / "cpu.cfs_quota_us"))
            period_us = _integer(_read(directory / "cpu.cfs_period_us"))
            if quota_us is not None and period_us:
                return None if quota_us < 0 else quota_us / period_us
    return None


def usable_cpus(root: Path = Path("/")) -> int:
    """Threads worth running: the CPUs this process may be scheduled on, capped by the quota, >= 1."""
    try:
        allowed = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        allowed = os.cpu_count() or 1
    quota = cgroup_cpu_quota(root)
    if quota is not None:
        allowed = min(allowed, math.ceil(quota))
    return max(allowed, 1)
