"""The vocab service's server: `driftlm serve vocab`."""

from __future__ import annotations

import grpc

from driftlm.services.core.engine import RayCluster
from driftlm.services.runtime.bootstrap import ServiceBinding, build_server
from driftlm.services.runtime.config import ServeConfig
from driftlm.v1 import vocab_pb2, vocab_pb2_grpc

from .app import VocabApp
from .repository import VocabRepository
from .servicer import VocabServicer

SERVICE_NAME = vocab_pb2.DESCRIPTOR.services_by_name["VocabService"].full_name
# Calls that tokenize a corpus or write a directory; the rest read small records.
HEAVY_METHODS = frozenset(
    {"CreateVocabulary", "ObserveSlice", "ProposeUpdate", "CommitUpdate", "TokenizeTexts", "ExportVersion"}
)


def create_server(address: str = "127.0.0.1:0", config: ServeConfig | None = None) -> tuple[grpc.Server, int]:
    """A started vocab server on `address` over `config.store`; returns it and its port."""
    config = config or ServeConfig()
    app = VocabApp(
        VocabRepository(config.store),
        config.roots,
        max_answer_bytes=config.limits.max_message_bytes,
        ray=RayCluster(config.ray_address),
    )
    servicer = VocabServicer(app, config.limits)
    binding = ServiceBinding(
        SERVICE_NAME,
        lambda server: vocab_pb2_grpc.add_VocabServiceServicer_to_server(servicer, server),
        heavy_methods=HEAVY_METHODS,
    )
    return build_server([binding], address, config)
