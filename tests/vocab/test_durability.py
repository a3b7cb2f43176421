"""kill -9 in the middle of a commit: every committed version stays readable, no half version shows,
and a version never gets two children, whatever instant the kill hits."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest

from driftlm.local_services import start_service
from driftlm.services.core.store import TEMPORARY_PREFIX
from driftlm.v1 import vocab_pb2, vocab_pb2_grpc

from .planted import EMERGING, observe, planted_base_directory, planted_slice, register

# The service as `driftlm serve vocab`, except that publishing a version directory (the rename that
# makes it visible) waits for the test to kill the process: before the rename, or just after it.
_PAUSED_SERVE = """
import os, sys, time
from driftlm.services.core import store
def paused_rename(source, target, _rename=os.rename):
    publishing = os.path.basename(str(source)).startswith(store.TEMPORARY_PREFIX) and "versions" in str(target)
    if publishing and os.environ["PAUSE"] == "before":
        print("PAUSED", flush=True)
        time.sleep(600)
    _rename(source, target)
    if publishing and os.environ["PAUSE"] == "after":
        print("PAUSED", flush=True)
        time.sleep(600)
store.os.rename = paused_rename
from driftlm.commands import main
main(sys.argv[1:])
"""


def _commit_killed(store_dir: Path, proposal_id: str, pause: str) -> None:
    """Commit `proposal_id` on a service killed with SIGKILL at the paused instant."""
    command = [sys.executable, "-c", _PAUSED_SERVE, "serve", "vocab", "--port", "0", "--no-metrics"]
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", "PAUSE": pause}
    with subprocess.Popen(
        [*command, "--store", str(store_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
    ) as paused:
        assert paused.stderr is not None and paused.stdout is not None
        port = next(json.loads(line)["port"] for line in paused.stderr if '"msg": "serving"' in line)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            pending = vocab_pb2_grpc.VocabServiceStub(channel).CommitUpdate.future(
                vocab_pb2.CommitUpdateRequest(proposal_id=proposal_id)
            )
            assert paused.stdout.readline().strip() == "PAUSED"
            if pause == "before":
                half = [p for p in (store_dir / "vocab" / "versions").iterdir() if p.name.startswith(TEMPORARY_PREFIX)]
                assert len(half) == 1 and (half[0] / "tokenizer.json").exists()  # written, unpublished
            paused.send_signal(signal.SIGKILL)
            paused.wait()
            assert isinstance(pending.exception(timeout=30), grpc.RpcError)


@pytest.mark.parametrize("pause", ["before", "after"])
def test_kill_9_mid_commit_leaves_every_version_whole_and_one_child(tmp_path: Path, pause: str) -> None:
    store_dir = tmp_path / "store"
    service = start_service("vocab", store_dir, extra_args=("--read-root", str(tmp_path)))
    with grpc.insecure_channel(service.target) as channel:
        stub = vocab_pb2_grpc.VocabServiceStub(channel)
        base = register(stub, planted_base_directory(tmp_path / "base"))
        observation = observe(stub, base.version_id, planted_slice(np.random.default_rng(0), EMERGING))
        proposals = [
            stub.ProposeUpdate(
                vocab_pb2.ProposeUpdateRequest(
                    version_id=base.version_id, observation_ids=[observation.observation_id], k=k
                )
            )
            for k in (4, 3)
        ]
    service.stop()

    _commit_killed(store_dir, proposals[0].proposal_id, pause)

    service = start_service("vocab", store_dir)
    try:
        with grpc.insecure_channel(service.target) as channel:
            stub = vocab_pb2_grpc.VocabServiceStub(channel)
            listed = [v.version_id for v in stub.ListVersions(vocab_pb2.ListVersionsRequest()).versions]
            assert not [p for p in (store_dir / "vocab" / "versions").iterdir() if p.name.startswith(TEMPORARY_PREFIX)]
            other = vocab_pb2.CommitUpdateRequest(proposal_id=proposals[1].proposal_id)
            if pause == "before":  # nothing was published: the commit never happened, any proposal may go
                assert listed == [base.version_id]
                child = stub.CommitUpdate(other).version
                assert child.parent_id == base.version_id and [p.piece for p in child.change.added] == EMERGING[:3]
            else:  # published: the version is the parent's one child, and a different one is refused
                assert len(listed) == 2 and base.version_id in listed
                with pytest.raises(grpc.RpcError) as refused:
                    stub.CommitUpdate(other)
                assert refused.value.code() == grpc.StatusCode.ABORTED
                child = stub.CommitUpdate(vocab_pb2.CommitUpdateRequest(proposal_id=proposals[0].proposal_id)).version
                assert child.version_id in listed and [p.piece for p in child.change.added] == EMERGING
            assert stub.GetVersion(vocab_pb2.GetVersionRequest(version_id=base.version_id)).version.size == child.size
    finally:
        service.stop()
