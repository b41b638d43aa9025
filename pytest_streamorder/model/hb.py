"""The happens-before model of CUDA stream ordering, and the race detector on it.

Callers (the virtual device, the real-GPU tracer, hand-written tests) describe what a
program does, in program order, as the host issues it:

    hb = HappensBefore()
    fwd, d2h = hb.new_stream("forward"), hb.new_stream("d2h")
    buf = hb.allocate(512, "new_seq_lens_buf")
    hb.launch(fwd, "index_put_", [(buf, 0, 512, WRITE)])
    ready = hb.new_event("publish_ready"); hb.record(ready, fwd)
    hb.wait(d2h, ready)
    hb.launch(d2h, "copy_", [(buf, 0, 512, READ)])       # ordered: no race

Every rule lives in one method below. Ordering is tracked with vector clocks
(clock.py); memory with a per-allocation list of recent accesses ("shadow"), checked
FastTrack-style against the accessing agent's clock. Detection happens when work is
*issued*, so the verdict depends only on the program's ordering edges, never on how a
schedule happened to run it.
"""

from __future__ import annotations

from typing import Callable, Iterable

from .clock import VectorClock, entry, join_into
from .objects import Access, AccessSpec, Agent, Allocation, Event, WaitNote
from .report import Race
from .site import UNKNOWN_SITE, Site


class HappensBefore:
    """The ordering model and race detector for one program run."""

    def __init__(self, on_race: Callable[[Race], None] | None = None, max_races: int = 1000):
        self.agents: list[Agent] = []
        self.host = self._new_agent("host", is_host=True)
        self.host.clock[self.host.id] = 1  # so a fresh stream does not "know" the host
        self.races: list[Race] = []
        self.max_races = max_races
        self.races_dropped = 0  # found beyond max_races
        self.on_race = on_race
        self.accesses = 0  # checked so far
        self._seq = 0
        self._allocs = 0
        self._freed: dict[str, list[Allocation]] = {}  # space -> freed, not yet fully reused
        self._stream_names: set[str] = set()

    # --- agents and events --------------------------------------------------------

    def _new_agent(self, name: str, is_host: bool) -> Agent:
        agent = Agent(len(self.agents), name, is_host)
        self.agents.append(agent)
        return agent

    def new_stream(self, name: str) -> Agent:
        if name in self._stream_names or name == "host":
            raise ValueError(f"a stream named {name!r} already exists; stream names must be unique")
        self._stream_names.add(name)
        return self._new_agent(name, is_host=False)

    def new_event(self, name: str = "event") -> Event:
        return Event(name)

    def rename_stream(self, stream: Agent, name: str) -> None:
        """Give a stream the name reports should use."""
        _check_stream(stream)
        if name != stream.name and (name in self._stream_names or name == "host"):
            raise ValueError(f"a stream named {name!r} already exists; stream names must be unique")
        self._stream_names.discard(stream.name)
        self._stream_names.add(name)
        stream.name = name

    def streams(self) -> list[Agent]:
        return [a for a in self.agents if not a.is_host]

    # --- the ordering rules -----------------------------------------------------

    def _own(self, stream: Agent) -> None:
        _check_stream(stream)
        if stream.id >= len(self.agents) or self.agents[stream.id] is not stream:
            raise ValueError(f"{stream!r} belongs to another HappensBefore model")

    def _enqueue(self, stream: Agent) -> None:
        """The host hands work to a stream: the work is ordered after everything the
        host did or had synced on before this call. The host then starts a new epoch,
        so its later accesses are not mistaken for ones this work saw."""
        self._own(stream)
        join_into(stream.clock, self.host.clock)
        self.host.clock[self.host.id] += 1

    def launch(self, stream: Agent, op: str, accesses: Iterable[AccessSpec] = (),
               site: Site = UNKNOWN_SITE) -> list[Race]:
        """Work on `stream`: FIFO after the stream's earlier work, after the host's past."""
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        self._enqueue(stream)
        stream.clock[stream.id] += 1
        return self._check_all(stream, accesses, op, site)

    def host_access(self, op: str, accesses: Iterable[AccessSpec],
                    site: Site = UNKNOWN_SITE) -> list[Race]:
        """The host reads or writes memory directly (pinned buffers)."""
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        return self._check_all(self.host, accesses, op, site)

    def record(self, event: Event, stream: Agent, site: Site = UNKNOWN_SITE) -> None:
        """event.record(stream): capture the stream's position now, replacing any
        earlier capture (a later waiter no longer waits for the old one)."""
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        self._enqueue(stream)
        event.capture = list(stream.clock)
        event.recorded_on = stream
        event.record_site = site
        event.ever_recorded_on.add(stream.id)

    def wait(self, stream: Agent, event: Event, site: Site = UNKNOWN_SITE) -> None:
        """stream.wait_event(event): later work on the stream is ordered after the
        event's capture *as it is now*. A never-recorded event is a no-op."""
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        _check_stream(stream)
        if event.capture is None:
            stream.recent_waits.append(WaitNote(event, None, 0, site))
            return
        join_into(stream.clock, event.capture)
        stream.recent_waits.append(
            WaitNote(event, event.recorded_on, entry(event.capture, event.recorded_on.id), site))

    def wait_stream(self, waiter: Agent, other: Agent, site: Site = UNKNOWN_SITE) -> None:
        """waiter.wait_stream(other): record a fresh event on `other`, wait on it."""
        fresh = Event(f"wait_stream({other.name})")
        self.record(fresh, other, site)
        self.wait(waiter, fresh, site)

    def sync_stream(self, stream: Agent) -> None:
        """The host waited for all work issued to `stream` so far: stream.synchronize(),
        a query() that returned True, or a blocking copy on it."""
        _check_stream(stream)
        join_into(self.host.clock, stream.clock)

    def sync_event(self, event: Event) -> None:
        """event.synchronize() or a True event.query(); a never-recorded event is a no-op."""
        if event.capture is not None:
            join_into(self.host.clock, event.capture)

    def sync_device(self) -> None:
        """torch.cuda.synchronize(): the host waits for every stream."""
        for stream in self.streams():
            join_into(self.host.clock, stream.clock)

    # --- memory -----------------------------------------------------------------

    def allocate(self, nbytes: int, label: str, site: Site = UNKNOWN_SITE, *,
                 stream: Agent | None = None, space: str = "device",
                 address: int | None = None) -> Allocation:
        """New memory. With an address, any freed allocation it overlaps is being
        reused: accesses to the old block not ordered before the reuse stay in the
        shadow, so the new owner's accesses race with them (missing record_stream)."""
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        if nbytes < 0:
            raise ValueError(f"allocation size must be >= 0, got {nbytes}")
        self._allocs += 1
        alloc = Allocation(self._allocs, label, nbytes, space, address, stream, site)
        if address is not None and nbytes > 0:
            self._reuse(alloc)
        return alloc

    def record_stream(self, alloc: Allocation, stream: Agent) -> None:
        """tensor.record_stream(stream): the block is not reused before the work queued
        on `stream` when the tensor is freed has finished."""
        _check_stream(stream)
        if alloc.freed:
            raise ValueError(f"record_stream on {alloc.label}, which was already freed")
        if stream is alloc.stream:
            # PyTorch ignores it: reuse on the allocation stream is FIFO-ordered anyway. A
            # fence here would hide a race of the next owner used on another stream.
            return
        alloc.record_streams.add(stream)

    def free(self, alloc: Allocation, site: Site = UNKNOWN_SITE) -> None:
        """The last reference to the memory is gone; the allocator may reuse it."""
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        if alloc.freed:
            raise ValueError(f"{alloc.label} freed twice")
        alloc.freed = True
        alloc.free_site = site
        # The caching allocator records an event on each record_stream stream now and
        # hands the block out again only once those events completed.
        alloc.reuse_fences = [list(s.clock) for s in alloc.record_streams]
        if alloc.address is not None and alloc.shadow:
            self._freed.setdefault(alloc.space, []).append(alloc)

    def _reuse(self, alloc: Allocation) -> None:
        lo, hi = alloc.address, alloc.address + alloc.nbytes
        still_freed = []
        for old in self._freed.get(alloc.space, ()):
            old_lo, old_hi = old.address, old.address + old.nbytes
            if old_hi <= lo or old_lo >= hi:
                still_freed.append(old)
                continue
            shift = old_lo - lo  # old offset + shift = new offset
            for acc in old.shadow:
                start, stop = max(acc.start + shift, 0), min(acc.stop + shift, alloc.nbytes)
                if start >= stop or _fenced(acc, old.reuse_fences):
                    continue
                # acc.alloc, not old: an access carried over an earlier reuse still names the
                # tensor it touched, the one that needed record_stream.
                alloc.shadow.append(_with_range(acc, start, stop))
            if not (lo <= old_lo and old_hi <= hi):
                # Parts of it may be handed out again. The bytes handed to `alloc` now keep
                # their history in alloc's shadow (pruned by its accesses, fenced by its own
                # record_stream when it is freed), so drop them here: a stale copy would make
                # a later reuse race with accesses that alloc's fence already covered.
                old.shadow = _cut(old.shadow, lo - old_lo, hi - old_lo)
                if old.shadow:
                    still_freed.append(old)
        self._freed[alloc.space] = still_freed

    # --- race detection ---------------------------------------------------------

    def _check_all(self, agent: Agent, accesses: Iterable[AccessSpec], op: str,
                   site: Site) -> list[Race]:
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        found = []
        for alloc, start, stop, is_write in accesses:
            race = self._check(agent, alloc, start, stop, is_write, op, site)
            if race is not None:
                found.append(race)
        return found

    def _check(self, agent: Agent, alloc: Allocation, start: int, stop: int, is_write: bool,
               op: str, site: Site) -> Race | None:
        """Check one access against the allocation's shadow, then update the shadow.

        A write conflicts with every earlier overlapping access, a read with every
        earlier overlapping write; a conflict is a race unless the earlier access
        happened before this one (its epoch is in the agent's clock). An earlier
        access that happened before this one and lies inside it can be forgotten
        when this one is a write or both are reads: anything that would race with
        it then races with this one too.
        """
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        if alloc.freed:
            raise ValueError(f"{op} accesses {alloc.label} after it was freed")
        if not 0 <= start <= stop <= alloc.nbytes:
            raise ValueError(
                f"{op}: byte range [{start}, {stop}) is outside {alloc.label} "
                f"({alloc.nbytes} bytes)")
        if start == stop:
            return None  # zero-size accesses touch nothing
        self.accesses += 1
        self._seq += 1
        clock = agent.clock
        access = Access(self._seq, agent, clock[agent.id], alloc, start, stop, is_write, op, site)
        race = None
        kept = []
        for prev in alloc.shadow:
            if prev.stop <= start or prev.start >= stop:
                kept.append(prev)
                continue
            pid = prev.agent.id
            ordered = prev.count <= (clock[pid] if pid < len(clock) else 0)
            if ordered:
                if (is_write or not prev.is_write) and start <= prev.start and prev.stop <= stop:
                    continue  # dominated by this access
            elif race is None and (is_write or prev.is_write):
                race = Race(prev, access, alloc, _facts(agent))
            kept.append(prev)
        kept.append(access)
        alloc.shadow = kept
        if race is not None:
            self._found(race)
        return race

    def _found(self, race: Race) -> None:
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        if len(self.races) < self.max_races:
            self.races.append(race)
        else:
            self.races_dropped += 1
        if self.on_race is not None:
            self.on_race(race)


def _check_stream(agent: Agent) -> None:
    if not isinstance(agent, Agent):
        raise TypeError(f"expected a stream of this model, got {agent!r}")
    if agent.is_host:
        raise ValueError("the host is not a stream: work cannot be queued on it")


def _with_range(acc: Access, start: int, stop: int) -> Access:
    """The same access (same seq and epoch) restricted to bytes [start, stop)."""
    return Access(acc.seq, acc.agent, acc.count, acc.alloc, start, stop, acc.is_write,
                  acc.op, acc.site)


def _cut(shadow: list[Access], lo: int, hi: int) -> list[Access]:
    """The shadow without bytes [lo, hi): accesses straddling the cut keep their ends."""
    kept = []
    for acc in shadow:
        if acc.stop <= lo or acc.start >= hi:
            kept.append(acc)
            continue
        if acc.start < lo:
            kept.append(_with_range(acc, acc.start, lo))
        if acc.stop > hi:
            kept.append(_with_range(acc, hi, acc.stop))
    return kept


def _fenced(acc: Access, fences: list[VectorClock]) -> bool:
    """Whether a record_stream fence guarantees this access finished before reuse."""
    return any(acc.count <= entry(f, acc.agent.id) for f in fences)


def _facts(agent: Agent) -> tuple:
    """Snapshot what explains a race by this agent: its recent waits, each with the
    streams its event had been recorded on by the time the race was found."""
    return tuple((note, frozenset(note.event.ever_recorded_on)) for note in agent.recent_waits)
