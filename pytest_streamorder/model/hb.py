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
FastTrack-style against the accessing agent's clock. An access is the exact set of bytes
it touches (regions.py: a span, a strided box, explicit runs). Detection happens when
work is *issued*, so the verdict depends only on the program's ordering edges, never on
how a schedule happened to run it.

Pending accesses (index_put_, scatter_, ...: the set depends on index values that exist
only when the op runs). The caller passes a `Pending` holding a superset and later calls
`resolve(pending, exact)`. The verdict must still be the one a brute-force closure over
the issued program gives: the pending access P races with an access X iff their exact
sets share a byte, one writes, and neither is ordered before the other by the clocks
*at issue*. Ordering is decided at issue as for any access (P's epoch and clock are
fixed then); only the intersection waits. So:

- P is checked at issue like any access, against the shadow, with its superset: an
  earlier entry that conflicts with the superset and is not ordered before P becomes a
  *pair* (earlier, P), to compare exactly later. Nothing is reported yet.
- P enters the shadow with its superset. A later access X checked before P resolves
  meets P there: if P is ordered before X, nothing (X may even forget P, below); if not
  and the kinds conflict on the superset, the pair (P, X) is noted. So accesses issued
  after P but checked before it runs are still compared with it, exactly, once known.
- P itself never makes an earlier entry redundant (its exact set may be smaller than
  the superset), so every entry P could race with stays visible to later accesses.
- resolve() settles P (its shadow entry takes the exact set, so accesses checked later
  compare exactly) and evaluates P's pairs whose other side is known too (a pair of two
  pending accesses is evaluated when the second resolves). A pair that intersects is a
  race; at most one is reported per later access, as at issue.
- Such a race is found while a stream runs the op, where raising would unwind the
  scheduler: it waits in `_deferred` and is reported by `flush()`, which launch and
  host_access call first and the syncs call last (flush_on_sync), so it surfaces at the
  next launch, host access or sync, and at the final drain.

Why forgetting stays sound: the shadow forgets an earlier entry E when a later access W,
ordered after E, covers E's set and W writes (or both read). Any access Y racing with E
then races with W: Y meets W (E is inside W), and Y cannot be ordered after W without
being ordered after E. This holds when E is pending (its superset is inside W, so its
exact set is), and when Y is pending (Y's pair with W is noted at Y's issue, and Y meets
W whenever it meets E). So the set of accesses flagged equals the brute force's whatever
the moment each pending access resolves; tests/properties/test_model_vs_bruteforce.py
checks it with resolves at random points of random traces.
"""

from __future__ import annotations

from typing import Callable, Iterable

from .clock import VectorClock, entry, join_into
from .freed import FreedIndex
from .objects import Access, AccessSpec, Agent, Allocation, Event, Pending, WaitNote
from .regions import clip, cut, meets, shift as shifted, within
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
        self._freed: dict[str, FreedIndex] = {}  # space -> freed, not yet fully reused
        self._stream_names: set[str] = set()
        self._free_slots: list[int] = []  # ids of retired streams, for new streams to take
        # stream -> its own count at its latest access to host (pinned) memory that the
        # host is not yet ordered after. While empty, a host access to host memory can
        # race with nothing: every earlier stream access to it is ordered before the host,
        # and every later one after it (the virtual device leaves such accesses out).
        self.host_memory_in_flight: dict[Agent, int] = {}
        self._deferred: list[Race] = []  # found when a pending access resolved, not reported
        self._flagged: set[int] = set()  # seqs of paired accesses already reported as the later one
        self.unresolved = 0  # pending accesses whose exact set could not be learnt
        # Report deferred races from the sync methods too (the GPU backend turns it off:
        # its syncs arrive in trace callbacks, inside C++, where an exception is lost).
        self.flush_on_sync = True
        # Called after each host sync, before any flush: the GPU backend compares the
        # sources of the H2D copies the sync covers with their bytes at issue.
        self.on_host_sync: Callable[[], None] | None = None

    # --- agents and events --------------------------------------------------------

    def _new_agent(self, name: str, is_host: bool) -> Agent:
        agent = Agent(len(self.agents), name, is_host)
        self.agents.append(agent)
        return agent

    def new_stream(self, name: str) -> Agent:
        if name in self._stream_names or name == "host":
            raise ValueError(f"a stream named {name!r} already exists; stream names must be unique")
        self._stream_names.add(name)
        if not self._free_slots:
            return self._new_agent(name, is_host=False)
        slot = self._free_slots.pop()
        agent = Agent(slot, name, is_host=False)
        # The slot's counts go on from the retired stream's, all known to the host (see
        # retire()); its first enqueue would carry them over from the host's clock too.
        agent.clock[slot] = self.agents[slot].clock[slot]
        self.agents[slot] = agent
        return agent

    def retire(self, stream: Agent) -> bool:
        """The stream is gone (nothing can issue work to it any more): give its slot in
        every vector clock to the next new stream, so clocks stay as long as the most
        streams alive at once, not as all a session ever made. Only once the host is
        ordered after all its work (a sync): every later access is then ordered after each
        of its accesses, so no race with them can be lost or invented by sharing the
        slot. Returns whether it was retired (False: the host does not know it all yet)."""
        self._own(stream)
        if not self.host_knows_stream(stream):
            return False
        stream.retired = True
        self._free_slots.append(stream.id)
        return True

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
        return [a for a in self.agents if not a.is_host and not a.retired]

    # --- the ordering rules -----------------------------------------------------

    def _own(self, stream: Agent) -> None:
        _check_stream(stream)
        if stream.id >= len(self.agents) or self.agents[stream.id] is not stream:
            raise ValueError(f"{stream!r} belongs to another HappensBefore model")
        if stream.retired:
            raise ValueError(f"{stream!r} was retired; it takes no more work")

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
        if self._deferred:
            self.flush()
        self._enqueue(stream)
        stream.clock[stream.id] += 1
        return self._check_all(stream, accesses, op, site)

    def host_access(self, op: str, accesses: Iterable[AccessSpec],
                    site: Site = UNKNOWN_SITE) -> list[Race]:
        """The host reads or writes memory directly (pinned buffers)."""
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        if self._deferred:
            self.flush()
        return self._check_all(self.host, accesses, op, site)

    def record(self, event: Event, stream: Agent, site: Site = UNKNOWN_SITE) -> None:
        """event.record(stream): capture the stream's position now, replacing any
        earlier capture (a later waiter no longer waits for the old one)."""
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        self._enqueue(stream)
        event.capture = list(stream.clock)
        event.recorded_on = stream
        event.record_site = site
        event.ever_recorded_on.add(stream)

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
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        _check_stream(stream)
        join_into(self.host.clock, stream.clock)
        self._host_synced()
        if self._deferred and self.flush_on_sync:
            self.flush()

    def sync_event(self, event: Event) -> None:
        """event.synchronize() or a True event.query(); a never-recorded event is a no-op."""
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        if event.capture is not None:
            join_into(self.host.clock, event.capture)
            self._host_synced()
        if self._deferred and self.flush_on_sync:
            self.flush()

    def sync_device(self) -> None:
        """torch.cuda.synchronize(): the host waits for every stream."""
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        for stream in self.streams():
            join_into(self.host.clock, stream.clock)
        self._host_synced()
        if self._deferred and self.flush_on_sync:
            self.flush()

    def _host_synced(self) -> None:
        """The host's clock grew by a sync: forget the in-flight host-memory accesses it
        is now ordered after, then tell the caller (on_host_sync)."""
        in_flight = self.host_memory_in_flight
        if in_flight:
            clock = self.host.clock
            for stream, count in list(in_flight.items()):
                if count <= entry(clock, stream.id):
                    del in_flight[stream]
        if self.on_host_sync is not None:
            self.on_host_sync()

    def host_knows_stream(self, stream: Agent) -> bool:
        """Whether the host is ordered after all work issued to `stream` so far."""
        return entry(self.host.clock, stream.id) >= stream.clock[stream.id]

    def host_knows_event(self, event: Event) -> bool:
        """Whether the host is ordered after the event's capture (True if never recorded)."""
        if event.capture is None:
            return True
        rec = event.recorded_on.id
        return entry(self.host.clock, rec) >= entry(event.capture, rec)

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
        if alloc.address is not None and alloc.shadow and alloc.nbytes > 0:
            index = self._freed.get(alloc.space)
            if index is None:
                index = self._freed[alloc.space] = FreedIndex()
            index.add(alloc)

    def release(self, space: str, address: int, nbytes: int) -> None:
        """Freed memory [address, address + nbytes) went back to the driver and its
        addresses are never handed out again: no later access can meet the accesses of
        the freed allocations there, so the model forgets them."""
        index = self._freed.get(space)
        if index is None:
            return
        lo, hi = address, address + nbytes
        for old in index.take(lo, hi):
            old.shadow = _cut(old.shadow, lo - old.address, hi - old.address)
            if not old.shadow:
                index.discard(old)

    def freed_blocks(self, space: str = "device") -> int:
        """Freed allocations whose accesses a reuse may still race with."""
        index = self._freed.get(space)
        return len(index) if index is not None else 0

    def _reuse(self, alloc: Allocation) -> None:
        """Carry the accesses of the freed blocks `alloc` overlaps into it (freed.py finds
        them, in the order they were freed, without a scan)."""
        index = self._freed.get(alloc.space)
        if index is None:
            return
        lo, hi = alloc.address, alloc.address + alloc.nbytes
        for old in index.take(lo, hi):
            old_lo, old_hi = old.address, old.address + old.nbytes
            shift = old_lo - lo  # old offset + shift = new offset
            for acc in old.shadow:
                _settle(acc)
                if acc.start >= acc.stop or _fenced(acc, old.reuse_fences):
                    continue
                # acc.alloc, not old: an access carried over an earlier reuse still names the
                # tensor it touched, the one that needed record_stream.
                moved = _carried(acc, shift, alloc.nbytes)
                if moved is not None:
                    alloc.shadow.append(moved)
            if not (lo <= old_lo and old_hi <= hi):
                # Parts of it may be handed out again. The bytes handed to `alloc` now keep
                # their history in alloc's shadow (pruned by its accesses, fenced by its own
                # record_stream when it is freed), so drop them here: a stale copy would make
                # a later reuse race with accesses that alloc's fence already covered.
                old.shadow = _cut(old.shadow, lo - old_lo, hi - old_lo)
                if old.shadow:
                    continue  # its other bytes stay in the index
                index.discard(old)
            else:
                index.forget(old)  # take() removed all of its bytes

    # --- race detection ---------------------------------------------------------

    def _check_all(self, agent: Agent, accesses: Iterable[AccessSpec], op: str,
                   site: Site) -> list[Race]:
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        found = []
        for spec in accesses:
            if len(spec) == 4:
                alloc, start, stop, is_write = spec
                race = self._check(agent, alloc, start, stop, None, None, is_write, op, site)
            else:
                alloc, what, is_write = spec
                pending = what if isinstance(what, Pending) else None
                race = self._check(agent, alloc, what.start, what.stop,
                                   what.region if pending is not None else what, pending,
                                   is_write, op, site)
            if race is not None:
                found.append(race)
        return found

    def _check(self, agent: Agent, alloc: Allocation, start: int, stop: int, region,
               pending: Pending | None, is_write: bool, op: str, site: Site) -> Race | None:
        """Check one access against the allocation's shadow, then update the shadow.

        A write conflicts with every earlier access it shares a byte with, a read with
        every such earlier write; a conflict is a race unless the earlier access
        happened before this one (its epoch is in the agent's clock). An earlier
        access that happened before this one and lies inside it can be forgotten
        when this one is a write or both are reads: anything that would race with
        it then races with this one too. A conflict with a pending access (either
        side) is a pair to compare once both sets are known (module docstring).
        """
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        if alloc.freed:
            raise ValueError(f"{op} accesses {alloc.label} after it was freed")
        if not 0 <= start <= stop <= alloc.nbytes:
            raise ValueError(
                f"{op}: byte range [{start}, {stop}) is outside {alloc.label} "
                f"({alloc.nbytes} bytes)")
        if pending is not None and (pending.access is not None or pending.resolved):
            raise ValueError(f"{op}: a Pending access is checked once, before it resolves")
        if start == stop:
            return None  # zero-size accesses touch nothing
        self.accesses += 1
        self._seq += 1
        clock = agent.clock
        access = Access(self._seq, agent, clock[agent.id], alloc, start, stop, is_write, op, site,
                        region)
        if alloc.space == "host" and not agent.is_host:
            self.host_memory_in_flight[agent] = access.count
        if pending is not None:
            access.pending = pending
            access.region = pending  # marks it pending: the fast path below skips it
            pending.access = access
            pending.clock = list(clock)  # resolve() forgets what it ordered after (_prune)
        plain = region is None and pending is None
        race = None
        paired = False  # in a pair with a pending access: resolve() must know if flagged
        kept = []
        for prev in alloc.shadow:
            if prev.stop <= start or prev.start >= stop:
                kept.append(prev)
                continue
            if plain and prev.region is None:  # two spans: the fast path
                pid = prev.agent.id
                if prev.count <= (clock[pid] if pid < len(clock) else 0):
                    if (is_write or not prev.is_write) and start <= prev.start and prev.stop <= stop:
                        continue  # dominated by this access
                elif race is None and (is_write or prev.is_write):
                    race = Race(prev, access, alloc, _facts(agent))
                kept.append(prev)
                continue
            # Exact sets, or a pending access on either side.
            if prev.pending is not None:
                if _settle(prev):  # resolved since: its exact set from now on
                    if prev.start == prev.stop:
                        continue  # it touched nothing
                    if prev.stop <= start or prev.start >= stop:
                        kept.append(prev)
                        continue
                    prev_set = prev.region
                else:
                    prev_set = prev.pending.region if prev.carry is None else None  # superset
            else:
                prev_set = prev.region
            if not meets(prev.start, prev.stop, prev_set, start, stop, region):
                kept.append(prev)
                continue
            pid = prev.agent.id
            if prev.count <= (clock[pid] if pid < len(clock) else 0):
                if pending is None and (is_write or not prev.is_write) and \
                        within(prev.start, prev.stop, prev_set, start, stop, region):
                    continue  # dominated by this access
            elif is_write or prev.is_write:
                if pending is not None or prev.pending is not None:
                    self._pair(prev, access, alloc, agent)
                    paired = True
                elif race is None:
                    race = Race(prev, access, alloc, _facts(agent))
            kept.append(prev)
        kept.append(access)
        alloc.shadow = kept
        if race is not None:
            if paired:  # (only then: the set stays as small as the pairs)
                self._flagged.add(access.seq)
            self._found(race)
        return race

    # --- pending accesses (module docstring) ------------------------------------------

    def _pair(self, earlier: Access, later: Access, alloc: Allocation, agent: Agent) -> None:
        pair = (earlier, later, alloc, _facts(agent))
        for acc in (earlier, later):
            if acc.pending is not None:
                acc.pending.pairs.append(pair)

    def resolve(self, pending: Pending, exact: tuple | None) -> None:
        """The op of a pending access ran: `exact` = (start, stop, region) is the set it
        touched (within the superset given at issue), or None when it could not be
        learnt (then nothing is reported for it; counted in `unresolved`). Races found
        are reported at the next flush()."""
        if pending.resolved:
            raise ValueError("this pending access was already resolved")
        if exact is None:
            self.unresolved += 1
            exact = (0, 0, None)
        elif exact[0] < exact[1] and not (pending.start <= exact[0] and exact[1] <= pending.stop):
            raise ValueError(f"exact set {exact[:2]} lies outside the pending access's "
                             f"[{pending.start}, {pending.stop})")
        pending.resolved = True
        pending.exact = exact
        access = pending.access
        if access is None:
            return  # it touched nothing at issue already
        _settle(access)
        if access.start == access.stop:
            shadow = access.alloc.shadow
            if access in shadow:
                shadow.remove(access)
        elif access in access.alloc.shadow:
            _prune(access, pending.clock)
        pending.clock = None
        pairs, pending.pairs = pending.pairs, []
        for earlier, later, alloc, facts in pairs:
            if not (_settle(earlier) and _settle(later)) or later.seq in self._flagged:
                continue  # the other side is still pending (it evaluates the pair), or done
            if meets(earlier.start, earlier.stop, earlier.region,
                     later.start, later.stop, later.region):
                self._flagged.add(later.seq)
                race = Race(earlier, later, alloc, facts)
                race.found_when = pending.found_when
                self._deferred.append(race)

    def defer(self, race: Race) -> None:
        """A race found where raising is not possible (while a stream runs an op, in a
        trace callback): reported by the next flush(), like a resolved pending race."""
        self._deferred.append(race)

    def flush(self) -> None:
        """Report the races that resolve() found, naming this call as where (the
        innermost user frame above it)."""
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        if not self._deferred:
            return
        deferred, self._deferred = self._deferred, []
        site = Site.here(1)
        for race in deferred:
            race.found_at = site
            self._keep(race)
        if self.on_race is not None:
            for race in deferred:
                self.on_race(race)

    def _found(self, race: Race) -> None:
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        self._keep(race)
        if self.on_race is not None:
            self.on_race(race)

    def _keep(self, race: Race) -> None:
        if len(self.races) < self.max_races:
            self.races.append(race)
        else:
            self.races_dropped += 1


def _check_stream(agent: Agent) -> None:
    if not isinstance(agent, Agent):
        raise TypeError(f"expected a stream of this model, got {agent!r}")
    if agent.is_host:
        raise ValueError("the host is not a stream: work cannot be queued on it")


def _settle(acc: Access) -> bool:
    """Give an access of a resolved pending op its exact set (for a copy carried to a
    reused block: shifted, within the copy's window). False while still pending."""
    pending = acc.pending
    if pending is None:
        return True
    if not pending.resolved:
        return False
    start, stop, region = pending.exact
    if acc.carry is not None:
        start, stop, region = clip(start + acc.carry, stop + acc.carry,
                                   shifted(region, acc.carry), acc.start, acc.stop)
    acc.start, acc.stop, acc.region = (start, stop, region) if start < stop else (0, 0, None)
    acc.pending = acc.carry = None
    return True


def _prune(access: Access, clock: list) -> None:
    """A pending access just resolved: forget the earlier entries of its allocation that
    it makes redundant, by the rule _check applies to a plain access (ordered before it
    by its clock at issue, inside its exact set, and it writes or both read). Without
    this, a buffer written only through indexed ops (buf[idx] = v in a loop) would keep
    every write in its shadow. Entries issued after it, and pending ones, stay."""
    seq, start, stop, region, is_write = (access.seq, access.start, access.stop,
                                          access.region, access.is_write)
    n = len(clock)
    kept = []
    for prev in access.alloc.shadow:
        if prev.pending is not None and _settle(prev) and prev.start == prev.stop:
            continue  # resolved since, and touched nothing
        if prev.seq < seq and prev.pending is None and (is_write or not prev.is_write):
            pid = prev.agent.id
            if prev.count <= (clock[pid] if pid < n else 0) and \
                    within(prev.start, prev.stop, prev.region, start, stop, region):
                continue
        kept.append(prev)
    access.alloc.shadow = kept


def _with_set(acc: Access, start: int, stop: int, region=None) -> Access:
    """The same access (same seq and epoch) with another set of bytes."""
    return Access(acc.seq, acc.agent, acc.count, acc.alloc, start, stop, acc.is_write,
                  acc.op, acc.site, region)


def _window(acc: Access, start: int, stop: int, carry: int) -> Access:
    """A copy of a still-pending access, limited to [start, stop), `carry` bytes from
    the original's offsets; it takes its exact set when the pending op resolves."""
    copy = _with_set(acc, start, stop, acc.pending)  # region: the pending mark
    copy.pending = acc.pending
    copy.carry = carry
    return copy


def _carried(acc: Access, shift: int, nbytes: int) -> Access | None:
    """The access moved `shift` bytes, into a block of `nbytes` (None: nothing left)."""
    if acc.pending is not None:
        start, stop = max(acc.start + shift, 0), min(acc.stop + shift, nbytes)
        return _window(acc, start, stop, (acc.carry or 0) + shift) if start < stop else None
    if acc.region is None:
        start, stop = max(acc.start + shift, 0), min(acc.stop + shift, nbytes)
        return _with_set(acc, start, stop) if start < stop else None
    start, stop, region = clip(acc.start + shift, acc.stop + shift, shifted(acc.region, shift),
                               0, nbytes)
    return _with_set(acc, start, stop, region) if start < stop else None


def _cut(shadow: list[Access], lo: int, hi: int) -> list[Access]:
    """The shadow without bytes [lo, hi): accesses straddling the cut keep their ends."""
    kept = []
    for acc in shadow:
        _settle(acc)
        if acc.start >= acc.stop and acc.pending is None:
            continue  # touches nothing (a pending op that named no element)
        if acc.stop <= lo or acc.start >= hi:
            kept.append(acc)
            continue
        if acc.pending is not None:  # still pending: narrow its window
            if acc.start < lo:
                kept.append(_window(acc, acc.start, lo, acc.carry or 0))
            if acc.stop > hi:
                kept.append(_window(acc, hi, acc.stop, acc.carry or 0))
        elif acc.region is not None:
            start, stop, region = cut(acc.start, acc.stop, acc.region, lo, hi)
            if start < stop:
                kept.append(_with_set(acc, start, stop, region))
        else:
            if acc.start < lo:
                kept.append(_with_set(acc, acc.start, lo))
            if acc.stop > hi:
                kept.append(_with_set(acc, hi, acc.stop))
    return kept


def _fenced(acc: Access, fences: list[VectorClock]) -> bool:
    """Whether a record_stream fence guarantees this access finished before reuse."""
    return any(acc.count <= entry(f, acc.agent.id) for f in fences)


def _facts(agent: Agent) -> tuple:
    """Snapshot what explains a race by this agent: its recent waits, each with the
    streams its event had been recorded on by the time the race was found."""
    return tuple((note, frozenset(note.event.ever_recorded_on)) for note in agent.recent_waits)
