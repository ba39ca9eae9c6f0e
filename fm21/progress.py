"""Progress of long stages, reported without the stages knowing who listens.

A stage wraps its main loop in ``with progress("train", total=steps, unit="step") as
advance:`` and calls ``advance(n)``. Listeners are installed by the front end: the CLI
draws a tqdm bar on a terminal (nothing in CI logs, where stderr is not a TTY), and the
Prefect flows keep a progress artifact per stage run. With no listener it costs nothing.
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable, Iterator, Protocol


class Listener(Protocol):
    def start(self, stage: str, total: int | None, unit: str) -> None: ...
    def update(self, done: int) -> None: ...
    def close(self) -> None: ...


_factories: list[Callable[[], Listener]] = []


def add_listener(factory: Callable[[], Listener]) -> None:
    """Every later ``progress`` block creates one listener from ``factory``."""
    if factory not in _factories:
        _factories.append(factory)


def remove_listener(factory: Callable[[], Listener]) -> None:
    if factory in _factories:
        _factories.remove(factory)


@contextlib.contextmanager
def progress(stage: str, *, total: int | None, unit: str) -> Iterator[Callable[[int], None]]:
    """Yields ``advance(n)``; listeners see the running count, at most ~2 updates a second
    (and always the last)."""
    listeners = [make() for make in _factories]
    for listener in listeners:
        listener.start(stage, total, unit)
    done, last = 0, 0.0

    def advance(n: int = 1) -> None:
        nonlocal done, last
        done += n
        now = time.monotonic()
        if listeners and (now - last >= 0.5 or (total is not None and done >= total)):
            last = now
            for listener in listeners:
                listener.update(done)

    try:
        yield advance
    finally:
        for listener in listeners:
            listener.update(done)
            listener.close()


class TqdmListener:
    """A bar on stderr when it is a terminal; silent otherwise (CI logs stay clean)."""

    def start(self, stage: str, total: int | None, unit: str) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit=unit, desc=stage, disable=None, leave=False, dynamic_ncols=True)
        self.done = 0

    def update(self, done: int) -> None:
        self.bar.update(done - self.done)
        self.done = done

    def close(self) -> None:
        self.bar.close()


def tracked(items, stage: str, *, unit: str, total: int | None = None) -> Iterator:
    """``for x in tracked(xs, "evaluate", unit="task")``: progress over a loop."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)
    with progress(stage, total=total, unit=unit) as advance:
        for item in items:
            yield item
            advance(1)
