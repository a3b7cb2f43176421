"""A version as a Hugging Face tokenizer directory that `AutoTokenizer.from_pretrained` loads offline."""

from __future__ import annotations

import json
from pathlib import Path

from . import store
from .vocabulary import WordPieceVocabulary


def write_tokenizer_files(vocabulary: WordPieceVocabulary, directory: Path, *, model_max_length: int = 512) -> None:
    """Write tokenizer.json, tokenizer_config.json, special_tokens_map.json and vocab.txt into
    `directory` (which exists): what `AutoTokenizer.from_pretrained` needs offline."""
    normalizer = vocabulary.document.get("normalizer") or {}
    # transformers names each role `<role>_token`.
    specials = {f"{role}_token": piece for role, piece in vocabulary.role_pieces.items()}
    config = {
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": bool(normalizer.get("lowercase", False)),
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": True,
        **specials,
    }
    (directory / "tokenizer.json").write_text(vocabulary.tokenizer_json, encoding="utf-8")
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (directory / "special_tokens_map.json").write_text(json.dumps(specials, indent=2), encoding="utf-8")
    (directory / "vocab.txt").write_text("".join(piece + "\n" for piece in vocabulary.pieces), encoding="utf-8")


def export_directory(vocabulary: WordPieceVocabulary, destination: Path, *, model_max_length: int = 512) -> Path:
    """The tokenizer files in a new directory, which appears whole or not at all.

    Raises FileExistsError when it exists.
    """
    if destination.exists():
        raise FileExistsError(destination)
    with store.staged_directory(destination.parent) as temporary:
        write_tokenizer_files(vocabulary, temporary, model_max_length=model_max_length)
        store.publish_directory(temporary, destination)
    return destination
