"""uv.lock is what `make install`, CI and the image install: it must hold every dependency of pyproject.toml."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
STALE = "uv.lock is out of date with pyproject.toml: run `make lock` and commit uv.lock"


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def lock() -> dict:
    return tomllib.loads((ROOT / "uv.lock").read_text())


def declared() -> dict[str, list[Requirement]]:
    """The requirements of the runtime (key "") and of each extra."""
    spec = project()
    groups = {"": spec["dependencies"], **spec.get("optional-dependencies", {})}
    return {group: [Requirement(line) for line in lines] for group, lines in groups.items()}


def extra_of(marker: str) -> str:
    match = re.search(r"extra == '([^']+)'", marker)
    return match[1] if match else ""


def locked_versions() -> dict[str, list[Version]]:
    versions: dict[str, list[Version]] = {}
    for package in lock()["package"]:
        versions.setdefault(canonicalize_name(package["name"]), []).append(Version(package["version"]))
    return versions


def test_every_declared_dependency_is_locked_at_a_version_it_allows():
    versions = locked_versions()
    for group, requirements in declared().items():
        for requirement in requirements:
            name = canonicalize_name(requirement.name)
            assert name in versions, f"{requirement} ({group or 'runtime'}) is missing from uv.lock. {STALE}"
            for version in versions[name]:
                assert requirement.specifier.contains(version, prereleases=True), (
                    f"uv.lock pins {name} {version}, outside {requirement}. {STALE}"
                )


def test_the_lock_was_resolved_from_this_pyproject():
    """uv records the requirements it resolved; any difference means the lock predates an edit."""
    root = next(p for p in lock()["package"] if p["name"] == project()["name"])
    recorded = {
        (
            canonicalize_name(entry["name"]),
            frozenset(entry.get("extras", ())),
            SpecifierSet(entry.get("specifier", "")),
            extra_of(entry.get("marker", "")),
        )
        for entry in root["metadata"]["requires-dist"]
    }
    wanted = {
        (canonicalize_name(r.name), frozenset(r.extras), r.specifier, group)
        for group, requirements in declared().items()
        for r in requirements
    }
    assert wanted - recorded == set(), STALE
    assert recorded - wanted == set(), STALE
