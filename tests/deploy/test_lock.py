"""deploy/constraints.txt is what `make setup`, CI and every image install: the versions the tests ran
with, so that a release on PyPI between two runs can neither change what is tested nor send pip's
resolver backtracking for an hour. These checks fail when pyproject.toml and the lock drift apart
(a range the lock no longer satisfies: run `make lock`) or when an install would ignore it."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "deploy" / "constraints.txt"
# What the images and `make setup` evaluate markers against: CPython 3.11 on Linux x86_64.
TARGET = {"python_version": "3.11", "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64"}


def locked() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in LOCK.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, _, version = line.partition("==")
        assert version, f"{LOCK.name}: {line!r} is not an exact pin"
        pins[canonicalize_name(name)] = Version(version)
    return pins


def declared() -> list[Requirement]:
    """Every requirement pyproject.toml names, core and extras, other than driftlm's own extras."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    texts = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        texts.extend(extra)
    requirements = [Requirement(text) for text in texts]
    return [r for r in requirements if canonicalize_name(r.name) != "driftlm"]


def test_every_declared_requirement_is_locked_within_its_range() -> None:
    pins = locked()
    outside = []
    for requirement in declared():
        if requirement.marker is not None and not requirement.marker.evaluate(TARGET):
            continue
        pin = pins.get(canonicalize_name(requirement.name))
        if pin is None or not requirement.specifier.contains(pin, prereleases=True):
            outside.append(f"{requirement} (locked: {pin})")
    assert not outside, f"pyproject.toml and {LOCK.name} disagree; run `make lock`: {outside}"


def test_the_torch_pin_is_the_makefiles_and_fits_cpu_and_cuda_builds() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    match = re.search(r"^TORCH_PIN := torch==(\S+)$", makefile, re.MULTILINE)
    assert match is not None
    pin = locked()["torch"]
    assert pin == Version(match.group(1))
    assert pin.local is None, "a +cpu or +cu label would refuse the other build"
    for build in (f"{pin}+cpu", f"{pin}+cu128"):
        assert SpecifierSet(f"=={pin}").contains(Version(build))


def test_this_environment_is_the_locked_one() -> None:
    """What `make setup` installed: a package here at another version than the lock's means the tests
    are not testing what CI and the images install."""
    pins = locked()
    differs = []
    for distribution in metadata.distributions():
        name = canonicalize_name(distribution.metadata["Name"])
        pin = pins.get(name)
        if pin is not None and not SpecifierSet(f"=={pin}").contains(Version(distribution.version), prereleases=True):
            differs.append(f"{name} {distribution.version} (locked: {pin})")
    assert not differs, f"run `make setup` (the lock changed since this environment was built): {differs}"


def test_every_install_goes_through_the_lock() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    installs = [line for line in makefile.splitlines() if "pip install" in line and "-e " in line]
    assert installs and all("-c $(LOCK)" in line for line in installs)
    assert "LOCK := deploy/constraints.txt" in makefile
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text(encoding="utf-8")
    script = (ROOT / "deploy" / "pip-install.sh").read_text(encoding="utf-8")
    copied = re.search(r"^COPY deploy/constraints\.txt (\S+)$", dockerfile, re.MULTILINE)
    assert copied is not None
    assert f"export PIP_CONSTRAINT={copied.group(1)}" in script
    assert "pip install" not in dockerfile.replace("pip-install", ""), "an image install that skips the lock"
