"""Reading a corpus file as a stream of texts: JSONL, CSV, Parquet or plain text, compressed or not
(gzip, bzip2, xz or zstd, by the last extension: .gz, .bz2, .xz, .zst).

One reader for every service and the pipeline, so that a corpus means the same thing everywhere.
A malformed file fails with CorpusError naming the file and the line (or Parquet row), before
anything is done with the texts that follow it.
"""

from __future__ import annotations

import bz2
import csv
import enum
import functools
import gzip
import io
import json
import lzma
import sys
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from driftlm.v1 import common_pb2

from .errors import InvalidArgumentError, NotFoundError
from .paths import FileRoots


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

    def __reduce__(self) -> tuple[type[CorpusError], tuple[Path, str, str]]:
        """Rebuilt from its parts where it is unpickled (a Ray worker's error reaching the service)."""
        return (CorpusError, (self.path, self.location, self.problem))


_SUFFIXES = {".jsonl": CorpusFormat.JSONL, ".ndjson": CorpusFormat.JSONL, ".json": CorpusFormat.JSONL}
_SUFFIXES |= {".csv": CorpusFormat.CSV, ".parquet": CorpusFormat.PARQUET, ".pq": CorpusFormat.PARQUET}


def _zstd_open(path: Path) -> IO[bytes]:
    import zstandard

    return io.BufferedReader(zstandard.open(path, "rb"))


_DECOMPRESSORS: dict[str, Any] = {
    ".gz": functools.partial(gzip.open, mode="rb"),
    ".bz2": functools.partial(bz2.open, mode="rb"),
    ".xz": functools.partial(lzma.open, mode="rb"),
    ".zst": _zstd_open,
}
_COMPRESSION_NAMES = {".gz": "gzip", ".bz2": "bzip2", ".xz": "xz", ".zst": "zstd"}


def _broken_data_errors() -> tuple[type[BaseException], ...]:
    """What the decompressors raise on damaged data (bzip2's is a plain OSError)."""
    import zstandard

    return (gzip.BadGzipFile, EOFError, zlib.error, lzma.LZMAError, zstandard.ZstdError, OSError)


def is_compressed(path: Path) -> bool:
    """Whether the name ends in an extension of a compression the readers undo."""
    return path.suffix.lower() in _DECOMPRESSORS


def format_of(path: Path) -> CorpusFormat:
    """The format a file's name announces (a trailing .gz, .bz2, .xz or .zst ignored); plain text by default."""
    suffixes = [suffix.lower() for suffix in path.suffixes]
    if suffixes and suffixes[-1] in _DECOMPRESSORS:
        suffixes.pop()
    return _SUFFIXES.get(suffixes[-1] if suffixes else "", CorpusFormat.TEXT)


def _open_decompressed(path: Path) -> IO[bytes]:
    opener = _DECOMPRESSORS.get(path.suffix.lower())
    return opener(path) if opener else path.open("rb")


def _decoded_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line with its newline), decoded one line at a time so errors have a line."""
    with _open_decompressed(path) as raw:
        for number, line in enumerate(raw, start=1):
            try:
                text = line.decode("utf-8")  # strict: a wrong encoding is reported, not mangled
            except UnicodeDecodeError as error:
                raise CorpusError(
                    path, f"line {number}", f"not valid UTF-8 (byte {error.start + 1} of the line)"
                ) from error
            yield number, text.removeprefix("\ufeff") if number == 1 else text


@dataclass(frozen=True)
class Record:
    """One record of a JSONL, CSV or Parquet corpus: where it is, and the asked-for fields."""

    location: str  # "line 17", "row 3"
    values: dict[str, Any]


def _required(values: dict[str, Any], fields: Sequence[str], path: Path, location: str) -> Record:
    for name in fields:
        if values.get(name) is None:
            raise CorpusError(path, location, f"field {name!r} is missing")
    return Record(location, values)


def _read_jsonl(path: Path, fields: Sequence[str], required: Sequence[str]) -> Iterator[Record]:
    for number, line in _decoded_lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise CorpusError(path, f"line {number}", f"not valid JSON ({error.msg})") from error
        if not isinstance(record, dict):
            raise CorpusError(path, f"line {number}", f"expected a JSON object, got {type(record).__name__}")
        yield _required({name: record.get(name) for name in fields}, required, path, f"line {number}")


def _read_csv(path: Path, fields: Sequence[str], required: Sequence[str]) -> Iterator[Record]:
    csv.field_size_limit(sys.maxsize)  # real texts can be far longer than csv's 128 KiB default
    reader = csv.DictReader(line for _number, line in _decoded_lines(path))
    try:
        missing = [name for name in fields if name not in (reader.fieldnames or [])]
        if missing:
            raise CorpusError(  # the header is the file's content: not quoted back
                path, "line 1", f"no column {missing[0]!r} among the header's {len(reader.fieldnames or ())} columns"
            )
        for row in reader:
            yield _required({name: row.get(name) for name in fields}, required, path, f"line {reader.line_num}")
    except csv.Error as error:
        raise CorpusError(path, f"line {reader.line_num}", f"not valid CSV ({error})") from error


def _read_parquet(path: Path, fields: Sequence[str], required: Sequence[str]) -> Iterator[Record]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if is_compressed(path):
        raise CorpusError(
            path, "", "a compressed Parquet file; Parquet compresses its columns itself, give the .parquet"
        )
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as error:
        raise CorpusError(path, "", f"not a Parquet file ({error})") from error
    missing = [name for name in fields if name not in parquet.schema_arrow.names]
    if missing:
        raise CorpusError(path, "", f"no column {missing[0]!r} among its {len(parquet.schema_arrow.names)} columns")
    row = 0
    for batch in parquet.iter_batches(columns=list(fields), batch_size=8192):
        columns = [batch.column(i).to_pylist() for i in range(len(fields))]
        for values in zip(*columns, strict=True):
            row += 1
            yield _required(dict(zip(fields, values, strict=True)), required, path, f"row {row}")


def _read_text(path: Path) -> Iterator[str]:
    for _number, line in _decoded_lines(path):
        text = line.rstrip("\r\n")
        if text.strip():
            yield text


def _compression_errors_named(path: Path, items: Iterator[Any]) -> Iterator[Any]:
    read = 0
    try:
        for item in items:
            read += 1
            yield item
    except _broken_data_errors() as error:
        if not is_compressed(path):
            raise
        kind = _COMPRESSION_NAMES[path.suffix.lower()]
        raise CorpusError(path, f"after text {read}", f"broken {kind} data ({error})") from error


def read_records(
    path: Path,
    fields: Sequence[str],
    *,
    corpus_format: CorpusFormat | None = None,
    required: Sequence[str] | None = None,
) -> Iterator[Record]:
    """The records of a JSONL, CSV or Parquet corpus with the given fields, in file order, lazily;
    a field of `required` (default: all) must be in every record, another is None where missing.

    Raises:
        CorpusError: a malformed file, a plain-text file, or a record without a required field;
            the message names the file and line.
        FileNotFoundError: no such file.
    """
    chosen = corpus_format or format_of(path)
    if not path.is_file():
        raise FileNotFoundError(path)
    readers = {CorpusFormat.JSONL: _read_jsonl, CorpusFormat.CSV: _read_csv, CorpusFormat.PARQUET: _read_parquet}
    if chosen not in readers:
        raise CorpusError(
            path, "", "plain text has no fields; use JSONL, CSV or Parquet (by extension: .jsonl, .csv, .parquet)"
        )
    return _compression_errors_named(path, readers[chosen](path, fields, fields if required is None else required))


def read_texts(path: Path, *, text_field: str = "text", corpus_format: CorpusFormat | None = None) -> Iterator[str]:
    """The texts of a corpus file, in file order, lazily (any size of file).

    JSONL and CSV records and Parquet rows give one text each (empty ones included); plain text
    gives one text per non-blank line.

    Raises:
        CorpusError: bad JSON, CSV or Parquet, a missing or non-string text field, bad UTF-8 or
            compressed data; the message names the file and line.
        FileNotFoundError: no such file.
    """
    chosen = corpus_format or format_of(path)
    if chosen is CorpusFormat.TEXT:
        if not path.is_file():
            raise FileNotFoundError(path)
        yield from _compression_errors_named(path, _read_text(path))
        return
    for record in read_records(path, [text_field], corpus_format=chosen):
        yield text_of(record, text_field, path)


def text_of(record: Record, field: str, path: Path) -> str:
    """The record's field as text (CorpusError when it is not a string)."""
    value = record.values[field]
    if not isinstance(value, str):
        raise CorpusError(path, record.location, f"field {field!r} is a {type(value).__name__}, not a string")
    return value


# Files one sharded corpus may name.
MAX_SHARDS = 100_000


@dataclass(frozen=True)
class Corpus:
    """Texts sent in a request, a corpus file on the service's machine (when uri is set), or a
    corpus split across files (when shards is set)."""

    texts: tuple[str, ...] = ()
    uri: str = ""
    text_field: str = "text"
    # Hex SHA-256 the file's bytes must have (ArtifactRef.sha256); empty: not checked.
    sha256: str = ""
    # None: from the file's extension.
    corpus_format: CorpusFormat | None = None
    # (uri, sha256) of each file of a sharded corpus, in order.
    shards: tuple[tuple[str, str], ...] = ()

    @property
    def files(self) -> tuple[tuple[str, str], ...]:
        """(uri, sha256) of the corpus's files, in order; none for inline texts."""
        return ((self.uri, self.sha256),) if self.uri else self.shards


_FORMATS = {
    common_pb2.CORPUS_FORMAT_JSONL: CorpusFormat.JSONL,
    common_pb2.CORPUS_FORMAT_CSV: CorpusFormat.CSV,
    common_pb2.CORPUS_FORMAT_PARQUET: CorpusFormat.PARQUET,
    common_pb2.CORPUS_FORMAT_TEXT: CorpusFormat.TEXT,
}


def corpus_from_message(source: common_pb2.CorpusSource, field: str = "corpus") -> Corpus:
    """A request's driftlm.v1.CorpusSource as a Corpus (`field` names it in errors).

    Raises:
        InvalidArgumentError: a format this version does not know.
    """
    kind = source.WhichOneof("source")
    if kind not in ("uri", "shards"):
        return Corpus(texts=tuple(source.texts.texts))
    if source.format not in _FORMATS and source.format != common_pb2.CORPUS_FORMAT_UNSPECIFIED:
        raise InvalidArgumentError(f"{field}.format", f"is not a CorpusFormat this service knows: {source.format}")
    text_field, corpus_format = source.text_field or "text", _FORMATS.get(source.format)
    if kind == "uri":
        return Corpus(uri=source.uri.uri, sha256=source.uri.sha256, text_field=text_field, corpus_format=corpus_format)
    files = source.shards.files
    if not files:
        raise InvalidArgumentError(f"{field}.shards.files", "name at least one file")
    if len(files) > MAX_SHARDS:
        raise InvalidArgumentError(f"{field}.shards.files", f"at most {MAX_SHARDS:,} files, got {len(files):,}")
    return Corpus(shards=tuple((f.uri, f.sha256) for f in files), text_field=text_field, corpus_format=corpus_format)


def texts_of_files(
    paths: Sequence[Path], field: str, *, text_field: str = "text", corpus_format: CorpusFormat | None = None
) -> Iterator[str]:
    """The texts of corpus files in order, lazily, with a request's errors.

    Raises:
        InvalidArgumentError: a file that cannot be read as a corpus (named, with the line).
        NotFoundError: a file that is not there.
    """
    try:
        for path in paths:
            yield from read_texts(path, text_field=text_field, corpus_format=corpus_format)
    except CorpusError as error:
        raise InvalidArgumentError(field, str(error)) from error
    except FileNotFoundError as error:
        raise NotFoundError(f"{field}: no file at {error}") from error


def open_corpus(corpus: Corpus, roots: FileRoots, field: str) -> Iterator[str]:
    """The texts of a request's corpus, lazily: inline, or read from a file the caller may read.

    Raises:
        InvalidArgumentError, NotFoundError: as texts_of_files; PermissionDeniedError: a file
            outside the roots.
    """
    if not corpus.files:
        return iter(corpus.texts)
    paths = corpus_paths(corpus, roots, field)
    return texts_of_files(paths, field, text_field=corpus.text_field, corpus_format=corpus.corpus_format)


def corpus_paths(corpus: Corpus, roots: FileRoots, field: str) -> list[Path]:
    """The corpus's files, each checked against the roots (object-store ones fetched), in order.

    Raises:
        InvalidArgumentError, NotFoundError, PermissionDeniedError: as FileRoots.readable.
    """
    if corpus.uri:
        return [roots.readable(corpus.uri, f"{field}.uri.uri", sha256=corpus.sha256)]
    return [
        roots.readable(uri, f"{field}.shards.files[{index}].uri", sha256=sha256)
        for index, (uri, sha256) in enumerate(corpus.shards)
    ]
