"""Each parallel kernel is compiled twice, and small inputs take the serial compilation.

Waking Numba's sleeping thread pool costs milliseconds (about 8 ms on the 2-core machine `make bench`
runs on, for a kernel a service calls once a request), while a serial pass over 100,000 float64 costs
about 2 ms. Below SERIAL_BELOW elements the serial twin runs; results are the same either way, since
every kernel fixes its chunks and random streams independently of the thread count.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

from .disk_cache import cached_njit

# Measured on an idle pool (benchmarks/sampling.py, "small n" cases): the parallel pass wins from
# about 250,000 elements.
SERIAL_BELOW = 250_000


class Twin:
    """A kernel's parallel and serial compilations; call it with the element count first."""

    def __init__(self, function: Callable[..., Any], **options: Any) -> None:
        # `numba.prange` is `range` in the serial compilation. The twin gets its own qualified name,
        # so that Numba's on-disk cache keeps the two apart.
        serial = types.FunctionType(function.__code__, function.__globals__, f"{function.__name__}_serial")
        serial.__qualname__ = f"{function.__qualname__}_serial"
        self.parallel = cached_njit(parallel=True, **options)(function)
        self.serial = cached_njit(**options)(serial)

    def __call__(self, size: int, *args: Any) -> Any:
        """Run the compilation that suits `size` elements of work on `args`."""
        return (self.serial if size < SERIAL_BELOW else self.parallel)(*args)
