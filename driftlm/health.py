"""`driftlm health`: the grpc.health.v1 check a container's HEALTHCHECK or a probe runs.

It uses the service's own settings (DRIFTLM_PORT, and with TLS on the peer CA, client certificate
and server name), so an image needs no other tool, and exits 0 only when the server is SERVING.
"""

from __future__ import annotations

from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from driftlm.services.runtime.security import ChannelSecurity


def check(target: str, security: ChannelSecurity, service: str, timeout_s: float) -> tuple[bool, str]:
    """Whether `service` ("" for the whole server) at `target` answers SERVING, and what it said."""
    channel = security.channel(target)
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
        )
    except grpc.RpcError as error:
        return False, f"{error.code().name}: {error.details()}"
    finally:
        channel.close()
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, status


def security_from(
    tls_ca: Path | None, tls_cert: Path | None, tls_key: Path | None, server_name: str | None
) -> ChannelSecurity:
    """Plaintext without a CA; TLS (mutual when a certificate is given) with one."""
    if tls_ca is None:
        return ChannelSecurity()
    return ChannelSecurity.from_files(root_ca=tls_ca, client_cert=tls_cert, client_key=tls_key, server_name=server_name)
