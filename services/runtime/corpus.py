"""Reading a corpus file as a stream of texts: JSONL, CSV, Parquet or plain text, gzipped or not.

One reader for every service and the pipeline, so that a corpus means the same thing everywhere.
A malformed file fails with CorpusError naming the file and the line (or Parquet row), before
anything is done with the texts that follow it.
"""

from __future__ import annotations

import csv
import enum
import gzip
import json
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path


class CorpusFormat(enum.Enum):
    """A corpus file's layout."""

    JSONL = "jsonl"
    CSV = "csv"
    PARQUET = "parquet"
    TEXT = "text"


class CorpusError(ValueError):
    """A corpus file cannot be read; the message names the file and where."""

    def __init__(self, path: Path, location: str, problem: str) -> None:
        super().__init__(f"{path}{' ' + location if location else ''}: {problem}")
        self.path = path
        self.location = location
        self.problem = problem


_SUFFIXES = {".jsonl": CorpusFormat.JSONL, ".ndjson": CorpusFormat.JSONL, ".json": CorpusFormat.JSONL}
_SUFFIXES |= {".csv": CorpusFormat.CSV, ".parquet": CorpusFormat.PARQUET, ".pq": CorpusFormat.PARQUET}


def format_of(path: Path) -> CorpusFormat:
    """The format a file's name announces (a trailing .gz ignored); plain text by default."""
    suffixes = [suffix.lower() for suffix in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    return _SUFFIXES.get(suffixes[-1] if suffixes else "", CorpusFormat.TEXT)


def _decoded_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line with its newline), decoded one line at a time so errors have a line."""
    with gzip.open(path, "rb") if path.suffix.lower() == ".gz" else path.open("rb") as raw:
        for number, line in enumerate(raw, start=1):
            try:
                text = line.decode("utf-8")  # strict: a wrong encoding is reported, not mangled
            except UnicodeDecodeError as error:
                raise CorpusError(
                    path, f"line {number}", f"not valid UTF-8 (byte {error.start + 1} of the line)"
                ) from error
            yield number, text.removeprefix("\ufeff") if number == 1 else text


def _field_value(value: object, path: Path, location: str, text_field: str) -> str:
    if isinstance(value, str):
        return value
    kind = "missing" if value is None else f"a {type(value).__name__}, not a string"
    raise CorpusError(path, location, f"field {text_field!r} is {kind}")


def _read_jsonl(path: Path, text_field: str) -> Iterator[str]:
    for number, line in _decoded_lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise CorpusError(path, f"line {number}", f"not valid JSON ({error.msg})") from error
        if not isinstance(record, dict):
            raise CorpusError(path, f"line {number}", f"expected a JSON object, got {type(record).__name__}")
        yield _field_value(record.get(text_field), path, f"line {number}", text_field)


def _read_csv(path: Path, text_field: str) -> Iterator[str]:
    csv.field_size_limit(sys.maxsize)  # real texts can be far longer than csv's 128 KiB default
    reader = csv.DictReader(line for _number, line in _decoded_lines(path))
    try:
        if reader.fieldnames is None or text_field not in reader.fieldnames:
            raise CorpusError(path, "line 1", f"no column {text_field!r} in the header {reader.fieldnames}")
        for row in reader:
            yield _field_value(row.get(text_field), path, f"line {reader.line_num}", text_field)
    except csv.Error as error:
        raise CorpusError(path, f"line {reader.line_num}", f"not valid CSV ({error})") from error


def _read_parquet(path: Path, text_field: str) -> Iterator[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as error:
        raise CorpusError(path, "", f"not a Parquet file ({error})") from error
    if text_field not in parquet.schema_arrow.names:
        raise CorpusError(path, "", f"no column {text_field!r}; columns are {parquet.schema_arrow.names}")
    row = 0
    for batch in parquet.iter_batches(columns=[text_field], batch_size=8192):
        for value in batch.column(0).to_pylist():
            row += 1
            yield _field_value(value, path, f"row {row}", text_field)


def _read_text(path: Path) -> Iterator[str]:
    for _number, line in _decoded_lines(path):
        text = line.rstrip("\r\n")
        if text.strip():
            yield text


def read_texts(path: Path, *, text_field: str = "text", corpus_format: CorpusFormat | None = None) -> Iterator[str]:
    """The texts of a corpus file, in file order, lazily (any size of file).

    JSONL and CSV records and Parquet rows give one text each (empty ones included); plain text
    gives one text per non-blank line.

    Raises:
        CorpusError: bad JSON, CSV or Parquet, a missing or non-string text field, bad UTF-8 or
            gzip data; the message names the file and line.
        FileNotFoundError: no such file.
    """
    chosen = corpus_format or format_of(path)
    if not path.is_file():
        raise FileNotFoundError(path)
    readers = {
        CorpusFormat.JSONL: lambda: _read_jsonl(path, text_field),
        CorpusFormat.CSV: lambda: _read_csv(path, text_field),
        CorpusFormat.PARQUET: lambda: _read_parquet(path, text_field),
        CorpusFormat.TEXT: lambda: _read_text(path),
    }
    texts_read = 0
    try:
        for text in readers[chosen]():
            texts_read += 1
            yield text
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise CorpusError(path, f"after text {texts_read}", f"broken gzip data ({error})") from error
