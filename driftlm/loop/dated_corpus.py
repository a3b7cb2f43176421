"""Dated text: read records from files or a directory, parse their times, cut them into slices.

Everything is checked before any training starts: a record without the time or text field,
a time that does not parse, a file that is not what its extension says, an empty slice; each
error names the file and the line.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path

from dateutil import parser as dateutil_parser

from driftlm.services.core.corpus import CorpusError, CorpusFormat, format_of, read_records, text_of

SLICINGS = ("year", "quarter", "month", "day")
_SUPPORTED = (CorpusFormat.JSONL, CorpusFormat.CSV, CorpusFormat.PARQUET)
# Twitter's created_at, and a few other layouts seen in dumps.
_LAYOUTS = ("%a %b %d %H:%M:%S %z %Y", "%Y/%m/%d", "%d.%m.%Y", "%Y-%m-%d %H:%M:%S %z")


class DatasetError(ValueError):
    """The data cannot be used; the message names the file and line, or the slice."""


@dataclass(frozen=True)
class DatedText:
    """One record: when, what, and where it came from."""

    time: datetime
    text: str
    source: str  # "path line 17"
    # The record's label, for a labelled task set; "" otherwise.
    label: str = ""


@dataclass(frozen=True)
class Slice:
    """A period's texts, split into what models train on and what they are evaluated on."""

    label: str
    train: list[str]
    heldout: list[str]


def parse_time(value: object) -> datetime:
    """A timezone-aware datetime (UTC when the value names no zone).

    Numbers: a year (1000-9999), a compact date YYYYMMDD (a valid date from 1900 to 2199), else
    Unix seconds, or milliseconds above 1e11; digits in a string read the same. Text: ISO 8601,
    Twitter's created_at layout, RFC 2822, then whatever dateutil reads ("2019-03" is March 1,
    "2019-03-05 10:00:00 UTC", "March 5, 2019"); missing parts are the earliest (month 1, day 1).

    Raises:
        ValueError: none of these applies.
    """
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a time")
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, int | float):
        return _from_number(value)
    text = str(value).strip()
    if text.lstrip("-").replace(".", "", 1).isdigit():
        return _from_number(float(text) if "." in text else int(text))
    parsed = _from_layouts(text)
    if parsed is None:
        try:
            parsed = dateutil_parser.parse(text, default=datetime(2000, 1, 1))
        except (ValueError, OverflowError) as error:
            raise ValueError(
                f"{text!r} is not a date or time this reader knows (ISO 8601, RFC 2822, Unix seconds, "
                "YYYYMMDD, or a date dateutil reads)"
            ) from error
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _from_number(value: float) -> datetime:
    """A year, a YYYYMMDD date, or Unix seconds (milliseconds above 1e11)."""
    if float(value).is_integer():
        whole = int(value)
        if 1000 <= whole <= 9999:
            return datetime(whole, 1, 1, tzinfo=UTC)
        if 19000101 <= whole <= 21991231:
            try:
                return datetime(whole // 10000, whole // 100 % 100, whole % 100, tzinfo=UTC)
            except ValueError:
                pass  # not a calendar date: Unix seconds after all
    seconds = value / 1000 if abs(value) > 1e11 else value
    return datetime.fromtimestamp(seconds, UTC)


def _from_layouts(text: str) -> datetime | None:
    """ISO 8601, Twitter's layout or RFC 2822; None when the text is none of them."""
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        pass
    for layout in _LAYOUTS:
        try:
            return datetime.strptime(text, layout)
        except ValueError:
            continue
    try:
        return parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None


def corpus_files(path: Path) -> list[Path]:
    """The file, or every JSONL/CSV/Parquet file under the directory (sorted)."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DatasetError(f"{path}: no such file or directory")
    files = sorted(
        p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".") and format_of(p) in _SUPPORTED
    )
    if not files:
        raise DatasetError(f"{path}: no .jsonl, .csv or .parquet files (gzipped or not) in it")
    return files


def read_dated(path: Path, *, time_field: str, text_field: str, label_field: str = "") -> list[DatedText]:
    """Every record of the file or directory, sorted by time (stable); with label_field, each
    record's label too (a labelled task set).

    Raises:
        DatasetError: see the module docstring.
    """
    records: list[DatedText] = []
    for file in corpus_files(path):
        if format_of(file) not in _SUPPORTED:
            raise DatasetError(f"{file}: dated text needs JSONL, CSV or Parquet (by extension), not plain text")
        try:
            fields = [time_field, text_field, *([label_field] if label_field else [])]
            for record in read_records(file, fields):
                try:
                    when = parse_time(record.values[time_field])
                except (ValueError, OverflowError, OSError) as error:
                    raise DatasetError(f"{file} {record.location}: field {time_field!r}: {error}") from error
                label = str(record.values[label_field]) if label_field else ""
                records.append(DatedText(when, text_of(record, text_field, file), f"{file} {record.location}", label))
        except CorpusError as error:
            raise DatasetError(str(error)) from error
        except FileNotFoundError as error:
            raise DatasetError(f"{file}: no such file") from error
    if not records:
        raise DatasetError(f"{path}: no records")
    return sorted(records, key=lambda r: r.time)


def _period(time: datetime, slicing: str) -> str:
    if slicing == "year":
        return f"{time.year}"
    if slicing == "quarter":
        return f"{time.year}-Q{(time.month - 1) // 3 + 1}"
    if slicing == "month":
        return f"{time.year}-{time.month:02d}"
    return time.date().isoformat()


def by_period(records: Sequence[DatedText], slicing: str) -> dict[str, list[DatedText]]:
    """Records grouped by calendar period (year, quarter, month or day), in time order.

    Raises:
        DatasetError: slicing is a count of texts, which does not line up with another data set.
    """
    if slicing not in SLICINGS:
        raise DatasetError(f"a labelled task set needs calendar slices ({', '.join(SLICINGS)}), not --slice {slicing}")
    groups: dict[str, list[DatedText]] = {}
    for record in records:
        groups.setdefault(_period(record.time, slicing), []).append(record)
    return groups


def _groups(records: Sequence[DatedText], slicing: str) -> Iterator[tuple[str, list[DatedText]]]:
    if slicing.isdigit():
        size = int(slicing)
        if size < 1:
            raise DatasetError("--slice N needs N >= 1")
        for start in range(0, len(records), size):
            chunk = list(records[start : start + size])
            yield f"{chunk[0].time.date().isoformat()}..{chunk[-1].time.date().isoformat()}", chunk
        return
    if slicing not in SLICINGS:
        raise DatasetError(f"--slice must be one of {', '.join(SLICINGS)} or a number of texts, got {slicing!r}")
    current: list[DatedText] = []
    for record in records:
        if current and _period(record.time, slicing) != _period(current[0].time, slicing):
            yield _period(current[0].time, slicing), current
            current = []
        current.append(record)
    if current:
        yield _period(current[0].time, slicing), current


def _is_heldout(text: str, index: int, fraction: float) -> bool:
    """A stable coin: the same text at the same position is always held out, or never."""
    digest = hashlib.sha256(f"{index}\0{text}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "little") / 2**64 < fraction


def split_slice(label: str, texts: list[str], *, heldout_fraction: float, heldout_max: int) -> Slice | None:
    """The texts split by a stable coin into training and at most heldout_max held-out texts;
    None when either part would be empty."""
    held = {i for i, t in enumerate(texts) if _is_heldout(t, i, heldout_fraction)}
    held = set(sorted(held)[:heldout_max])
    heldout = [t for i, t in enumerate(texts) if i in held]
    train = [t for i, t in enumerate(texts) if i not in held]
    if not heldout or not train:
        return None
    return Slice(label, train, heldout)


def cut_slices(records: Sequence[DatedText], slicing: str, *, heldout_fraction: float, heldout_max: int) -> list[Slice]:
    """Slices in time order, each with at most heldout_max held-out texts.

    Raises:
        DatasetError: fewer than two slices, or a slice without text to train on or to evaluate.
    """
    slices = []
    for label, group in _groups(records, slicing):
        texts = [r.text for r in group if r.text.strip()]
        if not texts:
            raise DatasetError(
                f"slice {label} ({group[0].source} to {group[-1].source}) has no text, only empty records"
            )
        item = split_slice(label, texts, heldout_fraction=heldout_fraction, heldout_max=heldout_max)
        if item is None:
            raise DatasetError(
                f"slice {label} has {len(texts)} texts: too few to hold some out for evaluation and train on the rest; "
                "use a coarser --slice"
            )
        slices.append(item)
    if len(slices) < 2:
        raise DatasetError(
            f"the data makes {len(slices)} slice(s) by {slicing}; the loop needs at least two: use a finer --slice"
        )
    return slices
