"""`driftlm palms` end to end on a tiny base model: the shipped datasets fine-tune a values-targeted
and a control model through the trainer, the three are served by the inference service and
evaluated by the compare service, and the report says what moved."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from driftlm.palms import PalmsOptions, run_palms

from ..pipeline.conftest import tiny_base_model


def test_the_whole_process_writes_a_report_comparing_the_three_models(tmp_path: Path) -> None:
    model = tiny_base_model(tmp_path / "base")
    options = PalmsOptions(
        out=tmp_path / "out",
        store=tmp_path / "store",
        base_model=model,
        steps=30,
        learning_rate=3e-3,
        max_length=48,
        samples_per_prompt=2,
    )
    report = run_palms(options, Console(quiet=True))
    evaluation = report["evaluation"]
    assert [m["role"] for m in evaluation["models"]] == ["base", "values_targeted", "control"]
    assert len(evaluation["categories"]) == 8 and len(evaluation["weakest_categories"]) == 3
    assert {g["group"] for g in evaluation["groups"]} >= {"women", "men", "muslims"}
    adherence = {a["role"]: a["loss"] for a in evaluation["adherence"]}
    # Fine-tuned on the curated set, the values-targeted model predicts held-out curated text best.
    assert adherence["values_targeted"] < adherence["base"] and adherence["values_targeted"] < adherence["control"]
    for category in evaluation["categories"]:
        assert [t["against"] for t in category["tests"]] == ["base", "control"]
    written = json.loads((tmp_path / "out" / "report.json").read_text())
    assert written["format"] == "driftlm.palms-report/v1" and written["evaluation"] == evaluation
    html = (tmp_path / "out" / "report.html").read_text()
    assert "data:image/png;base64," in html and html.count("<table>") == 4
    assert (tmp_path / "out" / "plots" / "toxicity.png").stat().st_size > 0


def test_a_bad_dataset_line_stops_the_command_with_file_line_and_field(tmp_path: Path) -> None:
    curated = tmp_path / "mine.jsonl"
    curated.write_text(
        '{"category": "health", "prompt": "a", "completion": "b"}\n{"category": "health", "prompt": "a"}\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "driftlm", "palms", "--curated", str(curated), "--store", str(tmp_path / "s")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    assert "mine.jsonl line 2: field 'completion' is missing or empty" in done.stderr
