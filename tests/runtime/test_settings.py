"""One definition per setting: ServeConfig's fields make the flags, the environment fallbacks and
the README's table, and each path from the command line or the environment lands in the config."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from driftlm.services.runtime.config import MIB, ServeConfig
from driftlm.services.runtime.settings import add_flags, config_values, flag_table, flags_of

README = Path(__file__).resolve().parents[2] / "README.md"


def _parsed(argv: list[str]) -> dict[str, object]:
    parser = argparse.ArgumentParser()
    add_flags(parser, ServeConfig)
    return config_values(parser.parse_args(argv), ServeConfig)


def test_every_field_is_a_setting_and_the_readme_lists_them_all() -> None:
    assert [f.name for f, _ in flags_of(ServeConfig)] == [f.name for f in dataclasses.fields(ServeConfig)]
    table = flag_table(ServeConfig)
    assert table in README.read_text(encoding="utf-8")
    for flag in ("--vocab-endpoint", "--sampling-endpoint", "--torch-threads", "--no-metrics", "--read-root"):
        assert f"`{flag}`" in table


def test_defaults_are_the_fields_own() -> None:
    values = _parsed([])
    assert ServeConfig(**{**values, "port": 0}) == ServeConfig(store=values["store"])  # type: ignore[arg-type]
    assert values["port"] is None and values["metrics_port"] is None  # the service's own, filled in by serve


@pytest.mark.parametrize(
    ("argv", "environment", "field", "expected"),
    [
        # a flag wins over its environment variable
        (["--workers", "3"], {"DRIFTLM_WORKERS": "5"}, "workers", 3),
        # the environment variable alone
        ([], {"DRIFTLM_WORKERS": "5"}, "workers", 5),
        # MiB on the command line, bytes in the config
        (["--max-message-mb", "2"], {}, "max_message_bytes", 2 * MIB),
        # repeatable paths, and the os.pathsep-separated variable
        (["--read-root", "/a", "--read-root", "/b"], {}, "read_roots", (Path("/a"), Path("/b"))),
        ([], {"DRIFTLM_READ_ROOTS": "/a:/b"}, "read_roots", (Path("/a"), Path("/b"))),
        # space-separated prefixes
        ([], {"DRIFTLM_READ_URI_PREFIXES": "s3://a/ s3://b/"}, "read_uri_prefixes", ("s3://a/", "s3://b/")),
        # switches that turn something off
        (["--closed-reflection"], {}, "open_reflection", False),
        ([], {"DRIFTLM_NO_DYNAMIC_BATCHING": "1"}, "dynamic_batching", False),
        ([], {}, "dynamic_batching", True),
        # OpenTelemetry's own variable as a fallback
        ([], {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, "otlp_endpoint", "http://c:4317"),
        (["--peer-token-file", "/t"], {}, "peer_token_file", Path("/t")),
    ],
)
def test_flags_and_environment_land_in_the_config(
    argv: list[str], environment: dict[str, str], field: str, expected: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert _parsed(argv)[field] == expected


def test_a_bad_environment_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIFTLM_WORKERS", "many")
    with pytest.raises(SystemExit, match="DRIFTLM_WORKERS"):
        _parsed([])
    monkeypatch.setenv("DRIFTLM_WORKERS", "2")
    monkeypatch.setenv("DRIFTLM_ORT_PROVIDER", "tpu")
    with pytest.raises(SystemExit, match="DRIFTLM_ORT_PROVIDER must be one of auto, cpu, cuda"):
        _parsed([])
