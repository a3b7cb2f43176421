"""A real dated corpus that ships with driftlm: change entries of Debian packages, 1995-2026.

Every Debian package installs its changelog (`/usr/share/doc/<package>/changelog.Debian.gz`):
dated entries, each a list of changes in the maintainers' words. Software text drifts the way
the text driftlm is for does: new tools, formats and names arrive (`salsa`, `dh-sequence`,
`debhelper-compat`, `systemd`), old ones fade, and the style changes with the decades. The corpus
in `data/debian-changelogs.jsonl.gz` holds one record per change, `{"time", "source", "text"}`,
built by `python -m benchmarks.changelogs` from the packages of the machine it runs on (a Debian
12 image here): identical changelogs (one source, many binary packages) read once, the continuation
lines of a change joined to it, the uploaders' `[ Name ]` lines and e-mail addresses dropped, and
at most CAP_PER_SOURCE_MONTH changes of one source package in one month (the kernel's changelog
alone would otherwise be half of every year from 2019). Each package's copyright file on such a
machine (`/usr/share/doc/<package>/copyright`) says who wrote its changelog and under which
licence it is distributed.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path

CORPUS = Path(__file__).parent / "data" / "debian-changelogs.jsonl.gz"
CAP_PER_SOURCE_MONTH = 25
_TRAILER = re.compile(r" -- .*>  (.*)$")
_UPLOADER = re.compile(r"\[ .* \]")
_EMAIL = re.compile(r"<?[\w.+-]+@[\w-]+(\.[\w-]+)+>?")


@dataclass(frozen=True)
class Change:
    """One change of one package's changelog."""

    time: str  # YYYY-MM-DD
    source: str
    text: str


def load(first: str = "", last: str = "9999") -> list[Change]:
    """The shipped corpus' changes dated from `first` to `last` inclusive (prefixes of YYYY-MM-DD:
    `load("2005", "2012")` is eight years), in time order."""
    with gzip.open(CORPUS, "rt", encoding="utf-8") as file:
        records = (json.loads(line) for line in file)
        return [
            Change(r["time"], r["source"], r["text"])
            for r in records
            if r["time"][: len(first)] >= first and r["time"][: len(last)] <= last
        ]


def _changes(text: str) -> Iterator[tuple[str, str]]:
    """(date, change) of one changelog, in its order."""
    entry: list[str] = []
    current: str | None = None
    for line in text.splitlines():
        trailer = _TRAILER.match(line)
        if trailer:
            if current:
                entry.append(current)
            current = None
            try:
                day = parsedate_to_datetime(trailer.group(1).strip()).date().isoformat()
            except (TypeError, ValueError):
                entry = []
                continue
            yield from ((day, change) for change in entry)
            entry = []
            continue
        stripped = line.strip()
        if not line.startswith("  ") or not stripped:
            if current:
                entry.append(current)
            current = None
        elif stripped[0] in "*-+":
            if current:
                entry.append(current)
            current = stripped[1:].strip()
        elif _UPLOADER.fullmatch(stripped):
            if current:
                entry.append(current)
            current = None
        else:
            current = stripped if current is None else f"{current} {stripped}"


def build(doc_root: Path = Path("/usr/share/doc"), out: Path = CORPUS) -> int:
    """Write the corpus from the changelogs under doc_root; returns the number of changes."""
    seen: set[str] = set()
    changes: list[tuple[str, str, str]] = []
    for path in sorted(doc_root.glob("*/changelog.Debian.gz")):
        raw = gzip.decompress(path.read_bytes())
        digest = hashlib.sha256(raw).hexdigest()
        if digest in seen:
            continue
        seen.add(digest)
        text = raw.decode("utf-8", "replace")
        source = text.split(" ", 1)[0]
        changes.extend((day, source, change) for day, change in _changes(text))
    per_month: Counter[tuple[str, str]] = Counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    for day, source, change in sorted(changes):
        cleaned = " ".join(_EMAIL.sub("", change).split())
        per_month[source, day[:7]] += 1
        if len(cleaned) >= 3 and per_month[source, day[:7]] <= CAP_PER_SOURCE_MONTH:
            lines.append(json.dumps({"time": day, "source": source, "text": cleaned}, ensure_ascii=False) + "\n")
    # mtime 0: the same changelogs give the same bytes.
    out.write_bytes(gzip.compress("".join(lines).encode("utf-8"), compresslevel=9, mtime=0))
    return len(lines)


if __name__ == "__main__":
    print(f"{build():,} changes in {CORPUS}")
