"""ONNX export into a model repository: fp32 for exactness, a dynamically quantised int8 copy for
CPU serving, as two models of the repository (`<name>` and `<name>_int8`) at the same version.

The exported graph takes input_ids and attention_mask (int64, dynamic batch and sequence) and
returns every position's logits and the [CLS] hidden state. Both files are checked against
PyTorch on sample inputs before a version is published (core/model_repository.py has the layout).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedModel

from driftlm.services.core import store
from driftlm.services.core.errors import FailedPreconditionError
from driftlm.services.core.model_repository import INPUTS, MAX_VERSION, OUTPUTS, ModelShape, prepare_model, versions
from driftlm.services.core.tokenizer_files import write_tokenizer_files
from driftlm.services.core.vocabulary import WordPieceVocabulary

from .models import encode, mlm_head


class _ExportedModel(nn.Module):
    """(input_ids, attention_mask) -> (logits (B, T, V), cls_embedding (B, H), last_hidden_state (B, T, H))."""

    def __init__(self, model: PreTrainedModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        hidden = encode(self.model, input_ids, attention_mask)
        head = mlm_head(self.model)
        logits = (
            head(hidden) if head is not None else self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        )
        return logits, hidden[:, 0], hidden


@dataclass(frozen=True)
class ExportResult:
    """What was written and how close it is to PyTorch."""

    repository: Path
    model_name: str
    quantized_model_name: str
    version: int
    max_abs_diff: float
    quantized_max_abs_diff: float
    quantized_top1_agreement: float
    # The object-store repository the versions were uploaded to (`repository` was a local staging
    # copy, since removed); empty for a local repository.
    published_repository: str = ""
    # Hex SHA-256 of the fp32 and int8 model.onnx files.
    model_sha256: str = ""
    quantized_model_sha256: str = ""

    @property
    def directory(self) -> Path:
        """The fp32 version's directory."""
        return self.repository / self.model_name / str(self.version)

    @property
    def quantized_directory(self) -> Path:
        """The int8 version's directory."""
        return self.repository / self.quantized_model_name / str(self.version)


def _sample_inputs(vocab_size: int, seed: int, shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, vocab_size, shape, generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[-1, shape[1] // 2 :] = 0  # a padded row
    return input_ids, attention_mask


def export_onnx(
    model: PreTrainedModel,
    tokenizer_json: str,
    repository: Path,
    name: str,
    version: int = 0,
    *,
    opset: int = 17,
    checkpoint_id: str = "",
) -> ExportResult:
    """Publish version `version` (0: the next) of models `name` (fp32) and `name`_int8 in `repository`;
    each version's export.json names the checkpoint (see earlier_export).

    Raises:
        FileExistsError: that version exists already.
        ModelShapeMismatchError: the models hold versions of another vocabulary or hidden size.
    """
    import onnxruntime
    from onnxruntime.quantization import QuantType, quantize_dynamic

    shape = ModelShape(vocab_size=int(model.config.vocab_size), hidden_size=int(model.config.hidden_size))
    names = (name, f"{name}_int8")
    for model_name in names:
        prepare_model(repository, model_name, shape)
    version = version or max((v for n in names for v in versions(repository, n)), default=0) + 1
    if version > MAX_VERSION:
        raise FailedPreconditionError(
            f"model {name!r} has reached version {MAX_VERSION}, the largest there is; export under another name"
        )
    if any((repository / model_name / str(version)).exists() for model_name in names):
        raise FileExistsError(repository / name / str(version))
    model = model.cpu().eval()
    wrapped = _ExportedModel(model).eval()
    input_ids, attention_mask = _sample_inputs(model.config.vocab_size, seed=0, shape=(3, 17))
    with tempfile.TemporaryDirectory() as scratch:
        fp32 = Path(scratch) / "model.onnx"
        with torch.no_grad(), warnings.catch_warnings():
            # The tracer warns about Python-side shape checks in transformers; the checks below
            # run the graph on other shapes to prove it generalises.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapped,
                (input_ids, attention_mask),
                str(fp32),
                input_names=list(INPUTS),
                output_names=list(OUTPUTS),
                dynamic_axes={
                    "input_ids": {0: "batch", 1: "sequence"},
                    "attention_mask": {0: "batch", 1: "sequence"},
                    "logits": {0: "batch", 1: "sequence"},
                    "cls_embedding": {0: "batch"},
                    "last_hidden_state": {0: "batch", 1: "sequence"},
                },
                opset_version=opset,
                dynamo=False,
            )
        int8 = Path(scratch) / "model.int8.onnx"
        quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8, per_channel=True)
        # Checked on other shapes than the traced one: the axes must really be dynamic.
        samples = [_sample_inputs(model.config.vocab_size, seed=1, shape=shape) for shape in ((2, 9), (5, 40))]
        with torch.no_grad():
            references = [wrapped(ids, mask)[0].numpy() for ids, mask in samples]
        results = []
        for path in (fp32, int8):
            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            worst, agree, total = 0.0, 0, 0
            for (ids, mask), reference in zip(samples, references, strict=True):
                logits = session.run(["logits"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
                real = mask.numpy().astype(bool)
                worst = max(worst, float(np.abs(logits - reference)[real].max()))
                agree += int((logits.argmax(-1) == reference.argmax(-1))[real].sum())
                total += int(real.sum())
            results.append((worst, agree / total))
        report = {
            "checkpoint_id": checkpoint_id,
            "inputs": list(INPUTS),
            "outputs": list(OUTPUTS),
            "opset": opset,
            "max_abs_diff": results[0][0],
            "quantized_max_abs_diff": results[1][0],
            "quantized_top1_agreement": results[1][1],
        }
        vocabulary = WordPieceVocabulary(tokenizer_json)
        positions = int(getattr(model.config, "max_position_embeddings", 512))
        for model_name, onnx_file in zip(names, (fp32, int8), strict=True):
            with store.staged_directory(repository / model_name) as temporary:
                shutil.copy(onnx_file, temporary / "model.onnx")
                write_tokenizer_files(vocabulary, temporary, model_max_length=positions)
                model.config.to_json_file(str(temporary / "config.json"))
                (temporary / "export.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
                store.publish_directory(temporary, repository / model_name / str(version))
    return ExportResult(repository, names[0], names[1], version, results[0][0], results[1][0], results[1][1])


def earlier_export(repository: Path, name: str, version: int, checkpoint_id: str) -> ExportResult | None:
    """The result of an earlier export of `checkpoint_id` as this version of both models, read from
    their export.json files; None when the version holds something else (or only one of the two)."""
    names = (name, f"{name}_int8")
    reports = []
    for model_name in names:
        path = repository / model_name / str(version) / "export.json"
        try:
            reports.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            return None
    if not checkpoint_id or any(r.get("checkpoint_id") != checkpoint_id for r in reports):
        return None
    first = reports[0]
    return ExportResult(
        repository,
        names[0],
        names[1],
        version,
        float(first["max_abs_diff"]),
        float(first["quantized_max_abs_diff"]),
        float(first["quantized_top1_agreement"]),
    )
