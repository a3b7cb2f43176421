"""One definition per setting: a config dataclass's fields carry how each is set and documented.

A field declared with `setting(default, Flag(...))` becomes a command-line flag, falls back to a
`DRIFTLM_*` environment variable, and is a row of the README's table; `add_flags`, `config_from`
and `flag_table` read the same declaration, so the three cannot drift apart (a test compares the
README with `flag_table`).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

ENV_PREFIX = "DRIFTLM_"


@dataclass(frozen=True)
class Flag:
    """How one field is set from the command line and the environment, and what the README says.

    kind: "value" (one value), "list" (a repeatable flag; the environment variable holds several,
    split by `separator`, os.pathsep when empty), "switch" (a flag without a value that sets the
    field to True; its environment variable is "1"), "inverse" (a switch that sets it to False).
    """

    help: str
    # The README's "default" column.
    default_text: str
    kind: Literal["value", "list", "switch", "inverse"] = "value"
    # How a value given as text becomes the field's (after `scale`).
    parse: Callable[[str], Any] = str
    choices: tuple[str, ...] = ()
    # The flag's name when it is not the field's with dashes (max-message-mb for max_message_bytes).
    name: str = ""
    # The environment variable after DRIFTLM_, when it is not the flag's name upper-cased.
    env: str = ""
    # Other environment variables read when DRIFTLM_'s is unset (OTEL_EXPORTER_OTLP_ENDPOINT).
    fallback_env: tuple[str, ...] = ()
    separator: str = ""
    # The field is the given value times this (MiB flags for byte fields).
    scale: int = 1
    # Unset means "the caller decides" (a service's own port): the parsed value is None.
    optional: bool = False

    def flag_name(self, field_name: str) -> str:
        return "--" + (self.name or field_name.replace("_", "-"))

    def env_name(self, field_name: str) -> str:
        return ENV_PREFIX + (self.env or (self.name or field_name).replace("-", "_").upper())


def setting(default: Any, flag: Flag) -> Any:
    """A dataclass field with its flag (immutable defaults only)."""
    return dataclasses.field(default=default, metadata={"flag": flag})


def flags_of(config_type: type) -> list[tuple[dataclasses.Field[Any], Flag]]:
    """The fields of `config_type` that are settings, in declaration order."""
    return [(f, f.metadata["flag"]) for f in dataclasses.fields(config_type) if "flag" in f.metadata]


def _environment_value(field: dataclasses.Field[Any], flag: Flag) -> str | None:
    for name in (flag.env_name(field.name), *flag.fallback_env):
        value = os.environ.get(name)
        if value:
            return value
    return None


def _parsed(flag: Flag, field: dataclasses.Field[Any], text: str, source: str) -> Any:
    try:
        value = flag.parse(text)
    except ValueError:
        names: dict[object, str] = {int: "a whole number", float: "a number"}
        kind = names.get(flag.parse, "a value it can read")
        raise SystemExit(f"driftlm: {source} must be {kind}, got {text!r}") from None
    if flag.choices and value not in flag.choices:
        raise SystemExit(f"driftlm: {source} must be one of {', '.join(flag.choices)}, got {text!r}")
    return value


def _default(field: dataclasses.Field[Any], flag: Flag) -> Any:
    """The flag's default: the environment variable's value, else the field's own default."""
    environment = _environment_value(field, flag)
    source = flag.env_name(field.name)
    if flag.kind in ("switch", "inverse"):
        return environment == "1"
    if flag.kind == "list":
        separator = flag.separator or os.pathsep
        parts = (environment or "").split(separator) if separator != " " else (environment or "").split()
        return [_parsed(flag, field, part, source) for part in parts if part]
    if environment is not None:
        return _parsed(flag, field, environment, source)
    if flag.optional or field.default is None:
        return None
    default: Any = field.default
    return default // flag.scale if flag.scale != 1 else default


def add_flags(parser: argparse.ArgumentParser, config_type: type) -> None:
    """One argparse flag per setting of `config_type`, its default from the environment."""
    for field, flag in flags_of(config_type):
        env_help = f"env {flag.env_name(field.name)}" + ("=1" if flag.kind in ("switch", "inverse") else "")
        common: dict[str, Any] = {"dest": field.name, "default": _default(field, flag)}
        common["help"] = f"{flag.help} ({env_help}; default: {flag.default_text})"
        if flag.kind in ("switch", "inverse"):
            parser.add_argument(flag.flag_name(field.name), action="store_true", **common)
        elif flag.kind == "list":
            parser.add_argument(flag.flag_name(field.name), action="append", type=flag.parse, **common)
        else:
            if flag.choices:
                common["choices"] = flag.choices
            parser.add_argument(flag.flag_name(field.name), type=flag.parse, **common)


def config_values(args: argparse.Namespace, config_type: type) -> dict[str, Any]:
    """The settings parsed by `add_flags`, as `config_type`'s field values (None: left to the caller)."""
    values: dict[str, Any] = {}
    for field, flag in flags_of(config_type):
        value = getattr(args, field.name)
        if flag.kind == "inverse":
            value = not value
        elif flag.kind == "list":
            value = tuple(value)
        elif value is not None and flag.scale != 1:
            value = value * flag.scale
        values[field.name] = value
    return values


def flag_table(config_type: type) -> str:
    """The README's table of the settings: flag, environment variable, default, meaning."""
    rows = ["| flag | environment | default | meaning |", "|------|-------------|---------|---------|"]
    for field, flag in flags_of(config_type):
        flag_cell = f"`{flag.flag_name(field.name)}`" + (" (repeatable)" if flag.kind == "list" else "")
        env = f"`{flag.env_name(field.name)}" + ("=1`" if flag.kind in ("switch", "inverse") else "`")
        env += "".join(f" or `{name}`" for name in flag.fallback_env)
        if flag.kind == "list":
            env += " (`:`-separated)" if not flag.separator else " (space-separated)"
        rows.append(f"| {flag_cell} | {env} | {flag.default_text} | {flag.help} |")
    return "\n".join(rows) + "\n"
