"""The loop's state file as typed records: what is written reads back the same, the first slice
keeps the report's shape (no comparisons, no serving), and a file of another format is refused."""

from __future__ import annotations

import pytest

from driftlm.loop.state import (
    STATE_FORMAT,
    ArmKind,
    ArmRecord,
    BaseRecord,
    PipelineState,
    SliceRecord,
    adaptive_arm,
    arm_names,
    arm_strategy,
)
from driftlm.services.core.strategy import Strategy


def _state() -> PipelineState:
    first = SliceRecord("2016", 400, 40, None, {"version": "v0", "added": []}, {}, evaluated=False)
    later = SliceRecord(
        "2017",
        380,
        38,
        {"fired": True},
        {"version": "v1", "added": ["snapchat"]},
        {"static": {"pll": -6.1}},
        comparisons={"a vs b": {"mean": 0.1}},
        serving=None,
    )
    return PipelineState(
        base=BaseRecord("/models/minilm", "c0", "v0", True, 100),
        vocab_version="v1",
        arms={"static": ArmRecord("c1", 1000, 2.5), "incremental+vocab": ArmRecord("c2", 2000, 5.0)},
        first_observation="o0",
        previous_observation="o1",
        slices=[first, later],
        student="s1",
    )


def test_the_state_reads_back_as_it_was_written() -> None:
    state = _state()
    record = state.to_json()
    assert record["format"] == STATE_FORMAT and "served" not in record and record["student"] == "s1"
    assert PipelineState.from_json(record) == state
    first, later = record["slices"]
    assert "comparisons" not in first and "serving" not in first  # the report's first slice
    assert later["serving"] is None and later["comparisons"] == {"a vs b": {"mean": 0.1}}


def test_a_file_of_another_format_is_refused() -> None:
    with pytest.raises(ValueError, match=STATE_FORMAT):
        PipelineState.from_json({**_state().to_json(), "format": "driftlm.report/v1"})


def test_arms_are_named_by_kind_and_strategy() -> None:
    one = (Strategy.TOKEN_EMBEDDING_SHIFT,)
    two = (Strategy.TOKEN_EMBEDDING_SHIFT, Strategy.TOKEN_MLM_LOSS)
    assert arm_names(one, scratch=False) == ["static", "incremental", "incremental+vocab"]
    names = arm_names(two, scratch=True)
    assert names == ["static", "incremental", "incremental+vocab:token-shift", "incremental+vocab:mlm-loss", "scratch"]
    assert adaptive_arm(two) == names[2] and adaptive_arm(one) == "incremental+vocab"
    assert [ArmKind.of(n) for n in names] == [
        ArmKind.STATIC,
        ArmKind.INCREMENTAL,
        ArmKind.ADAPTIVE,
        ArmKind.ADAPTIVE,
        ArmKind.SCRATCH,
    ]
    assert arm_strategy(names[3], Strategy.UNIFORM) is Strategy.TOKEN_MLM_LOSS
    assert arm_strategy("incremental+vocab", Strategy.UNIFORM) is Strategy.UNIFORM
