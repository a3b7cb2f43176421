"""WordPiece vocabularies as `tokenizers` JSON: read, inspect and edit them in place.

A version's vocabulary is the `model.vocab` table of its tokenizer.json. An update edits that
table (a removed piece's id is given to an added piece), rather than using `add_tokens`: added
tokens are matched by a separate pass outside the model, which slows to a crawl at thousands of
tokens and never takes part in WordPiece's longest-match splitting.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
from tokenizers import Tokenizer


class VocabularyError(ValueError):
    """A tokenizer that driftlm cannot manage (not WordPiece, unreadable, inconsistent)."""


def canonical_tokenizer_json(tokenizer: Tokenizer) -> str:
    """The library's own serialisation, without truncation or padding: those are per request.

    Raises:
        VocabularyError: not WordPiece, or not a vocabulary a masked LM can use (see _check_pieces).
    """
    tokenizer.no_truncation()
    tokenizer.no_padding()
    document = json.loads(tokenizer.to_str())
    model = document.get("model") or {}
    if model.get("type") != "WordPiece":
        raise VocabularyError(
            f"driftlm manages WordPiece vocabularies; this tokenizer's model is {model.get('type')!r}"
        )
    _check_pieces(model, document.get("added_tokens") or [])
    return tokenizer.to_str()


def _check_pieces(model: dict[str, Any], added_tokens: list[dict[str, Any]]) -> None:
    """Ids 0..V-1 each used once, an unknown token among the pieces, a mask token among the added.

    Raises:
        VocabularyError: what is missing or wrong, in words.
    """
    vocab: dict[str, int] = model.get("vocab") or {}
    if not vocab:
        raise VocabularyError("the vocabulary has no pieces")
    ids = sorted(vocab.values())
    if ids != list(range(len(ids))):
        gap = next((i for i, value in enumerate(ids) if value != i), len(ids))
        raise VocabularyError(
            f"piece ids must be 0..{len(ids) - 1}, each once; id {gap} is missing or repeated "
            "(embedding rows follow ids, so a gap has no row)"
        )
    unknown = model.get("unk_token")
    if not unknown or unknown not in vocab:
        raise VocabularyError(f"the unknown token {unknown!r} is not one of the pieces; WordPiece needs it")
    if not any(str(token.get("content")) in _ROLE_PIECES["mask"] for token in added_tokens):
        raise VocabularyError(
            "there is no mask token ([MASK] or <mask>) among the special tokens; a masked LM cannot train without one"
        )


# The pieces that play each special role, in BERT's and RoBERTa's spelling.
_ROLE_PIECES = {
    "mask": ("[MASK]", "<mask>"),
    "pad": ("[PAD]", "<pad>"),
    "cls": ("[CLS]", "<s>"),
    "sep": ("[SEP]", "</s>"),
}


@dataclass(frozen=True)
class SpecialTokens:
    """What a vocabulary reserves, by id; -1 for a role it lacks."""

    reserved_ids: tuple[int, ...]
    unknown_id: int
    mask_id: int
    pad_id: int
    cls_id: int
    sep_id: int

    def reserved_mask(self, vocab_size: int) -> np.ndarray:
        """(V,) bool: the reserved pieces, never masked, drawn as replacements or scored."""
        mask = np.zeros(vocab_size, dtype=bool)
        mask[[i for i in self.reserved_ids if 0 <= i < vocab_size]] = True
        return mask


@dataclass(frozen=True)
class WordPieceVocabulary:
    """A parsed tokenizer.json: the piece table and what must never leave it."""

    tokenizer_json: str

    @cached_property
    def document(self) -> dict[str, Any]:
        """The parsed JSON (do not mutate)."""
        return dict(json.loads(self.tokenizer_json))

    @cached_property
    def piece_ids(self) -> dict[str, int]:
        """piece -> id, every piece of the model."""
        return {str(piece): int(index) for piece, index in self.document["model"]["vocab"].items()}

    @cached_property
    def pieces(self) -> list[str]:
        """id -> piece."""
        table = [""] * self.size
        for piece, index in self.piece_ids.items():
            table[index] = piece
        return table

    @property
    def size(self) -> int:
        """Number of pieces."""
        return len(self.piece_ids)

    @property
    def prefix(self) -> str:
        """The continuation prefix, `##` in BERT."""
        return str(self.document["model"].get("continuing_subword_prefix") or "##")

    @property
    def unknown_token(self) -> str:
        """The piece for words that cannot be split, `[UNK]` in BERT."""
        return str(self.document["model"]["unk_token"])

    @property
    def unknown_id(self) -> int:
        """Id of the unknown token."""
        return self.piece_ids[self.unknown_token]

    @cached_property
    def reserved_ids(self) -> frozenset[int]:
        """Ids of the added tokens (specials among them): never removed or reassigned."""
        return frozenset(int(token["id"]) for token in self.document.get("added_tokens", []))

    @cached_property
    def role_pieces(self) -> dict[str, str]:
        """role (unk, mask, pad, cls, sep) -> the piece that plays it, for the roles this vocabulary has."""
        reserved = {str(token["content"]) for token in self.document.get("added_tokens", [])}
        roles = {"unk": self.unknown_token}
        for role, spellings in _ROLE_PIECES.items():
            piece = next((p for p in spellings if p in reserved), None)
            if piece is not None:
                roles[role] = piece
        return roles

    @cached_property
    def special_tokens(self) -> SpecialTokens:
        """The reserved ids and the id of each role, read from the tokenizer's own added tokens."""
        reserved = {str(token["content"]): int(token["id"]) for token in self.document.get("added_tokens", [])}

        def role(name: str) -> int:
            return next((reserved[piece] for piece in _ROLE_PIECES[name] if piece in reserved), -1)

        return SpecialTokens(
            reserved_ids=tuple(sorted(reserved.values())),
            unknown_id=self.unknown_id,
            mask_id=role("mask"),
            pad_id=role("pad"),
            cls_id=role("cls"),
            sep_id=role("sep"),
        )

    @cached_property
    def unreachable(self) -> np.ndarray:
        """(V,) bool: word pieces no text tokenizes to, such as BERT's `[unusedN]` slots (their text
        splits into `[`, `unused`, ...). Continuation pieces count as reachable."""
        tokenizer = Tokenizer.from_str(self.tokenizer_json)
        tokenizer.no_truncation()
        tokenizer.no_padding()
        words = [(index, piece) for index, piece in enumerate(self.pieces) if not piece.startswith(self.prefix)]
        encodings = tokenizer.encode_batch([piece for _, piece in words], add_special_tokens=False)
        unreachable = np.zeros(self.size, dtype=bool)
        for (index, _), encoding in zip(words, encodings, strict=True):
            unreachable[index] = encoding.ids != [index]
        return unreachable

    def is_single_character(self, piece: str) -> bool:
        """A character alone or with the continuation prefix: together they tokenize any text."""
        return len(piece) == 1 or (piece.startswith(self.prefix) and len(piece) == len(self.prefix) + 1)

    @cached_property
    def continuation_mask(self) -> list[bool]:
        """Per id: does the piece continue a word (start with the prefix)?"""
        return [piece.startswith(self.prefix) and len(piece) > len(self.prefix) for piece in self.pieces]

    def decompose(self, piece: str) -> list[int]:
        """The ids this vocabulary splits `piece` into, by WordPiece's greedy longest match.

        A continuation piece (`##xyz`) is split as the rest of a word. [UNK] alone when a
        character has no piece, as WordPiece does.
        """
        continuing = piece.startswith(self.prefix) and len(piece) > len(self.prefix)
        text = piece[len(self.prefix) :] if continuing else piece
        ids: list[int] = []
        start = 0
        while start < len(text):
            for end in range(len(text), start, -1):
                candidate = (self.prefix if start > 0 or continuing else "") + text[start:end]
                if candidate in self.piece_ids:
                    ids.append(self.piece_ids[candidate])
                    start = end
                    break
            else:
                return [self.unknown_id]
        return ids

    def with_swaps(self, swaps: Sequence[tuple[str, str, int]]) -> str:
        """Tokenizer JSON where each (removed piece, added piece, id) gives the id to the added.

        Raises:
            VocabularyError: a removed piece is absent or reserved, an added one already present,
                or an id does not match its removed piece.
        """
        document = json.loads(self.tokenizer_json)
        vocab: dict[str, int] = document["model"]["vocab"]
        for removed, added, index in swaps:
            if vocab.get(removed) != index or index in self.reserved_ids:
                raise VocabularyError(
                    f"cannot remove {removed!r} (id {index}): it is not a removable piece with that id"
                )
            if added in vocab:
                raise VocabularyError(f"cannot add {added!r}: the vocabulary has it already")
            del vocab[removed]
            vocab[added] = index
        try:
            return canonical_tokenizer_json(Tokenizer.from_str(json.dumps(document, ensure_ascii=False)))
        except Exception as error:  # the Rust parser raises plain Exception
            raise VocabularyError(f"the updated tokenizer does not load ({error})") from error
