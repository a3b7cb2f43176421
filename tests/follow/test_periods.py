"""Slices by event time: labels, ends and durations."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from driftlm.follow.periods import SlicePlan, SlicingError, parse_duration


@pytest.mark.parametrize(
    ("period", "label", "end"),
    [
        ("day", "2020-02-29", datetime(2020, 3, 1, tzinfo=UTC)),
        ("week", "2020-W09", datetime(2020, 3, 2, tzinfo=UTC)),
        ("month", "2020-02", datetime(2020, 3, 1, tzinfo=UTC)),
        ("quarter", "2020-Q1", datetime(2020, 4, 1, tzinfo=UTC)),
        ("year", "2020", datetime(2021, 1, 1, tzinfo=UTC)),
    ],
)
def test_a_time_falls_in_one_period_that_ends_where_the_next_starts(period: str, label: str, end: datetime) -> None:
    plan = SlicePlan.parse(period)
    when = datetime(2020, 2, 29, 23, 59, tzinfo=UTC)
    assert plan.label_of(when) == label
    assert plan.end_of(when) == end
    assert plan.label_of(end) != label and plan.label_of(end - timedelta(microseconds=1)) == label


def test_december_and_other_zones_roll_over_correctly() -> None:
    plan = SlicePlan.parse("quarter")
    assert plan.end_of(datetime(2019, 12, 31, tzinfo=UTC)) == datetime(2020, 1, 1, tzinfo=UTC)
    # 01:00 on January 1 in UTC+2 is still December 31 in UTC.
    east = datetime(2020, 1, 1, 1, tzinfo=UTC).astimezone(__import__("zoneinfo").ZoneInfo("Europe/Athens"))
    assert SlicePlan.parse("year").label_of(east) == "2020"
    assert SlicePlan.parse("year").label_of(datetime(2020, 1, 1, 1, tzinfo=UTC) - timedelta(hours=2)) == "2019"


def test_labels_sort_in_time_order() -> None:
    plan = SlicePlan.parse("week")
    times = [datetime(2019, 12, 1, tzinfo=UTC) + timedelta(days=3 * i) for i in range(40)]
    labels = [plan.label_of(t) for t in times]
    assert labels == sorted(labels)


def test_a_count_plan_and_bad_plans() -> None:
    assert SlicePlan.parse("500").texts == 500 and SlicePlan.parse("500").count_label(0) == "texts-000001"
    for bad in ("0", "-3", "fortnight", ""):
        with pytest.raises(SlicingError, match="--slice must be"):
            SlicePlan.parse(bad)


def test_durations() -> None:
    assert parse_duration("0") == timedelta(0)
    assert parse_duration("90s") == timedelta(seconds=90)
    assert parse_duration("6h") == timedelta(hours=6)
    assert parse_duration("2d") == timedelta(days=2)
    assert parse_duration("1w") == timedelta(weeks=1)
    for bad in ("6", "h", "-1d", "two days", "nand"):
        with pytest.raises(SlicingError, match="a duration is"):
            parse_duration(bad)
