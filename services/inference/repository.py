"""Reading a model repository in Triton's layout (core/model_repository.py writes it): which
models and versions there are, and what each model's config.pbtxt asks of the server.

Only the fields the server acts on are read (platform, max_batch_size, version_policy,
dynamic_batching); the rest of a Triton config is allowed and ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from driftlm.services.core.model_repository import is_model_name

# What a config.pbtxt may weigh: the file is tiny; anything larger is not ours.
_MAX_CONFIG_BYTES = 1 << 20
_PLATFORM = re.compile(r'\bplatform\s*:\s*"([^"]*)"')
_BACKEND = re.compile(r'\bbackend\s*:\s*"([^"]*)"')
_MAX_BATCH = re.compile(r"\bmax_batch_size\s*:\s*(\d+)")
_QUEUE_DELAY = re.compile(r"\bmax_queue_delay_microseconds\s*:\s*(\d+)")
_DYNAMIC = re.compile(r"\bdynamic_batching\s*[:{]")
_LATEST = re.compile(r"\blatest\s*:?\s*\{\s*num_versions\s*:\s*(\d+)\s*\}")
_ALL = re.compile(r"\bversion_policy\s*:?\s*\{\s*all\s*:?\s*\{\s*\}\s*\}")
_SPECIFIC = re.compile(r"\bspecific\s*:?\s*\{\s*versions\s*:\s*\[?([\d\s,]*)\]?\s*\}")


class ModelConfigError(ValueError):
    """A config.pbtxt this server cannot serve (the message says what to change)."""


@dataclass(frozen=True)
class ModelSettings:
    """What a model's config.pbtxt asks of the server."""

    max_batch_size: int
    dynamic_batching: bool
    # Longest a request waits for others to batch with, in seconds.
    max_queue_delay_s: float
    # Triton's version policy: the newest `latest` versions, or the `specific` ones, or all (both None).
    latest: int | None = 1
    specific: tuple[int, ...] | None = None

    def wanted(self, available: list[int]) -> list[int]:
        """The versions the policy serves among `available` (ascending)."""
        if self.specific is not None:
            return [v for v in available if v in self.specific]
        if self.latest is not None:
            return available[-self.latest :] if self.latest > 0 else []
        return list(available)


def parse_settings(text: str) -> ModelSettings:
    """The settings of a config.pbtxt's text.

    Raises:
        ModelConfigError: another platform than ONNX Runtime, or no max_batch_size.
    """
    platform = _PLATFORM.search(text)
    backend = _BACKEND.search(text)
    if not (platform and platform.group(1) == "onnxruntime_onnx") and not (
        backend and backend.group(1) == "onnxruntime"
    ):
        raise ModelConfigError('config.pbtxt must say platform: "onnxruntime_onnx" (this server runs ONNX models)')
    batch = _MAX_BATCH.search(text)
    if batch is None or int(batch.group(1)) < 1:
        raise ModelConfigError("config.pbtxt must give max_batch_size >= 1 (the inputs are batched)")
    delay = _QUEUE_DELAY.search(text)
    latest, specific = _LATEST.search(text), _SPECIFIC.search(text)
    return ModelSettings(
        max_batch_size=int(batch.group(1)),
        dynamic_batching=_DYNAMIC.search(text) is not None,
        max_queue_delay_s=int(delay.group(1)) / 1e6 if delay else 0.0,
        latest=None if (_ALL.search(text) or specific) else (int(latest.group(1)) if latest else 1),
        specific=tuple(int(v) for v in re.findall(r"\d+", specific.group(1))) if specific else None,
    )


@dataclass(frozen=True)
class ModelRepository:
    """A directory of models: `<root>/<model>/config.pbtxt` and `<root>/<model>/<version>/model.onnx`."""

    root: Path

    def model_names(self) -> list[str]:
        """Models with a config.pbtxt, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(
            entry.name
            for entry in self.root.iterdir()
            if is_model_name(entry.name) and (entry / "config.pbtxt").is_file()
        )

    def has_model(self, name: str) -> bool:
        """Whether `name` is a model of the repository (a name that could not be one is not)."""
        return is_model_name(name) and (self.root / name / "config.pbtxt").is_file()

    def versions(self, name: str) -> list[int]:
        """The model's version directories, ascending."""
        directory = self.root / name
        if not is_model_name(name) or not directory.is_dir():
            return []
        return sorted(
            int(entry.name)
            for entry in directory.iterdir()
            if entry.name.isdecimal() and len(entry.name) < 19 and int(entry.name) > 0 and entry.is_dir()
        )

    def settings(self, name: str) -> ModelSettings:
        """The model's config.pbtxt, read.

        Raises:
            ModelConfigError: it is missing, too large, not UTF-8, or asks for what this server cannot do.
        """
        config = self.root / name / "config.pbtxt"
        try:
            if config.stat().st_size > _MAX_CONFIG_BYTES:
                raise ModelConfigError(f"config.pbtxt is over {_MAX_CONFIG_BYTES >> 20} MiB; it is not a model config")
            return parse_settings(config.read_bytes().decode("utf-8"))
        except FileNotFoundError:
            raise ModelConfigError(f"model {name} has no config.pbtxt") from None
        except UnicodeDecodeError:
            raise ModelConfigError("config.pbtxt is not UTF-8 text") from None

    def version_directory(self, name: str, version: int) -> Path:
        """Where a version's files are (the caller checks that it exists)."""
        return self.root / name / str(version)
