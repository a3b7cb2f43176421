"""The Python VocabClient against a real server: the calls a pipeline makes, end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from driftlm.services.runtime.config import ServeConfig
from driftlm.services.vocab.client import VocabClient
from driftlm.services.vocab.server import create_server

from .planted import EMERGING, VANISHING, planted_base_directory, planted_slice


def test_the_update_loop_through_the_client(tmp_path: Path, test_roots: dict[str, Any]) -> None:
    server, port = create_server("127.0.0.1:0", ServeConfig(store=tmp_path / "store", **test_roots))
    try:
        with VocabClient(f"127.0.0.1:{port}", chunk_bytes=2_000) as client:
            base = client.register_directory(planted_base_directory(tmp_path / "base"))
            texts = planted_slice(np.random.default_rng(0), EMERGING)
            streamed = client.observe(base.version_id, texts, slice_label="2024")  # many small chunks
            corpus = tmp_path / "2024.jsonl.gz"
            import gzip

            corpus.write_bytes(gzip.compress("\n".join(json.dumps({"body": t}) for t in texts).encode()))
            from_file = client.observe(base.version_id, corpus_path=corpus, text_field="body", slice_label="2024")
            assert streamed.observation_id == from_file.observation_id and streamed.text_count == len(texts)
            proposal = client.propose(base.version_id, [streamed.observation_id], k=4)
            updated = client.commit(proposal.proposal_id, display_name="2024")
            assert [v.version_id for v in client.list_versions()] == [updated.version_id, base.version_id]
            assert sorted(p.piece for p in client.get(updated.version_id).change.removed) == sorted(VANISHING)
            batch = client.tokenize(updated.version_id, ["the glimmerfox", "of"], pad=True)
            assert batch["input_ids"].shape == (2, 4) and batch["lengths"].tolist() == [4, 3]
            assert client.drift(streamed.observation_id, streamed.observation_id).top_n_overlap == 1.0
            assert client.export(updated.version_id, tmp_path / "hf").endswith("/hf")
    finally:
        server.stop(grace=None)


def test_the_vocab_client_needs_no_tokenizers() -> None:
    """The trainer and the pipeline call vocab through the client; it must not need the service's extra."""
    code = "import sys, driftlm.services.vocab.client; assert 'tokenizers' not in sys.modules, 'tokenizers imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
