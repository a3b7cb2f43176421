"""`driftlm run` end to end on a generated stream with a tiny model, through real service processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from rich.console import Console

from driftlm.loop.dated_corpus import DatasetError, cut_slices, parse_time, read_dated
from driftlm.loop.drifting_stream import write_stream
from driftlm.loop.pipeline import PipelineOptions, run_pipeline
from driftlm.services.core.strategy import Strategy


def _options(tmp_path: Path, model: Path, **changes: object) -> PipelineOptions:
    values: dict[str, object] = {
        "out": tmp_path / "out",
        "store": tmp_path / "store",
        "base_model": model,
        "steps": 12,
        "first_steps": 40,
        "learning_rate": 3e-3,
        "max_length": 32,
        "vocab_k": 20,
        # Serving (distil, compare, promote) has tests of its own: test_serving.py.
        "serve": False,
    }
    return PipelineOptions(**{**values, **changes})  # type: ignore[arg-type]


def test_the_loop_updates_the_vocabulary_and_beats_the_static_model(tmp_path: Path, tiny_model: Path) -> None:
    report = run_pipeline(_options(tmp_path, tiny_model), Console(quiet=True))
    slices = report["slices"]
    assert [s["slice"] for s in slices] == ["2016", "2017", "2018", "2019", "2020", "2021"]
    # How many pieces tie at each top-N cut (the sharing itself is tested in tests/vocab/test_drift.py).
    # Pieces tied at the previous and this slice's top-N cut (their counting: tests/vocab/test_drift.py).
    assert all(len(t := s["vocab"]["top_n_tied"]) == 2 and all(isinstance(n, int) for n in t) for s in slices[1:])
    added = {piece for s in slices for piece in s["vocab"]["added"]}
    assert {"tiktok", "chatgpt", "snapchat"} & added  # planted entities enter the vocabulary
    fired = [s for s in slices[1:] if s["trigger"]["fired"]]
    assert fired and all(len(s["vocab"]["added"]) == len(s["vocab"]["removed"]) for s in slices)
    late = slices[-1]["arms"]
    assert late["incremental+vocab"]["pll_l2r_per_word"] > late["static"]["pll_l2r_per_word"]
    for figures in late.values():  # the headline sits inside its interval
        assert figures["pll_l2r_per_word_low"] <= figures["pll_l2r_per_word"] <= figures["pll_l2r_per_word_high"]
    comparisons = slices[-1]["comparisons"]
    assert set(comparisons) == {"incremental - static", "incremental+vocab - static", "incremental+vocab - incremental"}
    versus_static = comparisons["incremental+vocab - static"]
    assert versus_static["differs"] and versus_static["low"] > 0
    assert versus_static["difference"] == pytest.approx(
        late["incremental+vocab"]["pll_l2r_per_word"] - late["static"]["pll_l2r_per_word"]
    )
    assert (
        late["incremental+vocab"]["train_tokens"]
        > late["static"]["train_tokens"]
        == slices[1]["arms"]["static"]["train_tokens"]
    )
    written = json.loads((tmp_path / "out" / "report.json").read_text())
    assert written["format"] == "driftlm.report/v1" and written["options"]["strategies"] == ["token-shift"]
    assert not written["base"]["new_mlm_head"] and written["base"]["head_steps"] == 0  # a head of its own
    provenance = written["provenance"]
    assert provenance["driftlm"] == "0.1.0" and provenance["packages"]["torch"].startswith("2.")
    assert len(provenance["commit"].removesuffix("-dirty")) in (0, 40) and written["options"]["seed"] == 0
    expected_device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    assert provenance["machine"]["accelerator"] == expected_device
    assert written["slices"] == json.loads(json.dumps(slices))  # the file says what the run returned
    assert {p.name for p in (tmp_path / "out" / "plots").iterdir()} == {
        "overlap.png",
        "vocabulary.png",
        "trigger.png",
        "pll_per_word.png",
        "heldout_loss.png",
        "compute.png",
    }
    html = (tmp_path / "out" / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 6 and html.count("<table>") == 2
    assert "<thead><tr><th>slice</th><th>fired on</th>" in html  # a header row, from the template
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "![Trigger](plots/trigger.png)" in markdown and "| 2021 | incremental+vocab - static |" in markdown


def test_the_trigger_fires_on_a_drifted_slice_and_not_on_more_of_the_same(tmp_path: Path, tiny_model: Path) -> None:
    # Three slices: 2016, 2016 again (same distribution, other texts), then 2021.
    source = write_stream(tmp_path / "full.jsonl", seed=5)
    records = [json.loads(line) for line in source.read_text().splitlines()]
    first = [r for r in records if r["time"].startswith("2016")]
    last = [r for r in records if r["time"].startswith("2021")]
    again = [
        dict(r, time=r["time"].replace("2016", "2017"))
        for r in [json.loads(line) for line in write_stream(tmp_path / "again.jsonl", seed=6).read_text().splitlines()]
        if r["time"].startswith("2016")
    ]
    data = tmp_path / "three.jsonl"
    data.write_text(
        "\n".join(
            json.dumps(r) for r in first + again + [dict(r, time=r["time"].replace("2021", "2018")) for r in last]
        )
    )
    report = run_pipeline(
        _options(tmp_path, tiny_model, data=data, first_steps=120, learning_rate=5e-3), Console(quiet=True)
    )
    same, drifted = report["slices"][1]["trigger"], report["slices"][2]["trigger"]
    assert not same["fired"] and drifted["fired"], (same, drifted)
    assert drifted["score"] > same["score"]


def test_a_stream_without_drift_does_not_fire_after_the_first_slice(tmp_path: Path, tiny_model: Path) -> None:
    """One year's texts, shuffled and dealt into four slices dated as four years: nothing to learn."""
    source = write_stream(tmp_path / "full.jsonl", seed=5, texts_per_period=1600)
    records = [json.loads(line) for line in source.read_text().splitlines()]
    year = [r for r in records if r["time"].startswith("2016")]
    order = np.random.default_rng(0).permutation(len(year))
    data = tmp_path / "no-drift.jsonl"
    data.write_text(
        "\n".join(
            json.dumps(dict(year[j], time=f"{2016 + i * 4 // len(year)}-06-01T00:00:00Z")) for i, j in enumerate(order)
        )
    )
    report = run_pipeline(
        _options(tmp_path, tiny_model, data=data, first_steps=120, learning_rate=5e-3), Console(quiet=True)
    )
    triggers = [s["trigger"] for s in report["slices"][1:]]
    assert len(triggers) == 3 and not any(t["fired"] for t in triggers), [t["reason"] for t in triggers]
    assert all(t["score"] <= t["threshold"] for t in triggers)
    assert all(not s["vocab"]["added"] for s in report["slices"][1:])  # no update without a firing


def test_a_base_without_an_mlm_head_gets_a_head_warm_up_first(tmp_path: Path) -> None:
    from .conftest import tiny_base_model

    headless = tiny_base_model(tmp_path / "encoder", with_head=False)
    data = write_stream(tmp_path / "stream.jsonl", periods=2, texts_per_period=200)
    report = run_pipeline(_options(tmp_path, headless, data=data, head_steps=30), Console(quiet=True))
    assert report["base"]["new_mlm_head"] and report["base"]["head_steps"] == 30
    assert "came without an MLM head" in (tmp_path / "out" / "report.md").read_text()


def test_a_labelled_task_set_gives_a_probe_per_slice_and_arm(tmp_path: Path, tiny_model: Path) -> None:
    """A planted downstream task: texts of each year, half prefixed with `i really love this`, half
    with `i really hate this`, labelled accordingly: every arm's encoder should carry it."""
    data = write_stream(tmp_path / "stream.jsonl", periods=3, texts_per_period=200)
    records = [json.loads(line) for line in data.read_text().splitlines()]
    rng = np.random.default_rng(2)
    task = tmp_path / "task.jsonl"
    task.write_text(
        "\n".join(
            json.dumps({"time": r["time"], "text": f"i really {mood} this {r['text']}", "sentiment": mood})
            for r in records[::2]
            for mood in [str(rng.choice(["love", "hate"]))]
        )
    )
    report = run_pipeline(
        _options(tmp_path, tiny_model, data=data, task_data=task, task_label_field="sentiment"), Console(quiet=True)
    )
    for s in report["slices"][1:]:
        for figures in s["arms"].values():
            assert figures["task_macro_f1"] > 0.8 and figures["task_auc"] > 0.9, figures
            assert figures["task_macro_f1_low"] <= figures["task_macro_f1"] <= figures["task_macro_f1_high"]
    assert "task.png" in {p.name for p in (tmp_path / "out" / "plots").iterdir()}
    assert "## Downstream check" in (tmp_path / "out" / "report.md").read_text()


def test_running_again_continues_after_the_last_finished_slice(tmp_path: Path, tiny_model: Path) -> None:
    data = write_stream(tmp_path / "stream.jsonl", periods=3, texts_per_period=200)
    options = _options(
        tmp_path, tiny_model, data=data, scratch=True, strategies=(Strategy.UNIFORM, Strategy.TOKEN_MLM_LOSS)
    )
    first = run_pipeline(options, Console(quiet=True))
    state = next((tmp_path / "store" / "pipeline").glob("*/state.json"))
    # An interruption after the second slice: the state as it was then.
    saved = json.loads(state.read_text())
    saved["slices"] = saved["slices"][:2]
    state.write_text(json.dumps(saved))
    again = run_pipeline(options, Console(quiet=True))
    assert [s["slice"] for s in again["slices"]] == [s["slice"] for s in first["slices"]]
    assert again["slices"][:2] == first["slices"][:2]
    fresh = run_pipeline(PipelineOptions(**{**options.__dict__, "fresh": True}), Console(quiet=True))
    assert len(fresh["slices"]) == 3
    assert fresh["arms"] == [
        "static",
        "incremental",
        "incremental+vocab:uniform",
        "incremental+vocab:mlm-loss",
        "scratch",
    ]
    assert set(fresh["slices"][-1]["arms"]) == set(fresh["arms"])


def test_services_already_running_are_used_and_left_running(tmp_path: Path, tiny_model: Path) -> None:
    from driftlm.local_services import start_service
    from driftlm.services.runtime.security import ChannelSecurity

    store = tmp_path / "store"
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("pipeline-token\n", encoding="utf-8")
    # What an operator grants: the base model's directory, and a token every caller must present.
    secured = ("--read-root", str(tiny_model), "--auth-token-file", str(tokens))
    vocab = start_service("vocab", store, extra_args=secured)
    trainer = start_service(  # sampling in-process
        "trainer", store, extra_args=("--vocab-endpoint", vocab.target, "--peer-token-file", str(tokens), *secured)
    )
    try:
        data = write_stream(tmp_path / "stream.jsonl", periods=2, texts_per_period=150)
        endpoints = {"vocab": vocab.target, "trainer": trainer.target}
        with pytest.raises(grpc.RpcError) as refused:  # no token
            run_pipeline(_options(tmp_path, tiny_model, data=data, endpoints=endpoints), Console(quiet=True))
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        options = _options(
            tmp_path, tiny_model, data=data, endpoints=endpoints, security=ChannelSecurity(token="pipeline-token")
        )
        report = run_pipeline(options, Console(quiet=True))
        assert len(report["slices"]) == 2
        assert vocab.process.poll() is None and trainer.process.poll() is None
    finally:
        trainer.stop()
        vocab.stop()


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        # (JSONL lines, the message after the path)
        (['{"time": "2020-01-01", "text": "a"}', '{"text": "no time"}'], "line 2: field 'time' is missing"),
        (
            ['{"time": "2020-01-01", "text": "a"}', '{"time": "yesterday", "text": "b"}'],
            "line 2: field 'time': 'yesterday' is not a date or time",
        ),
        (['{"time": "2020-02-30", "text": "a"}'], "line 1: field 'time': '2020-02-30' is not a date or time"),
        (['{"time": "2020-01-01", "text": 5}'], "line 1: field 'text' is a int, not a string"),
        (['{"time": "2020-01-01", "text": "a"', ""], "line 1: not valid JSON"),
    ],
)
def test_bad_data_is_refused_before_any_training(tmp_path: Path, lines: list[str], message: str) -> None:
    data = tmp_path / "bad.jsonl"
    data.write_text("\n".join(lines))
    with pytest.raises(DatasetError) as raised:
        read_dated(data, time_field="time", text_field="text")
    assert str(raised.value).startswith(f"{data} {message}")


def test_other_bad_data(tmp_path: Path) -> None:
    fake = tmp_path / "fake.parquet"
    fake.write_text("not parquet")
    with pytest.raises(DatasetError, match="not a Parquet file"):
        read_dated(fake, time_field="time", text_field="text")
    plain = tmp_path / "notes.txt"
    plain.write_text("a line")
    with pytest.raises(DatasetError, match="dated text needs JSONL, CSV or Parquet"):
        read_dated(plain, time_field="time", text_field="text")
    empty_slice = tmp_path / "empty.jsonl"
    empty_slice.write_text('{"time": "2019-05-01", "text": "a b c"}\n' * 30 + '{"time": "2020-01-01", "text": "  "}\n')
    with pytest.raises(DatasetError, match=r"slice 2020 .* has no text, only empty records"):
        cut_slices(
            read_dated(empty_slice, time_field="time", text_field="text"), "year", heldout_fraction=0.1, heldout_max=10
        )
    one = tmp_path / "one.jsonl"
    one.write_text('{"time": "2019-05-01", "text": "a b c"}\n' * 30)
    with pytest.raises(DatasetError, match="makes 1 slice"):
        cut_slices(read_dated(one, time_field="time", text_field="text"), "year", heldout_fraction=0.1, heldout_max=10)
    with pytest.raises(DatasetError, match="no such file or directory"):
        read_dated(tmp_path / "nope", time_field="time", text_field="text")


def test_the_command_reports_bad_data_and_exits_2(tmp_path: Path) -> None:
    data = tmp_path / "bad.csv"
    data.write_text("when,body\n2020-01-01,hello\nnot a date,world\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "driftlm",
            "run",
            "--data",
            str(data),
            "--time-field",
            "when",
            "--text-field",
            "body",
            "--out",
            str(tmp_path / "o"),
            "--store",
            str(tmp_path / "s"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert f"driftlm run: {data} line 3: field 'when': 'not a date' is not a date or time" in result.stderr
    assert not (tmp_path / "s" / "logs").exists()  # no service was started


@pytest.mark.parametrize(
    ("value", "iso"),
    [
        ("2021-03-04", "2021-03-04T00:00:00+00:00"),
        ("2021-03-04T05:06:07Z", "2021-03-04T05:06:07+00:00"),
        ("2021-03-04T05:06:07+02:00", "2021-03-04T05:06:07+02:00"),
        ("Wed Oct 10 20:19:24 +0000 2018", "2018-10-10T20:19:24+00:00"),
        ("Thu, 04 Mar 2021 05:06:07 GMT", "2021-03-04T05:06:07+00:00"),
        (1614834367, "2021-03-04T05:06:07+00:00"),
        (1614834367000, "2021-03-04T05:06:07+00:00"),
        ("1614834367", "2021-03-04T05:06:07+00:00"),
        # A year or a compact date is not a Unix time in 1970.
        (2019, "2019-01-01T00:00:00+00:00"),
        ("2019", "2019-01-01T00:00:00+00:00"),
        (20190305, "2019-03-05T00:00:00+00:00"),
        ("20190305", "2019-03-05T00:00:00+00:00"),
        (20191399, "1970-08-22T16:43:19+00:00"),  # no 13th month: Unix seconds after all
        # What dateutil reads.
        ("2019-03", "2019-03-01T00:00:00+00:00"),
        ("2019-03-05 10:00:00 UTC", "2019-03-05T10:00:00+00:00"),
        ("March 5, 2019", "2019-03-05T00:00:00+00:00"),
    ],
)
def test_parse_time(value: object, iso: str) -> None:
    assert parse_time(value).isoformat() == iso


def test_slicing_by_quarter_month_day_and_count(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text(
        "\n".join(
            json.dumps({"time": f"2020-{m:02d}-{d:02d}", "text": f"text {m} {d} {i}"})
            for m in (1, 2, 4)
            for d in (1, 2)
            for i in range(20)
        )
    )
    records = read_dated(data, time_field="time", text_field="text")
    cut = {
        s: [x.label for x in cut_slices(records, s, heldout_fraction=0.2, heldout_max=5)]
        for s in ("quarter", "month", "day", "40")
    }
    assert cut["quarter"] == ["2020-Q1", "2020-Q2"]
    assert cut["month"] == ["2020-01", "2020-02", "2020-04"]
    assert cut["day"][:2] == ["2020-01-01", "2020-01-02"] and len(cut["day"]) == 6
    assert cut["40"][0] == "2020-01-01..2020-01-02" and len(cut["40"]) == 3


def test_a_run_whose_update_differs_from_the_stores_says_to_use_its_own_store(tmp_path: Path, tiny_model: Path) -> None:
    """A version has one child: a second experiment that would update the same version differently
    (here another --vocab-k) stops with what to do, not with the vocab service's ABORTED."""
    first = run_pipeline(_options(tmp_path, tiny_model), Console(quiet=True))
    assert any(s["vocab"]["added"] for s in first["slices"])  # the first run did update the vocabulary
    with pytest.raises(SystemExit, match="give this experiment its own store: --store DIR"):
        run_pipeline(_options(tmp_path, tiny_model, vocab_k=7), Console(quiet=True))
