"""Exporting a checkpoint as ONNX into a model repository: the store's, one under the write roots,
or an object store (mirrored locally, then uploaded); failures as driftlm errors."""

from __future__ import annotations

import shutil
import threading
from dataclasses import replace
from pathlib import Path

from driftlm.services.core.artifacts import file_sha256, is_remote
from driftlm.services.core.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    ResourceExhaustedError,
)
from driftlm.services.core.model_repository import MAX_VERSION, ModelShapeMismatchError, is_model_name
from driftlm.services.core.paths import FileRoots

from . import remote_export
from .checkpoints import CheckpointStore
from .export import ExportResult, earlier_export, export_onnx

# The model an export goes to when the request names none.
DEFAULT_MODEL_NAME = "driftlm"


class Exporter:
    """ExportOnnx over a checkpoint store."""

    def __init__(self, checkpoints: CheckpointStore, roots: FileRoots, default_repository: Path) -> None:
        self.checkpoints = checkpoints
        self.roots = roots
        self._default_repository = default_repository
        self._exporting = threading.Lock()

    def export_onnx(
        self, checkpoint_id: str, repository: str = "", model_name: str = "", version: int = 0
    ) -> ExportResult:
        """ONNX (fp32 and int8) with the tokenizer, as a new version in a model repository (Triton's
        layout); an empty repository means the store's, an empty name `driftlm`, version 0 the next."""
        name = model_name or DEFAULT_MODEL_NAME
        if not is_model_name(name):
            raise InvalidArgumentError(
                "model_name", "must be letters, digits, '_', '.' or '-' (at most 64), not a path"
            )
        if not 0 <= version <= MAX_VERSION:
            raise InvalidArgumentError("version", f"must be in [0, {MAX_VERSION}] (0 means the next), got {version}")
        if is_remote(repository):
            return self._export_to_object_store(checkpoint_id, repository, name, version)
        target = self.roots.writable(repository, "destination.uri") if repository else self._default_repository
        result = self._export(checkpoint_id, target, name, version)
        return replace(
            result,
            model_sha256=file_sha256(result.directory / "model.onnx"),
            quantized_model_sha256=file_sha256(result.quantized_directory / "model.onnx"),
        )

    def _export_to_object_store(self, checkpoint_id: str, uri: str, name: str, version: int) -> ExportResult:
        """Export into a local mirror of the remote repository, then upload the new versions."""
        filesystem, root, clean = self.roots.remote.writable_filesystem(uri, "destination.uri")
        staging, _ = self.roots.staged_writable(uri, "destination.uri")
        names = (name, f"{name}_int8")
        try:
            existing = remote_export.mirror(filesystem, root, clean, names, staging)
            result = self._export(checkpoint_id, staging, name, version)
            hashes = (
                file_sha256(result.directory / "model.onnx"),
                file_sha256(result.quantized_directory / "model.onnx"),
            )
            remote_export.upload(filesystem, root, clean, staging, names, result.version, existing)
        finally:
            shutil.rmtree(staging.parent, ignore_errors=True)
        return replace(result, published_repository=clean, model_sha256=hashes[0], quantized_model_sha256=hashes[1])

    def _export(self, checkpoint_id: str, target: Path, name: str, version: int) -> ExportResult:
        with self._exporting:  # a retry arriving while the first attempt still writes waits for it
            return self._export_once(checkpoint_id, target, name, version)

    def _export_once(self, checkpoint_id: str, target: Path, name: str, version: int) -> ExportResult:
        earlier = earlier_export(target, name, version, checkpoint_id) if version else None
        if earlier is not None:
            return earlier  # a retry of an export that finished: the same answer
        try:
            return export_onnx(
                self.checkpoints.model(checkpoint_id),
                self.checkpoints.tokenizer_json(checkpoint_id),
                target,
                name,
                version,
                checkpoint_id=checkpoint_id,
            )
        except FileExistsError as error:
            raise AlreadyExistsError(
                f"version {version} of model {name} exists in the repository; versions are never rewritten "
                "(0 takes the next)"
            ) from error
        except ModelShapeMismatchError as error:
            raise FailedPreconditionError(str(error), reason="MODEL_SHAPE_MISMATCH") from error
        except MemoryError as error:
            raise ResourceExhaustedError(f"out of memory while exporting {checkpoint_id}") from error
