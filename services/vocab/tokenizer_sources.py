"""Where a base vocabulary comes from: a Hugging Face tokenizer directory, or training on a corpus."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import BertWordPieceTokenizer, Tokenizer, processors

from driftlm.services.core.vocabulary import VocabularyError, canonical_tokenizer_json

# The special tokens of a BERT-style vocabulary trained here, in id order.
BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
DEFAULT_VOCAB_SIZE = 30_522


def load_tokenizer_directory(directory: Path) -> str:
    """Canonical tokenizer JSON from a Hugging Face directory: tokenizer.json, else vocab.txt.

    With only vocab.txt, the tokenizer is BERT's (BertNormalizer, BertPreTokenizer, [CLS] $A [SEP]),
    lowercasing unless tokenizer_config.json says `do_lower_case: false`.

    Raises:
        VocabularyError: neither file is there, a file is malformed (not JSON, not UTF-8, empty), or
            the tokenizer is not a WordPiece vocabulary a masked LM can use. The message names the
            file, never its content.
    """
    tokenizer_file = directory / "tokenizer.json"
    if tokenizer_file.is_file():
        try:
            return canonical_tokenizer_json(Tokenizer.from_file(str(tokenizer_file)))
        except VocabularyError:
            raise
        except Exception as error:  # the Rust parser raises plain Exception for any bad JSON
            raise VocabularyError(f"{tokenizer_file.name} is not a tokenizers JSON file") from error
    vocab_file = directory / "vocab.txt"
    if not vocab_file.is_file():
        raise VocabularyError(f"{directory} has neither tokenizer.json nor vocab.txt")
    try:
        lines = vocab_file.read_bytes().decode("utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise VocabularyError(f"vocab.txt is not UTF-8 (byte {error.start})") from None
    if not any(line.strip() for line in lines):
        raise VocabularyError("vocab.txt is empty")
    lowercase = _lowercase(directory / "tokenizer_config.json")
    try:
        bert = BertWordPieceTokenizer(str(vocab_file), lowercase=lowercase)
    except Exception as error:  # tokenizers' own parse errors
        raise VocabularyError("vocab.txt cannot be read as a WordPiece vocabulary") from error
    return canonical_tokenizer_json(bert._tokenizer)


def _lowercase(config_file: Path) -> bool:
    """tokenizer_config.json's do_lower_case (true when absent)."""
    if not config_file.is_file():
        return True
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise VocabularyError("tokenizer_config.json is not JSON") from None
    if not isinstance(config, dict):
        raise VocabularyError("tokenizer_config.json must hold a JSON object")
    return bool(config.get("do_lower_case", True))


def train_tokenizer(texts: Iterable[str], *, vocab_size: int, cased: bool) -> str:
    """Train a BERT-style WordPiece tokenizer on `texts`; canonical tokenizer JSON."""
    bert = BertWordPieceTokenizer(lowercase=not cased)
    bert.train_from_iterator(
        iter(texts), vocab_size=vocab_size, min_frequency=2, special_tokens=list(BERT_SPECIALS), show_progress=False
    )
    # Trained without a vocabulary, the tokenizer has no post-processor: texts would get no [CLS]
    # and [SEP], though every BERT (and TokenizeTexts' contract) expects them.
    tokenizer = bert._tokenizer
    tokenizer.post_processor = processors.BertProcessing(
        ("[SEP]", tokenizer.token_to_id("[SEP]")), ("[CLS]", tokenizer.token_to_id("[CLS]"))
    )
    return canonical_tokenizer_json(tokenizer)
