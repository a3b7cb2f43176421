"""The production arm: what `driftlm follow` does with each closed slice, as named steps.

    first slice   register the base -> head warm-up (a new MLM head) -> train -> observe
                  -> distil a student -> promote (export, compare, gate, serve)
    later slices  evaluate (the model and the frozen baseline on the held-out texts) -> trigger
                  -> drift; when the trigger fires: vocab update -> train -> distil -> promote

Each step returns a JSON result the controller stores before the next starts; `finish` folds the
results into the state. Steps are idempotent against the services: training runs carry a
request id made of the state key, slice, step and attempt; vocabulary versions and observations
are content-addressed; exports take fixed versions; loading and unloading tolerate repeats.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from driftlm.follow.options import FollowOptions
from driftlm.follow.state import FollowState
from driftlm.loop.intervals import ratio_interval
from driftlm.loop.pipeline import HEAD_LEARNING_RATE, TOP_N, default_base_model, run_request, trigger_record
from driftlm.loop.promotion import Promotion, cut_model_directory, local_directory
from driftlm.loop.state import BaseRecord
from driftlm.services.core.strategy import Strategy
from driftlm.services.trainer.client import TrainerClient
from driftlm.services.vocab.client import VocabClient
from driftlm.v1 import common_pb2, trainer_pb2

_LOG = logging.getLogger("driftlm.follow")
Step = tuple[str, Callable[[], dict[str, Any]]]


@dataclass(frozen=True)
class SliceData:
    """A closed slice as the steps see it."""

    label: str
    train: list[str]
    heldout: list[str]
    train_file: Path
    # The previous finished slice's training file (replayed a little); None for the first.
    previous_file: Path | None


class ProductionArm:
    """The steps, over live services."""

    def __init__(
        self,
        options: FollowOptions,
        vocab: VocabClient,
        trainer: TrainerClient,
        promotion: Promotion,
        directory: Path,
    ) -> None:
        self.options = options
        self.vocab = vocab
        self.trainer = trainer
        self.promotion = promotion
        self.directory = directory

    # The plan -------------------------------------------------------------------------------------

    def steps(self, state: FollowState, item: SliceData) -> Iterator[Step]:
        """The slice's steps in order; each is asked for only after the ones before have results,
        so what comes next may depend on them (whether the trigger fired)."""
        assert state.current is not None
        done: dict[str, Any] = state.current["steps"]
        if state.base is None:
            yield "register", self._register
            if done["register"]["new_mlm_head"] and self.options.head_steps:
                yield "head", lambda: self._head(state, item)
            yield "train", lambda: self._train_first(state, item)
            yield "observe", lambda: self._observe(done["register"]["vocab_version"], item)
        else:
            if self.options.shadow:
                yield "evaluate", lambda: self._evaluate(state, item)
            yield "trigger", lambda: self._trigger(state, item)
            yield "drift", lambda: self._drift(state, item)
            if not done["trigger"]["fired"]:
                return
            yield "vocab", lambda: self._update_vocabulary(state, item)
            yield "train", lambda: self._train(state, item)
        yield "distil", lambda: self._distil(state, item)
        yield "promote", lambda: self._promote(state, item)

    def finish(self, state: FollowState, item: SliceData) -> dict[str, Any]:
        """Fold the slice's step results into the state; the slice's record."""
        assert state.current is not None
        done: dict[str, Any] = state.current["steps"]
        if "register" in done:
            register = done["register"]
            state.base = BaseRecord(
                register["model"],
                register["checkpoint"],
                register["vocab_version"],
                register["new_mlm_head"],
                self.options.head_steps if "head" in done else 0,
            )
            state.vocab_version = register["vocab_version"]
            state.first_observation = state.previous_observation = done["observe"]["observation"]
            state.baseline = done["train"]["checkpoint"]
        if "drift" in done:
            state.previous_observation = done["drift"]["observation"]
        if "vocab" in done:
            state.vocab_version = done["vocab"]["version"]
        if "train" in done:
            state.checkpoint = done["train"]["checkpoint"]
        if "distil" in done:
            state.student, state.teacher = done["distil"]["student"], state.checkpoint
        serving = done.get("promote")
        if serving is not None:
            state.served = serving["served"]
            state.next_version += 1
        return {
            "slice": item.label,
            "texts": len(item.train),
            "heldout_texts": len(item.heldout),
            "trigger": done.get("trigger"),
            "fired": bool(done["trigger"]["fired"]) if "trigger" in done else False,
            "vocab": done.get("vocab"),
            "drift": done.get("drift"),
            "evaluation": done.get("evaluate"),
            "serving": serving,
            "served": state.served,
            "checkpoint": state.checkpoint,
            "vocab_version": state.vocab_version,
        }

    # Steps ----------------------------------------------------------------------------------------

    def _base_model(self) -> str:
        return self.options.base_model or str(default_base_model())

    def _register(self) -> dict[str, Any]:
        model = self._base_model()
        # A lineage of its own: the controller's updates form their own chain from the base.
        version = self.vocab.register_directory(model, display_name="base", lineage=f"follow/{self.options.name}")
        base = self.trainer.import_model(model, version.version_id, seed=self.options.seed, display_name="base")
        return {
            "model": model,
            "vocab_version": version.version_id,
            "checkpoint": base.checkpoint_id,
            "new_mlm_head": base.new_mlm_head,
        }

    def _run(self, state: FollowState, item: SliceData, step: str, *, steps: int, **fields: Any) -> dict[str, Any]:
        """A training run whose request id makes a repeat of this step attach to the same run."""
        assert state.current is not None
        attempt = state.current["attempts"].get(step, 0)
        request = run_request(self.options, f"{item.label} {step}", steps=steps, **fields)
        request.request_id = f"follow/{state.key}/{item.label}/{step}/{attempt}"
        run = self.trainer.train(request)
        return {"checkpoint": run.checkpoint_id, "train_tokens": run.train_tokens, "wall_s": run.wall_s}

    def _slice_ref(self, path: Path) -> common_pb2.ArtifactRef:
        return common_pb2.ArtifactRef(uri=str(path))

    def _head(self, state: FollowState, item: SliceData) -> dict[str, Any]:
        assert state.current is not None
        register = state.current["steps"]["register"]
        return self._run(
            state,
            item,
            "head",
            steps=self.options.head_steps,
            base_checkpoint_id=register["checkpoint"],
            slices=[self._slice_ref(item.train_file)],
            strategy=Strategy.UNIFORM.proto,
            head_only=True,
            learning_rate=max(self.options.learning_rate, HEAD_LEARNING_RATE),
        )

    def _train_first(self, state: FollowState, item: SliceData) -> dict[str, Any]:
        assert state.current is not None
        done = state.current["steps"]
        start = done["head"]["checkpoint"] if "head" in done else done["register"]["checkpoint"]
        return self._run(
            state,
            item,
            "train",
            steps=self.options.first_steps,
            base_checkpoint_id=start,
            slices=[self._slice_ref(item.train_file)],
            strategy=Strategy.UNIFORM.proto,
        )

    def _observe(self, vocab_version: str, item: SliceData) -> dict[str, Any]:
        observation = self.vocab.observe(vocab_version, item.train, slice_label=item.label)
        return {"observation": observation.observation_id}

    def _evaluate(self, state: FollowState, item: SliceData) -> dict[str, Any]:
        """PLL-word-l2r per word of the production model and of the frozen baseline, before the
        slice trains anything: what freshness buys on text nobody has trained on."""
        figures = {}
        for role, checkpoint in (("production", state.checkpoint), ("baseline", state.baseline)):
            pll = self.trainer.pseudo_likelihood(checkpoint, item.heldout, max_length=self.options.max_length)
            per_text, words = np.asarray(pll.word_l2r_log_likelihoods), np.asarray(pll.words, dtype=np.float64)
            low, high = ratio_interval(per_text, words, seed=self.options.seed)
            figures[role] = {"pll_l2r_per_word": pll.word_l2r_log_likelihood_per_word, "low": low, "high": high}
        return figures

    def _trigger(self, state: FollowState, item: SliceData) -> dict[str, Any]:
        scored = self.trainer.score_slice(
            state.checkpoint,
            item.train,
            seed=self.options.seed,
            max_length=self.options.max_length,
            false_fire_rate=self.options.false_fire_rate,
        )
        return trigger_record(scored)

    def _drift(self, state: FollowState, item: SliceData) -> dict[str, Any]:
        assert state.base is not None
        observation = self.vocab.observe(state.base.vocab_version, item.train, slice_label=item.label)
        drift = self.vocab.drift(state.previous_observation, observation.observation_id, top_n=TOP_N)
        return {"observation": observation.observation_id, "top_n_overlap": drift.top_n_overlap}

    def _update_vocabulary(self, state: FollowState, item: SliceData) -> dict[str, Any]:
        assert state.base is not None
        seen = self.vocab.observe(state.vocab_version, item.train, slice_label=item.label)
        history = [state.first_observation] if state.vocab_version == state.base.vocab_version else []
        proposal = self.vocab.propose(
            state.vocab_version,
            [seen.observation_id],
            k=self.options.vocab_k,
            history_observation_ids=history,
            language=self.options.language,
        )
        version = self.vocab.commit(proposal.proposal_id, display_name=item.label)
        return {
            "version": version.version_id,
            "added": [p.piece for p in version.change.added],
            "removed": [p.piece for p in version.change.removed],
        }

    def _train(self, state: FollowState, item: SliceData) -> dict[str, Any]:
        assert state.current is not None
        replay = [self._slice_ref(item.previous_file)] if item.previous_file is not None else []
        return self._run(
            state,
            item,
            "train",
            steps=self.options.steps,
            base_checkpoint_id=state.checkpoint,
            vocab_version_id=state.current["steps"]["vocab"]["version"],
            slices=[self._slice_ref(item.train_file)],
            replay_slices=replay,
            replay_fraction=self.options.replay_fraction if replay else 0.0,
            strategy=self.options.strategy_value.proto,
        )

    def _first_student(self, state: FollowState, teacher: str, vocab_version: str) -> str:
        """The teacher cut to fewer layers (its trained head kept); the base cut when the trainer's
        store is not on this machine (the distillation then moves it to the teacher's vocabulary)."""
        assert state.current is not None
        source, version = local_directory(self.trainer.checkpoint(teacher).directory.uri), vocab_version
        if source is None:
            register = state.current["steps"].get("register")
            base_version = register["vocab_version"] if register else state.base.vocab_version if state.base else ""
            source, version = Path(self._base_model()), base_version
        directory = cut_model_directory(source, self.directory / "student-base", self.options.student_layers)
        checkpoint = self.trainer.import_model(str(directory), version, seed=self.options.seed, display_name="student")
        return checkpoint.checkpoint_id

    def _teacher_and_version(self, state: FollowState) -> tuple[str, str]:
        assert state.current is not None
        done = state.current["steps"]
        version = done["vocab"]["version"] if "vocab" in done else done.get("register", {}).get("vocab_version")
        return done["train"]["checkpoint"], version or state.vocab_version

    def _distil(self, state: FollowState, item: SliceData) -> dict[str, Any]:
        teacher, vocab_version = self._teacher_and_version(state)
        student = state.student or self._first_student(state, teacher, vocab_version)
        result = self._run(
            state,
            item,
            "distil",
            steps=self.options.distill_steps,
            kind=trainer_pb2.RUN_KIND_DISTILL,
            base_checkpoint_id=student,
            vocab_version_id=vocab_version,
            teacher_checkpoint_ids=[teacher],
            slices=[self._slice_ref(item.train_file)],
            strategy=Strategy.UNIFORM.proto,
        )
        return {"student": result["checkpoint"], "teacher": teacher}

    def _promote(self, state: FollowState, item: SliceData) -> dict[str, Any]:
        assert state.current is not None
        teacher, _ = self._teacher_and_version(state)
        student = state.current["steps"]["distil"]["student"]
        versions = {"teacher": state.next_version, "student": state.next_version}
        return self.promotion.promote(teacher, student, item.heldout, item.label, state.served, versions=versions)
