"""TLS, mutual TLS and bearer tokens on real servers, with certificates made for the test (trustme):
no certificate or a wrong token is refused, the right ones work, health stays open for probes."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from driftlm.services.runtime.config import ServeConfig
from driftlm.services.runtime.security import ChannelSecurity, read_tokens
from driftlm.services.sampling.client import SamplingClient
from driftlm.services.sampling.server import create_server

TOKEN = "s3cret-token-for-tests"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A CA, a server certificate for 127.0.0.1 and localhost, and a client certificate."""
    root = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("driftlm-trainer")
    paths = {
        "ca": root / "ca.pem",
        "cert": root / "server.pem",
        "key": root / "server.key",
        "client_cert": root / "client.pem",
        "client_key": root / "client.key",
        "tokens": root / "tokens.txt",
    }
    ca.cert_pem.write_to_path(str(paths["ca"]))
    server.private_key_pem.write_to_path(str(paths["key"]))
    (paths["cert"]).write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
    client.private_key_pem.write_to_path(str(paths["client_key"]))
    (paths["client_cert"]).write_bytes(b"".join(blob.bytes() for blob in client.cert_chain_pems))
    paths["tokens"].write_text(f"# one token a line\n{TOKEN}\nanother-token\n", encoding="utf-8")
    paths["wrong_tokens"] = root / "wrong-tokens.txt"
    paths["wrong_tokens"].write_text("not-the-token\n", encoding="utf-8")
    other_ca = trustme.CA()
    stranger = other_ca.issue_cert("stranger")
    paths["stranger_cert"] = root / "stranger.pem"
    paths["stranger_key"] = root / "stranger.key"
    paths["stranger_cert"].write_bytes(b"".join(blob.bytes() for blob in stranger.cert_chain_pems))
    stranger.private_key_pem.write_to_path(str(paths["stranger_key"]))
    return paths


@pytest.fixture
def secured(pki: dict[str, Path], request: pytest.FixtureRequest) -> Iterator[str]:
    """A sampling server with TLS and tokens (and mutual TLS when the test is marked mtls)."""
    mutual = request.node.get_closest_marker("mtls") is not None
    config = ServeConfig(
        tls_cert=pki["cert"],
        tls_key=pki["key"],
        tls_client_ca=pki["ca"] if mutual else None,
        auth_token_file=pki["tokens"],
        open_reflection=False,
    )
    server, port = create_server("127.0.0.1:0", config)
    yield f"127.0.0.1:{port}"
    server.stop(grace=None)


def _draw(target: str, security: ChannelSecurity) -> np.ndarray:
    with SamplingClient(target, security=security, timeout_s=10) as client:
        return client.draw(np.array([0.0, 1.0, 2.0]), k=1, seed=1)


def _code(target: str, security: ChannelSecurity) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as raised:
        _draw(target, security)
    return raised.value.code()


def test_tls_and_the_right_token_work(secured: str, pki: dict[str, Path]) -> None:
    security = ChannelSecurity.from_files(root_ca=pki["ca"], token_file=pki["tokens"])
    assert _draw(secured, security).tolist() in ([1], [2])


def test_no_token_or_a_wrong_one_is_unauthenticated(secured: str, pki: dict[str, Path]) -> None:
    ca = pki["ca"].read_bytes()
    assert _code(secured, ChannelSecurity(root_ca=ca)) == grpc.StatusCode.UNAUTHENTICATED
    assert _code(secured, ChannelSecurity(root_ca=ca, token="guess")) == grpc.StatusCode.UNAUTHENTICATED
    assert _code(secured, ChannelSecurity(root_ca=ca, token=TOKEN + "x")) == grpc.StatusCode.UNAUTHENTICATED


def test_plaintext_to_a_tls_server_does_not_connect(secured: str) -> None:
    assert _code(secured, ChannelSecurity(token=TOKEN)) == grpc.StatusCode.UNAVAILABLE


def test_health_answers_without_a_token_and_closed_reflection_does_not(secured: str, pki: dict[str, Path]) -> None:
    channel = ChannelSecurity(root_ca=pki["ca"].read_bytes()).channel(secured)
    with channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        listing = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        with pytest.raises(grpc.RpcError) as raised:
            list(listing)
        assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.mtls
def test_mutual_tls_needs_a_client_certificate_from_the_ca(secured: str, pki: dict[str, Path]) -> None:
    ca = pki["ca"].read_bytes()
    assert _code(secured, ChannelSecurity(root_ca=ca, token=TOKEN)) == grpc.StatusCode.UNAVAILABLE
    stranger = ChannelSecurity(
        root_ca=ca,
        client_cert=pki["stranger_cert"].read_bytes(),
        client_key=pki["stranger_key"].read_bytes(),
        token=TOKEN,
    )
    assert _code(secured, stranger) == grpc.StatusCode.UNAVAILABLE
    known = ChannelSecurity.from_files(
        root_ca=pki["ca"], client_cert=pki["client_cert"], client_key=pki["client_key"], token_file=pki["tokens"]
    )
    assert _draw(secured, known).shape == (1,)


def test_half_a_tls_configuration_refuses_to_start(pki: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="both --tls-cert and --tls-key"):
        create_server("127.0.0.1:0", ServeConfig(tls_cert=pki["cert"]))
    with pytest.raises(ValueError, match="mutual TLS is TLS first"):
        create_server("127.0.0.1:0", ServeConfig(tls_client_ca=pki["ca"]))


def test_the_trainer_reaches_a_secured_vocab_with_its_peer_credentials(
    pki: dict[str, Path], tmp_path: Path, test_roots: dict[str, Any]
) -> None:
    """trainer -> vocab over mutual TLS with a token; a wrong peer token is the operator's to fix
    (FAILED_PRECONDITION), not a retry (UNAVAILABLE)."""
    from driftlm.services.trainer.server import create_server as create_trainer
    from driftlm.services.vocab.server import create_server as create_vocab
    from driftlm.v1 import trainer_pb2, trainer_pb2_grpc, vocab_pb2_grpc

    from ..trainer.conftest import TINY_BERT
    from ..vocab.planted import planted_base_directory, register

    store = tmp_path / "store"
    vocab_server, vocab_port = create_vocab(
        "127.0.0.1:0",
        ServeConfig(
            store=store,
            tls_cert=pki["cert"],
            tls_key=pki["key"],
            tls_client_ca=pki["ca"],
            auth_token_file=pki["tokens"],
            **test_roots,
        ),
    )
    client = ChannelSecurity.from_files(
        root_ca=pki["ca"], client_cert=pki["client_cert"], client_key=pki["client_key"], token_file=pki["tokens"]
    )
    try:
        with client.channel(f"127.0.0.1:{vocab_port}") as channel:
            base = register(vocab_pb2_grpc.VocabServiceStub(channel), planted_base_directory(tmp_path / "base"))
        for token_file, expected in ((pki["tokens"], None), (pki["wrong_tokens"], grpc.StatusCode.FAILED_PRECONDITION)):
            trainer_server, trainer_port = create_trainer(
                "127.0.0.1:0",
                ServeConfig(
                    store=tmp_path / f"trainer-{expected}",
                    vocab_endpoint=f"127.0.0.1:{vocab_port}",
                    peer_tls_ca=pki["ca"],
                    peer_tls_cert=pki["client_cert"],
                    peer_tls_key=pki["client_key"],
                    peer_token_file=token_file,
                ),
            )
            try:
                with grpc.insecure_channel(f"127.0.0.1:{trainer_port}") as channel:
                    request = trainer_pb2.CreateCheckpointRequest(
                        model_config_json=TINY_BERT, vocab_version_id=base.version_id
                    )
                    stub = trainer_pb2_grpc.TrainerServiceStub(channel)
                    if expected is None:
                        assert stub.CreateCheckpoint(request, timeout=60).checkpoint.checkpoint_id
                    else:
                        with pytest.raises(grpc.RpcError) as raised:
                            stub.CreateCheckpoint(request, timeout=60)
                        assert raised.value.code() == expected and "peer" in raised.value.details()
            finally:
                trainer_server.stop(grace=None)
    finally:
        vocab_server.stop(grace=None)


def _health(*args: str) -> subprocess.CompletedProcess[str]:
    """`driftlm health`, the command a container's HEALTHCHECK runs, in its own process."""
    return subprocess.run(
        [sys.executable, "-m", "driftlm", "health", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_the_health_command_passes_on_a_serving_server_and_fails_elsewhere(sampling_target: str) -> None:
    served = _health("--target", sampling_target)
    assert served.returncode == 0 and "SERVING" in served.stdout
    unknown = _health("--target", sampling_target, "--service", "no.such.Service")
    assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stderr
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{free.getsockname()[1]}"
    refused = _health("--target", closed, "--timeout-s", "2")
    assert refused.returncode == 1 and "UNAVAILABLE" in refused.stderr


@pytest.mark.mtls
def test_the_health_command_speaks_mutual_tls_with_the_peer_credentials(secured: str, pki: dict[str, Path]) -> None:
    with_credentials = _health(
        "--target", secured, "--tls-ca", str(pki["ca"]), "--tls-cert", str(pki["client_cert"]),
        "--tls-key", str(pki["client_key"]),
    )  # fmt: skip
    assert with_credentials.returncode == 0, with_credentials.stderr
    assert _health("--target", secured, "--timeout-s", "2").returncode == 1


@pytest.mark.parametrize(
    ("content", "tokens"),
    [
        ("alpha\n# comment\n\nbeta\n", {"alpha", "beta"}),  # comments and blank lines skipped
        ("alpha\n    # an indented comment\n\t#tab\n", {"alpha"}),  # once, an indented '#' line was a token
        ("  padded  \n", {"padded"}),  # surrounding spaces are not part of a token
    ],
)
def test_the_token_file_holds_tokens_and_nothing_else(content: str, tokens: set[str], tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(content, encoding="utf-8")
    assert read_tokens(path) == tokens


def test_a_token_file_of_comments_only_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("  # nothing but a comment\n", encoding="utf-8")
    with pytest.raises(ValueError, match="holds no token"):
        read_tokens(path)


def test_a_key_that_is_not_the_certificates_is_said_to_be_so(pki: dict[str, Path]) -> None:
    """A mismatched key was reported as "the port is in use"."""
    config = ServeConfig(tls_cert=pki["cert"], tls_key=pki["stranger_key"])
    with pytest.raises(ValueError, match="is not the key of --tls-cert"):
        create_server("127.0.0.1:0", config)
    with pytest.raises(ValueError, match="are not a PEM certificate and key"):
        create_server("127.0.0.1:0", ServeConfig(tls_cert=pki["tokens"], tls_key=pki["key"]))


def test_tokens_without_tls_are_served_with_a_warning(pki: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="driftlm.server"):
        server, _ = create_server("127.0.0.1:0", ServeConfig(auth_token_file=pki["tokens"]))
        server.stop(grace=None)
    assert any("bearer tokens over plaintext" in record.getMessage() for record in caplog.records)
    caplog.clear()
    with caplog.at_level("WARNING", logger="driftlm.server"):
        server, _ = create_server("127.0.0.1:0", ServeConfig(tls_cert=pki["cert"], tls_key=pki["key"]))
        server.stop(grace=None)
    assert not any("plaintext" in record.getMessage() for record in caplog.records)


def test_an_unknown_method_is_authenticated_first_then_unimplemented_and_counted(
    secured: str, pki: dict[str, Path]
) -> None:
    """Without a token an unknown method was UNIMPLEMENTED (telling a stranger what exists) and
    never counted in the metrics."""
    from prometheus_client import REGISTRY

    method = "/driftlm.v1.SamplingService/NoSuchMethod"

    def call(security: ChannelSecurity) -> grpc.RpcError:
        channel = security.channel(secured)
        with channel, pytest.raises(grpc.RpcError) as raised:
            channel.unary_unary(method)(b"", timeout=10)
        return raised.value

    def counted() -> float:
        return sum(
            sample.value
            for metric in REGISTRY.collect()
            for sample in metric.samples
            if sample.name == "grpc_server_started_total" and sample.labels.get("grpc_method") == "NoSuchMethod"
        )

    before = counted()
    ca = pki["ca"].read_bytes()
    assert call(ChannelSecurity(root_ca=ca)).code() == grpc.StatusCode.UNAUTHENTICATED
    refused = call(ChannelSecurity(root_ca=ca, token=TOKEN))
    assert refused.code() == grpc.StatusCode.UNIMPLEMENTED and "NoSuchMethod" in refused.details()
    assert counted() >= before + 2
