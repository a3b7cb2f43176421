"""The README's figures, from committed results only (`make figures`; `--check` says what disagrees).

Every number the README quotes from a run stands between `<!-- figures:NAME -->` and
`<!-- /figures:NAME -->` and is written here from one of these files:

| file                                  | made by                                                        |
|---------------------------------------|----------------------------------------------------------------|
| docs/example-report.json              | `make run` (driftlm run on the embedded default), its report.json |
| docs/example-palms-report.json        | `driftlm palms --out palms-out`, its report.json                |
| benchmarks/results/trigger_power.json | `python -m benchmarks trigger_power`                            |
| benchmarks/results/strategies.json    | `python -m benchmarks strategies`                               |
| benchmarks/results/follow.json        | `python -m benchmarks follow`                                   |
| benchmarks/results/scale.json         | `python -m benchmarks scale`                                    |
| benchmarks/results/<suite>.json       | `python -m benchmarks <suite>` (sampling, vocab, trainer, inference) |

The tables of settings between `<!-- settings:serve -->` and `<!-- settings:follow -->` markers
are written from ServeConfig's and FollowOptions' fields (services/runtime/settings.py), so flags,
environment variables and README agree. The plots in docs/images are drawn from the same files, and docs/images/sources.json records each
plot's source file and that file's SHA-256: a plot whose source has changed since it was drawn is
reported by `--check` as stale (PNG bytes themselves differ between matplotlib versions, so they
are not compared). tests/test_readme_figures.py runs the check.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from driftlm.follow.options import FollowOptions
from driftlm.services.runtime.config import ServeConfig
from driftlm.services.runtime.settings import flag_table

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
IMAGES = ROOT / "docs" / "images"
SOURCES = IMAGES / "sources.json"
LOOP = ROOT / "docs" / "example-report.json"
PALMS = ROOT / "docs" / "example-palms-report.json"
POWER = ROOT / "benchmarks" / "results" / "trigger_power.json"
STRATEGIES = ROOT / "benchmarks" / "results" / "strategies.json"
FOLLOW = ROOT / "benchmarks" / "results" / "follow.json"
SCALE = ROOT / "benchmarks" / "results" / "scale.json"
RESULTS = ROOT / "benchmarks" / "results"
# The tables of settings, written from their config classes' fields (runtime/settings.py).
SETTINGS: dict[str, type] = {"serve": ServeConfig, "follow": FollowOptions}
_SETTINGS = re.compile(r"(<!-- settings:(?P<name>\w+) -->\n)(.*?)(<!-- /settings:(?P=name) -->)", re.S)
_BLOCK = re.compile(r"(<!-- figures:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /figures:(?P=name) -->)", re.S)


def _load(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return loaded


def _table(headers: list[str], rows: list[list[str]]) -> str:
    """A Markdown table; a `|` inside a cell is escaped, as `KL(teacher || student)` has two."""

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    return "\n".join([line(headers), "|" + "|".join("---" for _ in headers) + "|", *map(line, rows)]) + "\n"


def _interval(estimate: dict[str, float], digits: int = 3) -> str:
    return f"{estimate['value']:.{digits}f} [{estimate['low']:.{digits}f}, {estimate['high']:.{digits}f}]"


# The loop -------------------------------------------------------------------------------------


def loop_summary(report: dict[str, Any]) -> str:
    from driftlm.loop.report import arm_summary

    rows = [
        [
            f"`{row['arm']}`",
            f"{row['pll_l2r_per_word']:.3f}",
            f"{row['pll_per_word']:.3f}",
            f"{row['heldout_loss']:.3f}",
            f"{row['train_tokens']:,}",
        ]
        for row in arm_summary(report)
    ]
    slices = [s["slice"] for s in report["slices"][1:]]
    return (
        f"Means over {slices[0]}-{slices[-1]}, each arm on the next slice's held-out texts (higher is better "
        "for the two PLLs, lower for the loss); `make run` prints the same table, with the wall seconds of "
        "the machine it ran on.\n\n"
        + _table(["arm", "PLL-word-l2r per word", "original PLL per word", "MLM loss", "training tokens"], rows)
    )


def loop_trigger(report: dict[str, Any]) -> str:
    rows = []
    for s in report["slices"][1:]:
        trigger, vocab = s["trigger"], s["vocab"]
        added = vocab["added"]
        rows.append(
            [
                s["slice"],
                ", ".join(signal.replace("_", " ") for signal in trigger["signals"]) if trigger["fired"] else "silent",
                f"{trigger['unseen_share']:.4f} / {trigger['unseen_threshold']:.4f}",
                f"{trigger['score']:.3f} / {trigger['threshold']:.3f}",
                ", ".join(f"`{w['word']}`" for w in trigger["new_words"][:4]) or "-",
                (", ".join(f"`{p}`" for p in added[:6]) + (f" (+{len(added) - 6})" if len(added) > 6 else "")) or "-",
            ]
        )
    return _table(
        [
            "slice",
            "trigger",
            "unseen-word share / threshold",
            "slice loss / threshold (nats)",
            "new words it names",
            "pieces the update added",
        ],
        rows,
    )


def loop_comparisons(report: dict[str, Any]) -> str:
    rows = [
        [
            s["slice"],
            f"`{name}`",
            f"{c['difference']:+.3f}",
            f"[{c['low']:+.3f}, {c['high']:+.3f}]",
            "yes" if c["differs"] else "no",
        ]
        for s in report["slices"][1:]
        for name, c in s["comparisons"].items()
    ]
    return _table(["slice", "arms", "PLL-word-l2r per word, difference", "paired 95% interval", "differ"], rows)


def loop_serving(report: dict[str, Any]) -> str:
    rows = []
    for s in report["slices"][1:]:
        serving = s.get("serving") or {}
        if "top1_agreement" not in serving:
            continue
        rows.append(
            [
                s["slice"],
                "served" if serving["promoted"] else "kept what was served",
                _interval(serving["top1_agreement"]),
                _interval(serving["kl_teacher_student"]),
                f"{serving['teacher_top1']['value']:.3f} / {serving['student_top1']['value']:.3f}",
                f"{serving['size_ratio']:.2f}" if serving.get("size_ratio") else "-",
                "; ".join(serving["gate"]),
            ]
        )
    return _table(
        [
            "slice",
            "decision",
            "top-1 agreement [95%]",
            "KL(teacher || student), nats [95%]",
            "top-1 accuracy, teacher / student",
            "student file / teacher's",
            "gate",
        ],
        rows,
    )


# PALMS ----------------------------------------------------------------------------------------


def palms(report: dict[str, Any]) -> str:
    evaluation = report["evaluation"]
    words: dict[str, Counter[str]] = {}
    for category in evaluation.get("categories", []):
        for model in category["models"]:
            words.setdefault(model["role"], Counter()).update(
                {w["word"]: int(w.get("count", 0)) for w in model.get("top_words", [])}
            )
    adherence = {a["role"]: a.get("loss", 0.0) for a in evaluation.get("adherence", [])}
    rows = [
        [f"`{role}`", f"{adherence.get(role, float('nan')):.2f}", ", ".join(f"`{w}`" for w, _ in counts.most_common(6))]
        for role, counts in words.items()
    ]
    tests = [t for c in evaluation.get("categories", []) for t in c.get("tests", [])]
    significant = sum(1 for t in tests if t.get("significant"))
    smallest = min((t.get("p_value", 1.0) for t in tests), default=1.0)
    return (
        _table(
            ["model", "masked-LM loss on held-out curated text (nats per piece)", "most frequent completion words"],
            rows,
        )
        + f"\nToxicity: {significant} of {len(tests)} permutation tests (values-targeted against base and against "
        f"control, per category) find a difference at the 5% level; the smallest p-value is {smallest:.3f}.\n"
    )


# Benchmarks -----------------------------------------------------------------------------------


def trigger_power(result: dict[str, Any]) -> str:
    cells = result["cells"]
    sizes = sorted({c["size"] for c in cells})
    shares = sorted({c["share"] for c in cells})
    rows = [
        [
            f"{size:,}",
            *(
                f"{next(c['fired'] for c in cells if c['size'] == size and c['share'] == share)}/{result['seeds']}"
                for share in shares
            ),
        ]
        for size in sizes
    ]
    null = sum(c["fired"] for c in cells if c["share"] == 0)
    return (
        _table(["texts per slice", *(f"{share:.0%} later text" for share in shares)], rows)
        + f"\nWith no later text, {null} of {len(sizes) * result['seeds']} slices fired (the default false-fire "
        f"rate is {result['false_fire_rate']:.0%}). {result['corpus']}; {result['model']}; measured "
        f"{result['date']} in {result['wall_s'] / 60:.0f} minutes on {result['device']['cores']} cores.\n"
    )


def strategies(result: dict[str, Any]) -> str:
    selection = result["selection"]
    rows = [
        [
            f"`{strategy}`",
            str(row["iteration"]),
            row["strategy"],
            f"{row['spearman_weight_length']:.2f}"
            if row["spearman_weight_length"] == row["spearman_weight_length"]
            else "-",
            f"{row['drawn_with_added']:.2f} / {row['pool_with_added']:.2f}",
        ]
        for strategy, iterations in selection["iterations"].items()
        for row in iterations
    ]
    overlap_rows = [
        [
            o["pair"],
            str(o["iteration"]),
            f"{o['top_overlap']:.2f}",
            f"{o['drawn_overlap']:.2f}",
            f"{o['drawn_overlap_if_independent']:.2f}",
        ]
        for o in selection["overlaps"]
    ]
    steps_rows = [
        [
            r["corpus"],
            f"`{r['strategy']}`",
            f"{r['reached']}/{r['seeds']}",
            f"{r['steps_mean_when_reached']:.1f} ({r['steps_range'][0]}-{r['steps_range'][1]})"
            if r["reached"]
            else "not reached",
            f"{r['final_heldout_loss_mean']:.3f} ({r['final_heldout_loss_range'][0]:.3f}-{r['final_heldout_loss_range'][1]:.3f})",
        ]
        for r in result["steps_to_uniforms_best"]
    ]
    return (
        f"Added by the update: {', '.join(f'`{p}`' for p in selection['added_pieces'])}.\n\n"
        + _table(
            ["strategy", "iteration", "weighed by", "Spearman(weight, length)", "drawn / pool holding an added piece"],
            rows,
        )
        + "\n"
        + _table(
            ["strategies", "iteration", "top-tenth overlap", "drawn overlap", "drawn overlap if independent"],
            overlap_rows,
        )
        + "\n"
        + _table(
            [
                "corpus",
                "strategy",
                "seeds reaching uniform's best",
                "steps when reached (range)",
                "held-out loss at the end (range)",
            ],
            steps_rows,
        )
    )


def follow(result: dict[str, Any]) -> str:
    """`driftlm follow`: per year slice, the delays and steps; the soak's memory."""
    rows = []
    for index, row in enumerate(result["years"]):
        steps = row["step_seconds"]
        heaviest = max(steps, key=steps.get)
        rows.append(
            [
                row["slice"],
                "first slice" if index == 0 else "yes" if row["fired"] else "no",
                "yes" if row["promoted"] else "no",
                f"{row['landed_to_closed_s']:.1f}",
                f"{row['closed_to_done_s']:.0f}",
                f"{heaviest} {steps[heaviest]:.0f}",
            ]
        )
    table = _table(
        ["slice", "fired", "promoted", "file landed to slice closed (s)", "closed to done (s)", "longest step (s)"],
        rows,
    )
    memory = [r["controller_rss_mib"] for r in result["soak"]]
    fired = sum(r["fired"] for r in result["soak"])
    tenth = max(1, len(memory) // 10)
    slowest = max(r["landed_to_closed_s"] for r in result["years"])
    return (
        table
        + f"\nThe slowest slice closed {slowest:.1f} s after the file that closed it landed (the poll interval is "
        f"{result['poll_interval_s']:.0f} s); a promoted model is served the moment its slice's last step ends. Over "
        f"{len(memory)} slices of the soak ({fired} fired), the controller's resident memory went from "
        f"{memory[0]:.0f} MiB after the first to {memory[-1]:.0f} MiB after the last (at most {max(memory):.0f}; "
        f"mean of the first tenth {sum(memory[:tenth]) / tenth:.0f}, of the last {sum(memory[-tenth:]) / tenth:.0f}).\n"
        "\n![Time per slice by step, and the controller's memory over the soak](docs/images/follow.png)\n"
    )


def scale(result: dict[str, Any]) -> str:
    """Corpus scale: observation and candidate scoring by engine, and the 100M-text estimate."""
    lines, scored = result["lines"], result["scored_texts"]

    cores = result["device"]["cores"]

    def rows(table: list[dict[str, Any]], baseline: dict[str, Any]) -> list[list[str]]:
        """Ray rows per worker (one CPU each); the others use every core of one process."""
        out = []
        for row in table:
            ray = row["engine"].endswith("Ray")
            units = row["workers"] if ray else cores
            out.append(
                [
                    row["engine"],
                    f"{row['workers']} worker{'s' if row['workers'] > 1 else ''}"
                    if ray
                    else f"1 process, {cores} threads",
                    f"{row['seconds']:,.1f}",
                    f"{row['texts_per_s']:,.0f}",
                    f"{row['texts_per_s'] / units:,.0f}",
                    f"{row['peak_mib']:,.0f}",
                    f"{row['texts_per_s'] / baseline['texts_per_s']:.2f}x",
                ]
            )
        return out

    headers = ["engine", "runs on", "seconds", "texts/s", "texts/s per CPU", "peak MiB", "vs baseline"]
    observation, scoring = result["observation"], result["scoring"]
    estimate = _table(
        ["pass", "texts/s per Ray worker (measured)", "worker-hours per 100M texts", "workers for 100M in an hour"],
        [
            [
                r["pass"],
                f"{r['texts_per_s_per_worker']:,.0f}",
                f"{r['worker_hours']:,.1f}",
                f"{r['workers_for_one_hour']:,}",
            ]
            for r in result["estimate"]
        ],
    )
    return (
        f"Observation of {lines:,} real-like lines ({result['distinct_share']:.0%} distinct) in {result['shards']} "
        f"JSONL shards, MiniLM ({result['device']['cores']} cores, {result['device']['cpu']}):\n\n"
        + _table(headers, rows(observation, observation[0]))
        + f"\nCandidate scoring of {scored:,} of those lines, MiniLM and a baseline, 64 pieces, 7 masked passes:\n\n"
        + _table(headers, rows(scoring, scoring[0]))
        + "\nOn paper, from the one-worker rates, for a slice of 100M texts:\n\n"
        + estimate
    )


def _amount(value: float, unit: str) -> str:
    """A measured value as the tables print it: rates whole, times to three figures."""
    if unit.endswith("/s") or value >= 100:
        return f"{value:,.0f} {unit}"
    return f"{value:,.{1 if value >= 10 else 2}f} {unit}"


def bench(cases: Any) -> str:
    """A benchmark suite's cases (benchmarks/harness.py): driftlm, the baseline a user would
    otherwise run in the same process and run, and their ratio (> 1: driftlm is faster); a case
    with several baselines names itself once."""
    rows, previous = [], None
    for case in cases:
        rows.append(
            [
                "" if case["name"] == previous else case["name"],
                _amount(case["value"], case["unit"]),
                f"{case['baseline']}, {_amount(case['baseline_value'], case['unit'])}",
                f"{case['ratio']:.2f}x",
            ]
        )
        previous = case["name"]
    device = cases[0]["device"]
    return f"{device['cores']} cores, {device['cpu']}:\n\n" + _table(["case", "driftlm", "baseline", "ratio"], rows)


BLOCKS: dict[str, tuple[Path, Callable[[dict[str, Any]], str]]] = {
    "loop-summary": (LOOP, loop_summary),
    "loop-trigger": (LOOP, loop_trigger),
    "loop-comparisons": (LOOP, loop_comparisons),
    "loop-serving": (LOOP, loop_serving),
    "palms": (PALMS, palms),
    "trigger-power": (POWER, trigger_power),
    "strategies": (STRATEGIES, strategies),
    "follow": (FOLLOW, follow),
    "scale": (SCALE, scale),
    **{f"bench-{suite}": (RESULTS / f"{suite}.json", bench) for suite in ("sampling", "vocab", "trainer", "inference")},
}


# Plots ----------------------------------------------------------------------------------------


def _power_plot(result: dict[str, Any], path: Path) -> None:
    figure, axis = plt.subplots(figsize=(7, 3.8))
    cells = result["cells"]
    for size in sorted({c["size"] for c in cells}):
        row = sorted((c for c in cells if c["size"] == size), key=lambda c: c["share"])
        axis.plot(
            [c["share"] for c in row], [c["fired"] / c["seeds"] for c in row], marker="o", label=f"{size:,} texts"
        )
    axis.axhline(result["false_fire_rate"], color="k", linestyle=":", label="false-fire rate")
    axis.set(
        title="Trigger: share of slices that fire (real changelogs, 20 retrained splits)",
        xlabel="share of the slice's texts from ten years later",
        ylabel="fired",
    )
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(figure)


def _follow_plot(result: dict[str, Any], path: Path) -> None:
    figure, (steps_axis, memory_axis) = plt.subplots(1, 2, figsize=(11, 3.8))
    years = result["years"]
    names = sorted({name for row in years for name in row["step_seconds"]})
    bottom = [0.0] * len(years)
    for name in names:
        heights = [row["step_seconds"].get(name, 0.0) for row in years]
        steps_axis.bar([row["slice"] for row in years], heights, bottom=bottom, label=name)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    steps_axis.set(title="Time per slice, by step (a year at a time)", ylabel="seconds")
    steps_axis.legend(fontsize=7, ncol=2)
    soak = result["soak"]
    memory_axis.plot(range(1, len(soak) + 1), [r["controller_rss_mib"] for r in soak], marker=".")
    memory_axis.set(title=f"Controller memory over {len(soak)} slices", xlabel="slice", ylabel="resident MiB")
    memory_axis.set_ylim(bottom=0)
    figure.tight_layout()
    figure.savefig(path, dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(figure)


def _plots() -> dict[Path, list[Path]]:
    """Each source file and the plots drawn from it (drawing them)."""
    from driftlm.loop.report import draw_plots
    from driftlm.palms_report import draw_toxicity_plot

    drawn: dict[Path, list[Path]] = {}
    if LOOP.exists():
        drawn[LOOP] = draw_plots(_load(LOOP), IMAGES)
    if PALMS.exists():
        drawn[PALMS] = [draw_toxicity_plot(_load(PALMS), IMAGES / "palms_toxicity.png")]
    if POWER.exists():
        _power_plot(_load(POWER), IMAGES / "trigger_power.png")
        drawn[POWER] = [IMAGES / "trigger_power.png"]
    if FOLLOW.exists():
        _follow_plot(_load(FOLLOW), IMAGES / "follow.png")
        drawn[FOLLOW] = [IMAGES / "follow.png"]
    return drawn


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rendered_readme() -> str:
    """README.md with every figures block written from its source."""
    text = README.read_text(encoding="utf-8")

    def block(match: re.Match[str]) -> str:
        name = match.group("name")
        if name not in BLOCKS:
            raise SystemExit(f"README.md has a figures block {name!r} that docs/figures.py does not know")
        source, render = BLOCKS[name]
        return match.group(1) + render(_load(source)) + match.group(4)

    def settings(match: re.Match[str]) -> str:
        return match.group(1) + flag_table(SETTINGS[match.group("name")]) + match.group(4)

    return _SETTINGS.sub(settings, _BLOCK.sub(block, text))


def problems() -> list[str]:
    """What disagrees between the README, the plots and the committed results."""
    found = []
    current = README.read_text(encoding="utf-8")
    wanted = rendered_readme()
    for old, new in zip(_BLOCK.finditer(current), _BLOCK.finditer(wanted), strict=True):
        if old.group("body") != new.group("body"):
            found.append(f"README.md block {old.group('name')!r} differs from {BLOCKS[old.group('name')][0].name}")
    tables = {m.group("name"): m.group(3) for m in _SETTINGS.finditer(current)}
    for name, config in SETTINGS.items():
        if tables.get(name) != flag_table(config):
            found.append(f"README.md's table of `driftlm {name}` settings differs from {config.__name__}'s flags")
    present = {m.group("name") for m in _BLOCK.finditer(current)}
    found += [f"README.md has no figures block {name!r}" for name in sorted(BLOCKS.keys() - present)]
    recorded = _load(SOURCES) if SOURCES.exists() else {}
    for image, source in sorted(recorded.items()):
        source_path = ROOT / source["file"]
        if not (IMAGES / image).exists():
            found.append(f"docs/images/{image} is missing")
        elif _digest(source_path) != source["sha256"]:
            found.append(f"docs/images/{image} was drawn from another {source['file']}: run make figures")
    for image in sorted(p.name for p in IMAGES.glob("*.png") if p.name not in recorded):
        found.append(f"docs/images/{image} has no recorded source")
    return found


def write() -> None:
    """Write the README's blocks and draw the plots."""
    README.write_text(rendered_readme(), encoding="utf-8")
    sources = {
        image.name: {"file": str(source.relative_to(ROOT)), "sha256": _digest(source)}
        for source, images in _plots().items()
        for image in images
    }
    SOURCES.write_text(json.dumps(dict(sorted(sources.items())), indent=2) + "\n", encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="change nothing; list what disagrees, exit 1 if anything does"
    )
    if parser.parse_args().check:
        found = problems()
        for problem in found:
            print(problem, file=sys.stderr)
        return 1 if found else 0
    write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
