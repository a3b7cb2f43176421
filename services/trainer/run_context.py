"""What a training run works with, shared by the loop, the selection and the resume state: its
context (stores, peers, device, events), its progress, its vocabulary, and its seeds."""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from driftlm.services.core.errors import FailedPreconditionError

from .checkpoints import CheckpointStore
from .distributed import Ranks
from .peers import Sampler, VocabPeer, VocabVersion
from .vocab_move import VocabHop


class RunCancelledError(Exception):
    """CancelRun asked the run to stop."""


class RunPreemptedError(Exception):
    """The service is stopping: the run saved where it stood and resumes when the service restarts."""


@dataclass
class Progress:
    """What a run reports after every step."""

    step: int = 0
    iteration: int = 0
    loss: float = math.nan
    tokens_per_s: float = 0.0
    eta_s: float = 0.0
    train_tokens: int = 0
    wall_s: float = 0.0
    checkpoint_id: str = ""


@dataclass
class RunContext:
    """The services and stores a run works with."""

    run_id: str
    run_directory: Path
    checkpoints: CheckpointStore
    vocab: VocabPeer
    sampler: Sampler
    device: torch.device
    report: Callable[[Progress], None]
    cancel: threading.Event = field(default_factory=threading.Event)
    # Set when the service stops: save at the next step boundary and stop (resumed on restart).
    preempt: threading.Event = field(default_factory=threading.Event)
    # This process among the training processes (torchrun); alone by default.
    ranks: Ranks = field(default_factory=Ranks)


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed for one purpose and moment of a run."""
    digest = hashlib.sha256("\0".join(str(p) for p in (seed, *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def vocab_hops(vocab: VocabPeer, from_version: str, to_version: str) -> list[VocabHop]:
    """The chain of updates from the checkpoint's version to the run's, oldest first.

    Raises:
        FailedPreconditionError: to_version does not descend from from_version.
    """
    chain = []
    current = vocab.version(to_version)
    while current.version_id != from_version:
        if not current.parent_id:
            raise FailedPreconditionError(
                f"vocab version {to_version} does not descend from {from_version}, the checkpoint's version; "
                "train on a version derived from it",
                reason="VOCAB_NOT_DERIVED",
            )
        parent = vocab.version(current.parent_id)
        chain.append((parent, current))
        current = parent
    hops = []
    for parent, child in reversed(chain):
        hops.append(
            VocabHop(
                old_pieces=parent.piece_ids,
                new_pieces=child.piece_ids,
                decompositions={piece.id: list(piece.parent_decomposition) for piece in child.added},
            )
        )
    return hops


@dataclass(frozen=True)
class Vocabulary:
    """A vocab version as the model sees it: its tokenizer, pieces and special ids."""

    tokenizer_json: str
    pieces: dict[str, int]
    # (V,) bool: never masked nor drawn as a random replacement (the version's reserved ids).
    special: torch.Tensor
    mask_id: int
    pad_id: int


def vocabulary_of(version: VocabVersion) -> Vocabulary:
    """The version's pieces and its own special tokens.

    Raises:
        FailedPreconditionError: the version has no mask token, so no masked LM can train on it.
    """
    if version.special.mask_id < 0:
        raise FailedPreconditionError(
            f"vocab version {version.version_id} has no mask token ([MASK] or <mask>); a masked LM needs one",
            reason="NO_MASK_TOKEN",
        )
    return Vocabulary(
        version.tokenizer_json,
        version.piece_ids,
        torch.from_numpy(version.special.reserved_mask(version.size)),
        version.special.mask_id,
        max(version.special.pad_id, 0),
    )
