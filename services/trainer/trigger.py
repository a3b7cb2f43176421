"""The training trigger: does a new slice surprise the model more than text of its own period does?

The slice is masked and scored in eval mode (MLM loss per masked occurrence). Each occurrence's
excess is its loss minus its token's expected loss in the checkpoint's loss memory (loss_memory.py:
held-out text of the training period, rare tokens judged by a prior). Two tests decide:

- the slice: its score is the mean over texts of each text's mean excess. On held-out text of the
  training period that mean is known (the memory's calibration: null_mean, from texts scored with
  several independent masks, so each text's mean is precise); the slice fires when its score
  exceeds null_mean + max(z * standard error, min_effect), z the normal quantile of
  1 - false_fire_rate / 2 and the standard error Welch's (the slice's per-text variance over its
  texts, the calibration's over its own), so that a huge slice does not fire on a difference too
  small to matter;
- each token seen at least min_token_count times in the slice: its mean loss against its expected
  loss, z = (mean - expected) / sqrt(variance * (1/n + 1/(remembered + prior))); a token spikes
  above the Bonferroni bound for false_fire_rate / 2 over the tokens tested (or spike_z when
  given). One word that changes its meaning fires the trigger even when the rest of the slice
  does not.

Each test spends half of false_fire_rate, so a slice of the training period fires with about that
probability in all (tested on simulated losses in tests/trainer/test_trigger_math.py).

A checkpoint whose memory is not calibrated (imported, never trained here) always fires: nothing
says the slice is familiar to it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from driftlm.services.runtime.calls import stop_if_abandoned
from driftlm.services.runtime.errors import InvalidArgumentError

from .data import TokenizedPool
from .loss_memory import PRIOR_OCCURRENCES, LossMemory
from .masking import mask_batch
from .models import autocast, masked_logits

_BATCH = 64


@dataclass(frozen=True)
class TriggerOptions:
    """How ScoreSlice samples, masks and decides; see trigger_options for the ranges."""

    max_texts: int = 2000
    # Pieces per text; 0 means min(128, the model's positions).
    max_length: int = 0
    mask_fraction: float = 0.15
    seed: int = 0
    top_spikes: int = 20
    # Probability that a slice of the training period fires.
    false_fire_rate: float = 0.01
    # Smallest slice score above the calibration mean that fires, nats per piece.
    min_effect: float = 0.05
    # Occurrences a token needs in the slice to be tested on its own.
    min_token_count: int = 20
    # A token spikes above this z; 0 means the Bonferroni bound for false_fire_rate.
    spike_z: float = 0.0


def trigger_options(
    *,
    max_texts: int = 0,
    max_length: int = 0,
    mask_fraction: float = 0.0,
    seed: int = 0,
    top_spikes: int = 0,
    false_fire_rate: float = 0.0,
    min_effect: float = 0.0,
    min_token_count: int = 0,
    spike_z: float = 0.0,
) -> TriggerOptions:
    """The options a request asks for, 0 meaning the default.

    Raises:
        InvalidArgumentError: a value out of its range; the message says the range and the default.
    """
    default = TriggerOptions()
    options = TriggerOptions(
        max_texts=max_texts or default.max_texts,
        max_length=max_length,
        mask_fraction=mask_fraction or default.mask_fraction,
        seed=seed,
        top_spikes=top_spikes or default.top_spikes,
        false_fire_rate=false_fire_rate or default.false_fire_rate,
        min_effect=min_effect or default.min_effect,
        min_token_count=min_token_count or default.min_token_count,
        spike_z=spike_z,
    )
    checks = [
        ("max_texts", 1 <= options.max_texts <= 1_000_000, "[1, 1000000]", default.max_texts, max_texts),
        ("max_length", options.max_length == 0 or 4 <= options.max_length <= 8192, "[4, 8192]", 128, max_length),
        ("mask_fraction", 0 < options.mask_fraction < 1, "(0, 1)", default.mask_fraction, mask_fraction),
        ("top_spikes", 1 <= options.top_spikes <= 10_000, "[1, 10000]", default.top_spikes, top_spikes),
        (
            "false_fire_rate",
            0 < options.false_fire_rate < 0.5,
            "(0, 0.5)",
            default.false_fire_rate,
            false_fire_rate,
        ),
        (
            "min_effect",
            math.isfinite(options.min_effect) and options.min_effect >= 0,
            "[0, inf)",
            default.min_effect,
            min_effect,
        ),
        (
            "min_token_count",
            2 <= options.min_token_count <= 1_000_000,
            "[2, 1000000]",
            default.min_token_count,
            min_token_count,
        ),
        (
            "spike_z",
            math.isfinite(options.spike_z) and options.spike_z >= 0,
            "[0, inf)",
            "the Bonferroni bound",
            spike_z,
        ),
    ]
    for field, inside, allowed, fallback, given in checks:
        if not inside:
            raise InvalidArgumentError(field, f"must be in {allowed} (0 means {fallback}), got {given}")
    return options


@dataclass(frozen=True)
class Occurrences:
    """Masked occurrences scored: (M,) token ids, losses in nats, and the text each belongs to."""

    token_ids: np.ndarray
    losses: np.ndarray
    texts: np.ndarray

    def subset(self, texts: np.ndarray) -> Occurrences:
        """The occurrences of some texts only (their text numbers unchanged)."""
        keep = np.isin(self.texts, texts)
        return Occurrences(self.token_ids[keep], self.losses[keep], self.texts[keep])


@dataclass(frozen=True)
class Spike:
    """A token whose loss spiked."""

    token_id: int
    slice_loss: float
    remembered_loss: float
    z: float
    occurrences: int


@dataclass(frozen=True)
class SliceScore:
    """The trigger's view of a slice."""

    # Mean loss of the scored occurrences, and the mean of their tokens' expected losses.
    slice_loss: float
    remembered_loss: float
    # Mean over texts of the per-text mean excess loss (nats), and what it is compared with.
    score: float
    threshold: float
    null_mean: float
    null_sd: float
    # (score - null_mean) / (null_sd / sqrt(texts_scored)).
    z: float
    texts_scored: int
    # The bound a token's z must exceed to spike, over tokens_tested tokens.
    token_z_threshold: float
    tokens_tested: int
    spikes: list[Spike]
    # Fractions of scored occurrences: of spiking tokens, of tokens the memory never saw.
    spike_fraction: float
    novel_fraction: float
    scored_tokens: int
    calibrated: bool
    fire: bool
    # Why it fires or not, in words.
    reason: str


@torch.no_grad()
def token_losses(
    model: PreTrainedModel,
    pool: TokenizedPool,
    *,
    special: torch.Tensor,
    mask_id: int,
    mask_fraction: float,
    seed: int,
    device: torch.device,
    rows: Sequence[int] | None = None,
    passes: int = 1,
) -> Occurrences:
    """Every masked occurrence of the pool's texts (or of `rows`), scored in eval mode; every text
    with a piece to predict gets at least one per pass. Each of `passes` draws its own mask."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    chosen = list(range(len(pool))) if rows is None else list(rows)
    ids, losses, texts = [], [], []
    for start in (start for _ in range(passes) for start in range(0, len(chosen), _BATCH)):
        stop_if_abandoned()  # the caller cancelled, or its deadline passed
        batch = chosen[start : start + _BATCH]
        input_ids, attention = pool.batch(batch)
        masked = mask_batch(
            input_ids,
            attention,
            special=special,
            mask_id=mask_id,
            fraction=mask_fraction,
            generator=generator,
            every_row=True,
        )
        with autocast(device):
            logits = masked_logits(
                model, masked.input_ids.to(device), masked.attention_mask.to(device), masked.masked.to(device)
            )
        losses.append(F.cross_entropy(logits.float(), masked.targets.to(device), reduction="none").cpu().numpy())
        ids.append(masked.targets.numpy())
        texts.append(np.asarray(batch, dtype=np.int64)[torch.nonzero(masked.masked)[:, 0].numpy()])
    if not ids:
        return Occurrences(np.empty(0, np.int64), np.empty(0), np.empty(0, np.int64))
    return Occurrences(np.concatenate(ids), np.concatenate(losses).astype(np.float64), np.concatenate(texts))


def excess_per_text(memory: LossMemory, occurrences: Occurrences) -> np.ndarray:
    """Each scored text's mean excess loss over its tokens' expected losses (texts in ascending order)."""
    excess = occurrences.losses - memory.expected()[occurrences.token_ids]
    texts, inverse = np.unique(occurrences.texts, return_inverse=True)
    return np.bincount(inverse, weights=excess, minlength=texts.size) / np.bincount(inverse, minlength=texts.size)


def calibrated_memory(vocab_size: int, reference: Occurrences, calibration: Occurrences) -> LossMemory:
    """The memory of the reference occurrences, calibrated on the calibration texts' excess."""
    memory = LossMemory.from_occurrences(vocab_size, reference.token_ids, reference.losses)
    return memory.with_calibration(excess_per_text(memory, calibration))


def score_slice(occurrences: Occurrences, memory: LossMemory, options: TriggerOptions) -> SliceScore:
    """Compare a slice's occurrences with the memory; see the module docstring."""
    total = int(occurrences.losses.size)
    calibration = memory.calibration
    if total == 0:
        return SliceScore(
            0.0,
            0.0,
            0.0,
            math.inf,
            calibration.null_mean,
            calibration.null_sd,
            0.0,
            0,
            math.inf,
            0,
            [],
            0.0,
            0.0,
            0,
            memory.calibrated,
            False,
            "nothing to score: no text has a piece to predict",
        )
    expected = memory.expected()
    per_text = excess_per_text(memory, occurrences)
    score, texts = float(per_text.mean()), int(per_text.size)
    # Welch, two samples: the slice's texts and the calibration's (its mean is an estimate too).
    slice_variance_of_texts = float(per_text.var(ddof=1)) if texts >= 2 else calibration.null_sd**2
    standard_error = math.sqrt(slice_variance_of_texts / texts + calibration.null_sd**2 / max(calibration.texts, 1))
    z_slice = NormalDist().inv_cdf(1 - options.false_fire_rate / 2)
    threshold = calibration.null_mean + max(z_slice * standard_error, options.min_effect)
    z = (score - calibration.null_mean) / standard_error if standard_error > 0 else math.inf

    present, inverse, counts = np.unique(occurrences.token_ids, return_inverse=True, return_counts=True)
    slice_mean = np.bincount(inverse, weights=occurrences.losses) / counts
    slice_variance = (
        np.maximum(np.bincount(inverse, weights=occurrences.losses**2) / counts - slice_mean**2, 0.0)
        * counts
        / np.maximum(counts - 1, 1)
    )
    remembered = memory.count[present]
    # Welch: each side's own variance (the slice's, the memory's shrunk one) over its own count.
    token_z = (slice_mean - expected[present]) / np.sqrt(
        slice_variance / counts + memory.variance()[present] / (remembered + PRIOR_OCCURRENCES)
    )
    tested = counts >= options.min_token_count
    tokens_tested = int(tested.sum())
    token_threshold = options.spike_z or (
        NormalDist().inv_cdf(1 - options.false_fire_rate / 2 / tokens_tested) if tokens_tested else math.inf
    )
    spiking = tested & (token_z > token_threshold)
    order = np.argsort(-np.where(spiking, token_z, -np.inf), kind="stable")[
        : min(options.top_spikes, int(spiking.sum()))
    ]
    spikes = [
        Spike(int(present[i]), float(slice_mean[i]), float(expected[present[i]]), float(token_z[i]), int(counts[i]))
        for i in order
    ]
    if not memory.calibrated:
        fire, reason = True, "the checkpoint's loss memory is not calibrated (imported, never trained here): train it"
    elif score > threshold:
        fire, reason = True, f"slice score {score:.4f} > threshold {threshold:.4f} nats (z = {z:.1f})"
    elif spikes:
        fire, reason = True, f"{len(spikes)} token(s) spike above z = {token_threshold:.2f}, most z = {spikes[0].z:.1f}"
    else:
        fire, reason = False, f"slice score {score:.4f} <= threshold {threshold:.4f} nats and no token spikes"
    return SliceScore(
        slice_loss=float(occurrences.losses.mean()),
        remembered_loss=float(expected[occurrences.token_ids].mean()),
        score=score,
        threshold=threshold,
        null_mean=calibration.null_mean,
        null_sd=calibration.null_sd,
        z=z,
        texts_scored=texts,
        token_z_threshold=token_threshold,
        tokens_tested=tokens_tested,
        spikes=spikes,
        spike_fraction=float(counts[spiking].sum()) / total,
        novel_fraction=float(counts[remembered == 0].sum()) / total,
        scored_tokens=total,
        calibrated=memory.calibrated,
        fire=fire,
        reason=reason,
    )


def sample_texts(texts: Sequence[str], limit: int, seed: int) -> list[str]:
    """At most `limit` of the non-empty texts, drawn uniformly, in their order."""
    kept = [t for t in texts if t.strip()]
    if len(kept) <= limit:
        return kept
    chosen = np.sort(np.random.default_rng(seed).choice(len(kept), limit, replace=False))
    return [kept[i] for i in chosen]
