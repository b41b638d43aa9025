"""When queued device work runs: per-stream FIFO queues, virtual time, and a policy.

The host enqueues work items on streams; nothing runs at enqueue time unless the policy
says so. The policy (policies.py) is consulted at every *scheduling point* (after each
enqueue, and while the host is blocked in a sync or polls a query) and picks which ready
stream runs its next item. Work is legal to run when it is at the head of its stream and,
for a wait, when the event capture it waits for has run: that is all CUDA promises. This
module keeps the queues, the virtual clocks and the timeline; it decides nothing itself.

Virtual time is plausible: an item finishes no sooner than its start (its issue time, its
stream's previous item, the event it waits for) plus its cost, whenever the policy runs
it. Running early computes values early, which nothing can see without a race; what the
host *observes* (query(), elapsed_time, allocator reuse after record_stream) is
completion, which also needs the host's clock to have reached the finish time. So a
policy may make work late, never impossibly early. The host's clock advances by
`launch_ns` per launch, to the finish of what a sync waited for, and, when a query()
returns False for work that has run, to that work's finish (a polling loop ends).
Host time spent outside torch calls (`time.sleep`, Python work) is not modelled.

What the host observes of the schedule is recorded (`observations`): a query() result,
an allocator's reuse decision that depended on completion, and, as plain notes, what
cannot be steered (an elapsed time, host threads issuing work, accesses the detector
cannot see). A run without any is decided by one schedule. A run may be given `flips`:
ordinals of observations whose outcome it turns the other way, when the virtual-time
model allows the other outcome there (True: the work can be run now and its finish is
not after the host's clock; False: the host does not know the work complete by an edge).

Torch-free: items are plain callables.
"""

from __future__ import annotations

from threading import get_ident
from typing import Callable

from .chooser import Chooser, ScheduleDiverged
from .policies import POLICIES, Pct, Policy, make_policy
from .queues import DEFAULT_OP_NS, EventMark, Item, StreamQueue  # noqa: F401  (re-exported)

# Virtual time the host spends in one launch call.
LAUNCH_NS = 500
# Observations kept per run (a polling loop makes one per poll); later ones are counted.
MAX_OBSERVATIONS = 4096


class Observation:
    """One schedule-dependent thing the host saw: `kind` ("query", "reuse", or a note
    such as "elapsed_time", "threads", "data_ptr"), its `outcome`, whether a flip could
    turn it (`steerable`), and whether this run flipped it."""

    __slots__ = ("kind", "outcome", "steerable", "flipped")

    def __init__(self, kind: str, outcome: bool | None, steerable: bool, flipped: bool):
        self.kind, self.outcome, self.steerable, self.flipped = kind, outcome, steerable, flipped

    def __repr__(self) -> str:
        flip = ", flipped" if self.flipped else ""
        return f"<observation {self.kind}={self.outcome}{flip}>"


def _choose_with_reason(chooser) -> Callable[[int, str], int]:
    """Our Chooser takes what a decision is for (for divergence messages); any other
    chooser (e.g. strategies.HypothesisChooser) only `choose(n)`."""
    if isinstance(chooser, Chooser):
        return chooser.choose
    choose = chooser.choose
    return lambda n, what: choose(n)


class Scheduler:
    """Runs queued items in the order one policy picks."""

    def __init__(self, policy: str = "random", chooser=None,
                 pct_depth: int = 3, pct_horizon: int = 64):
        if policy not in POLICIES:
            raise ValueError(f"unknown scheduling policy {policy!r}; choose one of {POLICIES}")
        self.policy = policy  # the name; the decision logic is self.rule
        self.chooser = chooser if chooser is not None else Chooser(0)
        choose = _choose_with_reason(self.chooser)
        self.rule: Policy = (Pct(choose, pct_depth, pct_horizon) if policy == "pct"
                             else make_policy(policy, choose))
        self.streams: list[StreamQueue] = []  # by index (policies keep state per index)
        self._live: list[StreamQueue] = []  # what scheduling points scan: not retired
        self.steps = 0  # items run so far
        self.host_time_ns = 0
        self.host_blocked_ns = 0
        self.host_syncs = 0  # syncs the host made (run_until calls), whether they blocked or not
        self.launch_ns = LAUNCH_NS  # host virtual time per enqueue (a cost model may change it)
        # When set to a list: what ran when, for a timeline (see pytest_streamorder/timeline.py):
        # ("item", stream, item, start_ns) and ("host", label, start_ns, end_ns).
        self.timeline: list | None = None
        # What the host observed that depends on the schedule (module docstring).
        self.observations: list[Observation] = []
        self.observed = 0  # all of them, also those past MAX_OBSERVATIONS
        self.flips: frozenset[int] = frozenset()  # ordinals to turn the other way
        self._host_thread: int | None = None  # the one thread that issued work, so far
        # Only policies that count steps (pct) pay for a call per item run.
        self._after_step = (self.rule.after_step
                            if type(self.rule).after_step is not Policy.after_step else None)

    # --- streams and work ---------------------------------------------------------

    def new_stream(self, name: str) -> StreamQueue:
        stream = StreamQueue(name, len(self.streams))
        self.streams.append(stream)
        self._live.append(stream)
        self.rule.new_stream(stream)
        return stream

    def retire(self, stream: StreamQueue) -> None:
        """The stream is gone and its queue empty: no scheduling point scans it again
        (it was never ready, so no choice changes), and a program that makes a stream per
        iteration does not pay for all the earlier ones at every op."""
        if not stream.queue and stream in self._live:
            self._live.remove(stream)

    def enqueue(self, stream: StreamQueue, item: Item) -> None:
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        self.host_time_ns += self.launch_ns
        item.issued_ns = self.host_time_ns
        item.stream = stream
        thread = get_ident()
        if thread != self._host_thread:
            if self._host_thread is not None:
                self.note("threads")  # their interleaving is the OS's, not ours
            self._host_thread = thread
        stream.queue.append(item)
        stream.last = item
        self._point()

    # --- what the host observes: completion in virtual time ----------------------------

    def completed(self, item: Item | None) -> bool:
        """Whether the host, now, sees `item` complete: it has run and the host's clock
        has reached its finish. None (nothing was queued) is complete."""
        return item is None or (item.done and item.finish_ns <= self.host_time_ns)

    def mark_completed(self, mark: EventMark) -> bool:
        """Whether the host, now, sees an event record complete (cudaEventQuery)."""
        return mark.done and mark.time_ns <= self.host_time_ns

    def stream_completed(self, stream: StreamQueue) -> bool:
        """Whether the host, now, sees all work queued on `stream` complete."""
        return self.completed(stream.last)

    # --- what the host observed ----------------------------------------------------------

    def note(self, kind: str) -> None:
        """Something schedule-dependent that no flip can steer (an elapsed time, host
        threads, an access the detector cannot see): the run is not decided by one
        schedule. Recorded once per kind in a row."""
        last = self.observations[-1] if self.observations else None
        if last is not None and last.kind == kind and not last.steerable:
            return
        self._record(kind, None, False, False)

    def _record(self, kind: str, outcome, steerable: bool, flipped: bool) -> None:
        self.observed += 1
        if len(self.observations) < MAX_OBSERVATIONS:
            self.observations.append(Observation(kind, outcome, steerable, flipped))

    def _flip_now(self) -> bool:
        """Whether the observation about to be made is one to turn the other way."""
        return bool(self.flips) and self.observed in self.flips

    def reusable(self, items) -> bool:
        """An allocator asks whether a freed block held by `items` (work that used it:
        record_stream, a non_blocking copy) may be handed out now: when the host sees all
        of them complete. An observation; flipped, the items run now and the block is
        reused if they finish in time (never the other way: a fresh block hides nothing; a reuse
        granted at once is not recorded either)."""
        completed = self.completed
        if all(completed(item) for item in items):
            # Not an observation: the other outcome, a fresh block, hides nothing from
            # the detector and makes no value stale (an address seen is noted apart).
            return True
        flip = self._flip_now()
        if flip:
            for item in items:
                self._run_through(item)
            outcome = all(completed(item) for item in items)
        else:
            outcome = False
        self._record("reuse", outcome, True, flip and outcome)
        return outcome

    def _run_through(self, item: Item) -> None:
        """Run the work `item` needs, and `item`, as if the host waited for it (without
        the host's clock moving: whether it finished in time is for the caller to see)."""
        stream = item.stream
        while not item.done and stream is not None and stream.queue:
            self._step_forced(stream)

    # --- the host waiting ------------------------------------------------------------

    def run_until(self, done: Callable[[], bool], finish_ns: Callable[[], int],
                  target: StreamQueue | None = None) -> None:
        """Block the host until `done()`; items run in policy order meanwhile. The host's
        virtual clock then moves to `finish_ns()` if that is later: time spent blocked."""
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        self.host_syncs += 1
        while not done():
            self._step_forced(target)
        self._host_waits_until(finish_ns(), f"sync {target.name}" if target is not None else "sync")

    def _host_waits_until(self, t_ns: int, what: str) -> None:
        """The host's clock moves to t_ns if that is later: time spent waiting."""
        blocked = t_ns - self.host_time_ns
        if blocked > 0:
            if self.timeline is not None:
                self.timeline.append(("host", what, self.host_time_ns, t_ns))
            self.host_time_ns = t_ns
            self.host_blocked_ns += blocked

    def drain(self, stream: StreamQueue) -> None:
        """stream.synchronize(): everything queued on it so far has run."""
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        self.run_until(lambda: not stream.queue, lambda: stream.time_ns, target=stream)

    def drain_all(self) -> None:
        """torch.cuda.synchronize()."""
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        self.run_until(lambda: not any(s.queue for s in self._live),
                       lambda: max((s.time_ns for s in self._live), default=0))

    def wait_mark(self, mark: EventMark) -> None:
        """event.synchronize()."""
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        self.run_until(lambda: mark.done, lambda: mark.time_ns, target=mark.stream)

    def poll(self, mark: EventMark, known: Callable[[], bool] | None = None) -> bool:
        """event.query(): True when the record has completed in virtual time. `known()`:
        whether the host is ordered after the record already (then False is impossible)."""
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        return self._poll(lambda: self.mark_completed(mark),
                          lambda: mark.time_ns if mark.done else None, mark.stream,
                          lambda: mark.done, known)

    def poll_stream(self, stream: StreamQueue, known: Callable[[], bool] | None = None) -> bool:
        """stream.query(): True when all work queued on it has completed in virtual time."""
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        return self._poll(lambda: self.stream_completed(stream),
                          lambda: None if stream.queue else stream.time_ns, stream,
                          lambda: not stream.queue, known)

    def _poll(self, completed: Callable[[], bool], finish_ns: Callable[[], int | None],
              target: StreamQueue, ran: Callable[[], bool],
              known: Callable[[], bool] | None) -> bool:
        """A query: True if `completed()`. Otherwise the host makes progress, so that a
        loop polling query() always ends whatever the policy: if the work has run, the
        host's clock moves to its finish (the next query sees it complete); if not, one
        item runs (as while the host is blocked), and the query sees the result.

        Flipped: a True becomes False when the host knows of no edge after the work (it
        may run late); a False becomes True when the work, run now, finishes by the
        host's clock."""
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        flip = self._flip_now()
        if completed():
            outcome = True
        else:
            finish = finish_ns()
            if finish is not None:  # it ran, and finishes after the host's clock now
                self._host_waits_until(finish, f"poll {target.name}")
                self._record("query", False, False, False)
                return False  # (True is impossible here, flipped or not)
            self._step_forced(target)
            outcome = completed()
        steerable = not outcome or (known is not None and not known())
        if flip and steerable:
            natural = outcome
            if outcome:  # late, as far as the host can tell
                outcome = False
            else:  # done now, if it can finish by the host's clock
                while not ran():
                    self._step_forced(target)
                outcome = completed()
            self._record("query", outcome, True, outcome != natural)
            return outcome
        self._record("query", outcome, steerable, False)
        return outcome
        finish = finish_ns()
        if finish is not None:
            self._host_waits_until(finish, f"poll {target.name}")
            outcome = False
        else:
            self._step_forced(target)
            outcome = completed()
        self._record("query", outcome, not outcome or known is None or not known(), False)
        return outcome

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
            # The closure holds its tensors; a finished item kept for its finish time (a
            # record_stream or pinned-block fence) must not keep them alive.
            item.run = None
        item.done = True
        if item.done_mark is not None:
            item.done_mark.done = True
            item.done_mark.time_ns = stream.time_ns
        stream.executed += 1
        self.steps += 1
        if self._after_step is not None:
            self._after_step(self.steps, self.streams)

    def _ready(self) -> list[StreamQueue]:
        # StreamQueue.ready() inlined: this runs at every scheduling point.
        ready = []
        for s in self._live:
            queue = s.queue
            if queue:
                mark = queue[0].blocked_on
                if mark is None or mark.done:
                    ready.append(s)
        return ready

    def _point(self) -> None:
        """A scheduling point after an enqueue: run what the policy wants to run now."""
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        after_enqueue = self.rule.after_enqueue
        while (ready := self._ready()):
            try:
                stream = after_enqueue(ready)
            except ScheduleDiverged as exc:
                _add_streams(exc, ready)
                raise
            if stream is None:
                break
            self._run_one(stream)

    def _step_forced(self, target: StreamQueue | None) -> None:
        """Run one item while the host is blocked waiting on `target` (None: any)."""
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        ready = self._ready()
        if not ready:
            raise RuntimeError(
                "virtual device deadlock: the host waits but no stream can run "
                "(an internal error; please report it with the schedule)")
        try:
            stream = self.rule.while_blocked(ready, target)
        except ScheduleDiverged as exc:
            _add_streams(exc, ready)
            raise
        self._run_one(stream)


def _add_streams(exc: ScheduleDiverged, ready: list[StreamQueue]) -> None:
    """Say which streams were ready where a replay diverged."""
    if not exc.streams:
        exc.streams = [s.name for s in ready]
