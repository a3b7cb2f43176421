"""File roots: what a caller may name, resolved before it is checked."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from driftlm.services.core.errors import InvalidArgumentError, NotFoundError, PermissionDeniedError
from driftlm.services.core.paths import FileRoots, local_path


@pytest.mark.parametrize(
    ("uri", "expected"),
    [("file:///abs/x%20y", Path("/abs/x y")), ("/abs/p", Path("/abs/p")), ("rel/p", None)],
)
def test_local_paths(tmp_path: Path, uri: str, expected: Path | None) -> None:
    assert local_path(uri, tmp_path, "f") == (expected or tmp_path / uri)


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("s3://bucket/key", "f: scheme 's3' is not supported"),
        ("", "f: is empty"),
        ("a\x00b", "f: contains a NUL byte"),
        ("file:///a%00b", "f: contains a NUL byte"),
        ("x" * 256, "f: is too long"),
        ("a/" * 2100, "f: is too long"),
    ],
)
def test_names_that_cannot_be_paths(tmp_path: Path, uri: str, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        local_path(uri, tmp_path, "f")


@pytest.fixture
def roots(tmp_path: Path) -> FileRoots:
    for name in ("store", "models", "exports", "elsewhere"):
        (tmp_path / name).mkdir()
    (tmp_path / "store" / "slice.txt").write_text("text\n")
    (tmp_path / "models" / "vocab.txt").write_text("[UNK]\n")
    (tmp_path / "elsewhere" / "secret.txt").write_text("secret\n")
    return FileRoots(tmp_path / "store", read=(tmp_path / "models",), write=(tmp_path / "exports",))


def test_reads_under_the_store_and_the_read_roots(roots: FileRoots, tmp_path: Path) -> None:
    assert roots.readable("slice.txt", "f") == (tmp_path / "store" / "slice.txt").resolve()
    assert roots.readable(str(tmp_path / "models"), "f", kind="directory").name == "models"
    with pytest.raises(PermissionDeniedError, match="--read-root"):
        roots.readable(str(tmp_path / "elsewhere" / "secret.txt"), "f")
    with pytest.raises(PermissionDeniedError):
        roots.readable("../elsewhere/secret.txt", "f")  # `..` resolved before the check
    with pytest.raises(NotFoundError):
        roots.readable("missing.txt", "f")


def test_a_symlink_is_judged_by_where_it_leads(roots: FileRoots, tmp_path: Path) -> None:
    (tmp_path / "store" / "link.txt").symlink_to(tmp_path / "elsewhere" / "secret.txt")
    with pytest.raises(PermissionDeniedError, match="which resolves to"):
        roots.readable("link.txt", "f")
    (tmp_path / "store" / "inside").symlink_to(tmp_path / "models")
    assert roots.readable("inside/vocab.txt", "f").parent.name == "models"


def test_the_kind_of_file_must_fit(roots: FileRoots, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="is a directory; name a file"):
        roots.readable(".", "f")
    with pytest.raises(InvalidArgumentError, match="is not a directory"):
        roots.readable("slice.txt", "f", kind="directory")
    os.mkfifo(tmp_path / "store" / "pipe")
    with pytest.raises(InvalidArgumentError, match="not a regular file"):
        roots.readable("pipe", "f")  # reading a FIFO would block the call forever


def test_writes_under_the_store_and_the_write_roots_only(roots: FileRoots, tmp_path: Path) -> None:
    assert roots.writable(str(tmp_path / "exports" / "new"), "f").name == "new"
    assert roots.writable("exports/new", "f").parent.name == "exports"  # under the store
    with pytest.raises(PermissionDeniedError, match="--write-root"):
        roots.writable(str(tmp_path / "models" / "new"), "f")  # readable is not writable
    with pytest.raises(PermissionDeniedError):
        roots.writable("../../anywhere", "f")
