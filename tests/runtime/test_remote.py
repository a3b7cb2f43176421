"""Artifacts in an S3-compatible store (moto's server on the loopback), through a real vocab server:
corpora and tokenizer directories read from allowed prefixes only, SHA-256 checked when given and
filled in what the service answers, exports written to a bucket, and the errors a caller can act on."""

from __future__ import annotations

import gzip
import hashlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import zstandard

from driftlm.services.core.artifacts import normalized, under_prefixes
from driftlm.services.core.errors import InvalidArgumentError, PermissionDeniedError
from driftlm.services.core.paths import FileRoots
from driftlm.services.runtime.config import ServeConfig
from driftlm.services.trainer.server import create_server as create_trainer_server
from driftlm.services.vocab.server import create_server
from driftlm.v1 import common_pb2, trainer_pb2, trainer_pb2_grpc, vocab_pb2, vocab_pb2_grpc

from ..trainer.conftest import Stack, stack  # noqa: F401  # `stack` is a fixture
from ..vocab.planted import EMERGING, planted_base_directory, planted_slice

moto_server = pytest.importorskip("moto.server", reason="moto[server] is a dev dependency")
s3fs = pytest.importorskip("s3fs", reason="s3fs is the [s3] extra")


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[s3fs.S3FileSystem]:
    """An S3 server on 127.0.0.1, with the environment every boto client reads pointed at it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    patch = pytest.MonkeyPatch()
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }.items():
        patch.setenv(name, value)
    filesystem = s3fs.S3FileSystem(skip_instance_cache=True)
    for bucket in ("corpora", "models", "exports"):
        filesystem.mkdir(bucket)
    yield filesystem
    patch.undo()
    server.stop()


@pytest.fixture
def texts() -> list[str]:
    return planted_slice(np.random.default_rng(0), EMERGING, texts=300)


@pytest.fixture
def stub(s3: s3fs.S3FileSystem, tmp_path: Path) -> Iterator[vocab_pb2_grpc.VocabServiceStub]:
    config = ServeConfig(
        store=tmp_path / "store",
        read_roots=(tmp_path,),
        read_uri_prefixes=("s3://corpora/2024/", "s3://models/"),
        write_uri_prefixes=("s3://exports/driftlm/",),
    )
    server, port = create_server("127.0.0.1:0", config)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield vocab_pb2_grpc.VocabServiceStub(channel)
    server.stop(grace=None)


def _register(stub: vocab_pb2_grpc.VocabServiceStub, uri: str, sha256: str = "") -> vocab_pb2.VocabVersion:
    ref = common_pb2.ArtifactRef(uri=uri, sha256=sha256)
    return stub.CreateVocabulary(vocab_pb2.CreateVocabularyRequest(tokenizer_dir=ref)).version


def _observe(
    stub: vocab_pb2_grpc.VocabServiceStub, version_id: str, uri: str, sha256: str = ""
) -> vocab_pb2.ObserveSliceResponse:
    corpus = common_pb2.CorpusSource(uri=common_pb2.ArtifactRef(uri=uri, sha256=sha256))
    return stub.ObserveSlice(iter([vocab_pb2.ObserveSliceRequest(version_id=version_id, corpus=corpus)]))


def _code(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as raised:
        call()  # type: ignore[operator]
    return raised.value.code(), raised.value.details()


def test_a_tokenizer_and_compressed_corpora_in_a_bucket_give_what_local_files_give(
    s3: s3fs.S3FileSystem, stub: vocab_pb2_grpc.VocabServiceStub, tmp_path: Path, texts: list[str]
) -> None:
    local = planted_base_directory(tmp_path / "tokenizer")
    s3.put(f"{local}/", "models/planted/", recursive=True)
    base = _register(stub, "s3://models/planted")
    assert base.version_id == _register(stub, str(local)).version_id  # content-hashed: the same tokenizer
    assert len(base.tokenizer.sha256) == 64  # filled on what the service answers

    lines = "".join(json.dumps({"text": t}) + "\n" for t in texts).encode()
    (tmp_path / "slice.jsonl").write_bytes(lines)
    expected = _observe(stub, base.version_id, str(tmp_path / "slice.jsonl"))
    for name, data in {
        "slice.jsonl.gz": gzip.compress(lines),
        "slice.jsonl.zst": zstandard.ZstdCompressor().compress(lines),
    }.items():
        s3.pipe(f"corpora/2024/{name}", data)
        observed = _observe(stub, base.version_id, f"s3://corpora/2024/{name}", hashlib.sha256(data).hexdigest())
        assert (observed.text_count, observed.piece_count, observed.unknown_rate) == (
            expected.text_count,
            expected.piece_count,
            expected.unknown_rate,
        )
        assert [c.piece for c in observed.top_candidates] == [c.piece for c in expected.top_candidates]


def test_a_wrong_sha256_is_refused_and_names_both_digests(
    s3: s3fs.S3FileSystem, stub: vocab_pb2_grpc.VocabServiceStub, tmp_path: Path, texts: list[str]
) -> None:
    s3.put(f"{planted_base_directory(tmp_path / 't')}/", "models/p2/", recursive=True)
    base = _register(stub, "s3://models/p2/")
    s3.pipe("corpora/2024/checked.txt", "\n".join(texts).encode())
    code, details = _code(lambda: _observe(stub, base.version_id, "s3://corpora/2024/checked.txt", "0" * 64))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "0" * 64 in details and "SHA-256" in details
    code, details = _code(lambda: _observe(stub, base.version_id, "s3://corpora/2024/checked.txt", "xyz"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "sha256" in details
    code, details = _code(lambda: _register(stub, "s3://models/p2/", "0" * 64))  # a directory has none
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "directory" in details


@pytest.mark.parametrize(
    ("uri", "code"),
    [
        ("s3://corpora/2023/old.txt", grpc.StatusCode.PERMISSION_DENIED),  # another prefix
        ("s3://corpora/2024/../2023/old.txt", grpc.StatusCode.PERMISSION_DENIED),  # climbs out of its prefix
        ("s3://corpora/2024x/a.txt", grpc.StatusCode.PERMISSION_DENIED),  # a prefix is a folder, not a string
        ("s3://exports/driftlm/../../corpora/2023/old.txt", grpc.StatusCode.PERMISSION_DENIED),
        ("s3://corpora/2024/missing.txt", grpc.StatusCode.NOT_FOUND),
        ("gopher://corpora/2024/a.txt", grpc.StatusCode.INVALID_ARGUMENT),
        ("s3:///no-bucket", grpc.StatusCode.INVALID_ARGUMENT),
        ("s3://corpora/2024/a.txt?versionId=1", grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
def test_remote_uris_outside_the_rules_get_the_right_code(
    s3: s3fs.S3FileSystem, stub: vocab_pb2_grpc.VocabServiceStub, tmp_path: Path, uri: str, code: grpc.StatusCode
) -> None:
    s3.pipe("corpora/2023/old.txt", b"the secret of 2023\n")
    s3.put(f"{planted_base_directory(tmp_path / 't')}/", "models/p3/", recursive=True)
    base = _register(stub, "s3://models/p3")
    got, details = _code(lambda: _observe(stub, base.version_id, uri))
    assert got == code, details
    assert "secret" not in details  # no content of the store in errors


def test_an_export_lands_in_the_bucket_with_the_tokenizer_the_version_names(
    s3: s3fs.S3FileSystem, stub: vocab_pb2_grpc.VocabServiceStub, tmp_path: Path
) -> None:
    s3.put(f"{planted_base_directory(tmp_path / 't')}/", "models/p4/", recursive=True)
    base = _register(stub, "s3://models/p4")
    reply = stub.ExportVersion(
        vocab_pb2.ExportVersionRequest(
            version_id=base.version_id, destination=common_pb2.ArtifactRef(uri="s3://exports/driftlm/v1/")
        )
    )
    assert reply.directory.uri == "s3://exports/driftlm/v1"
    exported = s3.cat("exports/driftlm/v1/tokenizer.json")
    assert hashlib.sha256(exported).hexdigest() == base.tokenizer.sha256
    code, _ = _code(
        lambda: stub.ExportVersion(
            vocab_pb2.ExportVersionRequest(
                version_id=base.version_id, destination=common_pb2.ArtifactRef(uri="s3://corpora/2024/out/")
            )
        )
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED  # readable is not writable


def test_remote_uris_are_off_unless_a_prefix_allows_them(tmp_path: Path) -> None:
    roots = FileRoots(tmp_path)
    with pytest.raises(PermissionDeniedError, match=r"none: remote URIs are off.*--read-uri-prefix"):
        roots.readable("s3://corpora/2024/a.txt", "f")
    with pytest.raises(InvalidArgumentError, match="scheme 'gopher' is not supported"):
        roots.readable("gopher://h/a", "f")


def test_prefix_matching_is_by_folder_after_normalizing() -> None:
    assert normalized("s3://b/a/./c/../d", "f") == "s3://b/a/d"
    assert under_prefixes("s3://b/a/d", ("s3://b/a",))
    assert under_prefixes("s3://b/a", ("s3://b/a/",))
    assert not under_prefixes("s3://b/ab/c", ("s3://b/a",))
    assert not under_prefixes(normalized("s3://b/a/../x", "f"), ("s3://b/a/",))
    assert not under_prefixes("s3://other/a/x", ("s3://b/a/",))


def test_onnx_exports_land_in_a_bucket_as_new_versions_with_their_digests(
    s3: s3fs.S3FileSystem,
    stack: Stack,  # noqa: F811
) -> None:
    """ExportOnnx to s3://: the next version number is read from the bucket, the config is written
    once, and the response names the objects with the digests of their bytes."""
    server, port = create_trainer_server(
        "127.0.0.1:0",
        ServeConfig(
            store=stack.store,
            vocab_endpoint=stack.vocab_target,
            sampling_endpoint=stack.sampling_target,
            write_uri_prefixes=("s3://exports/driftlm/",),
        ),
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            trainer = trainer_pb2_grpc.TrainerServiceStub(channel)
            request = trainer_pb2.ExportOnnxRequest(
                checkpoint_id=stack.base_checkpoint.checkpoint_id,
                destination=common_pb2.ArtifactRef(uri="s3://exports/driftlm/models/"),
            )
            first, second = trainer.ExportOnnx(request), trainer.ExportOnnx(request)
            code, _ = _code(
                lambda: trainer.ExportOnnx(
                    trainer_pb2.ExportOnnxRequest(
                        checkpoint_id=stack.base_checkpoint.checkpoint_id,
                        destination=common_pb2.ArtifactRef(uri="s3://corpora/2024/models/"),
                    )
                )
            )
    finally:
        server.stop(grace=None)
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert first.repository.uri == "s3://exports/driftlm/models"
    assert first.model.uri == "s3://exports/driftlm/models/driftlm/1/model.onnx"
    assert second.quantized_model.uri == "s3://exports/driftlm/models/driftlm_int8/2/model.onnx"
    for reply in (first, second):
        for ref in (reply.model, reply.quantized_model):
            assert hashlib.sha256(s3.cat(ref.uri)).hexdigest() == ref.sha256
    assert s3.exists("exports/driftlm/models/driftlm/config.pbtxt")
    assert sorted(p.rsplit("/", 1)[-1] for p in s3.ls("exports/driftlm/models/driftlm_int8")) == [
        "1",
        "2",
        "config.pbtxt",
    ]


def test_a_rewritten_object_is_fetched_again_and_an_unchanged_one_is_not(s3: s3fs.S3FileSystem, tmp_path: Path) -> None:
    roots = FileRoots(tmp_path, read_prefixes=("s3://corpora/2024/",))
    s3.pipe("corpora/2024/changing.txt", b"first version\n")
    first = roots.readable("s3://corpora/2024/changing.txt", "f")
    assert first.read_bytes() == b"first version\n"
    assert roots.readable("s3://corpora/2024/changing.txt", "f") == first  # cached: the same copy
    s3.pipe("corpora/2024/changing.txt", b"other version\n")  # the same size, other bytes
    second = roots.readable("s3://corpora/2024/changing.txt", "f")
    assert second != first and second.read_bytes() == b"other version\n"
    s3.put(f"{planted_base_directory(tmp_path / 'dir')}/", "corpora/2024/tokenizer/", recursive=True)
    directory = roots.readable("s3://corpora/2024/tokenizer", "f", kind="directory")
    s3.pipe("corpora/2024/tokenizer/vocab.txt", (directory / "vocab.txt").read_bytes().replace(b"[UNK]", b"[UNX]"))
    assert roots.readable("s3://corpora/2024/tokenizer", "f", kind="directory") != directory  # one file changed
