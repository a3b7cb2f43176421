"""The trainer's records as its wire messages: runs, checkpoints, selections, slice scores, PLL."""

from __future__ import annotations

from driftlm.services.core.pseudo_likelihood import CorpusScore
from driftlm.v1 import common_pb2, trainer_pb2

from .app import CheckpointInfo
from .corpus_passes import ScoresWritten
from .runs import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, RunRecord
from .selection import IterationSelection
from .trigger import ScoredSlice, Signal
from .validation import KINDS

_STATES = {
    QUEUED: trainer_pb2.RUN_STATE_QUEUED,
    RUNNING: trainer_pb2.RUN_STATE_RUNNING,
    SUCCEEDED: trainer_pb2.RUN_STATE_SUCCEEDED,
    FAILED: trainer_pb2.RUN_STATE_FAILED,
    CANCELLED: trainer_pb2.RUN_STATE_CANCELLED,
}
_KINDS = {kind: value for value, kind in KINDS.items()}
_SIGNALS = {
    Signal.SLICE_LOSS: trainer_pb2.TRIGGER_SIGNAL_SLICE_LOSS,
    Signal.TOKEN_LOSS: trainer_pb2.TRIGGER_SIGNAL_TOKEN_LOSS,
    Signal.UNSEEN_WORDS: trainer_pb2.TRIGGER_SIGNAL_UNSEEN_WORDS,
    Signal.NEW_WORDS: trainer_pb2.TRIGGER_SIGNAL_NEW_WORDS,
}


def run_message(record: RunRecord) -> trainer_pb2.RunStatus:
    return trainer_pb2.RunStatus(
        run_id=record.run_id,
        kind=_KINDS[record.spec.kind],
        state=_STATES[record.state],
        step=record.step,
        total_steps=record.spec.total_steps,
        iteration=record.iteration,
        loss=record.loss,
        tokens_per_s=record.tokens_per_s,
        eta_s=record.eta_s,
        checkpoint_id=record.checkpoint_id,
        train_tokens=record.train_tokens,
        wall_s=record.wall_s,
        error_code=record.error_code,
        error_message=record.error_message,
        base_checkpoint_id=record.spec.base_checkpoint_id,
        vocab_version_id=record.spec.vocab_version_id,
        create_time=record.create_time,
    )


def checkpoint_message(info: CheckpointInfo) -> trainer_pb2.Checkpoint:
    record = info.record
    return trainer_pb2.Checkpoint(
        checkpoint_id=record.checkpoint_id,
        vocab_version_id=record.vocab_version_id,
        parent_checkpoint_id=record.parent_checkpoint_id,
        run_id=record.run_id,
        step=record.step,
        create_time=record.create_time,
        directory=common_pb2.ArtifactRef(uri=info.directory.as_uri()),
        parameter_count=record.parameter_count,
        display_name=record.display_name,
        remembered_tokens=info.remembered_tokens,
        new_mlm_head=record.new_mlm_head,
    )


def selection_message(selection: IterationSelection) -> trainer_pb2.Selection:
    return trainer_pb2.Selection(
        iteration=selection.iteration,
        strategy=selection.strategy.proto,
        sentence_indices=selection.sentence_indices,
        candidate_indices=selection.candidate_indices,
        candidate_weights=selection.candidate_weights,
        eligible_count=selection.eligible_count,
        topped_up_indices=selection.topped_up_indices,
        target_token_ids=selection.target_token_ids,
    )


def slice_score_message(scored: ScoredSlice) -> trainer_pb2.ScoreSliceResponse:
    score = scored.score
    return trainer_pb2.ScoreSliceResponse(
        slice_loss=score.slice_loss,
        remembered_loss=score.remembered_loss,
        spike_fraction=score.tokens.spike_fraction,
        fire=score.fire,
        spikes=[
            trainer_pb2.TokenSpike(
                token_id=s.token_id,
                piece=scored.pieces[s.token_id],
                slice_loss=s.slice_loss,
                remembered_loss=s.remembered_loss,
                z=s.z,
                occurrences=s.occurrences,
                excess=s.excess,
                p_value=s.p_value,
            )
            for s in score.tokens.spikes
        ],
        scored_tokens=score.scored_tokens,
        novel_fraction=score.novel_fraction,
        score=score.loss.mean,
        threshold=score.loss.threshold,
        null_mean=score.null_mean,
        null_sd=score.null_sd,
        z=score.loss.z,
        texts_scored=score.texts_scored,
        token_z_threshold=score.tokens.z_threshold,
        tokens_tested=score.tokens.tokens_tested,
        calibrated=score.calibrated,
        reason=score.reason,
        signals=[_SIGNALS[signal] for signal in score.signals],
        unseen_share=score.unseen.mean,
        unseen_threshold=score.unseen.threshold,
        unseen_null_mean=score.unseen_null_mean,
        unseen_null_sd=score.unseen_null_sd,
        unseen_z=score.unseen.z,
        texts_with_words=score.texts_with_words,
        new_words=[
            trainer_pb2.NewWord(
                word=w.word,
                slice_texts=w.slice_texts,
                slice_share=w.slice_share,
                memory_texts=w.memory_texts,
                memory_share=w.memory_share,
                p_value=w.p_value,
            )
            for w in score.words.novel_words
        ],
        new_word_count=score.words.novel_word_count,
        words_tested=score.words.words_tested,
        word_p_threshold=score.words.p_threshold,
        spike_count=score.tokens.spike_count,
        knows_words=score.knows_words,
    )


def pseudo_likelihood_message(
    scored: CorpusScore, written: ScoresWritten | None = None
) -> trainer_pb2.ScorePseudoLikelihoodResponse:
    """The corpus figures, and per text the lists (texts sent) or the file (a corpus scored)."""
    texts = scored.texts if written is None else []
    return trainer_pb2.ScorePseudoLikelihoodResponse(
        log_likelihoods=[s.log_likelihood for s in texts],
        pieces=[s.pieces for s in texts],
        words=[s.words for s in texts],
        characters=[s.characters for s in texts],
        log_likelihood_per_word=scored.log_likelihood_per_word,
        log_likelihood_per_character=scored.log_likelihood_per_character,
        pseudo_perplexity=scored.pseudo_perplexity,
        word_l2r_log_likelihoods=[s.word_l2r_log_likelihood for s in texts],
        word_l2r_log_likelihood_per_word=scored.word_l2r_log_likelihood_per_word,
        word_l2r_log_likelihood_per_character=scored.word_l2r_log_likelihood_per_character,
        scores=None if written is None else common_pb2.ArtifactRef(uri=written.uri, sha256=written.sha256),
        scored_count=len(scored.texts) if written is None else written.rows,
    )
