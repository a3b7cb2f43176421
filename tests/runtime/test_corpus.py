"""The shared corpus reader on real files: every format, Unicode, long and empty lines, and errors."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from driftlm.services.core.corpus import CorpusError, CorpusFormat, format_of, read_texts

TEXTS = ["plain ascii", "Ünïcödé — 中文 — 🦜 — עברית", "", "x" * 1_000_000, "line\nbreak inside"]


COMPRESSORS = {
    "": lambda data: data,
    ".gz": gzip.compress,
    ".bz2": bz2.compress,
    ".xz": lzma.compress,
    ".zst": lambda data: zstandard.ZstdCompressor().compress(data),
}


@pytest.mark.parametrize("compression", sorted(COMPRESSORS))
@pytest.mark.parametrize("kind", ["jsonl", "csv", "parquet", "txt"])
def test_round_trip(tmp_path: Path, kind: str, compression: str) -> None:
    path = tmp_path / f"corpus.{kind}"
    if kind == "jsonl":
        path.write_text(
            "\n".join(json.dumps({"id": i, "body": t}, ensure_ascii=False) for i, t in enumerate(TEXTS)) + "\n\n",
            encoding="utf-8",
        )
    elif kind == "csv":
        import csv

        with path.open("w", encoding="utf-8", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(["id", "body"])
            writer.writerows(enumerate(TEXTS))
    elif kind == "txt":
        path.write_text("\n".join(t.replace("\n", " ") for t in TEXTS) + "\n", encoding="utf-8")
    else:
        pq.write_table(pa.table({"body": TEXTS}), path)
    if compression and kind != "parquet":
        packed = path.with_name(path.name + compression)
        packed.write_bytes(COMPRESSORS[compression](path.read_bytes()))
        path = packed
    expected = [t.replace("\n", " ") for t in TEXTS if t] if kind == "txt" else TEXTS  # blank lines skipped
    assert list(read_texts(path, text_field="body")) == expected


def test_a_compressed_parquet_file_is_refused_with_a_reason(tmp_path: Path) -> None:
    path = tmp_path / "corpus.parquet.gz"
    path.write_bytes(b"anything")
    with pytest.raises(CorpusError, match="Parquet compresses its columns itself"):
        list(read_texts(path))


def test_plain_text_skips_blank_lines_and_a_bom(tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt"
    path.write_bytes("\ufefffirst\r\n\n   \nsecond 🦜\n".encode())
    assert list(read_texts(path)) == ["first", "second 🦜"]


@pytest.mark.parametrize(
    ("name", "suffix_format"),
    [
        ("a.jsonl", CorpusFormat.JSONL),
        ("a.ndjson.gz", CorpusFormat.JSONL),
        ("a.CSV", CorpusFormat.CSV),
        ("a.parquet", CorpusFormat.PARQUET),
        ("a.log", CorpusFormat.TEXT),
        ("a", CorpusFormat.TEXT),
    ],
)
def test_format_of(name: str, suffix_format: CorpusFormat) -> None:
    assert format_of(Path(name)) == suffix_format


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        # (file name, bytes, exact message after the path)
        (
            "bad.jsonl",
            b'{"text": "ok"}\n{"text": "ok"}\n{"text": broken}\n',
            "line 3: not valid JSON (Expecting value)",
        ),
        ("missing.jsonl", b'{"text": "ok"}\n{"body": "no text"}\n', "line 2: field 'text' is missing"),
        ("number.jsonl", b'{"text": 17}\n', "line 1: field 'text' is a int, not a string"),
        ("array.jsonl", b'["text"]\n', "line 1: expected a JSON object, got list"),
        ("latin1.jsonl", b'{"text": "ok"}\n{"text": "caf\xe9"}\n', "line 2: not valid UTF-8 (byte 14 of the line)"),
        ("nocolumn.csv", b"id,body\n1,hello\n", "line 1: no column 'text' among the header's 2 columns"),
        ("fake.parquet", b"this is not parquet at all\n", "not a Parquet file"),
        (
            "cut.jsonl.gz",
            gzip.compress(b'{"text": "ok"}\n' * 100)[:40],
            "after text 100: broken gzip data (Compressed file ended",
        ),
        ("fake.jsonl.gz", b"plain text", "after text 0: broken gzip data (Not a gzipped file"),
        ("cut.jsonl.bz2", bz2.compress(b'{"text": "ok"}\n' * 100)[:30], "after text 0: broken bzip2 data"),
        ("cut.txt.xz", lzma.compress(b"ok\n" * 100)[:30], "after text 0: broken xz data"),
        ("fake.jsonl.zst", b"plain text, not zstd", "after text 0: broken zstd data"),
    ],
)
def test_malformed_files_name_the_file_and_line(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(CorpusError) as raised:
        list(read_texts(path))
    assert str(raised.value).startswith(f"{path} {message}") or str(raised.value).startswith(f"{path}: {message}")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        list(read_texts(tmp_path / "nope.jsonl"))


def test_parquet_missing_column_and_null(tmp_path: Path) -> None:
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": ["a", None]}), path)
    with pytest.raises(CorpusError, match=r"row 2: field 'text' is missing"):
        list(read_texts(path))
    with pytest.raises(CorpusError, match=r"no column 'body' among its 1 columns"):
        list(read_texts(path, text_field="body"))
