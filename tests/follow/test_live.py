"""`driftlm follow` on a source that files keep arriving in: slices close as the watermark passes,
the trigger fires where the text drifts and not where it does not, the served model changes after
a promotion with no failed request from a client calling it throughout, bad input is reported
and survived, a second controller is refused, SIGTERM stops it cleanly. Real services, real files."""

from __future__ import annotations

import json
import os
import re
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc

from driftlm.v1 import inference_pb2, inference_pb2_grpc

from .conftest import TRAINING, Controller, drop, event, services


def _metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        body = response.read().decode()
    found = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", body, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


class Caller(threading.Thread):
    """A client asking the default `driftlm` model to fill a mask, again and again."""

    def __init__(self, target: str) -> None:
        super().__init__(daemon=True)
        self.channel = grpc.insecure_channel(target)
        self.stub = inference_pb2_grpc.InferenceServiceStub(self.channel)
        self.answers: list[tuple[float, int]] = []
        self.failures: list[str] = []
        self.done = threading.Event()

    def run(self) -> None:
        request = inference_pb2.FillMaskRequest(
            model=inference_pb2.ModelTarget(name="driftlm"), texts=["the [MASK] was great today"], top_k=3
        )
        while not self.done.is_set():
            try:
                reply = self.stub.FillMask(request, timeout=30)
                self.answers.append((time.monotonic(), int(reply.version)))
            except grpc.RpcError as error:
                self.failures.append(f"{error.code().name}: {error.details()}")
            time.sleep(0.02)
        self.channel.close()


def test_a_live_source_keeps_the_served_model_fresh(
    tmp_path: Path, tiny_model: Path, stream_years: dict[str, list[dict[str, Any]]]
) -> None:
    source, store = tmp_path / "source", tmp_path / "store"
    first_year = stream_years["2016"]
    common = [
        "--source", str(source), "--store", str(store), "--name", "live", "--out", str(tmp_path / "out"),
        "--slice", "year", "--poll-interval-s", "0.3", "--base-model", str(tiny_model),
        "--metrics-host", "127.0.0.1", "--metrics-port", "0", *TRAINING,
    ]  # fmt: skip
    with services(store, tiny_model) as endpoints:
        inference_target = next(e.split("=", 1)[1] for e in endpoints if e.startswith("inference="))
        controller = Controller([*common, *endpoints], tmp_path / "follow.log")
        port = int(controller.wait_for(event("following"))["metrics_port"])
        # 2016 arrives in three compressed files; nothing closes while the newest text is of 2016.
        for part in range(3):
            drop(source, f"2016-{part}", first_year[part * 67 : (part + 1) * 67], "2016")
        controller.wait_for(lambda e: e.get("msg") == "file consumed" and e.get("file") == "2016-2.jsonl.gz")
        time.sleep(1.0)
        assert not any(e.get("msg") == "slice closed" for e in controller.seen)
        # The rest of 2016's text, dated 2017 (no drift): 2016 closes, trains, and is served.
        drop(source, "2017", first_year[201:], "2017")
        controller.wait_for(event("slice closed", slice="2016"))
        controller.wait_for(event("slice done", slice="2016"))
        caller = Caller(inference_target)
        caller.start()
        # 2021's text dated 2018 (drift): 2017 closes, and the trigger must not fire on it.
        drop(source, "2018", stream_years["2021"], "2018")
        null = controller.wait_for(event("slice done", slice="2017"))
        assert null["fired"] is False and null["served"] == {"teacher": 1, "student": 1}

        # Bad input while 2018 is open: each is reported, none stops the controller.
        (source / "broken.jsonl").write_text('{"time": "2018-05-01", "text": "ok"}\n{"time": oops\n')
        (source / "untimed.jsonl").write_text('{"text": "no time"}\n{"time": "2018-06-01", "text": "kept"}\n')
        rewritten = source / "2016-0.jsonl.gz"
        os.utime(rewritten, ns=(10**18, 10**18))  # touched: a new version of a consumed file
        controller.wait_for(
            lambda e: (
                e.get("msg") == "file rewritten after it was consumed; not read again (drop new text as new files)"
            )
        )
        source.rename(tmp_path / "moved")
        controller.wait_for(event("source unavailable"))
        (tmp_path / "moved").rename(source)

        # A record of 2019 closes 2018, which drifts: fired, vocabulary updated, promoted.
        drop(source, "2019", stream_years["2019"][:1], "2019")
        drifted = controller.wait_for(event("slice done", slice="2018"))
        assert drifted["fired"] is True and drifted["served"] == {"teacher": 2, "student": 2}
        time.sleep(0.5)
        caller.done.set()
        caller.join(30)
        assert caller.failures == []
        versions = [version for _, version in caller.answers]
        assert versions[0] == 1 and versions[-1] == 2 and versions == sorted(versions)

        assert _metric(port, "driftlm_follow_slices_total") == 3
        assert _metric(port, "driftlm_follow_trigger_fires_total") == 1
        assert _metric(port, "driftlm_follow_promotions_total") == 2
        assert _metric(port, 'driftlm_follow_files_total{outcome="unreadable"}') == 1
        assert _metric(port, 'driftlm_follow_files_total{outcome="rewritten"}') == 1
        assert _metric(port, 'driftlm_follow_records_total{outcome="rejected"}') == 1
        assert _metric(port, "driftlm_follow_source_errors_total") >= 1
        assert _metric(port, 'driftlm_follow_served_version{role="teacher"}') == 2
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as health:
            assert health.status == 200

        second = Controller([*common, *endpoints], tmp_path / "second.log")
        assert second.wait(120) == 3
        assert "is in use by pid" in (tmp_path / "second.log").read_text()
        assert controller.stop() == 0

    report = (tmp_path / "out" / "report.html").read_text()
    assert report.count("<img") == 4
    slices = json.loads((tmp_path / "out" / "report.json").read_text())["slices"]
    assert [(s["slice"], s["fired"]) for s in slices] == [("2016", False), ("2017", False), ("2018", True)]
    assert slices[2]["vocab"]["added"] and slices[1]["evaluation"]["production"]["pll_l2r_per_word"] < 0
