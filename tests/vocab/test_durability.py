"""kill -9 in the middle of a commit: every committed version stays readable, no half version shows."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np

from driftlm.local_services import start_service
from driftlm.services.runtime.store import TEMPORARY_PREFIX
from driftlm.v1 import vocab_pb2, vocab_pb2_grpc

from .planted import EMERGING, observe, planted_base_directory, planted_slice, register

# The service as `driftlm serve vocab`, except that publishing a directory (the rename that makes
# a version visible) first waits for the test to kill the process.
_PAUSED_SERVE = """
import os, sys, time
from driftlm.services.runtime import store
def paused_rename(source, target, _rename=os.rename):
    if os.path.basename(str(source)).startswith(store.TEMPORARY_PREFIX) and "versions" in str(target):
        print("PAUSED", flush=True)
        time.sleep(600)
    _rename(source, target)
store.os.rename = paused_rename
from driftlm.commands import main
main(sys.argv[1:])
"""


def test_kill_9_mid_commit_leaves_every_version_whole(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    service = start_service("vocab", store_dir)
    with grpc.insecure_channel(service.target) as channel:
        stub = vocab_pb2_grpc.VocabServiceStub(channel)
        base = register(stub, planted_base_directory(tmp_path / "base"))
        observation = observe(stub, base.version_id, planted_slice(np.random.default_rng(0), EMERGING))
        proposal = stub.ProposeUpdate(
            vocab_pb2.ProposeUpdateRequest(
                version_id=base.version_id, observation_ids=[observation.observation_id], k=4
            )
        )
    service.stop()

    command = [
        sys.executable,
        "-c",
        _PAUSED_SERVE,
        "serve",
        "vocab",
        "--port",
        "0",
        "--no-metrics",
        "--store",
        str(store_dir),
    ]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    ) as paused:
        assert paused.stderr is not None and paused.stdout is not None
        port = next(json.loads(line)["port"] for line in paused.stderr if '"msg": "serving"' in line)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            pending = vocab_pb2_grpc.VocabServiceStub(channel).CommitUpdate.future(
                vocab_pb2.CommitUpdateRequest(proposal_id=proposal.proposal_id)
            )
            assert paused.stdout.readline().strip() == "PAUSED"
            half = [p for p in (store_dir / "vocab" / "versions").iterdir() if p.name.startswith(TEMPORARY_PREFIX)]
            assert len(half) == 1 and (half[0] / "tokenizer.json").exists()  # the new version, written but unpublished
            paused.send_signal(signal.SIGKILL)
            paused.wait()
            assert isinstance(pending.exception(timeout=30), grpc.RpcError)

    service = start_service("vocab", store_dir)
    try:
        with grpc.insecure_channel(service.target) as channel:
            stub = vocab_pb2_grpc.VocabServiceStub(channel)
            assert [v.version_id for v in stub.ListVersions(vocab_pb2.ListVersionsRequest()).versions] == [
                base.version_id
            ]
            assert not [p for p in (store_dir / "vocab" / "versions").iterdir() if p.name.startswith(TEMPORARY_PREFIX)]
            child = stub.CommitUpdate(vocab_pb2.CommitUpdateRequest(proposal_id=proposal.proposal_id)).version
            assert child.parent_id == base.version_id and [p.piece for p in child.change.added] == EMERGING
            assert stub.GetVersion(vocab_pb2.GetVersionRequest(version_id=base.version_id)).version.size == child.size
    finally:
        service.stop()
    time.sleep(0)
