"""List RPCs page the same way everywhere (AIP-158): page_size (0 means 100, at most 1,000) and
an opaque page_token that the previous page returned."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from driftlm.services.core.errors import InvalidArgumentError

Item = TypeVar("Item")
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def page_of(items: Sequence[Item], page_size: int, page_token: str) -> tuple[Sequence[Item], str]:
    """The page the request asks for and the token of the next one ("" on the last page).

    Raises:
        InvalidArgumentError: page_size out of range, or a token this service did not return.
    """
    size = page_size or DEFAULT_PAGE_SIZE
    if not 1 <= size <= MAX_PAGE_SIZE:
        raise InvalidArgumentError(
            "page_size", f"must be in [1, {MAX_PAGE_SIZE}] (0 means {DEFAULT_PAGE_SIZE}), got {size}"
        )
    # isdigit alone accepts "²" and other Unicode digits that int() refuses; tokens are short ASCII.
    if page_token and not (len(page_token) <= 19 and page_token.isascii() and page_token.isdigit()):
        raise InvalidArgumentError("page_token", "is not a token this service returned")
    start = int(page_token or 0)
    return items[start : start + size], str(start + size) if start + size < len(items) else ""
