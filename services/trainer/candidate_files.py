"""The Parquet file ScoreCandidates writes: streamed block by block to a temporary name beside the
target, fsynced, then renamed, so a reader never sees half a file."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from driftlm.services.core.store import FILE_MODE, TEMPORARY_PREFIX, fsync_directory

from .candidate_scoring import table_columns


def scores_schema(hidden_size: int, *, baseline: bool) -> pa.Schema:
    """The columns, in order: with a baseline, baseline_cls and cls_shift too."""
    fields = [
        pa.field("shard", pa.int32()),
        pa.field("line", pa.int64()),
        pa.field("length", pa.int32()),
        pa.field("mlm_loss", pa.float32()),
        pa.field("cls", pa.list_(pa.float32(), hidden_size)),
    ]
    if baseline:
        fields += [pa.field("baseline_cls", pa.list_(pa.float32(), hidden_size)), pa.field("cls_shift", pa.float32())]
    return pa.schema(fields)


def write_scores(path: Path, blocks: Iterable[dict[str, np.ndarray]], schema: pa.Schema) -> int:
    """Write the blocks' rows to `path` all at once, durably; the rows written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, name = tempfile.mkstemp(prefix=TEMPORARY_PREFIX, suffix=".parquet", dir=path.parent)
    os.fchmod(descriptor, FILE_MODE)
    os.close(descriptor)
    temporary = Path(name)
    rows = 0
    try:
        with pq.ParquetWriter(temporary, schema) as writer:
            for block in blocks:
                if len(block["line"]):
                    writer.write_table(pa.table(table_columns(block), schema=schema))
                    rows += len(block["line"])
        with temporary.open("rb+") as handle:
            os.fsync(handle.fileno())
        temporary.replace(path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)
    return rows
