"""What produced a report: driftlm's version and commit, the packages, the machine, when.

A figure in a report means little without it: the same options give other numbers under another
PyTorch, tokenizer or device.
"""

from __future__ import annotations

import platform
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from driftlm import __version__
from driftlm.services.runtime.resources import usable_cpus

PACKAGES = ("torch", "transformers", "tokenizers", "numpy", "numba", "grpcio", "onnxruntime", "protobuf")


def _commit() -> str:
    """The git commit driftlm runs from, with "-dirty" when it has changes; "" outside a checkout."""
    source = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return f"{commit}-dirty" if changed else commit


def _accelerator() -> str:
    """The GPU the local services train on, or "cpu" (services at --endpoints may have another)."""
    try:
        import torch
    except ImportError:
        return ""
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return ""


def provenance() -> dict[str, Any]:
    """driftlm's version and commit, the versions of the packages that shape the figures, the
    Python and machine, and the time (UTC)."""
    return {
        "driftlm": __version__,
        "commit": _commit(),
        "python": platform.python_version(),
        "packages": {name: _version(name) for name in PACKAGES},
        "machine": {
            "system": platform.system(),
            "architecture": platform.machine(),
            "cpus": usable_cpus(),
            "accelerator": _accelerator(),
        },
        "created": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
    }
