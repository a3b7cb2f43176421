"""`driftlm follow`'s settings: flags, environment and a YAML file, with clear errors."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from driftlm.follow.command import add_follow, options_from
from driftlm.follow.options import ConfigError, FollowOptions, config_file_values
from driftlm.follow.state import Lease, LeaseHeldError


def _parse(argv: list[str]) -> FollowOptions:
    parser = argparse.ArgumentParser()
    follow = add_follow(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return options_from(follow, args, argv)


def test_a_config_file_sets_what_flags_and_the_environment_do_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "follow.yaml"
    config.write_text(
        "source: /data/feed\nslice: week\npoll-interval-s: 60\nallowed_lateness: 6h\nshadow: false\n"
        "endpoint: {vocab: v:1, trainer: t:2, inference: i:3, compare: c:4}\nsteps: 7\n"
    )
    monkeypatch.setenv("DRIFTLM_STEPS", "9")
    options = _parse(["follow", "--config", str(config), "--poll-interval-s", "5"])
    assert options.source == "/data/feed" and options.slicing == "week" and options.allowed_lateness == "6h"
    assert options.poll_interval_s == 5.0  # the flag wins over the file
    assert options.steps == 9  # and the environment too
    assert options.shadow is False
    assert options.endpoint_map == {"vocab": "v:1", "trainer": "t:2", "inference": "i:3", "compare": "c:4"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("source: /x\npoll_intervall_s: 3\n", "unknown setting 'poll_intervall_s'; the settings are:"),
        ("source: /x\nsteps: many\n", "steps cannot be 'many'"),
        ("source: /x\nsteps: 0\n", "steps cannot be 0"),
        ("source: /x\nonce: sometimes\n", "once is true or false"),
        ("source: /x\nstrategy: best\n", "strategy must be one of"),
        ("- a\n- list\n", "a config file is a mapping"),
        ("source: [unclosed\n", "not valid YAML"),
    ],
)
def test_a_bad_config_names_the_file_the_setting_and_the_reason(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "follow.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")) as raised:
        config_file_values(config)
    assert str(config) in str(raised.value)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "source: give the directory"),
        (["--source", "/x", "--slice", "fortnight"], "--slice must be one of"),
        (["--source", "/x", "--allowed-lateness", "soon"], "a duration is"),
        (["--source", "/x", "--name", "../up"], "name: letters, digits"),
        (["--source", "/x", "--endpoint", "vocab=a:1"], "missing compare, inference, trainer"),
    ],
)
def test_settings_that_cannot_work_are_refused(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _parse(["follow", *argv])


def test_the_command_exits_2_with_the_reason(tmp_path: Path) -> None:
    config = tmp_path / "follow.yaml"
    config.write_text("source: /x\nbatch_size: -1\n")
    done = subprocess.run(
        [sys.executable, "-m", "driftlm", "follow", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "batch_size cannot be -1" in done.stderr


def test_one_controller_per_state(tmp_path: Path) -> None:
    with Lease(tmp_path), pytest.raises(LeaseHeldError, match="is in use by pid"):
        Lease(tmp_path).__enter__()
    with Lease(tmp_path):  # released on exit
        pass


def test_the_grafana_dashboard_charts_the_metrics_the_controller_exports() -> None:
    import json
    import re

    from prometheus_client import REGISTRY

    from driftlm.follow import observability  # noqa: F401  # registers the metrics

    # Every series name the registry can expose (a counter's _total, a histogram's _bucket...).
    exported = {name for name in REGISTRY._names_to_collectors if name.startswith("driftlm_follow_")}
    dashboard = json.loads((Path(__file__).parents[2] / "deploy" / "grafana" / "driftlm-follow.json").read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    charted = {name for expr in expressions for name in re.findall(r"driftlm_follow_\w+", expr)}
    assert charted <= exported, charted - exported  # no panel charts a metric that does not exist
    families = {metric.name for metric in REGISTRY.collect() if metric.name.startswith("driftlm_follow_")}
    uncharted = {f for f in families if not any(name.startswith(f) for name in charted)}
    assert uncharted == {"driftlm_follow_watermark_timestamp_seconds", "driftlm_follow_open_slices"}
