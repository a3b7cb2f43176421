"""CompareModels through real servers: a model against itself, a scrambled student, a distilled
student against one trained without its teacher, ensembles and independent students, slices and
intervals, the gate both ways, the stored records, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import numpy as np
import pytest

from driftlm.services.compare.client import CompareClient
from driftlm.v1 import common_pb2, compare_pb2

from ..inference.conftest import ANSWERS, MODEL, planted_texts
from .conftest import Services

HELD_OUT = planted_texts(ANSWERS[1], np.random.default_rng(99), count=40)


def _compare(
    services: Services, teachers: list[str | tuple[str, int]], student: str | tuple[str, int], **options: object
) -> compare_pb2.Comparison:
    with CompareClient(services.compare_target) as client:
        return client.compare(teachers, student, {"held-out": HELD_OUT}, bootstrap_samples=200, seed=1, **options)  # type: ignore[arg-type]


def test_a_model_against_itself_agrees_fully_and_passes_a_strict_gate(services: Services) -> None:
    result = _compare(services, [(MODEL, 1)], (MODEL, 1), min_top1_agreement=0.99, max_kl=1e-6, max_accuracy_drop=0.0)
    overall = result.overall
    assert overall.top1_agreement.value == overall.top1_agreement.low == overall.top1_agreement.high == 1.0
    assert overall.kl_teacher_student.value == pytest.approx(0.0, abs=1e-9)
    assert overall.teacher.top1_accuracy == overall.student.top1_accuracy
    assert result.gate.passed and len(result.gate.reasons) == 3
    assert overall.texts == 40 and overall.positions == sum(round(0.15 * 8) for _ in HELD_OUT)
    assert [(t.name, t.version) for t in result.teachers] == [(MODEL, 1)]
    # The teacher knows the planted answers; its calibration error is a fraction.
    assert 0.0 <= overall.teacher.expected_calibration_error.value < 1.0
    assert overall.teacher.top5_accuracy.value >= overall.teacher.top1_accuracy.value


def test_on_real_text_the_gate_passes_a_model_against_itself_and_refuses_a_scrambled_one(services: Services) -> None:
    """The gate's null case and its acting case on real prose (Python's own documentation), not
    only on the planted stream."""
    from benchmarks.vocab import real_texts

    prose = real_texts(60)
    with CompareClient(services.compare_target) as client:
        itself = client.compare(
            [(MODEL, 1)], (MODEL, 1), {"prose": prose}, bootstrap_samples=100, min_top1_agreement=0.99
        )
        scrambled = client.compare(
            [(MODEL, 1)], "shuffled", {"prose": prose}, bootstrap_samples=100, min_top1_agreement=0.5
        )
    assert itself.overall.positions > 100 and itself.overall.top1_agreement.value == 1.0 and itself.gate.passed
    assert scrambled.overall.top1_agreement.value < 0.2 and not scrambled.gate.passed


def test_a_scrambled_student_agrees_little_and_fails_the_gate(services: Services) -> None:
    result = _compare(services, [(MODEL, 1)], "shuffled", min_top1_agreement=0.5)
    assert result.overall.top1_agreement.high < 0.2
    assert result.overall.kl_teacher_student.value > 1.0
    assert not result.gate.passed
    assert result.gate.reasons[0].startswith("top-1 agreement") and "fails >= 0.5000" in result.gate.reasons[0]


def test_a_distilled_student_agrees_with_its_teacher_more_than_one_trained_without_it(services: Services) -> None:
    distilled = _compare(services, [(MODEL, 1)], "distilled", independent_student="undistilled")
    overall = distilled.overall
    assert overall.top1_agreement.value > overall.independent_top1_agreement.value
    assert overall.kl_teacher_student.value < overall.independent_kl_teacher_student.value
    assert distilled.independent_student.name == "undistilled"
    assert overall.independent_student.model.name == "undistilled"


def test_no_gate_passes_and_an_ensemble_teacher_is_the_mean_of_softmaxes(services: Services) -> None:
    result = _compare(services, [(MODEL, 1), (MODEL, 2)], (MODEL, 1))
    assert result.gate.passed and not result.gate.reasons
    assert [(t.name, t.version) for t in result.teachers] == [(MODEL, 1), (MODEL, 2)]
    assert result.overall.teacher.model.name == "ensemble"
    # The ensemble differs from its first member, so the member does not match it fully.
    assert result.overall.kl_teacher_student.value > 0.0
    default = _compare(services, [MODEL], (MODEL, 1))
    assert [(t.name, t.version) for t in default.teachers] == [(MODEL, 2)]  # 0 resolves to the default


def test_each_slice_is_reported_and_the_record_is_stored(services: Services, tmp_path: Path) -> None:
    corpus = services.store / "slices" / "later.jsonl"
    corpus.parent.mkdir(parents=True)
    later = planted_texts(ANSWERS[2], np.random.default_rng(5), count=30)
    corpus.write_text("\n".join(json.dumps({"body": t}) for t in [*later, ""]) + "\n", encoding="utf-8")
    with CompareClient(services.compare_target) as client:
        result = client.compare(
            [(MODEL, 1)],
            (MODEL, 2),
            {
                "earlier": HELD_OUT,
                "later": common_pb2.CorpusSource(uri=common_pb2.ArtifactRef(uri=str(corpus)), text_field="body"),
            },
            bootstrap_samples=200,
            display_name="v1 against v2",
        )
        assert [s.label for s in result.slices] == ["earlier", "later"]
        assert [s.texts for s in result.slices] == [40, 30]  # the empty text has no position
        assert result.overall.texts == 70 and result.overall.positions == sum(s.positions for s in result.slices)
        for figure in (s.top1_agreement for s in [*result.slices, result.overall]):
            assert figure.low <= figure.value <= figure.high
        # Version 2 learnt another word after the cue: on later text it is right where version 1 is not.
        later_slice = result.slices[1]
        assert later_slice.student.top1_accuracy.value > later_slice.teacher.top1_accuracy.value
        assert client.get(result.comparison_id) == result
        listed, token = client.list(page_size=1)
        assert [c.comparison_id for c in listed] == [result.comparison_id] and token == ""


@pytest.mark.parametrize(
    ("change", "code", "words"),
    [
        ({"student": compare_pb2.ModelRef(name="nope")}, grpc.StatusCode.NOT_FOUND, "no model 'nope'"),
        ({"student": compare_pb2.ModelRef(name=MODEL, version=9)}, grpc.StatusCode.NOT_FOUND, "no version 9"),
        ({"student": compare_pb2.ModelRef(name="othervocab")}, grpc.StatusCode.FAILED_PRECONDITION, "vocabularies"),
        (
            {
                "slices": [
                    compare_pb2.HeldOutSlice(
                        label="empty", corpus=common_pb2.CorpusSource(texts=common_pb2.TextBatch(texts=["", " "]))
                    )
                ]
            },
            grpc.StatusCode.INVALID_ARGUMENT,
            "holds no text",
        ),
        ({"slices": []}, grpc.StatusCode.INVALID_ARGUMENT, "1 to 50"),
        ({"teachers": []}, grpc.StatusCode.INVALID_ARGUMENT, "1 to 8"),
        ({"mask_fraction": 1.5}, grpc.StatusCode.INVALID_ARGUMENT, "mask_fraction"),
        (
            {"gate": compare_pb2.PromotionGate(min_top1_agreement=float("nan"))},
            grpc.StatusCode.INVALID_ARGUMENT,
            "min_top1_agreement",
        ),
        (
            {"gate": compare_pb2.PromotionGate(basis=7)},  # type: ignore[arg-type]
            grpc.StatusCode.INVALID_ARGUMENT,
            "gate.basis: is 7, which GateBasis does not define; give one of GATE_BASIS_POINT, GATE_BASIS_INTERVAL_BOUND",
        ),
        (
            {
                "slices": [
                    compare_pb2.HeldOutSlice(
                        corpus=common_pb2.CorpusSource(uri=common_pb2.ArtifactRef(uri="/etc/hostname"))
                    )
                ]
            },
            grpc.StatusCode.PERMISSION_DENIED,
            "--read-root",
        ),
    ],
)
def test_bad_requests_get_the_right_code(
    services: Services, change: dict[str, object], code: grpc.StatusCode, words: str
) -> None:
    request = compare_pb2.CompareModelsRequest(
        teachers=[compare_pb2.ModelRef(name=MODEL, version=1)],
        student=compare_pb2.ModelRef(name=MODEL, version=2),
        slices=[compare_pb2.HeldOutSlice(corpus=common_pb2.CorpusSource(texts=common_pb2.TextBatch(texts=HELD_OUT)))],
        bootstrap_samples=10,
    )
    for name, value in change.items():
        if isinstance(value, list):
            del getattr(request, name)[:]
            getattr(request, name).extend(value)
        elif isinstance(value, float):
            setattr(request, name, value)
        else:
            getattr(request, name).CopyFrom(value)
    with pytest.raises(grpc.RpcError) as error:
        services.compare.CompareModels(request, timeout=60)
    assert error.value.code() == code
    assert words in error.value.details()


def test_a_model_of_the_repository_that_is_not_loaded_is_loaded_for_the_comparison(services: Services) -> None:
    from driftlm.v1 import inference_pb2

    services.inference.UnloadModel(inference_pb2.UnloadModelRequest(name="distilled"))
    result = _compare(services, [(MODEL, 1)], "distilled")
    assert result.student.name == "distilled" and result.student.version == 1 and result.overall.positions > 0
    # Loaded for the call only: the inference service serves what it served before.
    loaded = {m.name for m in services.inference.ListModels(inference_pb2.ListModelsRequest()).models}
    assert "distilled" not in loaded and MODEL in loaded


def test_unknown_comparison_ids_are_not_found(services: Services) -> None:
    for comparison_id in ("cmp-0000000000000000", "../../etc/passwd", ""):
        with pytest.raises(grpc.RpcError) as error:
            services.compare.GetComparison(compare_pb2.GetComparisonRequest(comparison_id=comparison_id))
        assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_the_loops_default_gate_passes_a_distilled_student_and_refuses_a_scrambled_one(services: Services) -> None:
    """The gate `driftlm run` uses by default (top-1 agreement >= 0.5), on a student really
    distilled from its teacher and on one that keeps the encoder but scrambles its answers."""
    from driftlm.loop.promotion import GateOptions

    threshold = GateOptions().min_top1_agreement
    assert threshold == 0.5
    distilled = _compare(services, [(MODEL, 1)], "distilled", min_top1_agreement=threshold)
    scrambled = _compare(services, [(MODEL, 1)], "shuffled", min_top1_agreement=threshold)
    assert distilled.gate.passed and distilled.overall.top1_agreement.value >= threshold, distilled.gate.reasons
    assert not scrambled.gate.passed


def test_the_gate_on_the_intervals_bound_needs_the_whole_interval_above_the_threshold(services: Services) -> None:
    """A threshold between the distilled student's lower bound and its point estimate passes on
    the point and fails on the bound; the reason says which it checked."""
    point = _compare(services, [(MODEL, 1)], "distilled")
    agreement = point.overall.top1_agreement
    assert agreement.low < agreement.value
    between = (agreement.low + agreement.value) / 2
    on_point = _compare(services, [(MODEL, 1)], "distilled", min_top1_agreement=between)
    on_bound = _compare(
        services,
        [(MODEL, 1)],
        "distilled",
        min_top1_agreement=between,
        basis=compare_pb2.GATE_BASIS_INTERVAL_BOUND,
    )
    assert on_point.gate.passed and not on_bound.gate.passed
    assert on_bound.gate.reasons[0].startswith(f"top-1 agreement (95% lower bound) {agreement.low:.4f} fails")
    drop = _compare(
        services, [(MODEL, 1)], "distilled", max_accuracy_drop=1.0, basis=compare_pb2.GATE_BASIS_INTERVAL_BOUND
    )
    assert drop.gate.passed and drop.gate.reasons[0].startswith("top-1 accuracy drop (95% upper bound)")
