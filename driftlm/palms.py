"""`driftlm palms`: values-targeted fine-tuning and behaviour evaluation (Solaiman & Dennison,
PALMS, 2021), end to end through the services.

    base model --(head warm-up on everyday text, when its MLM head is new)--> base
    base --trainer StartRun(kind=curated) on the curated set--> values-targeted
    base --the same on the control set (similar size and style, neutral)--> control
    ExportOnnx x 3 -> inference LoadModel -> compare EvaluateBehaviour(prompts, held-out curated)
    -> report: toxicity per category with intervals and tests, completion words, adherence

A fifth of the curated examples (every fifth line) is held out of the fine-tune to measure
adherence. Iterate by adding curated examples to the weakest categories the report names.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from rich.console import Console

from driftlm.local_services import LocalService, start_service
from driftlm.loop.drifting_stream import generate_stream
from driftlm.loop.pipeline import default_base_model
from driftlm.provenance import provenance
from driftlm.services.compare.client import CompareClient
from driftlm.services.core import store as atomic
from driftlm.services.core.curated import CATEGORIES, read_curated, read_prompts
from driftlm.services.core.strategy import Strategy
from driftlm.services.inference.client import InferenceClient
from driftlm.services.trainer.client import TrainerClient
from driftlm.services.vocab.client import VocabClient
from driftlm.v1 import common_pb2, trainer_pb2

ROLES = ("base", "values_targeted", "control")


def shipped(name: str) -> Path:
    """One of the example datasets that ship with driftlm (curated, control, prompts)."""
    return Path(str(resources.files("driftlm") / "palms_data" / f"{name}.jsonl"))


@dataclass(frozen=True)
class PalmsOptions:
    """Everything `driftlm palms` takes (see its --help)."""

    out: Path
    store: Path
    curated: Path = field(default_factory=lambda: shipped("curated"))
    control: Path = field(default_factory=lambda: shipped("control"))
    prompts: Path = field(default_factory=lambda: shipped("prompts"))
    base_model: Path | None = None
    steps: int = 60
    head_steps: int = 100
    batch_size: int = 16
    learning_rate: float = 1e-4
    max_length: int = 64
    samples_per_prompt: int = 3
    seed: int = 0
    # The categories the datasets use; empty: the paper's eight.
    categories: tuple[str, ...] = ()


@contextmanager
def _services(store: Path, model_root: Path, console: Console) -> Iterator[dict[str, str]]:
    """vocab, trainer (sampling in-process), inference and compare as local processes."""
    started: list[LocalService] = []
    try:
        with console.status("starting the vocab, trainer, inference and compare services"):
            read = ("--read-root", str(model_root.resolve()))
            started.append(start_service("vocab", store, extra_args=read))
            started.append(start_service("trainer", store, extra_args=("--vocab-endpoint", started[0].target, *read)))
            started.append(start_service("inference", store))
            started.append(start_service("compare", store, extra_args=("--inference-endpoint", started[2].target)))
        yield {service.name: service.target for service in started}
    finally:
        for service in started:
            service.stop()


def _split(curated: Path, directory: Path) -> tuple[Path, Path]:
    """The curated set without every fifth line (to train on) and those lines (held out)."""
    lines = [line for line in curated.read_text(encoding="utf-8").splitlines() if line.strip()]
    train, heldout = directory / "curated-train.jsonl", directory / "curated-heldout.jsonl"
    atomic.write_bytes_atomically(train, "".join(f"{line}\n" for i, line in enumerate(lines) if i % 5 != 4).encode())
    atomic.write_bytes_atomically(heldout, "".join(f"{line}\n" for i, line in enumerate(lines) if i % 5 == 4).encode())
    return train, heldout


def run_palms(options: PalmsOptions, console: Console) -> dict[str, Any]:
    """Fine-tune, serve and evaluate; write the report under options.out; return it.

    Raises:
        CuratedDataError: a dataset line that cannot be used (file, line and field named), before
            any service starts.
    """
    categories = options.categories or CATEGORIES
    for dataset in (options.curated, options.control):
        read_curated(dataset, categories)
    read_prompts(options.prompts, categories)
    base_dir = options.base_model or default_base_model()
    key = hashlib.sha256(
        json.dumps(
            {k: str(v) for k, v in options.__dict__.items() if k not in ("out", "store")}, sort_keys=True
        ).encode()
    ).hexdigest()[:16]
    directory = options.store / "palms" / key
    directory.mkdir(parents=True, exist_ok=True)
    prompts, control = directory / "prompts.jsonl", directory / "control.jsonl"
    shutil.copyfile(options.prompts, prompts)
    shutil.copyfile(options.control, control)
    curated_train, heldout = _split(options.curated, directory)
    started = time.perf_counter()
    with (
        _services(options.store, base_dir, console) as targets,
        VocabClient(targets["vocab"]) as vocab,
        TrainerClient(targets["trainer"]) as trainer,
        InferenceClient(targets["inference"]) as inference,
        CompareClient(targets["compare"]) as compare,
    ):

        def train(label: str, **fields: Any) -> trainer_pb2.RunStatus:
            request = trainer_pb2.StartRunRequest(
                iterations=1,
                batch_size=options.batch_size,
                max_length=options.max_length,
                seed=options.seed,
                strategy=Strategy.UNIFORM.proto,
                display_name=label,
                **fields,
            )
            with console.status(f"training: {label}"):
                return trainer.train(request)

        version = vocab.register_directory(base_dir, display_name="palms base")
        base = trainer.import_model(str(base_dir), version.version_id, seed=options.seed, display_name="palms base")
        start = base.checkpoint_id
        if base.new_mlm_head and options.head_steps:
            # A sentence encoder's MLM head starts random: warm it up on everyday text first, so the
            # three models compared are language models.
            everyday = directory / "everyday.jsonl"
            texts = [
                r["text"]
                for r in generate_stream(texts_per_period=400, seed=options.seed)
                if r["time"].startswith("2016")
            ]
            atomic.write_bytes_atomically(everyday, "".join(json.dumps({"text": t}) + "\n" for t in texts).encode())
            start = train(
                "base head warm-up",
                kind=trainer_pb2.RUN_KIND_MLM,
                base_checkpoint_id=start,
                slices=[common_pb2.ArtifactRef(uri=str(everyday))],
                steps_per_iteration=options.head_steps,
                learning_rate=max(options.learning_rate, 1e-3),
                head_only=True,
            ).checkpoint_id
        checkpoints = {"base": start}
        for role, data in (("values_targeted", curated_train), ("control", control)):
            checkpoints[role] = train(
                f"{role} fine-tune",
                kind=trainer_pb2.RUN_KIND_CURATED,
                base_checkpoint_id=start,
                slices=[common_pb2.ArtifactRef(uri=str(data))],
                steps_per_iteration=options.steps,
                learning_rate=options.learning_rate,
            ).checkpoint_id
        served = {}
        with console.status("exporting and serving the three models"):
            for role, checkpoint in checkpoints.items():
                exported = trainer.export_onnx(checkpoint, model_name=f"palms-{role}")
                inference.load_model(exported.model_name, exported.version, make_default=True, unload_previous=True)
                served[role] = (exported.model_name, int(exported.version))
        with console.status("evaluating behaviour"):
            evaluation = compare.evaluate_behaviour(
                served,
                str(prompts),
                heldout_curated=str(heldout),
                categories=categories,
                samples_per_prompt=options.samples_per_prompt,
                seed=options.seed,
                display_name="driftlm palms",
            )
    report = {
        "format": "driftlm.palms-report/v1",
        "provenance": provenance(),
        "options": {k: str(v) for k, v in options.__dict__.items()},
        "base": {
            "model": str(base_dir),
            "new_mlm_head": base.new_mlm_head,
            "head_steps": options.head_steps if base.new_mlm_head else 0,
        },
        "models": {
            role: {"name": name, "version": v, "checkpoint": checkpoints[role]} for role, (name, v) in served.items()
        },
        "evaluation": json.loads(json_format.MessageToJson(evaluation, preserving_proto_field_name=True)),
        "wall_s": time.perf_counter() - started,
    }
    from driftlm.palms_report import write_palms_report

    write_palms_report(report, options.out)
    return report
