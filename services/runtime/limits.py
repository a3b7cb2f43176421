"""The sizes a service accepts in one call, from its configuration (`--max-message-mb`,
`--max-stream-mb`): every size that drives an allocation is checked against them up front."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RequestLimits:
    """Per-call size limits."""

    # Largest single message each way; answers are sized against it before they are built.
    max_message_bytes: int
    # Largest total of one request stream.
    max_stream_bytes: int
