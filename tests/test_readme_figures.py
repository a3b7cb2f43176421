"""The README's figures agree with the committed results they are written from (docs/figures.py):
the loop's and PALMS' example reports and the benchmarks' result files."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _figures() -> ModuleType:
    spec = importlib.util.spec_from_file_location("readme_figures", ROOT / "docs" / "figures.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_and_its_plots_agree_with_the_committed_results() -> None:
    """Fails when a figure in the README, or a plot in docs/images, is not what `make figures`
    writes from the committed results: rerun `make figures` after a new report or benchmark."""
    assert _figures().problems() == []


def test_a_changed_result_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check can fail: a report whose first arm scored otherwise disagrees with the README, and
    a plot drawn from the old report is stale."""
    figures = _figures()
    report = json.loads(figures.LOOP.read_text(encoding="utf-8"))
    first_evaluated = report["slices"][1]["arms"][report["arms"][0]]
    first_evaluated["pll_l2r_per_word"] -= 0.5
    changed = tmp_path / "example-report.json"
    changed.write_text(json.dumps(report), encoding="utf-8")
    monkeypatch.setattr(figures, "LOOP", changed)
    monkeypatch.setitem(figures.BLOCKS, "loop-summary", (changed, figures.loop_summary))
    assert "README.md block 'loop-summary' differs from example-report.json" in figures.problems()
    # A plot whose source file changed since it was drawn.
    sources = json.loads(figures.SOURCES.read_text(encoding="utf-8"))
    plot = next(name for name, source in sources.items() if source["file"] == "docs/example-report.json")
    copy = tmp_path / "images"
    shutil.copytree(figures.IMAGES, copy)
    sources[plot]["sha256"] = "0" * 64
    (copy / "sources.json").write_text(json.dumps(sources), encoding="utf-8")
    monkeypatch.setattr(figures, "IMAGES", copy)
    monkeypatch.setattr(figures, "SOURCES", copy / "sources.json")
    assert any(problem.startswith(f"docs/images/{plot} was drawn from another") for problem in figures.problems())


def test_the_embedded_defaults_report_fires_where_names_arrive_and_takes_them_in() -> None:
    """The committed `make run` report: the trigger fires on the years that bring new names (2017,
    2019, 2020), on no other, and each firing's new names enter the vocabulary."""
    report = json.loads(_figures().LOOP.read_text(encoding="utf-8"))
    fired = {s["slice"]: s["trigger"]["fired"] for s in report["slices"][1:]}
    assert fired == {"2017": True, "2018": False, "2019": True, "2020": True, "2021": False}
    added = {s["slice"]: set(s["vocab"]["added"]) for s in report["slices"][1:]}
    assert "snapchat" in added["2017"]
    assert {"tiktok", "covid19", "pfizerbiontech", "zoomcall"} <= added["2019"]
    assert {"chatgpt", "glimmerfox", "tarnquill"} <= added["2020"]
    assert report["options"]["threads"] == 2  # as `make run` runs it
