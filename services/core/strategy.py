"""The paper's sentence-selection strategies: `driftlm.v1.SamplingStrategy` as one Python enum.

This module is the only place that maps the enum to and from the wire and to the short names of
`driftlm run --strategy`; services, clients and the CLI all take a `Strategy`.

Example:
    >>> Strategy.from_name("token-shift") is Strategy.TOKEN_EMBEDDING_SHIFT
    True
    >>> Strategy.from_proto(Strategy.TOKEN_MLM_LOSS.proto, "strategy").value
    'token-mlm-loss'
"""

from __future__ import annotations

import enum

from driftlm.v1 import common_pb2

from .errors import InvalidArgumentError

_PROTO_PREFIX = "SAMPLING_STRATEGY_"


class Strategy(enum.Enum):
    """How candidate sentences are scored before the weighted draw (the value is the stored name)."""

    UNIFORM = "uniform"
    TOKEN_EMBEDDING_SHIFT = "token-embedding-shift"
    SENTENCE_EMBEDDING_SHIFT = "sentence-embedding-shift"
    TOKEN_MLM_LOSS = "token-mlm-loss"

    @property
    def proto(self) -> common_pb2.SamplingStrategy.ValueType:
        """The wire value (`SAMPLING_STRATEGY_<NAME>`)."""
        return common_pb2.SamplingStrategy.Value(_PROTO_PREFIX + self.name)

    @property
    def short_name(self) -> str:
        """The name `driftlm run --strategy` takes and its report shows."""
        return next(short for short, strategy in _SHORT_NAMES.items() if strategy is self)

    @classmethod
    def from_proto(cls, value: int, field: str) -> Strategy:
        """The strategy a request names.

        Raises:
            InvalidArgumentError: UNSPECIFIED or a number this version does not know.
        """
        known = {int(v): common_pb2.SamplingStrategy.Name(v) for v in common_pb2.SamplingStrategy.values()}
        name = known.get(value, "")
        if not name.startswith(_PROTO_PREFIX) or name.removeprefix(_PROTO_PREFIX) not in cls.__members__:
            allowed = ", ".join(_PROTO_PREFIX + member.name for member in cls)
            raise InvalidArgumentError(field, f"must be one of {allowed}, got {value}")
        return cls[name.removeprefix(_PROTO_PREFIX)]

    @classmethod
    def from_name(cls, name: str) -> Strategy:
        """A strategy by its value (`token-embedding-shift`) or short name (`token-shift`).

        Raises:
            ValueError: neither.
        """
        if name in _SHORT_NAMES:
            return _SHORT_NAMES[name]
        try:
            return cls(name)
        except ValueError:
            raise ValueError(f"unknown strategy {name!r}; use one of {', '.join(names())}") from None


_SHORT_NAMES = {
    "uniform": Strategy.UNIFORM,
    "token-shift": Strategy.TOKEN_EMBEDDING_SHIFT,
    "sentence-shift": Strategy.SENTENCE_EMBEDDING_SHIFT,
    "mlm-loss": Strategy.TOKEN_MLM_LOSS,
}


def names() -> list[str]:
    """Every name from_name takes: short names first, then values."""
    return [*_SHORT_NAMES, *(s.value for s in Strategy if s.value not in _SHORT_NAMES)]
