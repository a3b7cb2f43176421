"""Numba's on-disk cache, made to work where the root file system is read-only.

`cache=True` needs a folder it can write: NUMBA_CACHE_DIR, else the source tree, else the home
folder. In a container with a read-only root none of them is, and Numba then refuses to compile at
all ("no locator available"), so the service crash-loops. Importing this module picks a folder that
works before any kernel is decorated: the configured one if writable, else one under the temporary
folder, and as a last resort no cache (each start compiles again). A read-only folder of kernels
compiled at image build time (DRIFTLM_NUMBA_CACHE_SEED, or a configured NUMBA_CACHE_DIR that cannot
be written) is copied into the chosen folder, so the first request pays no compilation.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numba
from numba.core import config as numba_config

CACHE_SEED_ENV = "DRIFTLM_NUMBA_CACHE_SEED"

_LOG = logging.getLogger(__name__)


def is_writable_folder(folder: Path) -> bool:
    """Whether files can be created in `folder` (made if missing), the test Numba itself applies."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def choose_cache_folder(
    configured: str, source_folder: Path, fallback: Path, writable: Callable[[Path], bool]
) -> Path | None:
    """The folder to cache in; `source_folder` when Numba's own choice works; None when none does."""
    candidates = [Path(configured)] if configured else [source_folder / "__pycache__"]
    for folder in [*candidates, fallback]:
        if writable(folder):
            return folder if folder != source_folder / "__pycache__" else source_folder
    return None


def seed_cache(seed: Path, folder: Path) -> None:
    """Copy precompiled kernels from `seed` into an empty cache `folder`; never fails the import."""
    if not seed.is_dir() or seed.resolve() == folder.resolve() or any(folder.rglob("*.nbi")):
        return
    try:
        shutil.copytree(seed, folder, dirs_exist_ok=True)
    except OSError as error:
        _LOG.warning("numba cache seed not copied; kernels compile on first use", extra={"reason": str(error)})


def _configure() -> bool:
    """Point Numba at a usable cache folder; False when there is none and caching must be off."""
    configured: str = numba_config.CACHE_DIR  # type: ignore[attr-defined]  # set from the environment
    source_folder = Path(__file__).resolve().parent
    fallback = Path(tempfile.gettempdir()) / f"driftlm-numba-cache-{os.getuid()}"
    folder = choose_cache_folder(configured, source_folder, fallback, is_writable_folder)
    if folder is None:
        _LOG.warning("no writable folder for numba's cache; kernels compile at every start")
        return False
    if folder != source_folder:
        if str(folder) != configured:
            _LOG.info("numba cache folder not writable, using another", extra={"folder": str(folder)})
        numba_config.CACHE_DIR = str(folder)  # type: ignore[attr-defined]
        seeds = [os.environ.get(CACHE_SEED_ENV, ""), configured]
        for seed in filter(None, seeds):
            seed_cache(Path(seed), folder)
    return True


CACHE_ENABLED = _configure()


def cached_njit(**options: Any) -> Callable[[Callable[..., Any]], Any]:
    """`numba.njit` with the disk cache wherever one can be written."""
    return numba.njit(cache=CACHE_ENABLED, **options)  # type: ignore[no-any-return]
