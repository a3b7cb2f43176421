"""Unknown enum values in a request: proto3 keeps a number no enum value names (a newer client, a
typo, a fuzzer), and a handler that does not look would act on it. The interceptor refuses such a
request with INVALID_ARGUMENT naming the field, before any handler runs."""

from __future__ import annotations

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from driftlm.services.core.errors import InvalidArgumentError


def _unknown_enum_path(message: Message, prefix: str) -> str | None:
    for field, value in message.ListFields():
        path = f"{prefix}{field.name}"
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            entries = value.values() if field.message_type.fields_by_name["value"].message_type else ()
            for entry in entries:
                found = _unknown_enum_path(entry, f"{path}.")
                if found:
                    return found
            continue
        repeated = field.is_repeated
        items = list(value) if repeated else [value]
        if field.type == FieldDescriptor.TYPE_ENUM and field.enum_type is not None:
            for index, item in enumerate(items):
                if field.enum_type.values_by_number.get(item) is None:
                    return f"{path}[{index}]" if repeated else path
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            for index, item in enumerate(items):
                found = _unknown_enum_path(item, f"{path}[{index}]." if repeated else f"{path}.")
                if found:
                    return found
    return None


def check_enums(message: Message) -> None:
    """Raise INVALID_ARGUMENT when an enum field of `message` (nested ones too) holds an unknown value.

    Raises:
        InvalidArgumentError: naming the field (dotted path) and its enum.
    """
    path = _unknown_enum_path(message, "")
    if path is not None:
        raise InvalidArgumentError(path, "holds a value its enum does not define; use one of the documented values")
