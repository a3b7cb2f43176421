"""Numba's disk cache on a read-only root: the kernels still compile, and a seed from the image is used."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from driftlm.kernels.disk_cache import choose_cache_folder, seed_cache

SOURCE = Path("/src/kernels")
FALLBACK = Path("/tmp/fallback")


def writable_only(*folders: Path) -> Callable[[Path], bool]:
    return lambda folder: folder in folders


def test_a_writable_configured_folder_is_kept() -> None:
    chosen = choose_cache_folder("/cache", SOURCE, FALLBACK, writable_only(Path("/cache"), FALLBACK))
    assert chosen == Path("/cache")


def test_an_unwritable_configured_folder_falls_back() -> None:
    assert choose_cache_folder("/opt/cache", SOURCE, FALLBACK, writable_only(FALLBACK)) == FALLBACK


def test_without_configuration_numba_keeps_its_own_choice_where_it_works() -> None:
    chosen = choose_cache_folder("", SOURCE, FALLBACK, writable_only(SOURCE / "__pycache__", FALLBACK))
    assert chosen == SOURCE


def test_a_read_only_source_tree_falls_back() -> None:
    assert choose_cache_folder("", SOURCE, FALLBACK, writable_only(FALLBACK)) == FALLBACK


def test_nothing_writable_means_no_cache() -> None:
    assert choose_cache_folder("/opt/cache", SOURCE, FALLBACK, writable_only()) is None


def test_a_seed_fills_an_empty_folder_and_never_overwrites(tmp_path: Path) -> None:
    seed = tmp_path / "seed" / "kernels"
    seed.mkdir(parents=True)
    (seed / "draw._keys_of-102.py311.nbi").write_bytes(b"from the image")
    folder = tmp_path / "cache"
    seed_cache(tmp_path / "seed", folder)
    assert (folder / "kernels" / "draw._keys_of-102.py311.nbi").read_bytes() == b"from the image"
    (seed / "draw._keys_of-102.py311.nbi").write_bytes(b"newer seed")
    seed_cache(tmp_path / "seed", folder)
    assert (folder / "kernels" / "draw._keys_of-102.py311.nbi").read_bytes() == b"from the image"
    seed_cache(tmp_path / "missing", tmp_path / "other")
    assert not (tmp_path / "other").exists()


_PROBE = """
import json, numba, numpy as np
from driftlm import kernels
from driftlm.kernels import compiled, disk_cache, draw
out = kernels.draw_without_replacement(np.ones(8), 3, 7).tolist()
found = vars(draw).values()
twins = [c for t in found if isinstance(t, compiled.Twin) for c in (t.serial, t.parallel)]
dispatchers = [d for d in found if isinstance(d, numba.core.registry.CPUDispatcher)] + twins
print(json.dumps({
    "draw": out,
    "cache_enabled": disk_cache.CACHE_ENABLED,
    "cache_dir": numba.config.CACHE_DIR,
    "hits": sum(sum(d.stats.cache_hits.values()) for d in dispatchers),
    "misses": sum(sum(d.stats.cache_misses.values()) for d in dispatchers),
}))
"""


def _probe(env: dict[str, str], user: list[str]) -> dict[str, object]:
    done = subprocess.run(
        [*user, sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def _nobody_can_import_driftlm() -> bool:
    """Whether an unprivileged user can read this checkout and its environment at all."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return False
    # Read the module's source and import the environment's packages, not the module itself: a
    # module that fails to import must fail the test below, not skip it.
    source = Path(__file__).resolve().parents[2] / "kernels" / "disk_cache.py"
    readable = f"import numba, numpy; open({str(source)!r}, 'rb').read()"
    probe = subprocess.run(
        [*NOBODY, sys.executable, "-c", readable],
        capture_output=True,
        timeout=120,
        check=False,
        env={**os.environ, "HOME": "/nonexistent"},
    )
    return probe.returncode == 0


@pytest.mark.skipif(
    not _nobody_can_import_driftlm(),
    reason="needs root, setpriv, and a checkout an unprivileged user can read (to run the kernels as "
    "a user who cannot write the cache or the tree)",
)
def test_kernels_run_as_an_unprivileged_user_on_a_read_only_cache_and_use_its_seed() -> None:
    """The container's case: NUMBA_CACHE_DIR holds kernels compiled at build time but cannot be
    written, the source tree and the home folder neither; the temporary folder can."""
    seed = Path(tempfile.mkdtemp(prefix="numba-seed-"))
    temporary = Path(tempfile.mkdtemp(prefix="numba-tmp-"))
    try:
        seed.chmod(0o755)
        temporary.chmod(0o777)
        base = {k: v for k, v in os.environ.items() if not k.startswith(("NUMBA_", "DRIFTLM_"))}
        built = _probe({**base, "NUMBA_CACHE_DIR": str(seed)}, [])
        for path in seed.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        env = {**base, "NUMBA_CACHE_DIR": str(seed), "HOME": "/nonexistent", "TMPDIR": str(temporary)}
        served = _probe(env, NOBODY)
        assert served["draw"] == built["draw"]
        assert served["cache_enabled"] is True
        assert str(served["cache_dir"]).startswith(str(temporary))
        assert served["hits"] > 0, "the precompiled kernels were compiled again instead of loaded"
        assert served["misses"] == 0
    finally:
        shutil.rmtree(seed, ignore_errors=True)
        shutil.rmtree(temporary, ignore_errors=True)
