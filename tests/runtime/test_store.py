"""Atomic writes: a reader, or a restart after kill -9, never sees half a file or half a directory."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from driftlm.services.core import store


def test_write_replaces_whole_and_leaves_no_temporaries(tmp_path: Path) -> None:
    target = tmp_path / "a" / "value.json"
    store.write_json_atomically(target, {"v": 1})
    store.write_json_atomically(target, {"v": 2, "text": "🦜"})
    assert store.read_json(target) == {"v": 2, "text": "🦜"}
    assert [p.name for p in target.parent.iterdir()] == ["value.json"]


def test_kill_9_during_a_write_keeps_the_old_content(tmp_path: Path) -> None:
    target = tmp_path / "big.bin"
    target.write_bytes(b"old")
    # A child writes 2 GB through the atomic writer; it is killed while the temporary grows.
    code = f"from pathlib import Path; from driftlm.services.core import store; store.write_bytes_atomically(Path({str(target)!r}), b'x' * (2 << 30))"
    child = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(f"{store.TEMPORARY_PREFIX}*")) and time.monotonic() < deadline:
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert target.read_bytes() == b"old"
    assert store.remove_temporaries(tmp_path) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["big.bin"]


def test_publish_directory_is_all_or_nothing(tmp_path: Path) -> None:
    temporary = store.new_temporary_directory(tmp_path)
    (temporary / "a.txt").write_text("a")
    store.publish_directory(temporary, tmp_path / "final")
    assert (tmp_path / "final" / "a.txt").read_text() == "a"
    again = store.new_temporary_directory(tmp_path)
    with pytest.raises(FileExistsError):
        store.publish_directory(again, tmp_path / "final")
