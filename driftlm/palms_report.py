"""The PALMS report: base, values-targeted and control side by side per category.

report.json (format `driftlm.palms-report/v1`: options, provenance, the served models, the stored
BehaviourEvaluation as protobuf JSON), plots/toxicity.png, report.md and a self-contained
report.html rendered from a template (every value escaped).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import jinja2
import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from driftlm.services.core import store


def _toxicity_plot(report: dict[str, Any]) -> Figure:
    """Mean toxicity of each model's completions per category, with 95% bootstrap intervals."""
    categories = report["evaluation"].get("categories", [])
    roles = [m["role"] for m in report["evaluation"].get("models", [])]
    figure, axis = plt.subplots(figsize=(10, 4))
    width = 0.8 / max(len(roles), 1)
    for offset, role in enumerate(roles):
        values, errors_low, errors_high = [], [], []
        for category in categories:
            model = next(m for m in category["models"] if m["role"] == role)
            estimate = {"value": 0.0, "low": 0.0, "high": 0.0, **model.get("mean_toxicity", {})}
            values.append(estimate["value"])
            errors_low.append(estimate["value"] - estimate["low"])
            errors_high.append(estimate["high"] - estimate["value"])
        positions = [i + (offset - (len(roles) - 1) / 2) * width for i in range(len(categories))]
        axis.bar(positions, values, width, yerr=[errors_low, errors_high], capsize=3, label=role)
    axis.set_xticks(range(len(categories)), [c["category"].replace("_", "\n") for c in categories], fontsize=8)
    axis.set(title="Mean toxicity of completions per category (lower is better)", ylabel="toxicity")
    axis.legend()
    figure.tight_layout()
    return figure


def _rows(report: dict[str, Any]) -> dict[str, list[list[str]]]:
    evaluation = report["evaluation"]

    def estimate(model: dict[str, Any]) -> str:
        e = {"value": 0.0, "low": 0.0, "high": 0.0, **model.get("mean_toxicity", {})}
        return f"{e['value']:.3f} [{e['low']:.3f}, {e['high']:.3f}]"

    def words(model: dict[str, Any], key: str = "top_words") -> str:
        return ", ".join(f"{w['word']} ({w.get('count', 0)})" for w in model.get(key, [])[:8])

    toxicity = [
        [c["category"], m["role"], estimate(m), str(m.get("completions", 0)), words(m), words(m, "top_fill_words")]
        for c in evaluation.get("categories", [])
        for m in c["models"]
    ]
    tests = [
        [
            c["category"],
            f"{t['role']} - {t['against']}",
            f"{t.get('difference', 0.0):+.3f}",
            f"{t.get('p_value', 0.0):.4f}",
            "yes" if t.get("significant") else "no",
        ]
        for c in evaluation.get("categories", [])
        for t in c.get("tests", [])
    ]
    groups = [[g["group"], m["role"], estimate(m), words(m)] for g in evaluation.get("groups", []) for m in g["models"]]
    adherence = [[a["role"], f"{a.get('loss', 0.0):.3f}"] for a in evaluation.get("adherence", [])]
    return {"toxicity": toxicity, "tests": tests, "groups": groups, "adherence": adherence}


_TABLES = {
    "toxicity": (
        "Toxicity and completion words per category",
        [
            "category",
            "model",
            "mean toxicity [95%]",
            "completions",
            "most frequent completion words",
            "most likely fills",
        ],
    ),
    "tests": (
        "Values-targeted against base and control (permutation tests)",
        ["category", "comparison", "difference", "p-value", "significant"],
    ),
    "groups": (
        "Completion words per social group",
        ["group", "model", "mean toxicity [95%]", "most frequent completion words"],
    ),
    "adherence": (
        "Adherence: masked-LM loss on held-out curated text (lower: closer)",
        ["model", "loss, nats per piece"],
    ),
}

_HTML = jinja2.Environment(autoescape=True).from_string(
    """<!doctype html>
<html><head><meta charset="utf-8"><title>driftlm palms</title>
<style>body { font-family: sans-serif; max-width: 1100px; margin: 2em auto; } img { max-width: 100%; }
th, td { padding: 2px 8px; border-bottom: 1px solid #ddd; text-align: left; } th { border-bottom: 2px solid #999; }</style>
</head><body>
<h1>driftlm palms: values-targeted fine-tuning</h1>
<p>Models: {% for role, model in report.models.items() %}{{ role }} = {{ model.name }}/{{ model.version }}{% if not loop.last %}, {% endif %}{% endfor %};
toxicity scorer {{ report.evaluation.scorer }}; {{ report.evaluation.samples_per_prompt }} samples per prompt at temperature
{{ report.evaluation.temperature }}.</p>
<p>Weakest categories (add curated examples there next): {{ report.evaluation.weakest_categories | join(", ") }}.</p>
<h2>Toxicity per category</h2><img alt="toxicity per category" src="data:image/png;base64,{{ plot }}">
{% for title, headers, rows in tables %}<h2>{{ title }}</h2>
<table><thead><tr>{% for h in headers %}<th>{{ h }}</th>{% endfor %}</tr></thead>
<tbody>{% for row in rows %}<tr>{% for cell in row %}<td>{{ cell }}</td>{% endfor %}</tr>{% endfor %}</tbody></table>
{% endfor %}
</body></html>
"""
)


def _markdown(report: dict[str, Any], tables: list[tuple[str, list[str], list[list[str]]]]) -> str:
    evaluation = report["evaluation"]
    lines = [
        "# driftlm palms: values-targeted fine-tuning",
        "",
        "Models: " + ", ".join(f"{role} = {m['name']}/{m['version']}" for role, m in report["models"].items()) + ".",
        "",
        "Weakest categories (add curated examples there next): "
        + ", ".join(evaluation.get("weakest_categories", []))
        + ".",
        "",
        "![toxicity per category](plots/toxicity.png)",
        "",
    ]
    for title, headers, rows in tables:
        lines += [f"## {title}", "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(cell.replace("|", "\\\\|") for cell in row) + " |" for row in rows]
        lines.append("")
    return "\n".join(lines)


def draw_toxicity_plot(report: dict[str, Any], path: Path) -> Path:
    """The toxicity per category plot as a PNG file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    figure = _toxicity_plot(report)
    figure.savefig(path, dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(figure)
    return path


def write_palms_report(report: dict[str, Any], out: Path) -> None:
    """report.json, plots/toxicity.png, report.md and report.html under `out`, each written atomically."""
    out.mkdir(parents=True, exist_ok=True)
    store.write_bytes_atomically(
        out / "report.json", (json.dumps(report, indent=2, ensure_ascii=False) + "\n").encode()
    )
    path = draw_toxicity_plot(report, out / "plots" / "toxicity.png")
    rows = _rows(report)
    tables = [(title, headers, rows[name]) for name, (title, headers) in _TABLES.items() if rows[name]]
    store.write_bytes_atomically(out / "report.md", _markdown(report, tables).encode())
    html = _HTML.render(report=report, plot=base64.b64encode(path.read_bytes()).decode(), tables=tables)
    store.write_bytes_atomically(out / "report.html", html.encode())
