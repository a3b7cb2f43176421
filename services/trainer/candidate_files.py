"""The Parquet file ScoreCandidates writes and StartRun and ScoreSlice read: streamed block by
block to a temporary name beside the target, fsynced, then renamed, so a reader never sees half a
file; what was scored travels in the schema's metadata."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from driftlm.services.core.errors import InvalidArgumentError
from driftlm.services.core.store import FILE_MODE, TEMPORARY_PREFIX, fsync_directory

from .candidate_scoring import table_columns

# The schema metadata key that holds ScoredWith, as JSON.
METADATA_KEY = b"driftlm.scores"
# Rows read at once when a reader picks some rows out of a file.
_READ_BATCH = 65_536


# The passes that write these files: ScoreCandidates, and ScorePseudoLikelihood over a corpus.
CANDIDATES, PSEUDO_LIKELIHOOD = "candidates", "pseudo_likelihood"
# A PLL file's columns that the corpus figures sum.
PSEUDO_LIKELIHOOD_SUMS = ("log_likelihood", "word_l2r_log_likelihood", "pieces", "words", "characters")


@dataclass(frozen=True)
class ScoredWith:
    """What a scores file was scored with: a reader checks it against what it is asked to do."""

    # CANDIDATES or PSEUDO_LIKELIHOOD.
    kind: str
    checkpoint_id: str
    baseline_checkpoint_id: str
    max_length: int
    mask_fraction: float
    seed: int
    # How many corpus files (shards) were scored, in order.
    shards: int


def scores_schema(hidden_size: int, scored_with: ScoredWith) -> pa.Schema:
    """The columns, in order (with a baseline, baseline_cls and cls_shift too), and the metadata."""
    fields = [
        pa.field("shard", pa.int32()),
        pa.field("line", pa.int64()),
        pa.field("length", pa.int32()),
        pa.field("mlm_loss", pa.float32()),
        pa.field("token_ids", pa.list_(pa.int32())),
        pa.field("token_losses", pa.list_(pa.float32())),
        pa.field("cls", pa.list_(pa.float32(), hidden_size)),
    ]
    if scored_with.baseline_checkpoint_id:
        fields += [pa.field("baseline_cls", pa.list_(pa.float32(), hidden_size)), pa.field("cls_shift", pa.float32())]
    return pa.schema(fields, metadata={METADATA_KEY: json.dumps(asdict(scored_with)).encode()})


def pseudo_likelihood_schema(scored_with: ScoredWith) -> pa.Schema:
    """The columns of a PLL file, in order, and the metadata."""
    fields = [
        pa.field("shard", pa.int32()),
        pa.field("line", pa.int64()),
        pa.field("log_likelihood", pa.float64()),
        pa.field("word_l2r_log_likelihood", pa.float64()),
        *(pa.field(name, pa.int32()) for name in ("pieces", "words", "characters")),
    ]
    return pa.schema(fields, metadata={METADATA_KEY: json.dumps(asdict(scored_with)).encode()})


class ScoresFile:
    """A ScoreCandidates file opened for reading some of its rows and columns."""

    def __init__(self, path: Path, field: str) -> None:
        """
        Raises:
            InvalidArgumentError: not a Parquet file written by ScoreCandidates.
        """
        self.path, self.field = path, field
        try:
            self._file = pq.ParquetFile(path)
            metadata = self._file.schema_arrow.metadata or {}
            self.scored_with = ScoredWith(**json.loads(metadata[METADATA_KEY]))
        except (pa.ArrowException, KeyError, TypeError, ValueError, OSError):
            raise InvalidArgumentError(field, "is not a scores file written by ScoreCandidates") from None
        if self.scored_with.kind != CANDIDATES:
            raise InvalidArgumentError(field, f"holds {self.scored_with.kind} scores, not ScoreCandidates'")
        self.rows = int(self._file.metadata.num_rows)

    def columns(self, names: Sequence[str], rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The named columns of `rows` (ascending positions; None: all), as NumPy: embeddings
        (N, H), the per-occurrence columns as object arrays of arrays."""
        missing = sorted(set(names) - set(self._file.schema_arrow.names))
        if missing:
            raise InvalidArgumentError(self.field, f"has no column {', '.join(missing)}")
        parts: dict[str, list[Any]] = {name: [] for name in names}
        offset = 0
        for batch in self._file.iter_batches(batch_size=_READ_BATCH, columns=list(names)):
            if rows is None:
                local = None
            else:
                window = rows[np.searchsorted(rows, offset) : np.searchsorted(rows, offset + batch.num_rows)]
                local = pa.array(window - offset)
            for name in names:
                column = batch.column(name)
                parts[name].append(column if local is None else column.take(local))
            offset += batch.num_rows
        return {name: _numpy(pa.chunked_array(chunks, self._file.schema_arrow.field(name).type))
                for name, chunks in parts.items()}  # fmt: skip


def _numpy(column: pa.ChunkedArray) -> np.ndarray:
    array = column.combine_chunks()
    if pa.types.is_fixed_size_list(array.type):
        return array.flatten().to_numpy(zero_copy_only=False).reshape(len(array), array.type.list_size)
    if pa.types.is_list(array.type):
        offsets = array.offsets.to_numpy()
        values = array.flatten().to_numpy(zero_copy_only=False)
        out = np.empty(len(array), dtype=object)
        for index in range(len(array)):
            out[index] = values[offsets[index] - offsets[0] : offsets[index + 1] - offsets[0]]
        return out
    return array.to_numpy(zero_copy_only=False)


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
