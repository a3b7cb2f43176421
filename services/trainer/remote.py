"""The trainer's peers over gRPC: the vocab service, and sampling remote or in-process."""

from __future__ import annotations

import threading
from collections import OrderedDict

import grpc

from driftlm.services.core.vocabulary import SpecialTokens
from driftlm.services.runtime.errors import peer_failure
from driftlm.services.runtime.security import PLAINTEXT, ChannelSecurity
from driftlm.services.sampling.client import SamplingClient, in_process
from driftlm.services.vocab.client import VocabClient

from .peers import AddedPiece, Sampler, VocabVersion

# Versions are immutable, so any number could be kept; a tokenizer.json is up to a few MB.
_CACHED_VERSIONS = 32


class RemoteVocab:
    """VocabPeer over gRPC: versions fetched once and kept, failures as driftlm errors."""

    def __init__(self, endpoint: str, *, security: ChannelSecurity = PLAINTEXT, timeout_s: float = 120.0) -> None:
        self._endpoint = endpoint
        self._client = VocabClient(endpoint, security=security, timeout_s=timeout_s)
        self._lock = threading.Lock()
        self._versions: OrderedDict[str, VocabVersion] = OrderedDict()

    def version(self, version_id: str) -> VocabVersion:
        """The version (NotFoundError when the service has none; UnavailableError when unreachable)."""
        with self._lock:
            if version_id in self._versions:
                self._versions.move_to_end(version_id)
                return self._versions[version_id]
        try:
            message = self._client.get(version_id, include_tokenizer_json=True)
        except grpc.RpcError as error:
            raise peer_failure("vocab", self._endpoint, error) from error
        special = message.special_tokens
        version = VocabVersion(
            version_id=message.version_id,
            parent_id=message.parent_id,
            size=message.size,
            tokenizer_json=message.tokenizer_json,
            added=tuple(AddedPiece(p.id, tuple(p.parent_decomposition)) for p in message.change.added),
            special=SpecialTokens(
                reserved_ids=tuple(special.reserved_ids),
                unknown_id=special.unknown_id,
                mask_id=special.mask_id,
                pad_id=special.pad_id,
                cls_id=special.cls_id,
                sep_id=special.sep_id,
            ),
        )
        with self._lock:
            self._versions[version_id] = version
            while len(self._versions) > _CACHED_VERSIONS:
                self._versions.popitem(last=False)
        return version

    def close(self) -> None:
        """Close the channel."""
        self._client.close()


def sampler_for(endpoint: str, *, security: ChannelSecurity = PLAINTEXT, timeout_s: float = 600.0) -> Sampler:
    """The sampling service at `endpoint`, or its functions in-process (needs Numba) when it is empty."""
    if endpoint:
        return SamplingClient(endpoint, security=security, timeout_s=timeout_s)
    return in_process()
