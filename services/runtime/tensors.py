"""NumPy arrays <-> `driftlm.v1.Tensor`, and arrays streamed in chunks across a request stream.

A Tensor is dtype + shape + raw little-endian bytes, so any language can build one without a
protobuf-specific array type. Inputs larger than one message are cut along their first axis;
every chunk of a field is a Tensor of the same dtype and trailing dimensions, and the receiver
concatenates them in order.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TypeVar

import numpy as np
from google.protobuf.message import Message

from driftlm.services.core.errors import InvalidArgumentError, ResourceExhaustedError
from driftlm.v1 import common_pb2

_DTYPES: dict[common_pb2.DType.ValueType, np.dtype[Any]] = {
    common_pb2.D_TYPE_FLOAT32: np.dtype("<f4"),
    common_pb2.D_TYPE_FLOAT64: np.dtype("<f8"),
    common_pb2.D_TYPE_INT32: np.dtype("<i4"),
    common_pb2.D_TYPE_INT64: np.dtype("<i8"),
    common_pb2.D_TYPE_FLOAT16: np.dtype("<f2"),
    common_pb2.D_TYPE_UINT8: np.dtype("u1"),
}
_DTYPE_ENUMS = {dtype.newbyteorder("="): enum for enum, dtype in _DTYPES.items()}
_ALLOWED = ", ".join(common_pb2.DType.Name(enum) for enum in _DTYPES)

# Default payload of one streamed message; well under gRPC's default 4 MiB receive limit.
DEFAULT_CHUNK_BYTES = 1 << 20

MessageT = TypeVar("MessageT", bound=Message)


def array_to_tensor(array: np.ndarray) -> common_pb2.Tensor:
    """Encode an array (any byte order, any memory layout) as a Tensor.

    Raises:
        ValueError: the dtype has no Tensor encoding.
    """
    native = array.dtype.newbyteorder("=")
    if native not in _DTYPE_ENUMS:
        raise ValueError(f"dtype {array.dtype} cannot travel as a Tensor; use one of {_ALLOWED}")
    enum = _DTYPE_ENUMS[native]
    data = np.ascontiguousarray(array, dtype=_DTYPES[enum]).tobytes()
    return common_pb2.Tensor(dtype=enum, shape=list(array.shape), data=data)


# Far above any message gRPC carries (at most 2 GiB), far below where array sizes overflow.
MAX_TENSOR_BYTES = 1 << 40


def tensor_to_array(tensor: common_pb2.Tensor, field: str) -> np.ndarray:
    """Decode a Tensor into a read-only native-endian array.

    Raises:
        InvalidArgumentError: unknown dtype, negative dimension, or a byte length that does not
            match the shape; `field` names the request field in the message.
    """
    if tensor.dtype not in _DTYPES:
        raise InvalidArgumentError(f"{field}.dtype", f"must be one of {_ALLOWED}, got {tensor.dtype}")
    if any(dim < 0 for dim in tensor.shape):
        raise InvalidArgumentError(f"{field}.shape", f"dimensions must be >= 0, got {list(tensor.shape)}")
    dtype = _DTYPES[tensor.dtype]
    # Python integers: an int64 product wraps around, and [2**62, 4] would then claim 0 bytes.
    if math.prod(dim for dim in tensor.shape if dim) * dtype.itemsize > MAX_TENSOR_BYTES:
        raise InvalidArgumentError(
            f"{field}.shape",
            f"{list(tensor.shape)} describes more than {MAX_TENSOR_BYTES:,} bytes; no message carries that",
        )
    expected = math.prod(tensor.shape) * dtype.itemsize
    if len(tensor.data) != expected:
        raise InvalidArgumentError(
            f"{field}.data",
            f"has {len(tensor.data)} bytes but shape {list(tensor.shape)} of "
            f"{common_pb2.DType.Name(tensor.dtype)} needs {expected}",
        )
    array = np.frombuffer(tensor.data, dtype=dtype).reshape(tuple(tensor.shape))
    return array.astype(dtype.newbyteorder("="), copy=False)


def _row_chunks(array: np.ndarray, chunk_bytes: int) -> list[np.ndarray]:
    if array.ndim == 0:
        raise ValueError("a streamed tensor needs at least one dimension")
    row_bytes = max(1, array[:1].nbytes if array.shape[0] else array.itemsize)
    rows = max(1, chunk_bytes // row_bytes)
    return [array[start : start + rows] for start in range(0, max(array.shape[0], 1), rows)]


def chunk_requests(
    message_type: type[MessageT],
    scalars: Mapping[str, Any],
    tensors: Mapping[str, np.ndarray | None],
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> Iterator[MessageT]:
    """The request stream for a client-streaming RPC.

    The first message carries `scalars`; message i carries chunk i of every tensor that has one.
    A tensor that is None is not sent.
    """
    chunked = {
        name: _row_chunks(np.asarray(array), chunk_bytes) for name, array in tensors.items() if array is not None
    }
    count = max((len(chunks) for chunks in chunked.values()), default=1)
    for index in range(count):
        fields: dict[str, Any] = dict(scalars) if index == 0 else {}
        fields.update({name: array_to_tensor(chunks[index]) for name, chunks in chunked.items() if index < len(chunks)})
        yield message_type(**fields)


class _Assembly:
    """One tensor field's chunks as they arrive: the first kept as it is (a view on its message, no
    copy), later ones appended to one growing buffer, so that a stream costs about its size once,
    not the chunks plus their concatenation."""

    def __init__(self, first: np.ndarray) -> None:
        self.first = first
        self.buffer: bytearray | None = None
        self.rows = first.shape[0]
        self.chunks = 1

    def add(self, chunk: np.ndarray, name: str) -> None:
        if chunk.dtype != self.first.dtype or chunk.shape[1:] != self.first.shape[1:]:
            raise InvalidArgumentError(
                name,
                f"chunk {self.chunks + 1} is {chunk.dtype} {list(chunk.shape)} but the first chunk was "
                f"{self.first.dtype} {list(self.first.shape)}; chunks may differ only in their first dimension",
            )
        if self.buffer is None:
            self.buffer = bytearray(self.first.tobytes())
        self.buffer += np.ascontiguousarray(chunk).data
        self.rows += chunk.shape[0]
        self.chunks += 1

    def array(self) -> np.ndarray:
        if self.buffer is None:
            return self.first
        return np.frombuffer(self.buffer, dtype=self.first.dtype).reshape((self.rows, *self.first.shape[1:]))


def collect_stream(
    requests: Iterable[MessageT], tensor_fields: Iterable[str], max_bytes: int
) -> tuple[MessageT, dict[str, np.ndarray | None]]:
    """Read a client stream: returns its first message and each tensor field concatenated.

    A field that no message set is None. Each message is let go once read: the stream's tensors
    cost about their size (256 MiB of weights once took 528 MiB to assemble).

    Raises:
        InvalidArgumentError: an empty stream, a bad chunk, or chunks that disagree on dtype or
            trailing dimensions.
        ResourceExhaustedError: the tensors add up to more than `max_bytes`.
    """
    fields = tuple(tensor_fields)
    assembled: dict[str, _Assembly] = {}
    first: MessageT | None = None
    received = 0
    for message in requests:
        first = message if first is None else first
        for name in fields:
            if not message.HasField(name):
                continue
            tensor = getattr(message, name)
            received += len(tensor.data)
            if received > max_bytes:
                raise ResourceExhaustedError(
                    f"the request stream carries more than {max_bytes} bytes of tensors, the server's limit "
                    "(--max-stream-mb); send less data per call"
                )
            chunk = tensor_to_array(tensor, name)
            if chunk.ndim == 0:
                raise InvalidArgumentError(name, "must have at least one dimension")
            if name in assembled:
                assembled[name].add(chunk, name)
            else:
                assembled[name] = _Assembly(chunk)
        if message is not first:
            # The first message stays (the caller reads its scalars); later ones go now.
            del message
    if first is None:
        raise InvalidArgumentError("request", "the request stream carried no messages")
    return first, {name: assembled[name].array() if name in assembled else None for name in fields}
