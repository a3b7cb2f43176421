"""Unknown enum values in a request: proto3 keeps a number no enum value names (a newer client, a
typo, a fuzzer), and a handler that does not look would act on it. The interceptor refuses such a
request with INVALID_ARGUMENT naming the field and the values it takes, before any handler runs."""

from __future__ import annotations

from google.protobuf.descriptor import EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

from driftlm.services.core.errors import InvalidArgumentError


def _unknown_enum(message: Message, prefix: str) -> tuple[str, int, EnumDescriptor] | None:
    """The dotted path, value and enum of the first enum field holding a value its enum lacks."""
    for field, value in message.ListFields():
        path = f"{prefix}{field.name}"
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            entries = value.values() if field.message_type.fields_by_name["value"].message_type else ()
            for entry in entries:
                found = _unknown_enum(entry, f"{path}.")
                if found:
                    return found
            continue
        if field.type not in (FieldDescriptor.TYPE_ENUM, FieldDescriptor.TYPE_MESSAGE):
            continue  # scalars and bytes (a tensor's payload) are never walked
        items = value if field.is_repeated else [value]
        if field.type == FieldDescriptor.TYPE_ENUM and field.enum_type is not None:
            for index, item in enumerate(items):
                if field.enum_type.values_by_number.get(item) is None:
                    return (f"{path}[{index}]" if field.is_repeated else path), item, field.enum_type
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            for index, item in enumerate(items):
                found = _unknown_enum(item, f"{path}[{index}]." if field.is_repeated else f"{path}.")
                if found:
                    return found
    return None


def check_enums(message: object) -> None:
    """Raise INVALID_ARGUMENT when an enum field of `message` (nested ones too) holds an unknown
    value; anything that is not a protobuf message (a generic handler's bytes) is left alone.

    Raises:
        InvalidArgumentError: naming the field (dotted path), the value and the values allowed.
    """
    if not isinstance(message, Message):
        return
    found = _unknown_enum(message, "")
    if found is not None:
        path, value, enum = found
        allowed = ", ".join(v.name for v in enum.values if not v.name.endswith("_UNSPECIFIED"))
        raise InvalidArgumentError(path, f"is {value}, which {enum.name} does not define; give one of {allowed}")
