"""Prometheus multiprocess mode under a gunicorn master: one sample file per worker and metric kind,
summed on every scrape (`shared/metrics.py`), and the files of exited workers folded into archives.

Folding reads and writes prometheus_client's sample files through its `MmapedDict`, and the workers'
value class is chosen again by assigning its `values.ValueClass`; neither is part of its public API:
prometheus-client is pinned to one minor release in pyproject.toml, and
`tests/unit/test_serving_internals.py` fails on any change of what is used here.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol

from prometheus_client import values as prometheus_values
from prometheus_client.mmap_dict import MmapedDict

from shared.metrics import MULTIPROC_ENV, holds_samples, samples_locked


class _SampleFile(Protocol):
    """What folding uses of an open `MmapedDict`."""

    def read_value(self, key: str) -> tuple[float, float]: ...

    def write_value(self, key: str, value: float, timestamp: float) -> None: ...

    def close(self) -> None: ...


# Typed views of the unannotated prometheus_client functions used here (mypy checks that the real ones
# fit them), so that calling them needs no `type: ignore`.
_open_samples: Callable[[str], _SampleFile] = MmapedDict
_read_samples: Callable[[str], Iterable[tuple[str, float, float, int]]] = MmapedDict.read_all_values_from_file
_get_value_class: Callable[[], type] = prometheus_values.get_value_class


def prepare_multiprocess_metrics(process: str) -> Path:
    """Prometheus multiprocess mode for the workers about to start: every worker writes its samples to
    files in one directory (`PROMETHEUS_MULTIPROC_DIR`, or a new temporary one), and `/metrics`
    in any worker sums them all (`shared/metrics.py`). What a worker that exits (recycled or killed)
    counted is folded into an archive file (`fold_exited_worker`), so no counter ever goes backwards
    or loses what a dead worker counted, and the directory holds the files of the live workers only.

    Files of an earlier run in the directory are removed: a new master is a restart, as for one
    process."""
    configured = os.environ.get(MULTIPROC_ENV)
    if configured:
        directory = Path(configured)
        directory.mkdir(parents=True, exist_ok=True)
        for stale in [*directory.glob("*.db"), directory / ".lock"]:
            stale.unlink(missing_ok=True)
    else:
        directory = Path(tempfile.mkdtemp(prefix=f"portico-{process}-metrics-"))
        master = os.getpid()

        def remove() -> None:
            # Workers inherit this exit hook with the fork; only the master's exit removes the files.
            if os.getpid() == master:
                shutil.rmtree(directory, ignore_errors=True)

        atexit.register(remove)
        os.environ[MULTIPROC_ENV] = str(directory)
    # prometheus_client chooses how values are stored when it is first imported, which was before
    # the variable was set: choose again, before any worker creates a metric. `ValueClass` is no public
    # API, and assigning one it no longer reads would change nothing, silently.
    if not hasattr(prometheus_values, "ValueClass"):
        raise RuntimeError("prometheus_client.values has no ValueClass: the workers' metrics cannot be shared")
    prometheus_values.ValueClass = _get_value_class()
    return directory


def fold_exited_worker(directory: Path, pid: int) -> None:
    """Adds what an exited worker counted (its counter, histogram and summary files) into one archive
    file per kind, and removes its files. Without this, every recycled worker would leave files
    behind: the directory would grow without bound, and every scrape would read them all. Its gauges
    go, of every mode: a gauge says how a process is now, and an exited one is no more
    (prometheus_client's own `mark_process_dead` removes the live modes' only, and keeps the others'
    forever). Every file a scrape reads is removed under this lock, so a scrape never finds one gone.
    """
    with samples_locked(directory, exclusive=True):
        for gauge in directory.glob(f"gauge_*_{pid}.db"):
            gauge.unlink()
        for kind in ("counter", "histogram", "summary"):
            exited = directory / f"{kind}_{pid}.db"
            if not exited.exists():
                continue
            if not holds_samples(exited):
                # Killed while it created the file: nothing was counted in it.
                exited.unlink()
                continue
            # The collector takes the kind from the name before the first "_" and sums the rest.
            archive = _open_samples(str(directory / f"{kind}_archive.db"))
            try:
                for key, value, timestamp, _ in _read_samples(str(exited)):
                    total, _ = archive.read_value(key)
                    archive.write_value(key, total + value, timestamp)
            finally:
                archive.close()
            exited.unlink()
