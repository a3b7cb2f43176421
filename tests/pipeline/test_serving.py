"""The loop closed: after the adaptive arm trains, a student is distilled from it, both are exported,
compared by the compare service through the inference service, and served only when the gate
passes; when it fails, what was served stays served. Real servers and processes throughout."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from rich.console import Console

from driftlm.loop.drifting_stream import write_stream
from driftlm.loop.pipeline import PipelineOptions, run_pipeline
from driftlm.loop.promotion import STUDENT_MODEL, TEACHER_MODEL, GateOptions, Promotion
from driftlm.services.compare.client import CompareClient
from driftlm.services.compare.server import create_server as create_compare_server
from driftlm.services.core.strategy import Strategy
from driftlm.services.inference.client import InferenceClient
from driftlm.services.inference.server import create_server as create_inference_server
from driftlm.services.runtime.config import ServeConfig
from driftlm.services.trainer.client import TrainerClient
from driftlm.v1 import trainer_pb2

from ..trainer.conftest import TINY_BERT, Stack, new_slice, old_slice, stack  # noqa: F401  # `stack` is a fixture


def _drifted(tmp_path: Path, years: dict[str, str] | None = None) -> Path:
    """Slices of the stream's years, redated: by default 2016, then 2021's texts dated 2017 (the
    trigger fires on the second)."""
    years = years or {"2016": "2016", "2021": "2017"}
    records = [json.loads(line) for line in write_stream(tmp_path / "full.jsonl", seed=5).read_text().splitlines()]
    data = tmp_path / "drifted.jsonl"
    data.write_text(
        "\n".join(
            json.dumps(dict(r, time=years[r["time"][:4]] + r["time"][4:])) for r in records if r["time"][:4] in years
        )
    )
    return data


def test_the_loop_serves_a_student_that_passes_the_gate(tmp_path: Path, tiny_model: Path) -> None:
    options = PipelineOptions(
        out=tmp_path / "out",
        store=tmp_path / "store",
        base_model=tiny_model,
        data=_drifted(tmp_path),
        steps=12,
        first_steps=120,
        learning_rate=5e-3,
        max_length=32,
        vocab_k=20,
        distill_steps=12,
    )
    report = run_pipeline(options, Console(quiet=True))
    served = report["slices"][1]["serving"]
    assert report["slices"][1]["trigger"]["fired"]
    assert served["promoted"] and served["served"] == served["candidate"] == {"teacher": 1, "student": 1}
    assert report["served"] == {"teacher": 1, "student": 1}
    # The default gate (top-1 agreement >= 0.5), which a distilled student meets.
    assert served["top1_agreement"]["value"] >= 0.5
    assert served["gate"] == ["top-1 agreement " + f"{served['top1_agreement']['value']:.4f} meets >= 0.5000"]
    assert served["positions"] > 0
    repository = tmp_path / "store" / "trainer" / "models"
    teacher_bytes, student_bytes = (
        (repository / m / "1" / "model.onnx").stat().st_size for m in (TEACHER_MODEL, STUDENT_MODEL)
    )
    # The student has one of the teacher's two layers: smaller, and by what the exported files say.
    assert served["size_ratio"] == pytest.approx(student_bytes / teacher_bytes) and student_bytes < teacher_bytes
    for figure in ("top1_agreement", "kl_teacher_student", "teacher_top1", "student_top1", "student_ece"):
        assert served[figure]["low"] <= served[figure]["value"] <= served[figure]["high"]
    # What the services kept: the two models' first versions, the comparison record.
    assert {p.name for p in repository.iterdir()} == {
        TEACHER_MODEL,
        f"{TEACHER_MODEL}_int8",
        STUDENT_MODEL,
        f"{STUDENT_MODEL}_int8",
    }
    stored = list((tmp_path / "store" / "compare" / "comparisons").glob("cmp-*.json"))
    assert [p.stem for p in stored] == [served["comparison_id"]]
    assert (tmp_path / "out" / "plots" / "fidelity.png").exists()
    html = (tmp_path / "out" / "report.html").read_text()
    assert "<h2>Serving</h2>" in html and "passed: top-1 agreement" in html


def _same_period_twice(tmp_path: Path) -> Path:
    """2016's texts, then other texts of 2016 (another seed of the stream) dated 2017."""
    first, again = (
        [json.loads(line) for line in write_stream(tmp_path / f"{seed}.jsonl", seed=seed).read_text().splitlines()]
        for seed in (5, 6)
    )
    data = tmp_path / "same.jsonl"
    rows = [r for r in first if r["time"].startswith("2016")]
    rows += [dict(r, time="2017-06-01T00:00:00Z") for r in again if r["time"].startswith("2016")]
    data.write_text("\n".join(json.dumps(r) for r in rows))
    return data


def test_nothing_is_exported_or_served_when_the_trigger_does_not_fire(tmp_path: Path, tiny_model: Path) -> None:
    """The loop's null case: the same period twice, so no slice trains and nothing new is served."""
    report = run_pipeline(
        PipelineOptions(
            out=tmp_path / "out",
            store=tmp_path / "store",
            base_model=tiny_model,
            data=_same_period_twice(tmp_path),
            steps=12,
            first_steps=120,
            learning_rate=5e-3,
            max_length=32,
            vocab_k=20,
        ),
        Console(quiet=True),
    )
    serving = report["slices"][1]["serving"]
    assert not report["slices"][1]["trigger"]["fired"], report["slices"][1]["trigger"]["reason"]
    assert serving == {"promoted": False, "served": None, "gate": ["the trigger did not fire: nothing new to serve"]}
    assert report["served"] is None
    assert not (tmp_path / "store" / "trainer" / "models").exists()


def test_with_ensemble_teachers_the_second_student_learns_from_both_teachers(tmp_path: Path, tiny_model: Path) -> None:
    options = PipelineOptions(
        out=tmp_path / "out",
        store=tmp_path / "store",
        base_model=tiny_model,
        # Each later slice brings new names: the trigger fires on both, and both train.
        data=_drifted(tmp_path, {"2016": "2016", "2019": "2017", "2020": "2020"}),
        steps=12,
        first_steps=120,
        learning_rate=5e-3,
        max_length=32,
        vocab_k=20,
        distill_steps=12,
        ensemble_teachers=True,
    )
    report = run_pipeline(options, Console(quiet=True))
    first, second = (s["serving"] for s in report["slices"][1:])
    assert first["teachers"] == [f"{TEACHER_MODEL}/1"]  # no previous teacher yet
    assert second["teachers"] == [f"{TEACHER_MODEL}/2", "driftlm-previous-teacher/1"]
    assert second["promoted"] and report["served"] == {"teacher": 2, "student": 2}


@pytest.fixture
def serving(stack: Stack) -> Iterator[tuple[Promotion, InferenceClient]]:  # noqa: F811
    inference_server, inference_port = create_inference_server("127.0.0.1:0", ServeConfig(store=stack.store))
    compare_server, compare_port = create_compare_server(
        "127.0.0.1:0", ServeConfig(store=stack.store, inference_endpoint=f"127.0.0.1:{inference_port}")
    )
    try:
        with (
            TrainerClient(stack.trainer_target) as trainer,
            InferenceClient(f"127.0.0.1:{inference_port}") as inference,
            CompareClient(f"127.0.0.1:{compare_port}") as compare,
        ):
            yield Promotion(trainer, inference, compare, gate=GateOptions(), seed=0), inference
    finally:
        compare_server.stop(grace=None)
        inference_server.stop(grace=None)


def test_a_failing_gate_keeps_serving_the_previous_version(
    stack: Stack,  # noqa: F811  # the fixture imported above
    serving: tuple[Promotion, InferenceClient],
) -> None:
    promotion, inference = serving
    teacher = stack.base_checkpoint.checkpoint_id
    student = stack.trainer.CreateCheckpoint(
        trainer_pb2.CreateCheckpointRequest(
            model_config_json=json.dumps({**json.loads(TINY_BERT), "num_hidden_layers": 1}),
            vocab_version_id=stack.base_version.version_id,
            seed=2,
        )
    ).checkpoint.checkpoint_id
    heldout = old_slice(3, texts=20)
    promotion.gate = GateOptions(min_top1_agreement=0.0)
    first = promotion.promote(teacher, student, heldout, "first", None)
    assert first["promoted"] and first["served"] == {"teacher": 1, "student": 1}
    # A gate no student can pass: an independent student never has the teacher's exact distribution.
    promotion.gate = GateOptions(min_top1_agreement=None, max_kl=0.0)
    second = promotion.promote(teacher, student, heldout, "second", first["served"])
    assert not second["promoted"] and second["candidate"] == {"teacher": 2, "student": 2}
    assert second["served"] == {"teacher": 1, "student": 1}
    assert "fails <= 0.0000" in second["gate"][0]
    models = {
        (m.name, m.version): m.is_default for m in inference.list_models() if m.name in (TEACHER_MODEL, STUDENT_MODEL)
    }
    assert models == {(TEACHER_MODEL, 1): True, (STUDENT_MODEL, 1): True}  # the candidates were unloaded
    assert len(inference.fill_mask(STUDENT_MODEL, ["the [MASK]"])) == 1  # the default still answers
    with pytest.raises(grpc.RpcError) as gone:
        inference.fill_mask(STUDENT_MODEL, ["the [MASK]"], version=2)
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND


def test_an_ensemble_of_the_new_and_the_moved_previous_teacher(
    stack: Stack,  # noqa: F811  # the fixture imported above
    serving: tuple[Promotion, InferenceClient],
) -> None:
    promotion, inference = serving
    updated = stack.updated_version.version_id
    slice_ref = stack.slice_file("new", new_slice(4, texts=64))

    def train(label: str, **fields: object) -> trainer_pb2.RunStatus:
        defaults: dict[str, object] = {
            "kind": trainer_pb2.RUN_KIND_MLM,
            "iterations": 1,
            "batch_size": 8,
            "max_length": 32,
            "learning_rate": 1e-3,
            "seed": 1,
            "display_name": label,
        }
        steps = fields.pop("steps")
        request = trainer_pb2.StartRunRequest(**{**defaults, **fields, "steps_per_iteration": steps})  # type: ignore[arg-type]
        return promotion.trainer.train(request)

    previous = stack.base_checkpoint.checkpoint_id  # on the base vocabulary
    moved = promotion.moved(train, "move", previous, updated, slice_ref)
    assert moved != previous and promotion.trainer.checkpoint(moved).vocab_version_id == updated
    assert promotion.moved(train, "again", moved, updated, slice_ref) == moved  # already there: no run
    uniform = Strategy.UNIFORM.proto
    teacher = train("teacher", base_checkpoint_id=moved, slices=[slice_ref], strategy=uniform, steps=4).checkpoint_id
    student = promotion.distil(train, "student", previous, [teacher, moved], updated, slice_ref, 4)
    assert promotion.trainer.checkpoint(student).vocab_version_id == updated
    promotion.gate = GateOptions(min_top1_agreement=0.0)
    record = promotion.promote(teacher, student, new_slice(5, texts=20), "ensemble", None, moved)
    assert record["teachers"] == [f"{TEACHER_MODEL}/1", "driftlm-previous-teacher/1"]
    assert record["promoted"]
    comparison = promotion.compare.get(record["comparison_id"])
    assert [(t.name, t.version) for t in comparison.teachers] == [(TEACHER_MODEL, 1), ("driftlm-previous-teacher", 1)]
    assert comparison.overall.teacher.model.name == "ensemble"
    # The second member was served for the comparison only.
    assert "driftlm-previous-teacher" not in {m.name for m in inference.list_models()}
