"""Hostile but well-formed requests, built from the protobuf descriptors: every field of every
message, filled with the values that broke services before (extremes, NUL bytes, paths outside the
store, Unicode digits, unknown enum numbers, tensors whose shapes overflow) and, half the time, with
ids that exist, so that calls get past the first lookup."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from google.protobuf import descriptor as d
from google.protobuf import message_factory
from google.protobuf.message import Message
from hypothesis import strategies as st

HOSTILE_STRINGS = [
    "",
    "/etc/passwd",
    "/proc/self/environ",
    "../../../../etc/hostname",
    "file:///etc/passwd",
    "s3://bucket/key",
    "/dev/zero",
    "/",
    "x" * 300,
    "a/" * 2100,
    "nul\x00byte",
    "%00",
    "²",
    "99999999999999999999999",
    "🦜" * 20,
    "null",
    '{"hidden_size": -1}',
    '{"vocab_size": 1e12, "hidden_size": 64}',
    "[]",
]
INT64_EDGES = [0, 1, -1, 2, 7, 100, 2**31 - 1, -(2**31), 2**40, 2**62, 2**63 - 1, -(2**63)]
FLOAT_EDGES = [0.0, -1.0, 0.5, 1.0, 2.0, float("nan"), float("inf"), -float("inf"), 1e308, 5e-324]

_INT32 = (d.FieldDescriptor.TYPE_INT32, d.FieldDescriptor.TYPE_SINT32, d.FieldDescriptor.TYPE_SFIXED32)
_UINT32 = (d.FieldDescriptor.TYPE_UINT32, d.FieldDescriptor.TYPE_FIXED32)
_INT64 = (d.FieldDescriptor.TYPE_INT64, d.FieldDescriptor.TYPE_SINT64, d.FieldDescriptor.TYPE_SFIXED64)
_UINT64 = (d.FieldDescriptor.TYPE_UINT64, d.FieldDescriptor.TYPE_FIXED64)


def _in_range(low: int, high: int) -> st.SearchStrategy[int]:
    return st.one_of(
        st.sampled_from([v for v in INT64_EDGES if low <= v <= high] + [low, high]), st.integers(low, high)
    )


_DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 4: np.int64, 6: np.uint8}


@st.composite
def tensors(draw: st.DrawFn) -> Message:
    """A driftlm.v1.Tensor: usually consistent (data matches shape and dtype) with hostile values,
    sometimes with a shape whose product overflows or a dtype and length that disagree."""
    from driftlm.v1 import common_pb2

    if draw(st.integers(0, 3)) == 0:
        shape = draw(st.lists(st.sampled_from([0, 1, 3, 2**31, 2**62, 2**63 - 1, -1]), max_size=3))
        return common_pb2.Tensor(dtype=draw(st.integers(0, 7)), shape=shape, data=draw(st.binary(max_size=32)))
    dtype = draw(st.sampled_from(sorted(_DTYPES)))
    shape = draw(st.lists(st.integers(0, 6), min_size=1, max_size=2))
    size = int(np.prod(shape))
    kind = np.dtype(_DTYPES[dtype])
    if kind.kind == "f":
        values = draw(st.lists(st.sampled_from(FLOAT_EDGES), min_size=size, max_size=size))
    else:
        info = np.iinfo(kind)
        values = draw(
            st.lists(st.sampled_from([0, 1, 2, int(info.max), int(info.min), 5]), min_size=size, max_size=size)
        )
    with np.errstate(over="ignore"):  # 1e308 as float32 is inf: a hostile value too
        data = np.asarray(values, dtype=kind).tobytes()
    return common_pb2.Tensor(dtype=dtype, shape=shape, data=data)


# Which existing ids suit a field, by its name.
_ID_KINDS = ("version", "checkpoint", "observation", "proposal", "run", "uri")
# Inference fields that name a served thing: a model, a tensor, a datatype.
_NAME_KINDS = {"name": "name", "model_name": "name", "datatype": "datatype"}


def _id_kind(field: d.FieldDescriptor) -> str | None:
    name = field.name
    if name in _NAME_KINDS:
        return _NAME_KINDS[name]
    if not (name.endswith(("_id", "_ids")) or name == "uri"):
        return None
    return next((kind for kind in _ID_KINDS if kind in name), None)


def _scalar(field: d.FieldDescriptor, known_ids: Mapping[str, Sequence[str]]) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind in _INT32:
        return _in_range(-(2**31), 2**31 - 1)
    if kind in _UINT32:
        return _in_range(0, 2**32 - 1)
    if kind in _INT64:
        return _in_range(-(2**63), 2**63 - 1)
    if kind in _UINT64:
        return _in_range(0, 2**64 - 1)
    if kind in (d.FieldDescriptor.TYPE_FLOAT, d.FieldDescriptor.TYPE_DOUBLE):
        return st.one_of(st.sampled_from(FLOAT_EDGES), st.floats(-1e3, 1e3))
    if kind == d.FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind == d.FieldDescriptor.TYPE_ENUM:
        return st.sampled_from([*(v.number for v in field.enum_type.values), 99, -1])
    if kind == d.FieldDescriptor.TYPE_BYTES:
        return st.one_of(st.binary(max_size=64), st.just(b"\x00" * 24), st.just(b"\xff" * 16))
    hostile = st.one_of(st.sampled_from(HOSTILE_STRINGS), st.text(max_size=20))
    kind = _id_kind(field)
    if kind in known_ids:
        # Mostly an id that exists, so that the call gets past its first lookup.
        return st.one_of(st.sampled_from(list(known_ids[kind])), st.sampled_from(list(known_ids[kind])), hostile)
    return hostile


def message(
    descriptor: d.Descriptor, known_ids: Mapping[str, Sequence[str]], depth: int = 0
) -> st.SearchStrategy[Message]:
    """Messages of `descriptor`'s type: each field left unset or set to a hostile value; id fields
    always set (known_ids maps "version", "checkpoint", ... "uri" to ids that exist)."""
    message_class: type[Message] = message_factory.GetMessageClass(descriptor)
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for field in descriptor.fields:
        if field.type == d.FieldDescriptor.TYPE_MESSAGE:
            if depth >= 3 or field.message_type.GetOptions().map_entry:
                continue
            value: st.SearchStrategy[Any] = (
                tensors()
                if field.message_type.full_name == "driftlm.v1.Tensor"
                else message(field.message_type, known_ids, depth + 1)
            )
        else:
            value = _scalar(field, known_ids)
        if field.is_repeated:
            value = st.lists(value, max_size=3 if field.type == d.FieldDescriptor.TYPE_MESSAGE else 6)
        fields[field.name] = value

    always = {field.name for field in descriptor.fields if _id_kind(field) in known_ids}

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        built = message_class()
        chosen = draw(st.sets(st.sampled_from(sorted(fields)), max_size=len(fields))) if fields else set()
        chosen |= always & fields.keys()
        for name in sorted(chosen):
            value = draw(fields[name])
            field = descriptor.fields_by_name[name]
            if field.is_repeated:
                getattr(built, name).extend(value)
            elif field.type == d.FieldDescriptor.TYPE_MESSAGE:
                getattr(built, name).CopyFrom(value)
            else:
                setattr(built, name, value)
        return built

    return build()
