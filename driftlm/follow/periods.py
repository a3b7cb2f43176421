"""How `driftlm follow` cuts an unbounded stream into slices: calendar periods by event time, or
runs of N texts in arrival order.

A calendar slice closes when the watermark (the newest event time seen, minus the allowed
lateness) passes its end; a count slice closes when it holds N texts. Labels sort in time order.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

CALENDAR = ("day", "week", "month", "quarter", "year")


class SlicingError(ValueError):
    """The --slice value is neither a calendar period nor a positive number of texts."""


@dataclass(frozen=True)
class SlicePlan:
    """A calendar period (`period`) or a number of texts (`texts`) per slice."""

    period: str = ""
    texts: int = 0

    @classmethod
    def parse(cls, value: str) -> SlicePlan:
        """`day|week|month|quarter|year` or a positive integer."""
        value = value.strip().lower()
        if value in CALENDAR:
            return cls(period=value)
        if value.isdigit() and int(value) > 0:
            return cls(texts=int(value))
        raise SlicingError(f"--slice must be one of {', '.join(CALENDAR)} or a positive number of texts, not {value!r}")

    @property
    def by_count(self) -> bool:
        return self.texts > 0

    def label_of(self, time: datetime) -> str:
        """The calendar slice a time falls in (UTC)."""
        start = self.start_of(time)
        if self.period == "year":
            return f"{start.year}"
        if self.period == "quarter":
            return f"{start.year}-Q{(start.month - 1) // 3 + 1}"
        if self.period == "month":
            return f"{start.year}-{start.month:02d}"
        if self.period == "week":
            year, week, _ = start.isocalendar()
            return f"{year}-W{week:02d}"
        return start.date().isoformat()

    def start_of(self, time: datetime) -> datetime:
        """The first instant of the period holding `time`."""
        time = time.astimezone(UTC)
        day = datetime(time.year, time.month, time.day, tzinfo=UTC)
        if self.period == "day":
            return day
        if self.period == "week":
            return day - timedelta(days=day.weekday())
        if self.period == "month":
            return day.replace(day=1)
        if self.period == "quarter":
            return day.replace(month=(day.month - 1) // 3 * 3 + 1, day=1)
        if self.period == "year":
            return day.replace(month=1, day=1)
        raise SlicingError(f"a slice of {self.texts} texts has no calendar start")

    def end_of(self, time: datetime) -> datetime:
        """The first instant after the period holding `time`."""
        start = self.start_of(time)
        if self.period == "day":
            return start + timedelta(days=1)
        if self.period == "week":
            return start + timedelta(days=7)
        months = {"month": 1, "quarter": 3, "year": 12}[self.period]
        month = start.month - 1 + months
        return start.replace(year=start.year + month // 12, month=month % 12 + 1)

    def count_label(self, index: int) -> str:
        """The label of the index-th (0-based) slice of N texts."""
        return f"texts-{index + 1:06d}"


def parse_duration(value: str) -> timedelta:
    """`0`, `90s`, `30m`, `6h`, `2d` or `1w`.

    Raises:
        SlicingError: anything else.
    """
    text = value.strip().lower()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
    try:
        if text in ("0", ""):
            return timedelta(0)
        amount, unit = float(text[:-1]), text[-1]
        if unit not in units or amount < 0 or amount != amount:
            raise ValueError(value)
    except ValueError:
        raise SlicingError(f"a duration is a number and a unit (s, m, h, d, w), e.g. 6h or 2d; not {value!r}") from None
    return timedelta(seconds=amount * units[unit])
