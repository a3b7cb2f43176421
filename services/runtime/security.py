"""TLS, mutual TLS and bearer tokens, for servers and for the clients that call them.

Servers: `--tls-cert/--tls-key` serve TLS; `--tls-client-ca` also requires a client certificate
signed by that CA (mutual TLS); `--auth-token-file` (one token a line) requires
`authorization: Bearer <token>` on every call but health checks (and, unless configured otherwise,
reflection). Clients, the trainer's calls to its peers and `driftlm run` included, take the same
material through `ChannelSecurity`.
"""

from __future__ import annotations

import hmac
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from driftlm.services.core.errors import UnauthenticatedError

from . import tracing

AUTHORIZATION = "authorization"
BEARER = "bearer "


def read_tokens(path: Path) -> frozenset[str]:
    """The tokens in `path`: one a line; blank lines and comments (# after any indentation) are skipped.

    Raises:
        ValueError: the file holds no token.
    """
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    tokens = frozenset(line for line in lines if line and not line.startswith("#"))
    if not tokens:
        raise ValueError(f"{path} holds no token (one a line)")
    return tokens


def check_bearer(metadata: Sequence[tuple[str, str | bytes]], tokens: frozenset[str]) -> None:
    """Accept the call when its `authorization: Bearer <token>` is one of `tokens`.

    Every token is compared in constant time, so the answer's timing tells nothing about them.

    Raises:
        UnauthenticatedError: no bearer token, or an unknown one.
    """
    offered = next((value for key, value in metadata if key == AUTHORIZATION), None)
    if isinstance(offered, bytes):
        offered = offered.decode("utf-8", "replace")
    if offered is None or not offered.lower().startswith(BEARER):
        raise UnauthenticatedError("this service requires 'authorization: Bearer <token>' metadata")
    token = offered[len(BEARER) :].strip().encode("utf-8")
    matches = [hmac.compare_digest(token, known.encode("utf-8")) for known in tokens]
    if not any(matches):
        raise UnauthenticatedError("the bearer token is not one this service accepts")


def check_key_pair(cert: Path, key: Path) -> None:
    """The key must be the certificate's: gRPC's own failure reads as if the port were in use.

    Raises:
        ValueError: the files are no PEM certificate chain and key, or the key is another's.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key, password=lambda: b"")
    except ssl.SSLError as error:
        reason = error.reason or "unreadable"
        if "MISMATCH" in reason.upper():
            raise ValueError(f"--tls-key {key} is not the key of --tls-cert {cert}") from None
        raise ValueError(
            f"--tls-cert {cert} and --tls-key {key} are not a PEM certificate and key ({reason})"
        ) from None


def server_credentials(cert: Path, key: Path, client_ca: Path | None) -> grpc.ServerCredentials:
    """TLS credentials; with `client_ca`, clients must present a certificate it signed.

    Raises:
        ValueError: the key is not the certificate's, or they are not PEM (check_key_pair).
    """
    check_key_pair(cert, key)
    return grpc.ssl_server_credentials(
        [(key.read_bytes(), cert.read_bytes())],
        root_certificates=None if client_ca is None else client_ca.read_bytes(),
        require_client_auth=client_ca is not None,
    )


# grpc ships no types: its interceptor bases are Any to mypy.
_CLIENT_INTERCEPTORS: tuple[type, ...] = (
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
)


class _BearerToken(*_CLIENT_INTERCEPTORS):  # type: ignore[misc]
    """Adds `authorization: Bearer <token>` to every call (plaintext channels included, for tests
    and meshes that terminate TLS in a sidecar)."""

    def __init__(self, token: str) -> None:
        self._header = (AUTHORIZATION, f"Bearer {token}")

    def _with_token(self, details: Any) -> Any:
        return details._replace(metadata=[*(details.metadata or ()), self._header])

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_stream_unary(self, continuation: Callable[..., Any], details: Any, requests: Any) -> Any:
        return continuation(self._with_token(details), requests)

    def intercept_stream_stream(self, continuation: Callable[..., Any], details: Any, requests: Any) -> Any:
        return continuation(self._with_token(details), requests)


@dataclass(frozen=True)
class ChannelSecurity:
    """What a client presents: the CA it trusts (TLS), its own certificate (mutual TLS), a token."""

    # PEM of the CA that signed the server's certificate; None: plaintext.
    root_ca: bytes | None = None
    # PEM certificate and key of the client, for servers that require mutual TLS.
    client_cert: bytes | None = None
    client_key: bytes | None = None
    # Sent as `authorization: Bearer <token>`.
    token: str | None = None
    # Name the server's certificate is checked against, when it differs from the target's host.
    server_name: str | None = None

    @classmethod
    def from_files(
        cls,
        *,
        root_ca: Path | None = None,
        client_cert: Path | None = None,
        client_key: Path | None = None,
        token_file: Path | None = None,
        server_name: str | None = None,
    ) -> ChannelSecurity:
        """Read the PEM files and the first token of `token_file` (each optional)."""
        return cls(
            root_ca=None if root_ca is None else root_ca.read_bytes(),
            client_cert=None if client_cert is None else client_cert.read_bytes(),
            client_key=None if client_key is None else client_key.read_bytes(),
            token=None if token_file is None else sorted(read_tokens(token_file))[0],
            server_name=server_name,
        )

    def channel(self, target: str, options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
        """A channel to `target` with this security."""
        options = list(options)
        if self.root_ca is None:
            channel = grpc.insecure_channel(target, options=options)
        else:
            if self.server_name:
                options.append(("grpc.ssl_target_name_override", self.server_name))
            credentials = grpc.ssl_channel_credentials(self.root_ca, self.client_key, self.client_cert)
            channel = grpc.secure_channel(target, credentials, options=options)
        channel = tracing.traced_channel(channel)
        return channel if self.token is None else grpc.intercept_channel(channel, _BearerToken(self.token))


PLAINTEXT = ChannelSecurity()
