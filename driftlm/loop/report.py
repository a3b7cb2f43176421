"""The pipeline's report: report.json (the figures), PNG plots, report.md and a self-contained report.html.

report.json (format "driftlm.report/v1") holds, per slice: the trigger (fired and the signals that
fired it; the slice-loss test's score, threshold, calibration mean null_mean and z; the
unseen-words test's unseen_share, unseen_threshold, unseen_null_mean and unseen_z; the new words
with the slice texts and remembered texts holding each; the most spiking pieces with their excess
loss; the reason in words; the spike and novel fractions), the
vocabulary version with the pieces added and removed and the top-1000 piece overlap with the
previous and the first slice (under the base vocabulary; top_n_tied: the pieces tied at the
previous and this slice's cut, which share its last places), and for every arm the figures of the
models trained on the earlier slices, measured on this slice's held-out texts: heldout_loss
(masked-LM loss per piece, nats; tokenisation-dependent), pseudo_perplexity (tokenisation-
dependent), pll_l2r_per_word (the headline: PLL-word-l2r, Kauf & Ivanova 2023, nats per word;
comparable across vocabularies) with its 95% bootstrap interval over texts (pll_l2r_per_word_low
and _high) and pll_l2r_per_character, pll_per_word and pll_per_character (the original PLL of
Salazar et al., which favours vocabularies that fragment words), train_tokens and wall_s
(cumulative training compute); and per slice, comparisons: every arm against static and every
adaptive arm against incremental, the difference in PLL-word-l2r per word on the same texts with
its paired 95% interval and whether the two differ (the interval excludes 0).
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from rich.console import Console
from rich.table import Table

from driftlm.services.core import store


def _evaluated(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in report["slices"] if s["arms"]]


def _plot_overlap(report: dict[str, Any]) -> Figure:
    figure, axis = plt.subplots(figsize=(7, 3.5))
    slices = report["slices"][1:]
    labels = [s["slice"] for s in slices]
    axis.plot(labels, [s["vocab"]["top_n_overlap"] for s in slices], marker="o", label="with the previous slice")
    axis.plot(
        labels,
        [s["vocab"]["top_n_overlap_first"] for s in slices],
        marker="s",
        label=f"with the first ({report['slices'][0]['slice']})",
    )
    axis.set(title="Top-1000 wordpiece overlap (base vocabulary)", ylabel="overlap", ylim=(0, 1.05))
    axis.legend()
    return figure


def _plot_vocabulary(report: dict[str, Any]) -> Figure:
    figure, axis = plt.subplots(figsize=(7, 3.5))
    slices = report["slices"][1:]
    labels = [s["slice"] for s in slices]
    axis.bar(labels, [len(s["vocab"]["added"]) for s in slices], label="added", color="tab:green")
    axis.bar(labels, [-len(s["vocab"]["removed"]) for s in slices], label="removed", color="tab:red")
    axis.axhline(0, color="black", linewidth=0.8)
    axis.set(title="Vocabulary updates: pieces in and out per slice", ylabel="pieces")
    axis.legend()
    return figure


def _plot_trigger(report: dict[str, Any]) -> Figure:
    """Each slice's two slice-level tests against their calibrated thresholds, and the new words."""
    figure, (loss_axis, unseen_axis) = plt.subplots(1, 2, figsize=(10, 3.8))
    slices = report["slices"][1:]
    labels = [s["slice"] for s in slices]
    colours = ["tab:orange" if s["trigger"]["fired"] else "tab:gray" for s in slices]
    for axis, (value, threshold, null, title, unit) in (
        (loss_axis, ("score", "threshold", "null_mean", "slice loss: excess over the memory", "nats per piece")),
        (
            unseen_axis,
            ("unseen_share", "unseen_threshold", "unseen_null_mean", "share of unseen words", "share of the pieces"),
        ),
    ):
        axis.bar(labels, [s["trigger"][value] for s in slices], color=colours)
        axis.plot(labels, [s["trigger"][threshold] for s in slices], "k_", markersize=25, mew=2, label="threshold")
        axis.plot(labels, [s["trigger"][null] for s in slices], "b_", markersize=25, label="same period (mean)")
        axis.set(title=title, ylabel=unit)
    for x, s in enumerate(slices):
        words = [w["word"] for w in s["trigger"]["new_words"][:3]]
        if words:
            unseen_axis.annotate(
                "\n".join(words), (x, s["trigger"]["unseen_share"]), ha="center", va="bottom", fontsize=7
            )
    top = max(max(s["trigger"]["unseen_share"], s["trigger"]["unseen_threshold"]) for s in slices)
    unseen_axis.set_ylim(0, top * 1.45 or 1.0)  # room for the words above the tallest bar
    unseen_axis.legend(fontsize=8, loc="upper right")
    figure.suptitle("Trigger (orange: fired, and the model trained); new words named above their slice")
    figure.tight_layout()
    return figure


def _plot_arms(report: dict[str, Any], metric: str, title: str, ylabel: str) -> Figure:
    """One line per arm; error bars where the metric has an interval (metric_low, metric_high)."""
    figure, axis = plt.subplots(figsize=(7, 3.5))
    slices = _evaluated(report)
    labels = [s["slice"] for s in slices]
    for offset, arm in enumerate(report["arms"]):
        values = [s["arms"][arm][metric] for s in slices]
        positions = [i + (offset - (len(report["arms"]) - 1) / 2) * 0.06 for i in range(len(labels))]
        if slices and f"{metric}_low" in slices[0]["arms"][arm]:
            errors = [
                [v - s["arms"][arm][f"{metric}_low"] for v, s in zip(values, slices, strict=True)],
                [s["arms"][arm][f"{metric}_high"] - v for v, s in zip(values, slices, strict=True)],
            ]
            axis.errorbar(positions, values, yerr=errors, marker="o", capsize=3, label=arm)
        else:
            axis.plot(positions, values, marker="o", label=arm)
    axis.set_xticks(range(len(labels)), labels)
    axis.set(title=title, ylabel=ylabel)
    axis.legend()
    return figure


def _plot_compute(report: dict[str, Any]) -> Figure:
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    last = _evaluated(report)[-1]["arms"] if _evaluated(report) else {}
    arms = list(report["arms"])
    axes[0].bar(arms, [last.get(a, {}).get("train_tokens", 0) for a in arms], color="tab:blue")
    axes[0].set(title="Training tokens (before the last slice)", ylabel="tokens")
    axes[1].bar(arms, [last.get(a, {}).get("wall_s", 0) for a in arms], color="tab:purple")
    axes[1].set(title="Training wall time", ylabel="seconds")
    for axis in axes:
        axis.tick_params(axis="x", rotation=20)
    figure.tight_layout()
    return figure


def _compared(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Slices where a student was compared with its teacher."""
    return [s for s in report["slices"] if (s.get("serving") or {}).get("top1_agreement")]


def _plot_fidelity(report: dict[str, Any]) -> Figure:
    """Agreement and KL of each slice's student with its teacher, with their 95% intervals; each
    point says whether the student was served or the previous model kept."""
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    slices = _compared(report)
    labels = [s["slice"] for s in slices]
    panels = (
        ("top1_agreement", "Top-1 agreement with the teacher", "agreement", "tab:blue"),
        ("kl_teacher_student", "KL(teacher || student)", "nats", "tab:red"),
    )
    for axis, (metric, title, ylabel, colour) in zip(axes, panels, strict=True):
        values = [s["serving"][metric]["value"] for s in slices]
        errors = [
            [v - s["serving"][metric]["low"] for v, s in zip(values, slices, strict=True)],
            [s["serving"][metric]["high"] - v for v, s in zip(values, slices, strict=True)],
        ]
        axis.errorbar(labels, values, yerr=errors, marker="o", capsize=4, color=colour, linestyle="-")
        for label, value, s in zip(labels, values, slices, strict=True):
            axis.annotate(
                "served" if s["serving"]["promoted"] else "kept previous",
                (label, value),
                textcoords="offset points",
                xytext=(6, 4),
                fontsize=8,
            )
        axis.set(title=title, ylabel=ylabel)
        axis.margins(x=0.3)
    axes[0].set_ylim(0, 1.05)
    figure.suptitle("The student against its teacher on each trained slice's held-out texts")
    figure.tight_layout()
    return figure


PLOTS = {
    "overlap.png": ("Vocabulary drift", _plot_overlap),
    "vocabulary.png": ("Vocabulary updates", _plot_vocabulary),
    "trigger.png": ("Trigger", _plot_trigger),
    "pll_per_word.png": (
        "Held-out PLL-word-l2r per word with 95% bootstrap intervals (higher is better)",
        lambda r: _plot_arms(r, "pll_l2r_per_word", "Held-out PLL-word-l2r per word, next slice", "nats per word"),
    ),
    "heldout_loss.png": (
        "Held-out masked-LM loss per piece",
        lambda r: _plot_arms(r, "heldout_loss", "Held-out MLM loss per piece, next slice", "nats"),
    ),
    "compute.png": ("Compute per arm", _plot_compute),
}


def _plots(report: dict[str, Any]) -> dict[str, tuple[str, Any]]:
    """The plots this report has: the task plot only when a task set was given."""
    plots = dict(PLOTS)
    if _compared(report):
        plots["fidelity.png"] = (
            "Distillation fidelity: the student against its teacher, with 95% bootstrap intervals",
            _plot_fidelity,
        )
    if any("task_macro_f1" in figures for s in _evaluated(report) for figures in s["arms"].values()):
        plots["task.png"] = (
            "Downstream check: linear probe macro-F1 with 95% bootstrap intervals (higher is better)",
            lambda r: _plot_arms(r, "task_macro_f1", "Linear probe on each arm's encoder, macro-F1", "macro-F1"),
        )
    return plots


def _with_interval(figures: dict[str, float]) -> str:
    return (
        f"{figures['pll_l2r_per_word']:.3f} "
        f"[{figures['pll_l2r_per_word_low']:.2f}, {figures['pll_l2r_per_word_high']:.2f}]"
    )


def arm_summary(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Per arm: mean held-out PLL-word-l2r per word over the evaluated slices, the original PLL per
    word and MLM loss, and the training tokens and wall seconds at the end."""
    rows = []
    slices = _evaluated(report)
    for arm in report["arms"]:
        values = [s["arms"][arm] for s in slices]
        if not values:
            continue
        metrics = ("pll_l2r_per_word", "pll_per_word", "heldout_loss")
        rows.append(
            {
                "arm": arm,
                **{k: sum(v[k] for v in values) / len(values) for k in metrics},
                "train_tokens": values[-1]["train_tokens"],
                "wall_s": values[-1]["wall_s"],
            }
        )
    return rows


def summary_table(report: dict[str, Any]) -> Table:
    """arm_summary as the table `driftlm run` prints."""
    table = Table(
        title="every arm on the next slice's held-out texts (means over slices; l2r: PLL-word-l2r; higher is better)"
    )
    table.add_column("arm", no_wrap=True)
    for column in ("l2r/word", "PLL/word", "MLM loss", "tokens", "wall s"):
        table.add_column(column, justify="right")
    for row in arm_summary(report):
        table.add_row(
            row["arm"],
            f"{row['pll_l2r_per_word']:.3f}",
            f"{row['pll_per_word']:.3f}",
            f"{row['heldout_loss']:.3f}",
            f"{row['train_tokens']:,}",
            f"{row['wall_s']:.0f}",
        )
    return table


def _markdown(report: dict[str, Any]) -> str:
    lines = ["# driftlm run", "", f"Data: `{report['data']}`; arms: {', '.join(report['arms'])}.", ""]
    base = report.get("base", {})
    if base.get("new_mlm_head"):
        lines += [
            f"The base model (`{base['model']}`) came without an MLM head (a sentence encoder): its head "
            f"started random and was trained alone for {base['head_steps']} steps on the first slice "
            "before every arm's first training.",
            "",
        ]
    for name, (title, _) in _plots(report).items():
        lines += [f"## {title}", "", f"![{title}](plots/{name})", ""]
    for table in _tables(report):
        lines += [f"## {table.title}", ""]
        if table.note:
            lines += [table.note, ""]
        lines += ["| " + " | ".join(table.headers) + " |", "|" + "---|" * len(table.headers)]
        lines += ["| " + " | ".join(row) + " |" for row in table.rows]
        lines.append("")
    return "\n".join(lines)


@dataclass(frozen=True)
class _Table:
    """A table of the report, rendered the same into Markdown and HTML."""

    title: str
    note: str
    headers: list[str]
    rows: list[list[str]]


def _tables(report: dict[str, Any]) -> list[_Table]:
    """The slices table and the arm comparisons."""
    slices = _Table(
        "Slices",
        "",
        [
            "slice",
            "fired on",
            "slice loss / threshold",
            "unseen words / threshold",
            "new words",
            "added",
            "removed",
            "overlap",
        ]
        + [f"{a} PLL-l2r/word [95%]" for a in report["arms"]],
        [],
    )
    for s in report["slices"]:
        trigger = s["trigger"] or {}
        overlap = s["vocab"]["top_n_overlap"]
        row = [
            s["slice"],
            ", ".join(trigger["signals"]) or "-" if trigger else "-",
            f"{trigger['score']:.3f} / {trigger['threshold']:.3f}" if trigger else "-",
            f"{trigger['unseen_share']:.3f} / {trigger['unseen_threshold']:.3f}" if trigger else "-",
            ", ".join(w["word"] for w in trigger["new_words"][:5]) or "-" if trigger else "-",
            str(len(s["vocab"]["added"])),
            str(len(s["vocab"]["removed"])),
            f"{overlap:.2f}" if overlap is not None else "-",
        ]
        slices.rows.append(row + [_with_interval(s["arms"][a]) if s["arms"] else "-" for a in report["arms"]])
    comparisons = _Table(
        "Do the arms differ?",
        "Differences in PLL-word-l2r per word on the same held-out texts, with paired 95% bootstrap "
        "intervals; arms whose interval holds 0 do not differ on that slice.",
        ["slice", "comparison", "difference", "95% interval", "differ"],
        [
            [
                s["slice"],
                name,
                f"{c['difference']:+.3f}",
                f"[{c['low']:+.3f}, {c['high']:+.3f}]",
                "yes" if c["differs"] else "no",
            ]
            for s in report["slices"]
            for name, c in (s.get("comparisons") or {}).items()
        ],
    )
    task = _Table(
        "Downstream check",
        "A linear probe fit on each slice's labelled texts (two thirds) with each arm's sentence "
        "embeddings, scored on the other third; 95% bootstrap intervals over those texts.",
        ["slice", "arm", "macro-F1", "95% interval", "AUC", "95% interval", "train / test texts"],
        [
            [
                s["slice"],
                arm,
                f"{f['task_macro_f1']:.3f}",
                f"[{f['task_macro_f1_low']:.3f}, {f['task_macro_f1_high']:.3f}]",
                f"{f['task_auc']:.3f}",
                f"[{f['task_auc_low']:.3f}, {f['task_auc_high']:.3f}]",
                f"{f['task_train_texts']:.0f} / {f['task_test_texts']:.0f}",
            ]
            for s in report["slices"]
            for arm, f in s["arms"].items()
            if "task_macro_f1" in f
        ],
    )

    def interval(figure: dict[str, float]) -> str:
        return f"{figure['value']:.3f} [{figure['low']:.3f}, {figure['high']:.3f}]"

    def ratio(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    serving = _Table(
        "Serving",
        "On every slice that trained, the adaptive arm's model (the teacher) is distilled into a smaller "
        "student; both are compared on the slice's held-out texts (CompareModels: the same masked "
        "positions for both, 95% bootstrap intervals over texts), and served only if the gate passes. "
        "Size: the student's ONNX file over the teacher's; speed: the teacher's embedding time over "
        "the student's.",
        [
            "slice",
            "candidate",
            "agreement",
            "KL",
            "teacher top-1",
            "student top-1",
            "teacher ECE",
            "student ECE",
            "size",
            "speed",
            "gate",
            "served",
        ],
        [
            [
                s["slice"],
                f"{v['candidate']['teacher']}/{v['candidate']['student']}",
                interval(v["top1_agreement"]),
                interval(v["kl_teacher_student"]),
                interval(v["teacher_top1"]),
                interval(v["student_top1"]),
                interval(v["teacher_ece"]),
                interval(v["student_ece"]),
                ratio(v["size_ratio"]),
                ratio(v["speed_ratio"]),
                ("passed: " if v["promoted"] else "failed: ") + "; ".join(v["gate"]),
                "-" if not v["served"] else f"{v['served']['teacher']}/{v['served']['student']}",
            ]
            for s in _compared(report)
            for v in [s["serving"]]
        ],
    )
    return [slices, comparisons, *([task] if task.rows else []), *([serving] if serving.rows else [])]


_HTML = jinja2.Environment(autoescape=True).from_string(
    """<!doctype html>
<html><head><meta charset="utf-8"><title>driftlm run</title>
<style>
body { font-family: sans-serif; max-width: 1000px; margin: 2em auto; }
img { max-width: 100%; }
th, td { padding: 2px 8px; border-bottom: 1px solid #ddd; text-align: right; }
th { border-bottom: 2px solid #999; }
</style></head>
<body>
<h1>driftlm run</h1>
<p>Data: <code>{{ report.data }}</code>; arms: {{ report.arms | join(", ") }}.</p>
{% if report.base and report.base.new_mlm_head %}
<p>The base model came without an MLM head: its head was trained alone for {{ report.base.head_steps }}
steps on the first slice before every arm's first training.</p>
{% endif %}
{% for title, image in plots %}<h2>{{ title }}</h2><img alt="{{ title }}" src="data:image/png;base64,{{ image }}">
{% endfor %}
{% for table in tables %}<h2>{{ table.title }}</h2>{% if table.note %}<p>{{ table.note }}</p>{% endif %}
<table><thead><tr>{% for header in table.headers %}<th>{{ header }}</th>{% endfor %}</tr></thead>
<tbody>{% for row in table.rows %}<tr>{% for cell in row %}<td>{{ cell }}</td>{% endfor %}</tr>
{% endfor %}</tbody></table>
{% endfor %}
</body></html>
"""
)


def _html(report: dict[str, Any], plots: dict[str, bytes]) -> str:
    """A self-contained page (plots inline) from a template; every value is HTML-escaped."""
    images = [(title, base64.b64encode(plots[name]).decode()) for name, (title, _) in _plots(report).items()]
    return _HTML.render(report=report, plots=images, tables=_tables(report))


def draw_plots(report: dict[str, Any], directory: Path) -> list[Path]:
    """The report's plots as PNG files in `directory` (see _plots)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, (_title, draw) in _plots(report).items():
        figure = draw(report)
        figure.savefig(directory / name, dpi=110, bbox_inches="tight", metadata={"Software": None})
        plt.close(figure)
        paths.append(directory / name)
    return paths


def write_report(report: dict[str, Any], out: Path) -> None:
    """report.json, plots/*.png, report.md, report.html under `out`; each written atomically."""
    out.mkdir(parents=True, exist_ok=True)
    clean = json.loads(json.dumps(report, default=str).replace("NaN", "null"))
    store.write_bytes_atomically(out / "report.json", (json.dumps(clean, indent=2, ensure_ascii=False) + "\n").encode())
    plots = {path.name: path.read_bytes() for path in draw_plots(report, out / "plots")}
    store.write_bytes_atomically(out / "report.md", _markdown(report).encode())
    store.write_bytes_atomically(out / "report.html", _html(report, plots).encode())


def print_summary(report: dict[str, Any], console: Console) -> None:
    """The summary table, and where the report is."""
    console.print(summary_table(report))
    if not math.isfinite(report.get("wall_s", 0.0)):
        return
    console.print(
        f"report: {report['options']['out']}/report.html (and report.md, report.json) in {report['wall_s']:.0f} s"
    )
