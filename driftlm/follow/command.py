"""`driftlm follow`: the command line of the controller (flags, --config FILE, signals, logging)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from driftlm.follow.options import ConfigError, FollowOptions, apply_config
from driftlm.services.runtime import tracing
from driftlm.services.runtime.bootstrap import stop_requested_on_signals
from driftlm.services.runtime.logs import configure_logging
from driftlm.services.runtime.settings import add_flags, config_values


def add_follow(subcommands: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """The `follow` subcommand: one flag per FollowOptions setting, and --config."""
    parser = subcommands.add_parser(
        "follow",
        help="keep the served model fresh on files that keep arriving in a directory or bucket (runs until SIGTERM)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=Path(os.environ["DRIFTLM_FOLLOW_CONFIG"]) if os.environ.get("DRIFTLM_FOLLOW_CONFIG") else None,
        help="a YAML file of settings (the flags' names: slice: week, poll_interval_s: 60, ...); flags and "
        "DRIFTLM_* variables override it (env DRIFTLM_FOLLOW_CONFIG)",
    )
    add_flags(parser, FollowOptions)
    return parser


def options_from(
    parser: argparse.ArgumentParser, args: argparse.Namespace, argv: Sequence[str] | None
) -> FollowOptions:
    """The options, with the config file's values under the flags'.

    Raises:
        ConfigError: a setting cannot be used.
    """
    if args.config is not None:
        apply_config(parser, args.config)
        args = parser.parse_args(list(argv if argv is not None else sys.argv[1:])[1:])
    values = config_values(args, FollowOptions)
    options = FollowOptions(**{**values, "store": Path(values["store"]).expanduser(), "out": Path(values["out"])})
    options.check()
    return options


def follow_command(parser: argparse.ArgumentParser, args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    """Run the controller; 0 after a clean stop, 2 for bad settings, 3 when the state is in use."""
    from driftlm.follow.controller import follow

    try:
        options = options_from(parser, args, argv)
    except ConfigError as error:
        print(f"driftlm follow: {error}", file=sys.stderr)
        return 2
    configure_logging(options.log_level)
    with stop_requested_on_signals() as stop:
        if options.otlp_endpoint:
            tracing.enable("driftlm-follow", otlp_endpoint=options.otlp_endpoint)
        try:
            return follow(options, stop)
        finally:
            tracing.disable()
