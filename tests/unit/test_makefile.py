"""`make` (or `make help`) lists every target of the Makefile with what its `##` comment says."""

from __future__ import annotations

import re
import subprocess

from tests.conftest import ROOT


def make(*args: str) -> str:
    result = subprocess.run(
        ["make", "--no-print-directory", *args], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def phony_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return {target for line in re.findall(r"^\.PHONY:(.*)$", text, re.MULTILINE) for target in line.split()}


def listed(output: str) -> dict[str, str]:
    """Target -> its text, the wrapped lines joined."""
    targets: dict[str, str] = {}
    current = ""
    for line in output.splitlines():
        if line.startswith("  ") and not line.startswith("   "):
            current, _, text = line.strip().partition(" ")
            targets[current] = text.strip()
        else:
            targets[current] += " " + line.strip()
    return targets


def test_make_alone_lists_the_targets():
    assert make() == make("help")


def test_every_target_is_listed_with_its_comment():
    targets = listed(make("help"))
    assert set(targets) == phony_targets()
    assert all(targets.values()), targets
    assert targets["test"].startswith("The whole suite, against real PostgreSQL and Redis,")
    # A comment of several lines, whole.
    assert targets["bench"].startswith("The gateway benchmark (needs wrk, nginx and Redis)")
    assert targets["bench"].endswith("(see python -m bench.gateway --help).")
    assert all(len(line) <= 100 for line in make("help").splitlines())
