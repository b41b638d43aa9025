"""What the model tracks, in CUDA's words: the host and each stream (an `Agent`), events,
allocations (a block of device or pinned host memory) and accesses (one read or write of
a set of bytes of an allocation). Plain records: the rules that connect them are in hb.py.
"""

from __future__ import annotations

from collections import deque
from typing import Sequence

from .clock import VectorClock
from .site import UNKNOWN_SITE, Site

READ = False
WRITE = True


class Agent:
    """The host or one stream. `clock` is what it knows; clock[id] counts its own events."""

    __slots__ = ("id", "name", "is_host", "clock", "recent_waits", "retired")

    def __init__(self, agent_id: int, name: str, is_host: bool):
        self.id = agent_id
        self.name = name
        self.is_host = is_host
        self.clock: VectorClock = [0] * (agent_id + 1)
        # The last few waits this stream issued, to explain a missing edge in words.
        self.recent_waits: deque = deque(maxlen=8)
        self.retired = False  # HappensBefore.retire: its id now belongs to a newer stream

    def describe(self) -> str:
        return "the host" if self.is_host else f"stream '{self.name}'"

    def __repr__(self) -> str:
        return f"<{self.describe()}>"


class Event:
    """A CUDA event: `capture` is the recording stream's clock at the last record call."""

    __slots__ = ("name", "capture", "recorded_on", "record_site", "ever_recorded_on")

    def __init__(self, name: str):
        self.name = name
        self.capture: VectorClock | None = None  # None: never recorded
        self.recorded_on: Agent | None = None
        self.record_site: Site = UNKNOWN_SITE
        self.ever_recorded_on: set[Agent] = set()

    def __repr__(self) -> str:
        where = self.recorded_on.name if self.recorded_on else "never recorded"
        return f"<event '{self.name}' ({where})>"


class WaitNote:
    """One wait a stream issued, remembered for explanations."""

    __slots__ = ("event", "recorded_on", "captured_count", "site")

    def __init__(self, event: Event, recorded_on: Agent | None, captured_count: int, site: Site):
        self.event = event
        self.recorded_on = recorded_on  # None: the event was never recorded (a no-op wait)
        self.captured_count = captured_count  # the recording stream's own count in the capture
        self.site = site


class Allocation:
    """A block of memory with an identity: a device tensor's storage or a pinned buffer."""

    __slots__ = (
        "id", "label", "nbytes", "space", "address", "stream", "site",
        "shadow", "freed", "free_site", "record_streams", "reuse_fences",
    )

    def __init__(self, alloc_id: int, label: str, nbytes: int, space: str,
                 address: int | None, stream: Agent | None, site: Site):
        self.id = alloc_id
        self.label = label
        self.nbytes = nbytes
        self.space = space  # "device" or "host"
        self.address = address
        self.stream = stream  # the stream whose allocator pool it came from
        self.site = site
        self.shadow: list[Access] = []  # accesses that a later access may still race with
        self.freed = False
        self.free_site: Site = UNKNOWN_SITE
        self.record_streams: set[Agent] = set()
        self.reuse_fences: list[VectorClock] = []  # record_stream streams' clocks at free time

    def describe(self) -> str:
        return f"{self.label} ({self.nbytes} bytes of {self.space} memory)"

    def __repr__(self) -> str:
        return f"<allocation #{self.id} {self.label}>"


class Access:
    """One read or write of a set of bytes of an allocation, by one agent: [start, stop)
    bounds the set; `region` is None when the access touches every byte of it (a
    contiguous tensor), else the exact set (regions.py: a strided Box or explicit Runs).

    An access whose set depends on index values (index_put_, scatter_, ...) is issued
    with `pending` set, and `region` is that Pending too (one check keeps such entries
    off the detector's fast path): until its op ran, [start, stop) and pending.region
    are a superset (the whole indexed tensor), and hb.py compares it exactly once
    `pending.exact` is known. A copy carried to a reused block has `carry`: the shift
    from the original's offsets (and [start, stop) as its superset)."""

    __slots__ = ("seq", "agent", "count", "alloc", "start", "stop", "is_write", "op", "site",
                 "region", "pending", "carry")

    def __init__(self, seq, agent, count, alloc, start, stop, is_write, op, site, region=None):
        self.seq = seq  # global issue order, for reports and tests
        self.agent = agent
        self.count = count  # the agent's own clock entry at the access: its epoch
        self.alloc = alloc  # for an access carried over from a freed block: the old one
        self.start = start
        self.stop = stop
        self.is_write = is_write
        self.op = op
        self.site = site
        self.region = region
        self.pending = None  # a Pending not settled yet (see hb.py, "pending accesses")
        self.carry = None  # for a copy of a pending access in a reused block: its shift

    @property
    def kind(self) -> str:
        return "write" if self.is_write else "read"

    def __repr__(self) -> str:
        return (f"<{self.kind} #{self.seq} by {self.agent.describe()} in {self.op} "
                f"of {self.alloc.label}[{self.start}:{self.stop}]>")


class Pending:
    """The caller's handle on an access whose exact set is known only when its op runs.

    Pass `(allocation, Pending(start, stop, region), is_write)` to launch/host_access,
    with (start, stop, region) a superset of what the op can touch; once the op ran, call
    `HappensBefore.resolve(pending, (start, stop, region))` with the exact set (or None
    when it could not be learnt)."""

    __slots__ = ("start", "stop", "region", "access", "exact", "resolved", "pairs", "clock")
    # When its set becomes known, for a report of a race found then (a subclass may say
    # otherwise, e.g. a Triton launch whose set is known once the kernel ran).
    found_when = "the indexed op ran (the elements its index values name are known only then)"

    def __init__(self, start: int, stop: int, region=None):
        self.start, self.stop, self.region = start, stop, region  # the superset
        self.access: Access | None = None  # set when it is checked (None: touches nothing)
        self.exact: tuple | None = None  # (start, stop, region) once resolved
        self.resolved = False
        self.pairs: list = []  # (earlier, later, allocation, facts) to compare once exact
        self.clock: list | None = None  # its agent's clock when it was checked (issued)

    def describe(self) -> str:
        return "the elements its index values name (not known yet)"

    def __repr__(self) -> str:
        state = f"exact {self.exact}" if self.resolved else "pending"
        return f"<Pending [{self.start}, {self.stop}) {state}>"


AccessSpec = Sequence
"""(allocation, start, stop, is_write): a span; (allocation, region, is_write): an exact
set (a regions.Box or Runs), or a Pending whose set is known when its op runs."""
