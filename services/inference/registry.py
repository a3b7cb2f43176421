"""Which model versions are served, and swapping them without failing a request.

Each request leases a version for as long as it runs. Loading a new version happens beside the
serving ones; making it the default is one assignment under the lock, so every request goes either
to the old version or to the new one. Unloading first stops routing to a version, then waits for
its leases to end (drain), then closes it. A version that fails to load is recorded with its reason
and never becomes the default: what was serving keeps serving.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from driftlm.services.core.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError, UnavailableError

from .batching import DynamicBatcher, Row, RowOutputs, run_rows
from .metrics import VersionMetrics
from .model import LoadedModel, ModelLoadError, RuntimeOptions
from .repository import ModelConfigError, ModelRepository, ModelSettings

_LOG = logging.getLogger("driftlm.inference")


class State(enum.Enum):
    """Where a version is in its life (the proto's ModelState)."""

    LOADING = "LOADING"
    READY = "READY"
    UNLOADING = "UNLOADING"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass(frozen=True)
class ServingOptions:
    """How the server runs its models."""

    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)
    # Merge concurrent requests (the model's config.pbtxt gives max_batch_size and the delay).
    dynamic_batching: bool = True
    # Longest an unload waits for a version's requests in flight, in seconds.
    drain_timeout_s: float = 60.0


@dataclass
class ServedVersion:
    """A version of a model and what serves it."""

    name: str
    version: int
    state: State = State.LOADING
    reason: str = ""
    model: LoadedModel | None = None
    settings: ModelSettings | None = None
    batcher: DynamicBatcher | None = None
    # Loaded by name and number (LoadModel): a repository reload leaves it alone.
    pinned: bool = False
    leases: int = 0
    idle: threading.Condition = field(default_factory=threading.Condition)

    @property
    def max_batch_size(self) -> int:
        """Rows one run of the graph takes (the model's config.pbtxt)."""
        return self.settings.max_batch_size if self.settings else 1

    def run(self, rows: list[Row], outputs: tuple[str, ...]) -> list[RowOutputs]:
        """Run rows through this version, batched with other requests when batching is on."""
        assert self.model is not None and self.settings is not None  # leased versions are READY
        if self.batcher is not None:
            return self.batcher.run(rows, outputs)
        metrics = VersionMetrics(self.name, self.version)
        started = time.monotonic()
        answer = run_rows(
            self.model.run,
            rows,
            outputs,
            max_rows=self.settings.max_batch_size,
            vocab_size=self.model.vocab_size,
            metrics=metrics,
        )
        metrics.answered(time.monotonic() - started)
        return answer


@dataclass(frozen=True)
class VersionInfo:
    """A snapshot of a version for listings."""

    name: str
    version: int
    state: State
    reason: str
    is_default: bool
    vocab_size: int
    hidden_size: int
    max_length: int


class ModelRegistry:
    """The served versions of the models of one repository."""

    def __init__(self, repository: ModelRepository, options: ServingOptions) -> None:
        self.repository = repository
        self._options = options
        self._lock = threading.Lock()
        self._versions: dict[tuple[str, int], ServedVersion] = {}
        self._defaults: dict[str, int] = {}
        # Loads one at a time: they are rare and each may take all cores.
        self._loading = threading.Lock()

    # Serving ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def lease(self, name: str, version: int = 0) -> Iterator[ServedVersion]:
        """The version (0: the default) of `name`, held READY until the block ends.

        Raises:
            NotFoundError: no such model or version is loaded.
            FailedPreconditionError: the version failed to load (the reason says why).
            UnavailableError: it is still loading or is being unloaded.
        """
        with self._lock:
            served = self._find(name, version)
            with served.idle:  # lock order: registry, then version
                served.leases += 1
        try:
            yield served
        finally:
            with served.idle:
                served.leases -= 1
                served.idle.notify_all()

    def _find(self, name: str, version: int) -> ServedVersion:
        if version == 0:
            if name not in self._defaults:
                loaded = sorted({n for n, _ in self._versions})
                raise NotFoundError(
                    f"model {name!r} is not loaded (loaded: {', '.join(loaded) or 'none'}); "
                    "load it with LoadModel or RepositoryModelLoad"
                )
            version = self._defaults[name]
        served = self._versions.get((name, version))
        if served is None:
            raise NotFoundError(f"version {version} of model {name!r} is not loaded")
        if served.state is State.UNAVAILABLE:
            raise FailedPreconditionError(
                f"version {version} of model {name!r} failed to load: {served.reason}", reason="MODEL_LOAD_FAILED"
            )
        if served.state is not State.READY:
            raise UnavailableError(f"version {version} of model {name!r} is {served.state.value.lower()}; retry")
        return served

    def is_ready(self, name: str, version: int = 0) -> bool:
        """Whether a request for the version (0: the default) would be served now."""
        with self._lock:
            try:
                self._find(name, version)
            except (NotFoundError, FailedPreconditionError, UnavailableError):
                return False
            return True

    def all_ready(self) -> bool:
        """Whether every model asked for has a ready default version."""
        with self._lock:
            names = {name for name, _ in self._versions}
            return all(
                (name, self._defaults.get(name, 0)) in self._versions
                and self._versions[(name, self._defaults[name])].state is State.READY
                for name in names
            )

    def describe(self, name: str = "") -> list[VersionInfo]:
        """Every known version (of `name` when given), by name then version."""
        with self._lock:
            return [
                VersionInfo(
                    served.name,
                    served.version,
                    served.state,
                    served.reason,
                    self._defaults.get(served.name) == served.version,
                    served.model.vocab_size if served.model else 0,
                    served.model.hidden_size if served.model else 0,
                    served.model.max_length if served.model else 0,
                )
                for key, served in sorted(self._versions.items())
                if not name or key[0] == name
            ]

    # Loading and unloading -------------------------------------------------------------------

    def load(
        self, name: str, version: int = 0, *, make_default: bool = False, unload_previous: bool = False
    ) -> VersionInfo:
        """Load a version (0: the newest in the repository) beside the serving ones, pinned.

        Raises:
            InvalidArgumentError: the name cannot be a model's.
            NotFoundError: the repository has no such model or version.
            FailedPreconditionError: the version does not load (reason MODEL_LOAD_FAILED).
        """
        available = self._available(name)
        version = version or available[-1]
        if version not in available:
            raise NotFoundError(f"model {name!r} has no version {version} (versions: {', '.join(map(str, available))})")
        with self._loading:
            served = self._load_version(name, version, pinned=True)
            if served.state is not State.READY:
                raise FailedPreconditionError(
                    f"version {version} of model {name!r} failed to load: {served.reason}", reason="MODEL_LOAD_FAILED"
                )
            previous = self._set_default(name, version, force=make_default)
        if unload_previous and make_default and previous not in (None, version):
            self._drain(name, previous)
        return self._info(name, version)

    def reload(self, name: str) -> list[VersionInfo]:
        """Serve what the model's config.pbtxt asks (Triton's RepositoryModelLoad): load the policy's
        versions, make the newest ready one the default, drain and unload the versions the policy
        no longer serves (pinned ones stay). The default changes only to a READY version.

        Raises:
            InvalidArgumentError, NotFoundError: as for load.
            FailedPreconditionError: none of the policy's versions is ready after the reload.
        """
        available = self._available(name)
        try:
            settings = self.repository.settings(name)
        except ModelConfigError as error:
            raise FailedPreconditionError(f"model {name!r}: {error}", reason="MODEL_CONFIG_INVALID") from None
        wanted = settings.wanted(available)
        with self._loading:
            loaded = [self._load_version(name, version, pinned=False) for version in wanted]
            ready = [served.version for served in loaded if served.state is State.READY]
            if ready:
                self._set_default(name, max(ready), force=True)
        retired = [
            served.version
            for served in self.describe_raw(name)
            if served.version not in wanted and not served.pinned and served.version != self._defaults.get(name)
        ]
        for version in retired:
            self._drain(name, version)
        if not ready:
            reasons = "; ".join(f"version {s.version}: {s.reason}" for s in loaded) or "it has no version directory"
            raise FailedPreconditionError(
                f"model {name!r} has no loadable version ({reasons})", reason="MODEL_LOAD_FAILED"
            )
        return self.describe(name)

    def describe_raw(self, name: str) -> list[ServedVersion]:
        """The model's versions as held (for the registry's own decisions)."""
        with self._lock:
            return [served for (n, _), served in sorted(self._versions.items()) if n == name]

    def unload(self, name: str, version: int = 0) -> list[VersionInfo]:
        """Drain and unload a version, or every version of the model (0).

        Raises:
            NotFoundError: nothing of that model or version is loaded.
        """
        before = [info for info in self.describe(name) if version in (0, info.version)]
        if not before:
            raise NotFoundError(f"model {name!r} has no loaded version{f' {version}' if version else ''}")
        for info in before:
            self._drain(name, info.version)
        return before

    def close(self, timeout_s: float | None = None) -> None:
        """Unload everything (the server is stopping)."""
        for key in list(self._versions):
            self._drain(*key, timeout_s=timeout_s)

    def _available(self, name: str) -> list[int]:
        if not isinstance(name, str) or not name:
            raise InvalidArgumentError("name", "is empty; give a model's name")
        if not self.repository.has_model(name):
            known = ", ".join(self.repository.model_names()[:20]) or "none"
            raise NotFoundError(f"the repository has no model {name[:100]!r} (models: {known})")
        available = self.repository.versions(name)
        if not available:
            raise NotFoundError(f"model {name!r} has no version directory yet; export one (trainer ExportOnnx)")
        return available

    def _load_version(self, name: str, version: int, *, pinned: bool) -> ServedVersion:
        """The version READY (loaded now unless it was), or UNAVAILABLE with the reason (callers hold _loading)."""
        with self._lock:
            served = self._versions.get((name, version))
            if served is not None and served.state is State.READY:
                served.pinned = served.pinned or pinned
                return served
            served = ServedVersion(name, version, pinned=pinned)
            self._versions[(name, version)] = served
        try:
            settings = self.repository.settings(name)
            model = LoadedModel(self.repository.version_directory(name, version), self._options.runtime)
        except (ModelLoadError, ModelConfigError) as error:
            _LOG.warning(
                "model version failed to load", extra={"model": name, "version": version, "reason": str(error)}
            )
            with self._lock:
                served.state, served.reason = State.UNAVAILABLE, str(error)
            return served
        batcher = (
            DynamicBatcher(
                model.run,
                max_batch_size=settings.max_batch_size,
                max_queue_delay_s=settings.max_queue_delay_s,
                vocab_size=model.vocab_size,
                metrics=VersionMetrics(name, version),
            )
            if self._options.dynamic_batching and settings.dynamic_batching
            else None
        )
        with self._lock:
            served.model, served.settings, served.batcher, served.state = model, settings, batcher, State.READY
        _LOG.info("model version loaded", extra={"model": name, "version": version, "providers": model.providers})
        return served

    def _set_default(self, name: str, version: int, *, force: bool) -> int | None:
        """Point `name`'s default at `version` when forced or when the default is not serving;
        returns the previous default."""
        with self._lock:
            previous = self._defaults.get(name)
            current = self._versions.get((name, previous)) if previous is not None else None
            if force or current is None or current.state is not State.READY:
                self._defaults[name] = version
            return previous

    def _info(self, name: str, version: int) -> VersionInfo:
        return next(info for info in self.describe(name) if info.version == version)

    def _drain(self, name: str, version: int, *, timeout_s: float | None = None) -> None:
        """Stop routing to the version, wait for its leases, close it and forget it."""
        with self._lock:
            served = self._versions.get((name, version))
            if served is None:
                return
            served.state = State.UNLOADING
            if self._defaults.get(name) == version:
                others = [v for (n, v), s in self._versions.items() if n == name and s.state is State.READY]
                if others:
                    self._defaults[name] = max(others)
                else:
                    del self._defaults[name]
        timeout_s = self._options.drain_timeout_s if timeout_s is None else timeout_s
        with served.idle:
            served.idle.wait_for(lambda: served.leases == 0, timeout=timeout_s)
        if served.batcher is not None:
            served.batcher.close(timeout_s)
        with self._lock:
            if self._versions.get((name, version)) is served:
                del self._versions[(name, version)]
        _LOG.info("model version unloaded", extra={"model": name, "version": version})
