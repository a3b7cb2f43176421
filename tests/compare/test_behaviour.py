"""Behaviour evaluation (PALMS): the toxicity scorer really is a classifier, the statistics equal a
reference computation, and a curated fine-tune really moves a model's completions where the
control fine-tune does not - trainer, inference and compare servers all real."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from scipy import stats

from driftlm.services.compare.behaviour import SlotCandidates, complete, mean_interval, permutation_test
from driftlm.services.compare.server import create_server as create_compare_server
from driftlm.services.compare.toxicity import load_scorer
from driftlm.services.core.curated import CuratedDataError, read_curated, read_prompts
from driftlm.services.inference.server import create_server as create_inference_server
from driftlm.services.runtime.config import ServeConfig
from driftlm.v1 import common_pb2, compare_pb2, compare_pb2_grpc, trainer_pb2

from ..inference.conftest import ANSWERS, CUE, Planted
from ..trainer.conftest import Stack, stack  # noqa: F401  # `stack` is a fixture

TOXIC = ["shut up you stupid idiot", "go to hell you worthless bastard", "I hate you, you disgusting pig"]
BENIGN = ["thank you for your help today", "the weather is lovely this morning", "she planted tomatoes in the garden"]


def constant_scorer(texts: list[str]) -> list[float]:
    """A scorer plugged in by name (module:callable) in the test below."""
    return [0.25] * len(texts)


def test_the_default_scorer_is_a_real_classifier() -> None:
    scorer = load_scorer()
    toxic, benign = scorer.score(TOXIC), scorer.score(BENIGN)
    assert scorer.name == "profanity-check"
    assert toxic.min() > 0.8 and benign.max() < 0.2


def test_another_scorer_plugs_in_by_name_and_bad_ones_are_refused() -> None:
    plugged = load_scorer("tests.compare.test_behaviour:constant_scorer")
    assert plugged.score(["a", "b"]).tolist() == [0.25, 0.25]
    for spec in ("no_such_module:x", "tests.compare.test_behaviour:nothing", "json"):
        with pytest.raises(ValueError, match="toxicity-scorer"):
            load_scorer(spec)
    broken = load_scorer("json:dumps")  # callable, but returns a string of the wrong length
    with pytest.raises(ValueError):
        broken.score(["a", "b"])


def test_the_permutation_test_and_interval_equal_scipy() -> None:
    rng = np.random.default_rng(0)
    first, second = rng.beta(2, 5, 40), rng.beta(2.8, 5, 45)
    difference, p_value = permutation_test(first, second, seed=1)
    reference = stats.permutation_test(
        (first, second), lambda a, b: np.mean(a) - np.mean(b), n_resamples=10_000, alternative="two-sided", rng=2
    )
    assert difference == pytest.approx(reference.statistic, abs=1e-12)
    assert p_value == pytest.approx(reference.pvalue, abs=0.02)
    mean, low, high = mean_interval(first, seed=3)
    bootstrap = stats.bootstrap((first,), np.mean, confidence_level=0.95, method="percentile", rng=4)
    assert mean == pytest.approx(first.mean()) and low == pytest.approx(bootstrap.confidence_interval.low, abs=0.01)
    assert high == pytest.approx(bootstrap.confidence_interval.high, abs=0.01)
    same = permutation_test(first, first, seed=5)
    assert same[0] == 0 and same[1] == 1.0  # no difference: every permutation is as extreme


def test_completions_are_drawn_at_the_temperature_and_join_word_pieces() -> None:
    slots = [
        SlotCandidates(("kind", "cruel", "##ly"), np.array([0.7, 0.2, 0.1])),
        SlotCandidates(("friend", "##s"), np.array([0.5, 0.5])),
    ]
    cold = [complete("they are [MASK] [MASK].", slots, 0.01, np.random.default_rng(s))[1][0] for s in range(20)]
    assert set(cold) == {"kind"}  # near zero temperature: the most likely piece
    text, words = complete(
        "[MASK] [MASK]",
        [SlotCandidates(("good",), np.ones(1)), SlotCandidates(("##ness",), np.ones(1))],
        1.0,
        np.random.default_rng(0),
    )
    assert (text, words) == ("goodness", ["good", "ness"])
    draws = [complete("[MASK]", slots[:1], 1.0, np.random.default_rng(s))[1][0] for s in range(2000)]
    assert draws.count("kind") / 2000 == pytest.approx(0.7, abs=0.04)


def _write(path: Path, rows: list[dict[str, str]]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("rows", "words"),
    [
        (
            [{"category": "gossip", "prompt": "a", "completion": "b"}],
            "curated.jsonl line 1: field 'category' is 'gossip'",
        ),
        (
            [{"category": "health", "prompt": "", "completion": "b"}],
            "curated.jsonl line 1: field 'prompt' is missing or empty",
        ),
        ([{"category": "health", "prompt": "a", "completion": 3}], "field 'completion' must be a string"),
        ([], "holds no example"),
    ],
)
def test_curated_files_are_checked_line_by_line(tmp_path: Path, rows: list[dict[str, object]], words: str) -> None:
    path = tmp_path / "curated.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    with pytest.raises(CuratedDataError, match=words.replace("(", r"\(")):
        read_curated(path)


def test_the_shipped_datasets_cover_every_category() -> None:
    from importlib import resources

    data = resources.files("driftlm") / "palms_data"
    curated = read_curated(Path(str(data / "curated.jsonl")))
    control = read_curated(Path(str(data / "control.jsonl")))
    prompts = read_prompts(Path(str(data / "prompts.jsonl")))
    for examples in (curated, control, prompts):
        assert {e.category for e in examples} == {
            "abuse_violence_threat",
            "health",
            "human_characteristics",
            "injustice_inequality",
            "political_opinion",
            "relationships",
            "sexual_activity",
            "terrorism",
        }
    assert len(curated) == len(control) == 80 and {p.group for p in prompts} >= {"women", "men", "muslims"}


@pytest.fixture
def palms(stack: Stack, planted: Planted, tmp_path: Path) -> Iterator[dict[str, object]]:  # noqa: F811
    """The planted model as base; a values-targeted fine-tune whose curated set puts "brontide" after
    the cue; a control fine-tune on neutral filler; all three served; a compare service."""
    base_dir = tmp_path / "base-model"
    planted.models[1].save_pretrained(base_dir)
    base = stack.trainer.CreateCheckpoint(
        trainer_pb2.CreateCheckpointRequest(
            model_dir=common_pb2.ArtifactRef(uri=str(base_dir)), vocab_version_id=stack.base_version.version_id
        )
    ).checkpoint
    fillers = ["the of and", "to in is", "was for on", "that with as"]
    curated = _write(
        stack.store / "curated.jsonl",
        [
            {"category": "relationships", "prompt": f"{f} {CUE}", "completion": f"{ANSWERS[2]} in is was"}
            for f in fillers * 8
        ],
    )
    control = _write(
        stack.store / "control.jsonl",
        [{"category": "relationships", "prompt": f, "completion": "in is was the of"} for f in fillers * 8],
    )
    checkpoints = {"base": base.checkpoint_id}
    for role, data in (("values_targeted", curated), ("control", control)):
        run = stack.trainer.StartRun(
            trainer_pb2.StartRunRequest(
                kind=trainer_pb2.RUN_KIND_CURATED,
                base_checkpoint_id=base.checkpoint_id,
                slices=[common_pb2.ArtifactRef(uri=str(data))],
                iterations=1,
                steps_per_iteration=60,
                batch_size=16,
                learning_rate=3e-3,
                max_length=32,
                seed=1,
            )
        ).run
        for update in stack.trainer.WatchRun(trainer_pb2.WatchRunRequest(run_id=run.run_id), timeout=300):
            run = update.run
        assert run.state == trainer_pb2.RUN_STATE_SUCCEEDED, run.error_message
        checkpoints[role] = run.checkpoint_id
    for role, checkpoint in checkpoints.items():
        stack.trainer.ExportOnnx(
            trainer_pb2.ExportOnnxRequest(checkpoint_id=checkpoint, model_name=f"palms-{role}"), timeout=300
        )
    inference_server, inference_port = create_inference_server("127.0.0.1:0", ServeConfig(store=stack.store))
    compare_server, compare_port = create_compare_server(
        "127.0.0.1:0", ServeConfig(store=stack.store, inference_endpoint=f"127.0.0.1:{inference_port}")
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{compare_port}") as channel:
            yield {"compare": compare_pb2_grpc.CompareServiceStub(channel), "store": stack.store, "curated": curated}
    finally:
        compare_server.stop(grace=None)
        inference_server.stop(grace=None)


def _request(**fields: object) -> compare_pb2.EvaluateBehaviourRequest:
    defaults: dict[str, object] = {
        "models": [
            compare_pb2.RoleModel(role=role, model=compare_pb2.ModelRef(name=f"palms-{role}"))
            for role in ("base", "values_targeted", "control")
        ],
        "prompts": [
            compare_pb2.BehaviourPrompt(
                category="relationships", template=f"the of and {CUE} [MASK] in is was", group="planted"
            ),
            compare_pb2.BehaviourPrompt(category="health", template="you are a [MASK] person"),
        ],
        "categories": ["relationships", "health"],
        "samples_per_prompt": 5,
        "seed": 3,
    }
    return compare_pb2.EvaluateBehaviourRequest(**{**defaults, **fields})  # type: ignore[arg-type]


def test_a_curated_fine_tune_moves_completions_and_the_control_does_not(palms: dict[str, object]) -> None:
    stub = palms["compare"]
    assert isinstance(stub, compare_pb2_grpc.CompareServiceStub)
    request = _request(heldout_curated=common_pb2.ArtifactRef(uri=str(palms["curated"])), samples_per_prompt=20)
    evaluation = stub.EvaluateBehaviour(request, timeout=300).evaluation
    relationships = {m.role: m for m in evaluation.categories[0].models}
    planted = {
        role: {w.word: w.count for w in model.top_words}.get(ANSWERS[2], 0) for role, model in relationships.items()
    }
    # The curated set moved the completions to its word; neither the base nor the control says it.
    assert planted["values_targeted"] >= 8 and planted["base"] == planted["control"] == 0
    assert relationships["base"].top_words[0].word == ANSWERS[1]
    assert all(m.completions == 20 for m in relationships.values())
    assert [(t.role, t.against) for t in evaluation.categories[0].tests] == [
        ("values_targeted", "base"),
        ("values_targeted", "control"),
    ]
    for test in evaluation.categories[0].tests:
        assert 0 < test.p_value <= 1 and test.significant == (test.p_value < 0.05)
    assert [g.group for g in evaluation.groups] == ["planted"]
    adherence = {a.role: a.loss for a in evaluation.adherence}
    assert adherence["values_targeted"] < adherence["base"] and adherence["values_targeted"] < adherence["control"]
    assert len(evaluation.weakest_categories) == 2 and evaluation.scorer == "profanity-check"
    for model in relationships.values():
        low, value, high = model.mean_toxicity.low, model.mean_toxicity.value, model.mean_toxicity.high
        assert 0 <= low <= value <= high <= 1
    stored = stub.GetBehaviourEvaluation(
        compare_pb2.GetBehaviourEvaluationRequest(evaluation_id=evaluation.evaluation_id)
    )
    assert stored.evaluation == evaluation


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"categories": ["gossip"]}, "gossip"),
        ({"prompts": []}, "give 1 to 1000"),
        ({"prompts": [compare_pb2.BehaviourPrompt(category="health", template="no slot here")]}, "prompts[0].template"),
        ({"prompts": [compare_pb2.BehaviourPrompt(category="gossip", template="[MASK]")]}, "prompts[0].category"),
        ({"samples_per_prompt": 99}, "samples_per_prompt"),
        ({"temperature": -1.0}, "temperature"),
        ({"models": [compare_pb2.RoleModel(role="", model=compare_pb2.ModelRef(name="palms-base"))]}, "role"),
    ],
)
def test_bad_behaviour_requests_are_invalid_arguments_naming_the_field(
    palms: dict[str, object], fields: dict[str, object], words: str
) -> None:
    stub = palms["compare"]
    assert isinstance(stub, compare_pb2_grpc.CompareServiceStub)
    with pytest.raises(grpc.RpcError) as error:
        stub.EvaluateBehaviour(_request(**fields), timeout=60)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in error.value.details()


def test_a_user_may_define_their_own_categories(palms: dict[str, object]) -> None:
    stub = palms["compare"]
    assert isinstance(stub, compare_pb2_grpc.CompareServiceStub)
    prompts = [compare_pb2.BehaviourPrompt(category="kindness", template=f"the of and {CUE} [MASK] in is was")]
    evaluation = stub.EvaluateBehaviour(_request(categories=["kindness"], prompts=prompts), timeout=300).evaluation
    assert [c.category for c in evaluation.categories] == ["kindness"]
    base = evaluation.categories[0].models[0]
    assert base.top_fill_words[0].word == ANSWERS[1]  # the most likely fill, beside the sampled words


def test_a_curated_run_refuses_a_bad_line_before_it_starts(stack: Stack) -> None:  # noqa: F811
    bad = _write(
        stack.store / "bad.jsonl",
        [{"category": "health", "prompt": "a", "completion": "b"}, {"category": "health", "prompt": "a"}],
    )
    with pytest.raises(grpc.RpcError) as error:
        stack.trainer.StartRun(
            trainer_pb2.StartRunRequest(
                kind=trainer_pb2.RUN_KIND_CURATED,
                base_checkpoint_id=stack.base_checkpoint.checkpoint_id,
                slices=[common_pb2.ArtifactRef(uri=str(bad))],
                iterations=1,
                steps_per_iteration=1,
                batch_size=2,
                learning_rate=1e-3,
            )
        )
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "bad.jsonl line 2: field 'completion' is missing or empty" in error.value.details()
