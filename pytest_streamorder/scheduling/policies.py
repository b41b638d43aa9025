"""Scheduling policies: which ready stream runs next. One small class per policy.

A policy is asked at two kinds of scheduling point (Shuttle's shape: the scheduler owns
the queues and the clock, the policy only decides):
  after_enqueue(ready)          the host just launched work: run one of the ready streams
                                now, or None to hand control back to the host;
  while_blocked(ready, target)  the host waits (a sync, a query() poll): one of the ready
                                streams must run; `target` is the stream waited on (None:
                                the whole device).
`ready` lists the streams whose head item may legally run, in creation order. Every
random decision goes through `self.choose(n, what)`, the scheduler's Chooser, so a run
is a list of ints that replays exactly; `what` names the decision in divergence messages.

Each policy explores a different corner of what CUDA allows:
  eager   run everything at once, like CUDA_LAUNCH_BLOCKING: the friendliest order
  lazy    run nothing until the host waits, then only what it waits for
  random  after each launch, run a random number of random ready streams
  pct     random stream priorities with a few priority change points (PCT)
  delay   hold one stream back as long as legal

Torch-free.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, ClassVar, Sequence

if TYPE_CHECKING:
    from .queues import StreamQueue

# choose(n, what) -> an int in [0, n)
Choose = Callable[[int, str], int]


class Policy:
    """Decision logic only: the Scheduler keeps queues, virtual time and the timeline."""

    name: ClassVar[str] = ""

    def __init__(self, choose: Choose):
        self.choose = choose

    def new_stream(self, stream: "StreamQueue") -> None:
        """A stream was created (before any work is queued on it)."""

    def after_step(self, steps: int, streams: Sequence["StreamQueue"]) -> None:
        """One more item ran; `steps` items have run in all."""

    def after_enqueue(self, ready: list["StreamQueue"]) -> "StreamQueue | None":
        raise NotImplementedError

    def while_blocked(self, ready: list["StreamQueue"],
                      target: "StreamQueue | None") -> "StreamQueue":
        raise NotImplementedError


def needed(target: "StreamQueue | None", ready: list["StreamQueue"],
           held: int | None = None) -> "StreamQueue":
    """The ready stream whose next item the target's head transitively waits for (the
    least work that lets the host go on); without one, the first ready stream that is not
    `held` (a stream index)."""
    stream, seen = target, set()
    while stream is not None and stream.queue and stream.index not in seen:
        seen.add(stream.index)
        if stream.ready():
            return stream
        stream = stream.queue[0].blocked_on.stream
    unheld = [s for s in ready if s.index != held]
    return (unheld or ready)[0]


class Eager(Policy):
    name = "eager"

    def after_enqueue(self, ready):
        return ready[0]

    def while_blocked(self, ready, target):
        return needed(target, ready)


class Lazy(Policy):
    name = "lazy"

    def after_enqueue(self, ready):
        return None

    def while_blocked(self, ready, target):
        return needed(target, ready)


class Random(Policy):
    name = "random"

    def after_enqueue(self, ready):
        # One more option than ready streams: the last one stops (the host goes on), so
        # the run length of a burst is random too.
        c = self.choose(len(ready) + 1, "random: which ready stream runs after a launch, "
                                         "or none")
        return None if c == len(ready) else ready[c]

    def while_blocked(self, ready, target):
        return ready[self.choose(len(ready), "random: which ready stream runs while the "
                                              "host waits")]


class Pct(Policy):
    """Probabilistic concurrency testing (Burckhardt et al., ASPLOS 2010): each stream gets
    a random priority, the highest-priority ready stream runs, and at `depth - 1` random
    steps (change points) the top stream drops below all others. The host sits at priority
    0.5: streams above it run ahead of its next launch, streams below fall behind.

    PCT spreads change points over the run's length k, which is unknown when the run
    starts. We learn it: change points are first drawn in [0, horizon); when the run
    reaches the horizon it doubles, and `depth - 1` more change points are drawn in the
    new range [horizon, 2 * horizon) from the same chooser. A long run thus still gets
    change points near its end, at a density that falls as it grows (each doubling gets
    as many as the first window), and the draws happen at a fixed step of the run, so a
    replay makes them in the same order and stays exact."""

    name = "pct"
    HOST_PRIORITY = 0.5

    def __init__(self, choose: Choose, depth: int = 3, horizon: int = 64):
        super().__init__(choose)
        self.depth = depth
        self.horizon = horizon
        self.priority: list[float] = []  # by stream index
        self.change_points: list[int] = []  # steps, ascending, not yet reached
        self._draw_change_points(0, horizon)

    def _draw_change_points(self, start: int, size: int) -> None:
        what = f"pct: a priority change point in steps [{start}, {start + size})"
        self.change_points += sorted(start + self.choose(size, what)
                                     for _ in range(self.depth - 1))

    def new_stream(self, stream):
        # A random priority in (0, 1), so some streams run ahead of the host, some behind.
        what = f"pct: the priority of new stream {stream.name!r}"
        self.priority.append((self.choose(1000, what) + 0.5) / 1000)

    def after_step(self, steps, streams):
        # `<=`: two change points drawn at one step both fire (two demotions), and one at
        # step 0 fires after the first step; neither may block the later ones.
        if steps == self.horizon:
            self._draw_change_points(self.horizon, self.horizon)
            self.horizon *= 2
        while self.change_points and self.change_points[0] <= steps:
            self.change_points.pop(0)
            self._demote_top(streams)

    def _demote_top(self, streams) -> None:
        if streams:
            prio = self.priority
            top = max(streams, key=lambda s: prio[s.index])
            prio[top.index] = min(prio) - 1.0

    def _top(self, ready):
        prio = self.priority
        return max(ready, key=lambda s: prio[s.index])

    def after_enqueue(self, ready):
        top = self._top(ready)
        return top if self.priority[top.index] >= self.HOST_PRIORITY else None

    def while_blocked(self, ready, target):
        return self._top(ready)


class Delay(Policy):
    """Holds one stream back (by creation order: 0 is the default stream) while anything
    else can run, and runs it only when the host waits for it."""

    name = "delay"
    CANDIDATES = 4  # the held stream is one of the first four created

    def __init__(self, choose: Choose):
        super().__init__(choose)
        self.held = self.choose(self.CANDIDATES, "delay: which stream (by creation order) "
                                                 "is held back")

    def after_enqueue(self, ready):
        for s in ready:
            if s.index != self.held:
                return s
        return None

    def while_blocked(self, ready, target):
        return needed(target, ready, self.held)


REGISTRY: dict[str, type[Policy]] = {p.name: p for p in (Eager, Lazy, Random, Pct, Delay)}
POLICIES: tuple[str, ...] = tuple(REGISTRY)


def make_policy(name: str, choose: Choose) -> Policy:
    try:
        cls = REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown scheduling policy {name!r}; choose one of {POLICIES}") from None
    return cls(choose)
