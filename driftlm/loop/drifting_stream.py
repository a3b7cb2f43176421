"""A dated text stream that drifts the way real ones do, for the embedded default of `driftlm run`.

Each period (a year by default) writes sentences from everyday templates. Entities have lifetimes:
new ones appear (products, hashtags, names the base vocabulary has never seen), old ones fade, and
one word changes its company (`corona` goes from beer to virus), so a model trained on the early
periods is stale on the late ones. Seeded and deterministic.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Entity:
    """A name that is talked about from `first` to `last` period (inclusive), about a topic."""

    name: str
    topic: str
    first: int
    last: int


ENTITIES = (
    Entity("myspace", "app", 0, 1),
    Entity("blackberry", "phone", 0, 2),
    Entity("ipod", "phone", 0, 1),
    Entity("vine", "app", 0, 2),
    Entity("zorblax", "app", 0, 1),
    Entity("snapchat", "app", 1, 5),
    Entity("galaxy", "phone", 1, 5),
    Entity("tiktok", "app", 3, 5),
    Entity("zoomcall", "app", 3, 5),
    Entity("#covid19", "health", 3, 5),
    Entity("pfizerbiontech", "health", 3, 5),
    Entity("chatgpt", "app", 4, 5),
    Entity("glimmerfox", "phone", 4, 5),
    Entity("tarnquill", "app", 4, 5),
    Entity("#wfh", "work", 3, 5),
)
TEMPLATES = {
    "app": [
        "just downloaded {e} and i cannot stop using it",
        "my friends keep sending me videos on {e} all day",
        "is {e} down for anyone else right now",
        "{e} changed their privacy settings again today",
        "spent the whole evening scrolling through {e}",
    ],
    "phone": [
        "the battery on my new {e} lasts two full days",
        "dropped my {e} and the screen cracked again",
        "thinking about trading in my old {e} next month",
        "the camera on the {e} is better than i expected",
    ],
    "health": [
        "got my appointment for the {e} shot next week",
        "the news about {e} is all anyone talks about",
        "schools are closed again because of {e}",
        "waiting in line at the clinic for hours because of {e}",
    ],
    "work": [
        "third week of {e} and i miss the office coffee",
        "my team finally figured out how to make {e} work",
    ],
}
FILLER = [
    "what a beautiful morning for a walk in the park",
    "traffic on the highway was terrible this morning",
    "cooking pasta for the whole family tonight",
    "the football game last night went to overtime",
    "reading a good book on a rainy afternoon",
    "my neighbor's dog will not stop barking",
    "the coffee shop on the corner has new pastries",
    "finally finished painting the kitchen walls",
    "the train was late again and i missed my meeting",
    "planning a trip to the mountains this summer",
]
# `corona`'s company before and after the shift period.
CONTEXT_SHIFT_PERIOD = 3
CORONA_BEFORE = ["grabbed a cold corona at the beach bar", "corona with lime is the best summer drink"]
CORONA_AFTER = ["the corona outbreak closed every shop in town", "tested negative for corona this morning"]


def _period_texts(rng: np.random.Generator, period: int, texts: int) -> list[str]:
    alive = [entity for entity in ENTITIES if entity.first <= period <= entity.last]
    corona = CORONA_BEFORE if period < CONTEXT_SHIFT_PERIOD else CORONA_AFTER
    out = []
    for _ in range(texts):
        roll = rng.random()
        if roll < 0.55 and alive:
            entity = alive[int(rng.integers(len(alive)))]
            templates = TEMPLATES[entity.topic]
            out.append(templates[int(rng.integers(len(templates)))].format(e=entity.name))
        elif roll < 0.65:
            out.append(corona[int(rng.integers(len(corona)))])
        else:
            out.append(FILLER[int(rng.integers(len(FILLER)))])
    return out


def generate_stream(
    *, periods: int = 6, texts_per_period: int = 400, start_year: int = 2016, seed: int = 0
) -> Iterator[dict[str, str]]:
    """Records {"time": "YYYY-MM-DD", "text": ...}, one period per year from start_year, in time order."""
    rng = np.random.default_rng(seed)
    for period in range(periods):
        days = np.sort(rng.integers(0, 365, texts_per_period))
        first_day = date(start_year + period, 1, 1)
        for day, text in zip(days.tolist(), _period_texts(rng, period, texts_per_period), strict=True):
            yield {"time": (first_day + timedelta(days=day)).isoformat(), "text": text}


def write_stream(path: Path, **options: int) -> Path:
    """Write generate_stream(**options) as JSONL; returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as file:
        for record in generate_stream(**options):
            file.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path
