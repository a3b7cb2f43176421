"""One model version loaded for serving: its ONNX Runtime session and its own tokenizer, checked
against each other before the version is served.

A version directory holds model.onnx, tokenizer.json (with tokenizer_config.json) and config.json
(core/model_repository.py). Loading refuses, with a reason a person can act on, a file that is
not ONNX, a graph without the inputs and outputs the export writes, a tokenizer that does not load
or has no mask token, and a tokenizer whose size is not the model's vocabulary.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import onnx
import onnx.utils
import onnxruntime
from tokenizers import Tokenizer

from driftlm.services.core.errors import ResourceExhaustedError
from driftlm.services.core.model_repository import INPUTS, OUTPUTS
from driftlm.services.core.vocabulary import VocabularyError, WordPieceVocabulary, canonical_tokenizer_json

Provider = Literal["auto", "cpu", "cuda"]
Optimization = Literal["disable", "basic", "extended", "all"]
_OPTIMIZATION = {
    "disable": onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
# Fallback when config.json gives no max_position_embeddings (BERT's).
_DEFAULT_MAX_LENGTH = 512


class ModelLoadError(ValueError):
    """A version that cannot be served; the message is the reason shown to users."""


@dataclass(frozen=True)
class RuntimeOptions:
    """How ONNX Runtime runs every model of the server."""

    # Threads one run may use; 0 lets ONNX Runtime choose (one per core).
    intra_op_threads: int = 0
    optimization: Optimization = "all"
    # auto: CUDA when onnxruntime-gpu sees a GPU, else CPU.
    provider: Provider = "auto"

    @classmethod
    def parse(cls, intra_op_threads: int, optimization: str, provider: str) -> RuntimeOptions:
        """Options from configuration strings.

        Raises:
            ValueError: an unknown level or provider, negative threads, or `cuda` where ONNX
                Runtime has no CUDA provider (ModelLoadError is a ValueError).
        """
        if optimization not in _OPTIMIZATION:
            raise ValueError(
                f"ONNX Runtime optimisation must be one of {', '.join(_OPTIMIZATION)}, not {optimization!r}"
            )
        if provider not in ("auto", "cpu", "cuda"):
            raise ValueError(f"the execution provider must be auto, cpu or cuda, not {provider!r}")
        if intra_op_threads < 0:
            raise ValueError("ONNX Runtime threads must be >= 0 (0: one per core)")
        options = cls(intra_op_threads, cast(Optimization, optimization), cast(Provider, provider))
        options.providers()  # a GPU asked for on a host without one fails here, before any model
        return options

    def providers(self) -> list[str]:
        """ONNX Runtime execution providers, best first."""
        available = onnxruntime.get_available_providers()
        cuda = "CUDAExecutionProvider"
        if self.provider == "cuda" and cuda not in available:
            raise ModelLoadError("the CUDA execution provider is not available (install onnxruntime-gpu on a GPU host)")
        if self.provider == "cuda" or (self.provider == "auto" and cuda in available):
            return [cuda, "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]


def _run_options() -> onnxruntime.RunOptions:
    """Every run gives its arena growth back: without it the CPU arena keeps the peak of the largest
    call (three large FillMask calls left 4.5 GB resident, and the next call failed to allocate)."""
    options = onnxruntime.RunOptions()
    options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return options


_RUN_OPTIONS = _run_options()


def _session(path: Path | bytes, options: RuntimeOptions) -> onnxruntime.InferenceSession:
    session_options = onnxruntime.SessionOptions()
    session_options.intra_op_num_threads = options.intra_op_threads
    session_options.graph_optimization_level = _OPTIMIZATION[options.optimization]
    session_options.log_severity_level = 3  # errors only: the reason is reported, not logged twice
    try:
        source = path if isinstance(path, bytes) else str(path)
        return onnxruntime.InferenceSession(source, sess_options=session_options, providers=options.providers())
    except ModelLoadError:
        raise
    except Exception as error:  # noqa: BLE001  # ONNX Runtime raises its own Fail/InvalidGraph/... types
        kind = type(error).__name__
        raise ModelLoadError(f"model.onnx does not load in ONNX Runtime ({kind}); re-export the version") from None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise ModelLoadError(f"{path.name} is missing; re-export the version") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ModelLoadError(f"{path.name} is not JSON") from None
    if not isinstance(document, dict):
        raise ModelLoadError(f"{path.name} must hold a JSON object")
    return document


class LoadedModel:
    """A served version: `run` takes padded ids and mask and returns the named outputs."""

    def __init__(self, directory: Path, options: RuntimeOptions) -> None:
        """Load and check the version in `directory`.

        Raises:
            ModelLoadError: what is wrong with the version, in words.
        """
        model_file = directory / "model.onnx"
        if not model_file.is_file():
            raise ModelLoadError("model.onnx is missing")
        self.session = _session(model_file, options)
        self.providers = tuple(self.session.get_providers())
        inputs = {i.name: i.type for i in self.session.get_inputs()}
        if inputs != dict.fromkeys(INPUTS, "tensor(int64)"):
            raise ModelLoadError(
                f"the graph's inputs are {sorted(inputs)}; a served model takes int64 {' and '.join(INPUTS)}"
            )
        outputs = {o.name for o in self.session.get_outputs()}
        if not {"logits", "cls_embedding"} <= outputs:
            raise ModelLoadError(
                f"the graph's outputs are {sorted(outputs)}; a served model gives {', '.join(OUTPUTS)}"
            )
        self.output_names = tuple(name for name in OUTPUTS if name in outputs)
        # ONNX Runtime computes every output whatever is asked; embeddings need no vocabulary
        # projection, the costliest layer of a small BERT (MiniLM: 20 ms of 128 pieces, 12 without).
        self.encoder = _session(_without_logits(model_file, self.output_names), options)
        try:
            self.vocabulary = WordPieceVocabulary(_tokenizer_json(directory))
        except VocabularyError as error:
            raise ModelLoadError(
                str(error) if str(error).startswith("tokenizer.json") else f"tokenizer.json: {error}"
            ) from None
        special = self.vocabulary.special_tokens
        if special.mask_id < 0:
            raise ModelLoadError("the tokenizer has no mask token ([MASK]); a masked LM needs one")
        self.mask_id = special.mask_id
        self.mask_token = self.vocabulary.pieces[special.mask_id]
        config = _read_json(directory / "config.json")
        self.max_length = int(config.get("max_position_embeddings") or _DEFAULT_MAX_LENGTH)
        # A probe run: the output sizes are only known once the graph runs.
        probe = self.run(np.array([[special.cls_id if special.cls_id >= 0 else 0] * 2], dtype=np.int64), None)
        self.vocab_size = int(probe["logits"].shape[-1])
        self.hidden_size = int(probe["cls_embedding"].shape[-1])
        if self.vocab_size != self.vocabulary.size:
            raise ModelLoadError(
                f"the tokenizer has {self.vocabulary.size} pieces but the model's logits have {self.vocab_size}: "
                "this version's tokenizer is not the model's vocabulary"
            )
        self.special = special.reserved_mask(self.vocab_size)

    @cached_property
    def truncating_tokenizer(self) -> Tokenizer:
        """The tokenizer cutting at max_length with the specials kept, as the trainer cuts texts."""
        tokenizer = Tokenizer.from_str(self.vocabulary.tokenizer_json)
        tokenizer.no_padding()
        tokenizer.enable_truncation(self.max_length)
        return tokenizer

    def run(
        self, input_ids: np.ndarray, attention_mask: np.ndarray | None, outputs: tuple[str, ...] = ()
    ) -> dict[str, np.ndarray]:
        """Run the graph on (B, T) int64 ids and mask (all ones when None); `outputs` empty: all of them.

        Returns logits (B, T, V), cls_embedding (B, H) and last_hidden_state (B, T, H), as asked.
        """
        wanted = list(outputs or self.output_names)
        mask = np.ones_like(input_ids) if attention_mask is None else attention_mask
        session = self.session if "logits" in wanted else self.encoder
        try:
            values = session.run(wanted, {"input_ids": input_ids, "attention_mask": mask}, _RUN_OPTIONS)
        except Exception as error:  # ONNX Runtime raises its own RuntimeException types
            if "alloc" in str(error).lower():
                raise ResourceExhaustedError(
                    f"the model ran out of memory on a batch of {input_ids.shape[0]} x {input_ids.shape[1]} pieces; "
                    "send fewer or shorter texts",
                    reason="OUT_OF_MEMORY",
                ) from None
            raise
        return dict(zip(wanted, values, strict=True))


def _without_logits(model_file: Path, outputs: tuple[str, ...]) -> bytes:
    """The graph cut down to the outputs other than logits (serialised), for a second session.

    Raises:
        ModelLoadError: the graph cannot be cut (it does not parse as ONNX).
    """
    try:
        graph = onnx.load(str(model_file))
        kept = [name for name in outputs if name != "logits"]
        return bytes(onnx.utils.Extractor(graph).extract_model(list(INPUTS), kept).SerializeToString())
    except Exception as error:  # noqa: BLE001  # onnx raises its own checker and decode errors
        kind = type(error).__name__
        raise ModelLoadError(f"model.onnx cannot be cut to its embeddings ({kind}); re-export the version") from None


def _tokenizer_json(directory: Path) -> str:
    """The version's tokenizer.json, checked as the vocab service checks one (WordPiece, ids
    0..V-1, an unknown and a mask token)."""
    path = directory / "tokenizer.json"
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception:  # noqa: BLE001  # the Rust parser raises plain Exception
        missing = "is missing" if not path.is_file() else "does not load as a tokenizers file"
        raise VocabularyError(f"tokenizer.json {missing}") from None
    return canonical_tokenizer_json(tokenizer)
