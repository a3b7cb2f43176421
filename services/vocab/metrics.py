"""Prometheus metrics of the vocab service, beside every service's RPC metrics: how many versions
the store holds, and how many updates were committed and bases registered since the start."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import Counter, Gauge

VERSIONS = Gauge("driftlm_vocab_versions", "Vocabulary versions in the store (bases and updates).")
CREATED = Counter("driftlm_vocab_versions_created_total", "Versions created since the start, by kind.", ["kind"])


def count_versions_with(count: Callable[[], int]) -> None:
    """Read the number of versions from `count` at every scrape (the store is the truth)."""
    VERSIONS.set_function(count)
