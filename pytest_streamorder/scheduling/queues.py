"""What the scheduler queues: work items, event marks, and each stream's FIFO and clock.

Two facts about an item are kept apart: it has *run* (`done`: its values are computed,
whenever the policy chose) and, in virtual time, it *finishes* at `finish_ns` (no sooner
than its issue time, its stream's previous item and the event it waits for allow, plus
its cost). The host observes completion only through the scheduler (`completed`), which
also asks that the host's clock has reached `finish_ns`.

Torch-free: an item's work is a plain callable.
"""

from __future__ import annotations

from collections import deque
from typing import Callable

# Virtual time, in nanoseconds, that one device op costs when it has no explicit cost.
DEFAULT_OP_NS = 2_000


class Item:
    """One unit of stream work. `run` executes it; `blocked_on` is an EventMark to wait for;
    `cost_ns` is how long it occupies its stream in virtual time (at least 0)."""

    __slots__ = ("label", "run", "blocked_on", "done_mark", "cost_ns", "done",
                 "issued_ns", "finish_ns", "op_count", "stream")

    def __init__(self, label: str, run: Callable[[], None] | None = None,
                 blocked_on: "EventMark | None" = None, done_mark: "EventMark | None" = None,
                 cost_ns: int = DEFAULT_OP_NS):
        self.label = label
        self.run = run
        self.blocked_on = blocked_on
        self.done_mark = done_mark
        self.cost_ns = max(0, cost_ns)
        self.done = False  # has run; finish_ns is known from then on
        self.issued_ns = 0  # host's virtual time at enqueue: it cannot start before
        self.finish_ns = 0
        self.op_count = 0  # the model's op number on this stream, to mark races in a timeline
        self.stream: "StreamQueue | None" = None  # set when it is enqueued


class EventMark:
    """One record of an event: `done` when its item on the recording stream has run, at
    `time_ns` in virtual time."""

    __slots__ = ("stream", "done", "time_ns")

    def __init__(self, stream: "StreamQueue"):
        self.stream = stream
        self.done = False
        self.time_ns = 0


class StreamQueue:
    """A stream's FIFO of not-yet-run items, and its virtual clock."""

    __slots__ = ("name", "index", "queue", "time_ns", "executed", "last")

    def __init__(self, name: str, index: int):
        self.name = name
        self.index = index
        self.queue: deque[Item] = deque()
        self.time_ns = 0  # when the last executed item finished, in virtual time
        self.executed = 0
        self.last: Item | None = None  # the latest item enqueued, run or not

    def ready(self) -> bool:
        if not self.queue:
            return False
        mark = self.queue[0].blocked_on
        return mark is None or mark.done

    def __repr__(self) -> str:
        return f"<StreamQueue {self.name}: {len(self.queue)} queued>"
