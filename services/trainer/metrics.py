"""Prometheus metrics of the trainer service, beside every service's RPC metrics: optimizer steps
and tokens trained, the running run's loss and speed, and how many runs are in each state."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import Counter, Gauge

STEPS = Counter("driftlm_trainer_steps_total", "Optimizer steps taken, by run kind.", ["kind"])
TOKENS = Counter("driftlm_trainer_tokens_total", "Tokens (non-padding pieces) trained on, by run kind.", ["kind"])
LOSS = Gauge("driftlm_trainer_loss", "Masked-LM (or distillation) loss of the last step, by run kind.", ["kind"])
TOKENS_PER_SECOND = Gauge(
    "driftlm_trainer_tokens_per_second", "Training speed of the running run, by run kind.", ["kind"]
)
RUNS = Gauge("driftlm_trainer_runs", "Runs in each state (queued, running, succeeded, failed, cancelled).", ["state"])


def stepped(kind: str, steps: int, tokens: int, loss: float, tokens_per_s: float) -> None:
    """A run of `kind` took `steps` more steps over `tokens` more tokens; its latest loss and speed."""
    if steps > 0:
        STEPS.labels(kind).inc(steps)
    if tokens > 0:
        TOKENS.labels(kind).inc(tokens)
    LOSS.labels(kind).set(loss)
    TOKENS_PER_SECOND.labels(kind).set(tokens_per_s)


def count_states(states: Iterable[str], every_state: Iterable[str]) -> None:
    """Set the runs-per-state gauge from the current states of all runs (zero for the absent ones)."""
    counts = dict.fromkeys(every_state, 0)
    for state in states:
        counts[state] = counts.get(state, 0) + 1
    for state, count in counts.items():
        RUNS.labels(state).set(count)
