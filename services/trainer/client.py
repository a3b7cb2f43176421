"""A Python client of TrainerService for orchestrators (the pipeline): start, wait, score.

Errors surface as grpc.RpcError with the server's status; a run that fails raises RunFailedError.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import grpc
import numpy as np

from driftlm.services.runtime.channel import ServiceClient
from driftlm.services.runtime.security import PLAINTEXT, ChannelSecurity
from driftlm.services.runtime.tensors import tensor_to_array
from driftlm.v1 import common_pb2, trainer_pb2, trainer_pb2_grpc


class RunFailedError(RuntimeError):
    """A run ended FAILED or CANCELLED; the message is the run's."""

    def __init__(self, run: trainer_pb2.RunStatus) -> None:
        super().__init__(f"run {run.run_id} {trainer_pb2.RunState.Name(run.state)}: {run.error_message}")
        self.run = run


class TrainerClient(ServiceClient):
    """Calls a trainer service."""

    def __init__(
        self, target: str | grpc.Channel, *, timeout_s: float | None = 3600.0, security: ChannelSecurity = PLAINTEXT
    ) -> None:
        super().__init__(target, timeout_s=timeout_s, security=security)
        self._stub = trainer_pb2_grpc.TrainerServiceStub(self._channel)

    def import_model(
        self, model_dir: str, vocab_version_id: str, *, seed: int = 0, display_name: str = ""
    ) -> trainer_pb2.Checkpoint:
        """A model directory (on the trainer's machine) as a checkpoint on a vocab version."""
        request = trainer_pb2.CreateCheckpointRequest(
            model_dir=common_pb2.ArtifactRef(uri=model_dir),
            vocab_version_id=vocab_version_id,
            seed=seed,
            display_name=display_name,
        )
        response: trainer_pb2.CreateCheckpointResponse = self._stub.CreateCheckpoint(request, timeout=self._timeout())
        return response.checkpoint

    def train(
        self,
        request: trainer_pb2.StartRunRequest,
        *,
        on_progress: Callable[[trainer_pb2.RunStatus], None] | None = None,
    ) -> trainer_pb2.RunStatus:
        """Start a run and wait for its end, calling on_progress with every update."""
        started: trainer_pb2.StartRunResponse = self._stub.StartRun(request, timeout=self._timeout())
        run = started.run
        for update in self._stub.WatchRun(trainer_pb2.WatchRunRequest(run_id=run.run_id), timeout=None):
            run = update.run
            if on_progress is not None:
                on_progress(run)
        if run.state != trainer_pb2.RUN_STATE_SUCCEEDED:
            raise RunFailedError(run)
        return run

    def checkpoint(self, checkpoint_id: str) -> trainer_pb2.Checkpoint:
        """A checkpoint's record (its directory on the trainer's machine among it)."""
        request = trainer_pb2.GetCheckpointRequest(checkpoint_id=checkpoint_id)
        response: trainer_pb2.GetCheckpointResponse = self._stub.GetCheckpoint(request, timeout=self._timeout())
        return response.checkpoint

    def export_onnx(
        self, checkpoint_id: str, *, model_name: str = "", version: int = 0
    ) -> trainer_pb2.ExportOnnxResponse:
        """Publish the checkpoint as a new version (0: the next) of `model_name` in the trainer's model
        repository (fp32, and int8 as `<model_name>_int8`)."""
        request = trainer_pb2.ExportOnnxRequest(checkpoint_id=checkpoint_id, model_name=model_name, version=version)
        response: trainer_pb2.ExportOnnxResponse = self._stub.ExportOnnx(request, timeout=self._timeout())
        return response

    def score_slice(
        self,
        checkpoint_id: str,
        texts: Sequence[str],
        *,
        seed: int = 0,
        max_length: int = 0,
        false_fire_rate: float = 0.0,
        scores: common_pb2.ArtifactRef | None = None,
    ) -> trainer_pb2.ScoreSliceResponse:
        """The trigger's view of a slice (false_fire_rate 0: the service's default, 0.01); with
        `scores` (a ScoreCandidates file of these texts), its losses are read from the file."""
        request = trainer_pb2.ScoreSliceRequest(
            checkpoint_id=checkpoint_id,
            corpus=common_pb2.CorpusSource(texts=common_pb2.TextBatch(texts=list(texts))),
            seed=seed,
            max_length=max_length,
            false_fire_rate=false_fire_rate,
            scores=scores,
        )
        response: trainer_pb2.ScoreSliceResponse = self._stub.ScoreSlice(request, timeout=self._timeout())
        return response

    def embed(self, checkpoint_id: str, texts: Sequence[str], *, max_length: int = 0) -> np.ndarray:
        """(N, H) float32 mean-pooled embeddings of the texts."""
        request = trainer_pb2.ComputeEmbeddingsRequest(
            checkpoint_id=checkpoint_id, texts=list(texts), max_length=max_length
        )
        response: trainer_pb2.ComputeEmbeddingsResponse = self._stub.ComputeEmbeddings(request, timeout=self._timeout())
        return tensor_to_array(response.embeddings, "embeddings")

    def score_candidates(
        self,
        checkpoint_id: str,
        files: Sequence[str | Path],
        *,
        baseline_checkpoint_id: str = "",
        destination: str = "",
        max_length: int = 0,
        mask_fraction: float = 0.0,
        seed: int = 0,
        engine: common_pb2.CorpusEngine.ValueType = common_pb2.CORPUS_ENGINE_LOCAL,
        workers: int = 0,
        text_field: str = "",
    ) -> trainer_pb2.ScoreCandidatesResponse:
        """Score the texts of corpus files (shards, in order) for the sampling strategies; the
        response names the Parquet file written."""
        request = trainer_pb2.ScoreCandidatesRequest(
            checkpoint_id=checkpoint_id,
            baseline_checkpoint_id=baseline_checkpoint_id,
            corpus=common_pb2.CorpusSource(
                shards=common_pb2.CorpusShards(files=[common_pb2.ArtifactRef(uri=str(f)) for f in files]),
                text_field=text_field,
            ),
            destination=common_pb2.ArtifactRef(uri=destination),
            max_length=max_length,
            mask_fraction=mask_fraction,
            seed=seed,
            engine=common_pb2.EngineOptions(engine=engine, workers=workers),
        )
        response: trainer_pb2.ScoreCandidatesResponse = self._stub.ScoreCandidates(request, timeout=self._timeout())
        return response

    def pseudo_likelihood(
        self, checkpoint_id: str, texts: Sequence[str], *, max_length: int = 0
    ) -> trainer_pb2.ScorePseudoLikelihoodResponse:
        """Pseudo-log-likelihood of the texts."""
        request = trainer_pb2.ScorePseudoLikelihoodRequest(
            checkpoint_id=checkpoint_id, texts=list(texts), max_length=max_length
        )
        response: trainer_pb2.ScorePseudoLikelihoodResponse = self._stub.ScorePseudoLikelihood(
            request, timeout=self._timeout()
        )
        return response

    def corpus_pseudo_likelihood(
        self,
        checkpoint_id: str,
        files: Sequence[str | Path],
        *,
        destination: str = "",
        max_length: int = 0,
        engine: common_pb2.CorpusEngine.ValueType = common_pb2.CORPUS_ENGINE_LOCAL,
        workers: int = 0,
    ) -> trainer_pb2.ScorePseudoLikelihoodResponse:
        """PLL of a held-out corpus of any size (shards, in order): the corpus figures in the
        response, each text's in the Parquet file it names."""
        request = trainer_pb2.ScorePseudoLikelihoodRequest(
            checkpoint_id=checkpoint_id,
            corpus=common_pb2.CorpusSource(
                shards=common_pb2.CorpusShards(files=[common_pb2.ArtifactRef(uri=str(f)) for f in files])
            ),
            destination=common_pb2.ArtifactRef(uri=destination),
            max_length=max_length,
            engine=common_pb2.EngineOptions(engine=engine, workers=workers),
        )
        response: trainer_pb2.ScorePseudoLikelihoodResponse = self._stub.ScorePseudoLikelihood(
            request, timeout=self._timeout()
        )
        return response
