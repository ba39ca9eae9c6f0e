"""fm21.progress: listeners see the running count and the final one; no listener, no cost."""

from __future__ import annotations

from fm21.progress import add_listener, progress, remove_listener, tracked


class Recorder:
    seen: list = []

    def start(self, stage, total, unit):
        Recorder.seen.append(("start", stage, total, unit))

    def update(self, done):
        Recorder.seen.append(("update", done))

    def close(self):
        Recorder.seen.append(("close",))


def test_listener_sees_start_final_count_and_close():
    Recorder.seen = []
    add_listener(Recorder)
    try:
        with progress("train", total=5, unit="step") as advance:
            for _ in range(5):
                advance(1)
        assert list(tracked([1, 2, 3], "evaluate", unit="task")) == [1, 2, 3]
    finally:
        remove_listener(Recorder)
    assert Recorder.seen[0] == ("start", "train", 5, "step")
    closes = [i for i, e in enumerate(Recorder.seen) if e == ("close",)]
    assert Recorder.seen[closes[0] - 1] == ("update", 5)
    assert ("start", "evaluate", 3, "task") in Recorder.seen and Recorder.seen[-2] == ("update", 3)
    Recorder.seen = []
    with progress("train", total=2, unit="step") as advance:
        advance(2)
    assert Recorder.seen == []
