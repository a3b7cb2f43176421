"""The sampling service's server: `driftlm serve sampling`."""

from __future__ import annotations

import grpc

from driftlm.services.runtime.bootstrap import ServiceBinding, build_server
from driftlm.services.runtime.config import ServeConfig
from driftlm.v1 import sampling_pb2, sampling_pb2_grpc

from .servicer import SamplingServicer

SERVICE_NAME = sampling_pb2.DESCRIPTOR.services_by_name["SamplingService"].full_name


def create_server(address: str = "127.0.0.1:0", config: ServeConfig | None = None) -> tuple[grpc.Server, int]:
    """A started sampling server on `address` (host:port; port 0 picks one); returns it and its port.

    `config` supplies the limits (message and stream sizes, workers); its host and port are unused.
    """
    config = config or ServeConfig()
    servicer = SamplingServicer(config.limits)
    binding = ServiceBinding(
        SERVICE_NAME,
        lambda server: sampling_pb2_grpc.add_SamplingServiceServicer_to_server(servicer, server),
        heavy_methods=frozenset(sampling_pb2.DESCRIPTOR.services_by_name["SamplingService"].methods_by_name),
    )
    return build_server([binding], address, config)
