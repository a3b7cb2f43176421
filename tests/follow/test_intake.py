"""The intake: every file read once, nothing lost or counted twice, bad input reported and kept."""

from __future__ import annotations

import gzip
import json
import os
from datetime import timedelta
from pathlib import Path

import pytest

from driftlm.follow.intake import Intake
from driftlm.follow.periods import SlicePlan
from driftlm.follow.sources import DirectorySource, ObjectStoreSource, SourceUnavailableError, open_source


def _write(path: Path, rows: list[dict[str, object]], *, compress: bool = False) -> Path:
    data = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(gzip.compress(data) if compress else data)
    temporary.rename(path)  # how a writer drops a file
    return path


def _rows(month: str, count: int, word: str = "text") -> list[dict[str, object]]:
    return [{"time": f"2020-{month}-{1 + i % 28:02d}T12:00:00Z", "text": f"{word} {i} ünïcode"} for i in range(count)]


def _intake(directory: Path, plan: str = "month", lateness: timedelta = timedelta(0)) -> Intake:
    return Intake(directory, SlicePlan.parse(plan), lateness=lateness, time_field="time", text_field="text")


def test_files_are_consumed_once_and_slices_close_behind_the_watermark(tmp_path: Path) -> None:
    source = DirectorySource(tmp_path / "source")
    _write(tmp_path / "source" / "a.jsonl.gz", _rows("01", 30) + _rows("02", 5), compress=True)
    intake = _intake(tmp_path / "state")
    report = intake.poll(source)
    assert report.consumed == ["a.jsonl.gz"] and report.records == 35
    # The newest record is in February: January has closed, February has not.
    assert intake.closable() == ["2020-01"]
    assert intake.open_slices() == {"2020-01": 30, "2020-02": 5}
    assert intake.poll(source).consumed == []  # nothing new
    again = _intake(tmp_path / "state")  # a restart reads the manifest back
    assert again.poll(source).consumed == [] and again.open_slices() == {"2020-01": 30, "2020-02": 5}
    assert len(again.texts("2020-01")) == 30 and "text 0 ünïcode" in again.texts("2020-01")


def test_lateness_holds_a_slice_open_and_late_records_go_to_the_oldest_open_slice(tmp_path: Path) -> None:
    source_dir = tmp_path / "source"
    intake = _intake(tmp_path / "state", lateness=timedelta(days=3))
    _write(source_dir / "1.jsonl", [*_rows("01", 10), {"time": "2020-02-02T00:00:00Z", "text": "early february"}])
    intake.poll(DirectorySource(source_dir))
    assert intake.closable() == []  # Feb 2 minus 3 days is still January
    _write(source_dir / "2.jsonl", [{"time": "2020-02-10T00:00:00Z", "text": "mid february"}])
    intake.poll(DirectorySource(source_dir))
    assert intake.closable() == ["2020-01"]
    intake.close("2020-01")
    report = _write(source_dir / "3.jsonl", [{"time": "2020-01-20T00:00:00Z", "text": "a late january record"}])
    assert report.exists()
    polled = intake.poll(DirectorySource(source_dir))
    assert polled.late == 1 and intake.manifest["late"] == 1
    assert "a late january record" in intake.texts("2020-02")


def test_a_rewritten_file_is_reported_not_reread_and_a_broken_one_is_retried_when_it_changes(tmp_path: Path) -> None:
    source_dir = tmp_path / "source"
    intake = _intake(tmp_path / "state")
    path = _write(source_dir / "a.jsonl", _rows("01", 4))
    (source_dir / "broken.jsonl").write_text('{"time": "2020-01-02", "text": "fine"}\n{not json\n')
    first = intake.poll(DirectorySource(source_dir))
    assert first.consumed == ["a.jsonl"]
    assert "line 2" in first.unreadable["broken.jsonl"] and "not valid JSON" in first.unreadable["broken.jsonl"]
    # Rewritten after it was consumed: reported once, its new text never read.
    _write(path, _rows("01", 9, word="changed"))
    os.utime(path, ns=(1, 1))
    second = intake.poll(DirectorySource(source_dir))
    assert second.rewritten == ["a.jsonl"] and second.records == 0
    assert intake.poll(DirectorySource(source_dir)).rewritten == []
    assert not any("changed" in t for t in intake.texts("2020-01"))
    # The broken file, fixed, is read.
    _write(source_dir / "broken.jsonl", [{"time": "2020-01-02", "text": "fixed"}])
    third = intake.poll(DirectorySource(source_dir))
    assert third.consumed == ["broken.jsonl"] and "fixed" in intake.texts("2020-01")
    assert intake.summary() == {
        "files_consumed": 2,
        "files_unreadable": 0,
        "files_rewritten": 1,
        "records": 5,
        "late": 0,
        "rejected": 0,
    }


def test_records_without_a_usable_time_are_kept_aside_with_the_reason(tmp_path: Path) -> None:
    source_dir = tmp_path / "source"
    rows: list[dict[str, object]] = [
        {"time": "2020-01-05", "text": "good"},
        {"text": "no time at all"},
        {"time": "not a date", "text": "a bad time"},
        {"time": "2020-01-06", "text": ""},
    ]
    _write(source_dir / "a.jsonl", rows)
    intake = _intake(tmp_path / "state")
    report = intake.poll(DirectorySource(source_dir))
    assert report.records == 1 and report.rejected == 2
    kept = [json.loads(line) for line in next((tmp_path / "state" / "rejected").iterdir()).read_text().splitlines()]
    assert [k["text"] for k in kept] == ["no time at all", "a bad time"]
    assert kept[0]["reason"] == "no 'time'" and kept[0]["location"] == "line 2"


def test_a_crash_between_the_spool_and_the_manifest_counts_nothing_twice(tmp_path: Path) -> None:
    source_dir = tmp_path / "source"
    _write(source_dir / "a.jsonl", _rows("01", 6))
    intake = _intake(tmp_path / "state")
    intake.poll(DirectorySource(source_dir))
    # As if the process died after writing the spool and before the manifest: lose the manifest's entry.
    (tmp_path / "state" / "manifest.json").write_text(
        json.dumps({**intake.manifest, "files": {}, "accepted": 0, "open": {}})
    )
    again = _intake(tmp_path / "state")
    again.poll(DirectorySource(source_dir))
    assert again.texts("2020-01") == [f"text {i} ünïcode" for i in range(6)]


def test_a_slice_too_small_to_use_joins_the_next(tmp_path: Path) -> None:
    intake = _intake(tmp_path / "state")
    _write(tmp_path / "source" / "a.jsonl", _rows("01", 1) + _rows("02", 3) + _rows("03", 1))
    intake.poll(DirectorySource(tmp_path / "source"))
    assert intake.closable() == ["2020-01", "2020-02"]
    intake.hold("2020-01")
    assert intake.closable() == ["2020-02"]
    assert len(intake.texts("2020-02")) == 4
    intake.close("2020-02")
    assert set(intake.closed()) == {"2020-01", "2020-02"} and intake.open_slices() == {"2020-03": 1}


def test_count_slices_fill_in_arrival_order(tmp_path: Path) -> None:
    intake = _intake(tmp_path / "state", plan="4")
    _write(tmp_path / "source" / "a.jsonl", _rows("05", 6))
    _write(tmp_path / "source" / "b.jsonl", _rows("01", 3))
    intake.poll(DirectorySource(tmp_path / "source"))
    assert intake.open_slices() == {"texts-000001": 4, "texts-000002": 4, "texts-000003": 1}
    assert intake.closable() == ["texts-000001", "texts-000002"]


def test_files_in_flight_are_skipped_and_a_vanished_source_is_reported(tmp_path: Path) -> None:
    source_dir = tmp_path / "source"
    _write(source_dir / "sub" / "a.csv", [])
    (source_dir / "sub" / "a.csv").write_text("time,text\n2020-01-01,hello\n")
    (source_dir / ".hidden.jsonl").write_text("{}\n")
    (source_dir / "b.jsonl.part").write_text("{}\n")
    (source_dir / "notes.txt").write_text("not dated")
    assert [f.name for f in DirectorySource(source_dir).list()] == ["sub/a.csv"]
    source_dir.rename(tmp_path / "elsewhere")
    with pytest.raises(SourceUnavailableError, match="does not exist"):
        DirectorySource(source_dir).list()
    report = _intake(tmp_path / "state").poll(DirectorySource(source_dir))
    assert "does not exist" in report.source_error and report.consumed == []


def test_an_object_store_prefix_is_a_source(tmp_path: Path) -> None:
    import fsspec

    memory = fsspec.filesystem("memory")
    memory.pipe("/feed/2020/a.jsonl", b'{"time": "2020-01-01", "text": "from a bucket"}\n')
    memory.pipe("/feed/2020/b.jsonl.tmp", b"{}\n")
    source = open_source("memory://feed/")
    assert isinstance(source, ObjectStoreSource)
    listed = source.list()
    assert [f.name for f in listed] == ["2020/a.jsonl"] and listed[0].size > 0
    intake = _intake(tmp_path / "state")
    assert intake.poll(source).consumed == ["2020/a.jsonl"] and intake.texts("2020-01") == ["from a bucket"]
