"""Crash points for the resume tests: ``FM21_CRASH_AT=<point>:<n>`` kills the run's whole
process group with SIGKILL the n-th time any process of the run reaches ``<point>``.

The count is shared by the driver and every Ray worker (one marker file per hit in
``FM21_CRASH_DIR``), so ``pseudolabel.after_write:2`` means "the second unit written,
whichever worker wrote it". Unset (production), :func:`crash_point` is one dict lookup.
"""

from __future__ import annotations

import os
import signal
import tempfile
from pathlib import Path

CRASH_ENV = "FM21_CRASH_AT"
COUNT_DIR_ENV = "FM21_CRASH_DIR"
PGID_ENV = "FM21_CRASH_PGID"


def arm() -> None:
    """Called by the driver before Ray starts, so workers inherit the driver's group id
    and kill the driver with themselves (a Ray worker may sit in a group of its own)."""
    if os.environ.get(CRASH_ENV):
        os.environ.setdefault(PGID_ENV, str(os.getpgrp()))


def crash_point(point: str) -> None:
    spec = os.environ.get(CRASH_ENV)
    if not spec:
        return
    name, _, nth = spec.rpartition(":")
    if name != point:
        return
    if _hit(Path(os.environ.get(COUNT_DIR_ENV) or tempfile.gettempdir()), point) == int(nth):
        _kill_run(int(os.environ.get(PGID_ENV) or os.getpgrp()))


def _kill_run(pgid: int) -> None:
    """SIGKILL the whole run. Ray puts each worker in a process group of its own, so a
    killed group leaves workers that go on writing while the rerun starts. When the
    driver leads its own session (the tests start it with ``start_new_session``), every
    process of that session dies, workers included; otherwise the driver's group."""
    try:
        session_led = os.getsid(pgid) == pgid
    except ProcessLookupError:
        session_led = False
    if session_led:
        me = os.getpid()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == me:
                continue
            try:
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[3]) == pgid:  # field 6: session id
                    os.kill(int(entry.name), signal.SIGKILL)
            except (OSError, ValueError, IndexError):
                continue
        os.kill(me, signal.SIGKILL)
    os.killpg(pgid, signal.SIGKILL)


def _hit(directory: Path, point: str) -> int:
    """Number this hit across processes: O_EXCL makes each marker file name unique."""
    directory.mkdir(parents=True, exist_ok=True)
    index = 1
    while True:
        try:
            os.close(os.open(directory / f"{point}.{index}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return index
        except FileExistsError:
            index += 1


FAIL_ENV = "FM21_FAIL_AT"


def injected_failure(specialist: str, keys: list[str]) -> None:
    """``FM21_FAIL_AT=<specialist>:<key>,<key>``: that specialist raises on a batch holding
    one of those keys, standing in for a model that breaks on some inputs."""
    spec = os.environ.get(FAIL_ENV)
    if not spec:
        return
    name, _, listed = spec.partition(":")
    bad = set(listed.split(",")) & set(keys)
    if name == specialist and bad:
        raise RuntimeError(f"injected failure on {sorted(bad)}")


def worker_env() -> dict[str, str]:
    """The settings Ray workers must see (passed as their runtime_env): the fault settings,
    and the object store's endpoint and credentials (``fm21.store.fs.storage_env``), which a
    Ray started before they were set, or a cluster's workers, would not have."""
    from fm21.store.fs import storage_env

    faults = {k: v for k, v in os.environ.items() if k in (CRASH_ENV, COUNT_DIR_ENV, PGID_ENV, FAIL_ENV)}
    return {**faults, **storage_env()}
