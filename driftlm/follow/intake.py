"""The intake: every file of the source read exactly once into per-slice spools, with a durable
manifest of what was read.

    <state>/intake/manifest.json          each file: size, version, status, counts; the watermark
    <state>/intake/spool/<slice>/<key>.jsonl   a file's records of that slice ({"time", "text"})
    <state>/intake/rejected/<key>.jsonl   its records without a usable time or text, and why

A file is taken in one commit: its spools and rejects are written (temporary file, fsync, rename),
then the manifest names it. A crash in between leaves spools no manifest names, which are
ignored and rewritten identically on the retry, so no record is lost or counted twice. A
consumed file that changes later (size or version) is reported as rewritten, never re-read; a
file that does not parse is reported and retried only when it changes. A record whose slice has
closed already is late: counted, and spooled into the oldest open slice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from driftlm.follow.periods import SlicePlan
from driftlm.follow.sources import Source, SourceFile, SourceUnavailableError
from driftlm.loop.dated_corpus import parse_time
from driftlm.services.core import store
from driftlm.services.core.corpus import CorpusError, read_records

_LOG = logging.getLogger("driftlm.follow")
MANIFEST_FORMAT = "driftlm.follow-manifest/v1"
CONSUMED, UNREADABLE = "consumed", "unreadable"


@dataclass
class PollReport:
    """What one poll of the source found."""

    consumed: list[str] = field(default_factory=list)
    unreadable: dict[str, str] = field(default_factory=dict)
    rewritten: list[str] = field(default_factory=list)
    records: int = 0
    late: int = 0
    rejected: int = 0
    source_error: str = ""


def _key(name: str) -> str:
    """A file's spool name: its name's hash (names may hold any character)."""
    return hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:24]


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8", "surrogatepass")


class Intake:
    """The manifest and spools under `directory`."""

    def __init__(
        self, directory: Path, plan: SlicePlan, *, lateness: timedelta, time_field: str, text_field: str
    ) -> None:
        self.directory = directory
        self.plan = plan
        self.lateness = lateness
        self.time_field = time_field
        self.text_field = text_field
        self._path = directory / "manifest.json"
        self.manifest: dict[str, Any] = (
            store.read_json(self._path)
            if self._path.exists()
            else {
                "format": MANIFEST_FORMAT,
                "files": {},
                "rewritten": {},
                "newest_event_time": None,
                "accepted": 0,
                "late": 0,
                "rejected": 0,
                "open": {},
            }
        )
        if self.manifest.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"{self._path} is not a {MANIFEST_FORMAT} file")

    # What is there ------------------------------------------------------------------------------

    @property
    def watermark(self) -> datetime | None:
        """The newest event time seen minus the allowed lateness; None before any record."""
        newest = self.manifest["newest_event_time"]
        return None if newest is None else datetime.fromisoformat(newest) - self.lateness

    def open_slices(self) -> dict[str, int]:
        """Texts spooled per slice not yet closed."""
        return dict(self.manifest["open"])

    def closable(self) -> list[str]:
        """The open slices that can close now, oldest first: past the watermark, or full."""
        held = set(self.manifest.get("held", []))
        labels = sorted(label for label in self.manifest["open"] if label not in held)
        if self.plan.by_count:
            return [label for label in labels if self.manifest["open"][label] >= self.plan.texts]
        watermark = self.watermark
        if watermark is None:
            return []
        return [label for label in labels if self._end(label) <= watermark]

    def _end(self, label: str) -> datetime:
        return datetime.fromisoformat(self.manifest["slice_ends"][label])

    def hold(self, label: str) -> None:
        """Keep a slice too small to use open: its texts join the next slice that closes."""
        self.manifest.setdefault("held", []).append(label)
        self._save()

    def _with_held(self, label: str) -> list[str]:
        """The held slices before `label`, then the label: what closing it takes."""
        return [held for held in sorted(self.manifest.get("held", [])) if held < label] + [label]

    def texts(self, label: str) -> list[str]:
        """The slice's texts (after those of the held slices before it), file by file in the order
        the files were consumed."""
        return [text for part in self._with_held(label) for text in self._spooled(part)]

    def _spooled(self, label: str) -> list[str]:
        files = sorted(
            (entry for entry in self.manifest["files"].values() if entry["status"] == CONSUMED),
            key=lambda entry: entry["sequence"],
        )
        texts: list[str] = []
        for entry in files:
            path = self.directory / "spool" / label / f"{entry['key']}.jsonl"
            if path.exists():
                texts += [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines()]
        return texts

    def close(self, label: str) -> None:
        """The slice (and the held ones before it) closed: later records of its period are late;
        its spool goes."""
        parts = self._with_held(label)
        for part in parts:
            self.manifest["open"].pop(part, None)
            self.manifest.setdefault("closed", []).append(part)
        self.manifest["held"] = [held for held in self.manifest.get("held", []) if held not in parts]
        self._save()
        for part in parts:
            shutil.rmtree(self.directory / "spool" / part, ignore_errors=True)

    def closed(self) -> list[str]:
        return list(self.manifest.get("closed", []))

    # Reading the source -------------------------------------------------------------------------

    def poll(self, source: Source) -> PollReport:
        """Take every new file of the source (a listing error is reported, never raised)."""
        report = PollReport()
        try:
            listed = source.list()
        except SourceUnavailableError as error:
            report.source_error = str(error)
            _LOG.warning("source unavailable", extra={"source": source.description, "error": str(error)})
            return report
        for item in listed:
            known = self.manifest["files"].get(item.name)
            if known is not None and (known["size"], known["version"]) == (item.size, item.version):
                continue
            if known is not None and known["status"] == CONSUMED:
                self._report_rewritten(item, report)
                continue
            try:
                self._take(source, item, report)
            except SourceUnavailableError as error:
                report.source_error = str(error)
                _LOG.warning("file unavailable", extra={"file": item.name, "error": str(error)})
        return report

    def _report_rewritten(self, item: SourceFile, report: PollReport) -> None:
        seen = self.manifest["rewritten"].get(item.name)
        if seen is not None and (seen["size"], seen["version"]) == (item.size, item.version):
            return
        self.manifest["rewritten"][item.name] = {"size": item.size, "version": item.version}
        self._save()
        report.rewritten.append(item.name)
        _LOG.warning(
            "file rewritten after it was consumed; not read again (drop new text as new files)",
            extra={"file": item.name, "size": item.size},
        )

    def _take(self, source: Source, item: SourceFile, report: PollReport) -> None:
        cache = self.directory / "cache"
        path = source.fetch(item, cache)
        key = _key(item.name)
        entry: dict[str, Any] = {"size": item.size, "version": item.version, "key": key}
        try:
            spools, rejected, newest = self._read(path)
        except (CorpusError, OSError, EOFError) as error:
            problem = str(error) if isinstance(error, CorpusError) else f"cannot be read ({type(error).__name__})"
            self.manifest["files"][item.name] = {**entry, "status": UNREADABLE, "error": problem, "sequence": -1}
            self._save()
            report.unreadable[item.name] = problem
            _LOG.warning("file does not parse; retried when it changes", extra={"file": item.name, "error": problem})
            return
        finally:
            if path.is_relative_to(cache):  # a downloaded copy: read once, not kept
                shutil.rmtree(path.parent, ignore_errors=True)
        late = self._place_late(spools)
        for label, rows in spools.items():
            store.write_bytes_atomically(self.directory / "spool" / label / f"{key}.jsonl", _jsonl(rows))
        if rejected:
            store.write_bytes_atomically(self.directory / "rejected" / f"{key}.jsonl", _jsonl(rejected))
        accepted = sum(len(rows) for rows in spools.values())
        self.manifest["files"][item.name] = {
            **entry,
            "status": CONSUMED,
            "records": accepted,
            "late": late,
            "rejected": len(rejected),
            "sequence": 1 + max((f.get("sequence", -1) for f in self.manifest["files"].values()), default=0),
        }
        for label, rows in spools.items():
            self.manifest["open"][label] = self.manifest["open"].get(label, 0) + len(rows)
        if newest is not None and (self.manifest["newest_event_time"] is None or newest > self._newest()):
            self.manifest["newest_event_time"] = newest.isoformat()
        self.manifest["accepted"] += accepted
        self.manifest["late"] += late
        self.manifest["rejected"] += len(rejected)
        self._save()
        report.consumed.append(item.name)
        report.records += accepted
        report.late += late
        report.rejected += len(rejected)
        _LOG.info(
            "file consumed",
            extra={"file": item.name, "records": accepted, "late": late, "rejected": len(rejected)},
        )

    def _newest(self) -> datetime:
        return datetime.fromisoformat(self.manifest["newest_event_time"])

    def _read(self, path: Path) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]], datetime | None]:
        """The file's records by slice, its rejects, and its newest event time."""
        spools: dict[str, list[dict[str, Any]]] = {}
        rejected: list[dict[str, Any]] = []
        newest: datetime | None = None
        ends = self.manifest.setdefault("slice_ends", {})
        position = self.manifest["accepted"]
        fields = [self.time_field, self.text_field]
        for record in read_records(path, fields, required=()):
            raw_time, text = record.values[self.time_field], record.values[self.text_field]
            if not isinstance(text, str):
                rejected.append({"location": record.location, "reason": f"field {self.text_field!r} is not text"})
                continue
            try:
                when = parse_time(raw_time) if raw_time is not None else None
            except (ValueError, OverflowError, OSError) as error:
                rejected.append({"location": record.location, "reason": str(error)[:200], "text": text})
                continue
            if when is None:
                rejected.append({"location": record.location, "reason": f"no {self.time_field!r}", "text": text})
                continue
            if not text.strip():
                continue  # an empty record holds nothing to train on or to lose
            if self.plan.by_count:
                label = self.plan.count_label(position // self.plan.texts)
                position += 1
            else:
                label = self.plan.label_of(when)
                ends.setdefault(label, self.plan.end_of(when).isoformat())
            spools.setdefault(label, []).append({"time": when.isoformat(), "text": text})
            newest = when if newest is None or when > newest else newest
        return spools, rejected, newest

    def _place_late(self, spools: dict[str, list[dict[str, Any]]]) -> int:
        """Move the records of closed slices into the oldest open one (or the oldest of this file's
        own slices when nothing is open); returns how many were late."""
        closed = set(self.closed())
        late_labels = [label for label in spools if label in closed]
        if not late_labels:
            return 0
        open_labels = sorted((set(self.manifest["open"]) | set(spools)) - closed)
        if not open_labels:
            # Every record of the file is late and nothing is open: the newest closed slice's
            # successor takes them, a slice of their own that the next watermark closes.
            last = max(closed)
            open_labels = [f"{last}+late"]
            self.manifest["slice_ends"][open_labels[0]] = self.manifest["slice_ends"][last]
        target = open_labels[0]
        moved = 0
        for label in late_labels:
            rows = spools.pop(label)
            spools.setdefault(target, []).extend(rows)
            moved += len(rows)
        return moved

    def _save(self) -> None:
        store.write_json_atomically(self._path, self.manifest)

    def summary(self) -> dict[str, Any]:
        """Counts for metrics and the report."""
        statuses = Counter(entry["status"] for entry in self.manifest["files"].values())
        return {
            "files_consumed": statuses[CONSUMED],
            "files_unreadable": statuses[UNREADABLE],
            "files_rewritten": len(self.manifest["rewritten"]),
            "records": self.manifest["accepted"],
            "late": self.manifest["late"],
            "rejected": self.manifest["rejected"],
        }
