"""When queued device work runs: per-stream FIFO queues and adversarial, replayable policies.

The host enqueues work items on streams; nothing runs at enqueue time unless the policy
says so. A policy is consulted at every *scheduling point* (after each enqueue, and
while the host is blocked in a sync or polls a query) and picks which ready stream runs
its next item. Every choice goes through a Chooser, so a schedule is a list of ints that
replays exactly. Work is legal to run when it is at the head of its stream and, for a
wait, when the event capture it waits for has run: that is all CUDA promises, and each
policy explores a different corner of it.

Torch-free: items are plain callables.
"""

from __future__ import annotations

import random
from collections import deque
from typing import Callable

POLICIES = ("eager", "lazy", "random", "pct", "delay")

# Virtual time, in nanoseconds, that one device op costs when it has no explicit cost.
DEFAULT_OP_NS = 2_000
# Virtual time the host spends in one launch call.
LAUNCH_NS = 500


class ScheduleDiverged(RuntimeError):
    """A replayed schedule asked for a choice the recorded run did not make."""


class Chooser:
    """The source of every scheduling decision; records them for replay."""

    def __init__(self, seed: int | None = None, replay: list[int] | None = None):
        self._rng = random.Random(seed)
        self._replay = list(replay) if replay is not None else None
        self.choices: list[int] = []

    def choose(self, n: int) -> int:
        """An int in [0, n)."""
        if n <= 1:
            return 0
        if self._replay is not None:
            i = len(self.choices)
            if i >= len(self._replay):
                raise ScheduleDiverged(
                    f"replayed schedule has {len(self._replay)} choices but the run asked "
                    f"for more: the program is not deterministic, or changed since")
            c = self._replay[i]
            if not 0 <= c < n:
                raise ScheduleDiverged(f"replayed choice #{i} is {c}, outside [0, {n})")
        else:
            c = self._rng.randrange(n)
        self.choices.append(c)
        return c


class Item:
    """One unit of stream work. `run` executes it; `blocked_on` is an EventMark to wait for."""

    __slots__ = ("label", "run", "blocked_on", "done_mark", "cost_ns", "done",
                 "issued_ns", "finish_ns", "op_count")

    def __init__(self, label: str, run: Callable[[], None] | None = None,
                 blocked_on: "EventMark | None" = None, done_mark: "EventMark | None" = None,
                 cost_ns: int = DEFAULT_OP_NS):
        self.label = label
        self.run = run
        self.blocked_on = blocked_on
        self.done_mark = done_mark
        self.cost_ns = cost_ns
        self.done = False
        self.issued_ns = 0  # host's virtual time at enqueue: it cannot start before
        self.finish_ns = 0
        self.op_count = 0  # the model's op number on this stream, to mark races in a timeline


class EventMark:
    """One record of an event: completes when its item on the recording stream runs."""

    __slots__ = ("stream", "done", "time_ns")

    def __init__(self, stream: "StreamQueue"):
        self.stream = stream
        self.done = False
        self.time_ns = 0


class StreamQueue:
    """A stream's FIFO of not-yet-run items, and its virtual clock."""

    __slots__ = ("name", "index", "queue", "time_ns", "executed", "priority")

    def __init__(self, name: str, index: int):
        self.name = name
        self.index = index
        self.queue: deque[Item] = deque()
        self.time_ns = 0  # when the last executed item finished, in virtual time
        self.executed = 0
        self.priority = 0.0

    def ready(self) -> bool:
        if not self.queue:
            return False
        mark = self.queue[0].blocked_on
        return mark is None or mark.done

    def __repr__(self) -> str:
        return f"<StreamQueue {self.name}: {len(self.queue)} queued>"


class Scheduler:
    """Runs queued items under one policy."""

    def __init__(self, policy: str = "random", chooser: Chooser | None = None,
                 pct_depth: int = 3, pct_horizon: int = 64):
        if policy not in POLICIES:
            raise ValueError(f"unknown scheduling policy {policy!r}; choose one of {POLICIES}")
        self.policy = policy
        self.chooser = chooser or Chooser(0)
        self.streams: list[StreamQueue] = []
        self.steps = 0  # items run so far
        self.host_time_ns = 0
        self.host_blocked_ns = 0
        self.host_syncs = 0  # syncs the host made (run_until calls), whether they blocked or not
        self.launch_ns = LAUNCH_NS  # host virtual time per enqueue (a cost model may change it)
        # When set to a list: what ran when, for a timeline (see pytest_streamorder/timeline.py):
        # ("item", stream, item, start_ns) and ("host", label, start_ns, end_ns).
        self.timeline: list | None = None
        # delay: which stream (by creation index) is held back as long as legal.
        self._held = self.chooser.choose(4) if policy == "delay" else None
        # pct: priority change points, in scheduling steps (Burckhardt et al. 2010).
        self._change_points = (
            sorted(self.chooser.choose(pct_horizon) for _ in range(pct_depth - 1))
            if policy == "pct" else [])
        self._host_priority = 0.5

    # --- streams and work ---------------------------------------------------------

    def new_stream(self, name: str) -> StreamQueue:
        stream = StreamQueue(name, len(self.streams))
        if self.policy == "pct":
            # A random priority in (0, 1); the host sits at 0.5, so some streams run
            # ahead of the host's next launch and some fall behind it.
            stream.priority = (self.chooser.choose(1000) + 0.5) / 1000
        self.streams.append(stream)
        return stream

    def enqueue(self, stream: StreamQueue, item: Item) -> None:
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        self.host_time_ns += self.launch_ns
        item.issued_ns = self.host_time_ns
        stream.queue.append(item)
        self._point()

    # --- the host waiting ------------------------------------------------------------

    def run_until(self, done: Callable[[], bool], finish_ns: Callable[[], int],
                  target: StreamQueue | None = None) -> None:
        """Block the host until `done()`; items run in policy order meanwhile. The host's
        virtual clock then moves to `finish_ns()` if that is later: time spent blocked."""
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        self.host_syncs += 1
        while not done():
            self._step_forced(target)
        blocked = finish_ns() - self.host_time_ns
        if blocked > 0:
            if self.timeline is not None:
                what = f"sync {target.name}" if target is not None else "sync"
                self.timeline.append(("host", what, self.host_time_ns, self.host_time_ns + blocked))
            self.host_time_ns += blocked
            self.host_blocked_ns += blocked

    def drain(self, stream: StreamQueue) -> None:
        """stream.synchronize(): everything queued on it so far has run."""
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        self.run_until(lambda: not stream.queue, lambda: stream.time_ns, target=stream)

    def drain_all(self) -> None:
        """torch.cuda.synchronize()."""
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        self.run_until(lambda: not any(s.queue for s in self.streams),
                       lambda: max((s.time_ns for s in self.streams), default=0))

    def wait_mark(self, mark: EventMark) -> None:
        """event.synchronize()."""
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        self.run_until(lambda: mark.done, lambda: mark.time_ns, target=mark.stream)

    def poll(self, mark: EventMark) -> bool:
        """event.query(): True when done; otherwise make one step of progress, so that a
        host loop polling query() always terminates, whatever the policy."""
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        if mark.done:
            return True
        self._step_forced(mark.stream)
        return False

    def poll_stream(self, stream: StreamQueue) -> bool:
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        if not stream.queue:
            return True
        self._step_forced(stream)
        return not stream.queue

    # --- running items -----------------------------------------------------------------

    def _run_one(self, stream: StreamQueue) -> None:
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        item = stream.queue.popleft()
        start = max(stream.time_ns, item.issued_ns)
        if item.blocked_on is not None:
            start = max(start, item.blocked_on.time_ns)
        stream.time_ns = item.finish_ns = start + item.cost_ns
        if self.timeline is not None:
            self.timeline.append(("item", stream, item, start))
        if item.run is not None:
            item.run()
        item.done = True
        if item.done_mark is not None:
            item.done_mark.done = True
            item.done_mark.time_ns = stream.time_ns
        stream.executed += 1
        self.steps += 1
        if self._change_points and self.steps == self._change_points[0]:
            self._change_points.pop(0)
            self._demote_top()

    def _ready(self) -> list[StreamQueue]:
        return [s for s in self.streams if s.ready()]

    def _point(self) -> None:
        """A scheduling point after an enqueue: run what the policy wants to run now."""
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        policy = self.policy
        if policy == "eager":
            while (ready := self._ready()):
                self._run_one(ready[0])
        elif policy == "random":
            # Keep running random ready streams; stop with probability 1/(k+1).
            while (ready := self._ready()):
                c = self.chooser.choose(len(ready) + 1)
                if c == len(ready):
                    break
                self._run_one(ready[c])
        elif policy == "pct":
            while (ready := self._ready()):
                top = max(ready, key=lambda s: s.priority)
                if top.priority < self._host_priority:
                    break
                self._run_one(top)
        elif policy == "delay":
            while (ready := [s for s in self._ready() if s.index != self._held]):
                self._run_one(ready[0])
        # lazy: nothing runs until the host needs it.

    def _step_forced(self, target: StreamQueue | None) -> None:
        """Run one item while the host is blocked waiting on `target` (None: any)."""
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        ready = self._ready()
        if not ready:
            raise RuntimeError(
                "virtual device deadlock: the host waits but no stream can run "
                "(an internal error; please report it with the schedule)")
        if self.policy == "random":
            self._run_one(ready[self.chooser.choose(len(ready))])
        elif self.policy == "pct":
            self._run_one(max(ready, key=lambda s: s.priority))
        else:
            # eager, lazy, delay: run only what the target needs, held stream last.
            self._run_one(self._needed(target, ready))

    def _needed(self, target: StreamQueue | None, ready: list[StreamQueue]) -> StreamQueue:
        """The ready stream whose next item the target's head transitively depends on."""
        stream, seen = target, set()
        while stream is not None and stream.queue and stream.index not in seen:
            seen.add(stream.index)
            if stream.ready():
                return stream
            stream = stream.queue[0].blocked_on.stream
        unheld = [s for s in ready if s.index != self._held]
        return (unheld or ready)[0]

    def _demote_top(self) -> None:
        if self.streams:
            top = max(self.streams, key=lambda s: s.priority)
            top.priority = min(s.priority for s in self.streams) - 1.0
