"""A tiny BERT on a small WordPiece vocabulary, as a Hugging Face directory: the pipeline's base in tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import BertConfig, BertForMaskedLM, BertModel

from driftlm.loop.drifting_stream import generate_stream
from driftlm.services.vocab.tokenizer_sources import train_tokenizer


def tiny_base_model(directory: Path, *, with_head: bool = True) -> Path:
    """A 2-layer BERT with a 300-piece vocabulary trained on the stream's first year; without_head,
    the encoder alone, as a sentence encoder is saved."""
    first_year = [r["text"] for r in generate_stream(texts_per_period=300, seed=11) if r["time"].startswith("2016")]
    tokenizer_json = train_tokenizer(first_year, vocab_size=300, cased=False)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
    import json

    size = len(json.loads(tokenizer_json)["model"]["vocab"])
    config = BertConfig(
        vocab_size=size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    (BertForMaskedLM(config) if with_head else BertModel(config)).save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_base_model(tmp_path_factory.mktemp("tiny-base"))
