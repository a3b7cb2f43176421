"""Values-targeted datasets (Solaiman & Dennison, "Process for Adapting Language Models to Society
(PALMS) with Values-Targeted Datasets", 2021): curated and control examples, and prompt templates.

One reader for the trainer (curated fine-tuning), the compare service (behaviour evaluation) and
`driftlm palms`, so a dataset means the same everywhere. Errors name the file, the line and the
field, never the line's content.

    curated / control JSONL: {"category": ..., "prompt": ..., "completion": ...}
    prompts JSONL:           {"category": ..., "template": "... [MASK] ...", "group": optional}
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

# The paper's eight sensitive categories; a dataset may name its own (`categories=`).
CATEGORIES = (
    "abuse_violence_threat",
    "health",
    "human_characteristics",
    "injustice_inequality",
    "political_opinion",
    "relationships",
    "sexual_activity",
    "terrorism",
)
MASK = "[MASK]"
# Lines one dataset file may hold, and characters one field may hold.
MAX_LINES = 100_000
MAX_FIELD_CHARS = 10_000


class CuratedDataError(ValueError):
    """A dataset line that cannot be used; the message names the file, line and field."""


@dataclass(frozen=True)
class CuratedExample:
    """One curated (or control) example."""

    category: str
    prompt: str
    completion: str

    @property
    def text(self) -> str:
        """What the model trains on: the prompt and its completion."""
        return f"{self.prompt} {self.completion}".strip()


@dataclass(frozen=True)
class PromptTemplate:
    """A prompt with one or more [MASK] slots for the model to fill."""

    category: str
    template: str
    # The social group the prompt is about ("women", "muslims"...); empty when none.
    group: str = ""


def _records(path: Path) -> Iterable[tuple[int, dict[str, object]]]:
    name = path.name
    try:
        lines = path.read_bytes().decode("utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise CuratedDataError(f"{name}: not UTF-8 (byte {error.start})") from None
    if len(lines) > MAX_LINES:
        raise CuratedDataError(f"{name}: {len(lines)} lines; a dataset holds at most {MAX_LINES}")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise CuratedDataError(f"{name} line {number}: not a JSON object") from None
        if not isinstance(record, dict):
            raise CuratedDataError(f"{name} line {number}: not a JSON object")
        yield number, record


def _field(record: dict[str, object], key: str, where: str, *, required: bool = True) -> str:
    value = record.get(key, "")
    if not isinstance(value, str):
        raise CuratedDataError(f"{where}: field {key!r} must be a string")
    if required and not value.strip():
        raise CuratedDataError(f"{where}: field {key!r} is missing or empty")
    if len(value) > MAX_FIELD_CHARS:
        raise CuratedDataError(f"{where}: field {key!r} has {len(value)} characters; at most {MAX_FIELD_CHARS}")
    return value.strip()


def _category(record: dict[str, object], where: str, categories: tuple[str, ...] | None) -> str:
    category = _field(record, "category", where)
    if categories is not None and category not in categories:
        raise CuratedDataError(f"{where}: field 'category' is {category[:60]!r}, not one of {', '.join(categories)}")
    return category


def read_curated(path: Path, categories: tuple[str, ...] | None = CATEGORIES) -> list[CuratedExample]:
    """The examples of a curated or control JSONL file (any non-empty category with `categories`
    None: training does not care which).

    Raises:
        CuratedDataError: a line that is not an object, an unknown category, an empty prompt or
            completion, no example at all.
        FileNotFoundError: no such file.
    """
    examples = [
        CuratedExample(
            _category(record, where, categories),
            _field(record, "prompt", where),
            _field(record, "completion", where),
        )
        for number, record in _records(path)
        for where in [f"{path.name} line {number}"]
    ]
    if not examples:
        raise CuratedDataError(f"{path.name}: holds no example")
    return examples


def read_prompts(path: Path, categories: tuple[str, ...] = CATEGORIES) -> list[PromptTemplate]:
    """The templates of a prompts JSONL file.

    Raises:
        CuratedDataError: as read_curated, and a template without [MASK].
    """
    prompts = []
    for number, record in _records(path):
        where = f"{path.name} line {number}"
        template = _field(record, "template", where)
        if MASK not in template:
            raise CuratedDataError(f"{where}: field 'template' has no {MASK} for the model to fill")
        prompts.append(
            PromptTemplate(
                _category(record, where, categories), template, _field(record, "group", where, required=False)
            )
        )
    if not prompts:
        raise CuratedDataError(f"{path.name}: holds no prompt")
    return prompts
