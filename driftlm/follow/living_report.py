"""The controller's living report: report.json and a self-contained report.html (plots inlined),
rewritten (atomically) after every slice, so a browser pointed at it always shows the latest.
report.html is drawn by `python -m driftlm.follow.living_report`, a process of its own.

Plots: what the trigger measured per slice (and where it fired), what freshness buys (the
production model against the frozen baseline on each slice's held-out texts), the time each
step took, and the controller's memory per slice.
"""

from __future__ import annotations

import base64
import html
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from driftlm.services.core import store


def _figure_png(draw: Any) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7.5, 3.2), dpi=100)
    draw(axes)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode()


def _label_axis(axes: Any, labels: list[str]) -> list[int]:
    """Slices as evenly spaced positions named by their labels (labels that look like numbers
    would otherwise be read as numbers)."""
    axes.set_xticks(range(len(labels)), labels, rotation=45, fontsize=8)
    return list(range(len(labels)))


def _trigger(slices: list[dict[str, Any]]) -> Any:
    def draw(axes: Any) -> None:
        scored = [(s["slice"], s["trigger"]) for s in slices if s.get("trigger")]
        x = _label_axis(axes, [label for label, _ in scored])
        axes.plot(x, [t["unseen_z"] for _, t in scored], marker="o", label="unseen words z")
        axes.plot(x, [t["z"] for _, t in scored], marker="s", label="slice loss z")
        fired = [(i, t["unseen_z"]) for i, (_, t) in zip(x, scored, strict=True) if t["fired"]]
        if fired:
            axes.scatter(*zip(*fired, strict=True), s=160, facecolors="none", edgecolors="red", label="fired")
        axes.set_title("The trigger per slice")
        axes.legend(fontsize=8)

    return draw


def _freshness(slices: list[dict[str, Any]]) -> Any:
    def draw(axes: Any) -> None:
        rows = [(s["slice"], s["evaluation"]) for s in slices if s.get("evaluation")]
        x = _label_axis(axes, [label for label, _ in rows])
        for role in ("production", "baseline"):
            values = [e[role]["pll_l2r_per_word"] for _, e in rows]
            errors = [
                [v - e[role]["low"] for v, (_, e) in zip(values, rows, strict=True)],
                [e[role]["high"] - v for v, (_, e) in zip(values, rows, strict=True)],
            ]
            axes.errorbar(x, values, yerr=errors, marker="o", capsize=3, label=role)
        axes.set_title("PLL-word-l2r per word on each slice's held-out texts (higher is better)")
        axes.legend(fontsize=8)

    return draw


def _step_times(slices: list[dict[str, Any]]) -> Any:
    def draw(axes: Any) -> None:
        x = _label_axis(axes, [s["slice"] for s in slices])
        steps = sorted({name for s in slices for name in s.get("step_seconds", {})})
        bottom = [0.0] * len(slices)
        for step in steps:
            heights = [s.get("step_seconds", {}).get(step, 0.0) for s in slices]
            axes.bar(x, heights, bottom=bottom, label=step)
            bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
        axes.set_ylabel("seconds")
        axes.set_title("Time per slice, by step")
        axes.legend(fontsize=7, ncol=4)

    return draw


def _memory(slices: list[dict[str, Any]]) -> Any:
    def draw(axes: Any) -> None:
        x = _label_axis(axes, [s["slice"] for s in slices])
        axes.plot(x, [s.get("controller_rss_bytes", 0) / 2**20 for s in slices], marker="o")
        axes.set_ylabel("MiB")
        axes.set_ylim(bottom=0)
        axes.set_title("Controller memory (resident) after each slice")

    return draw


def _row(record: dict[str, Any]) -> str:
    trigger = record.get("trigger") or {}
    vocab = record.get("vocab") or {}
    serving = record.get("serving") or {}
    cells = [
        record["slice"],
        str(record["texts"]),
        "first slice"
        if not trigger
        else ("fired: " + ", ".join(trigger.get("signals", [])) if record["fired"] else "no"),
        ", ".join(vocab.get("added", [])[:8]),
        "yes" if serving.get("promoted") else ("no: " + "; ".join(serving.get("gate", []))[:120] if serving else "-"),
        str(record.get("served")),
        f"{record['close_to_done_s']:.0f}",
    ]
    return "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in cells) + "</tr>"


def render_html(report: dict[str, Any]) -> str:
    """The report page."""
    slices = report["slices"]
    plots = [_step_times(slices), _memory(slices)]
    if any(s.get("trigger") for s in slices):
        plots.insert(0, _trigger(slices))
    if any(s.get("evaluation") for s in slices):
        plots.insert(1, _freshness(slices))
    images = "".join(f'<img alt="plot" src="data:image/png;base64,{_figure_png(p)}">' for p in plots) if slices else ""
    intake = report["intake"]
    header = (
        "<tr><th>slice</th><th>texts</th><th>trigger</th><th>pieces added</th><th>promoted</th>"
        "<th>served after</th><th>close to done (s)</th></tr>"
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>driftlm follow: {html.escape(report["source"])}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:auto}} img{{max-width:100%}}
td,th{{border-bottom:1px solid #ddd;padding:2px 8px;font-size:13px;text-align:left}}</style></head>
<body><h1>driftlm follow</h1>
<p>Source {html.escape(report["source"])}: {intake["files_consumed"]} files consumed,
{intake["records"]} records ({intake["late"]} late, {intake["rejected"]} rejected),
{intake["files_unreadable"]} unreadable files, {intake["files_rewritten"]} rewritten after consumption.
Served now: {html.escape(str(report["served"]))}; {len(slices)} slices processed.</p>
{images}
<table>{header}{"".join(_row(r) for r in slices)}</table>
</body></html>
"""


def write_living_report(report: dict[str, Any], out: Path) -> None:
    """report.json, then report.html drawn from it by a short-lived process, each replaced whole.

    The plots are drawn in a child process so that the long-running controller never holds
    matplotlib and its caches (in-process, its resident memory crept up 27 MiB over 60 reports).

    Raises:
        OSError: a file cannot be written, or the drawing failed (its message says why).
    """
    store.write_json_atomically(out / "report.json", report)
    done = subprocess.run(
        [sys.executable, "-m", "driftlm.follow.living_report", str(out / "report.json"), str(out / "report.html")],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise OSError(f"drawing report.html failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")


def main(argv: list[str]) -> int:
    """`python -m driftlm.follow.living_report REPORT_JSON REPORT_HTML`."""
    report = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    store.write_bytes_atomically(Path(argv[1]), render_html(report).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
