"""The race detector against a brute-force happens-before computed from first principles.

Hypothesis generates small random traces (streams, events, allocations, launches with
random byte ranges, strided views and pending (index-dependent) accesses, host accesses,
records, waits, syncs, frees and reuse of the same addresses with or without
record_stream). A pending access is issued with a superset and resolved to its exact
set at a random later point of the trace (or at the end, in a random order): the point
where a schedule happened to run the op. `BruteForce` is the specification: it builds
the explicit graph of trace nodes with one edge per CUDA ordering rule of DESIGN.md, takes
its transitive closure, and calls an access racy when its exact set of bytes conflicts
with an earlier access not ordered before it. It shares no code with hb.py's vector
clocks or with regions.py (it enumerates bytes itself).
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import event, example, given, note
from hypothesis import strategies as st

from pytest_streamorder.model import READ, WRITE, HappensBefore, Pending
from pytest_streamorder.model.regions import from_runs, strided
from tests.unit.test_model_regions import enumerate_bytes  # the one brute-force byte walk

HOST = "host"

# --- traces -------------------------------------------------------------------------------
#
# A trace is a list of tuples, valid by construction (no access to freed memory, no live
# allocations overlapping in memory):
#   ("alloc", aid, nbytes, address, s)   ("free", aid)      ("record_stream", aid, s)
#   ("launch", s, [access, ...])     ("host", [access, ...])     ("resolve", pid)
# where an access is a span (aid, start, stop, is_write), a strided view
# ("view", aid, (size, stride, offset, itemsize), is_write), or a pending access
# ("pending", aid, superset, exact, is_write, pid): superset a span (start, stop) or a
# view, exact a frozenset of offsets inside it, known only at ("resolve", pid).
#   ("record", e, s)   ("wait", s, e)   ("wait_stream", waiter, other)
#   ("sync_stream", s)   ("sync_event", e)   ("sync_device",)
#   ("renew", s): the host syncs stream s, drops it and makes a new stream in its place
#   (the detector retires the old one and the new one takes its clock slot)
# Streams and events are small ints; allocations are ints in allocation order; an
# allocation's s is the stream whose allocator pool it came from.

ARENA = 40  # every block lives in [0, ARENA)
MAX_SIZE = 12

# Swarm testing: each trace enables a random subset of these (launches always), so that
# some traces have few ordering edges and many candidate races, others many edges and
# subtle gaps, instead of every trace averaging out to "everything is ordered by a sync".
# "handoff" (record on one stream, wait on another) and "event_sync" (record, then
# event.synchronize) are the idioms of correct code: likely pairs that the subtle rules
# (capture at record time, at wait time) then have to get right.
OPTIONAL_KINDS = ("host", "record", "wait", "wait_stream", "sync_stream", "sync_event",
                  "sync_device", "record_stream", "realloc", "handoff", "event_sync",
                  "views", "pending", "resolve", "renew")


def superset_bytes(superset) -> frozenset:
    if len(superset) == 2:
        return frozenset(range(*superset))
    return enumerate_bytes(*superset)


def offsets(acc) -> frozenset:
    """The offsets (within its allocation) an access of a trace touches in the end."""
    if acc[0] == "view":
        return enumerate_bytes(*acc[2])
    if acc[0] == "pending":
        return acc[3]
    return frozenset(range(acc[1], acc[2]))


def issued_empty(acc) -> bool:
    """Zero-size at issue: the detector ignores it (a pending one by its superset)."""
    if acc[0] == "view":
        return not enumerate_bytes(*acc[2])
    if acc[0] == "pending":
        return not superset_bytes(acc[2])
    return acc[1] >= acc[2]


@st.composite
def traces(draw):
    n_streams = draw(st.integers(2, 4), label="streams")
    n_events = draw(st.integers(1, 3), label="events")
    n_slots = draw(st.integers(1, 3), label="allocations")
    enabled = [kind for kind in OPTIONAL_KINDS if draw(st.booleans(), label=kind)]
    kinds = st.sampled_from(["launch"] * 3 + enabled)
    stream = st.integers(0, n_streams - 1)
    trace, live = [], {}  # live: slot -> (aid, nbytes, address)
    next_aid = 0

    def allocate(slot, nbytes, address):
        nonlocal next_aid
        trace.append(("alloc", next_aid, nbytes, address, draw(stream)))
        live[slot] = (next_aid, nbytes, address)
        next_aid += 1

    for slot in range(n_slots):
        allocate(slot, draw(st.integers(1, MAX_SIZE)), slot * MAX_SIZE)

    use_views, use_pending = "views" in enabled, "pending" in enabled
    unresolved = []  # pids issued, not resolved yet

    def view_in(nbytes):
        itemsize = draw(st.sampled_from([1, 2]))
        n = nbytes // itemsize
        ndim = draw(st.integers(1, 2))
        size = tuple(draw(st.integers(0, 4)) for _ in range(ndim))
        stride = tuple(draw(st.integers(-3, 4)) for _ in range(ndim))
        lo = sum((k - 1) * s for k, s in zip(size, stride) if s < 0 and k)
        hi = sum((k - 1) * s for k, s in zip(size, stride) if s > 0 and k)
        if n == 0 or hi - lo >= n:
            return None
        return size, stride, draw(st.integers(-lo, n - 1 - hi)), itemsize

    def accesses(min_size):
        out = []
        for _ in range(draw(st.integers(min_size, 3))):
            aid, nbytes, _ = live[draw(st.integers(0, n_slots - 1))]
            form = draw(st.sampled_from(["span"] + ["view"] * use_views + ["pending"] * use_pending))
            view = view_in(nbytes) if form != "span" else None
            start = draw(st.integers(0, nbytes))
            stop = draw(st.integers(min(start + 1, nbytes), nbytes))  # zero-size at the end
            if form == "view" and view is not None:
                out.append(("view", aid, view, draw(st.booleans())))
            elif form == "pending":
                superset = view if view is not None and draw(st.booleans()) else (start, stop)
                allowed = sorted(superset_bytes(superset))
                exact = frozenset(draw(st.lists(st.sampled_from(allowed), max_size=6))) \
                    if allowed else frozenset()
                pid = len(pids)
                pids.append(pid)
                unresolved.append(pid)
                out.append(("pending", aid, superset, exact, draw(st.booleans()), pid))
            else:
                out.append((aid, start, stop, draw(st.booleans())))
        return out

    pids: list = []
    for _ in range(draw(st.integers(0, 30))):
        kind = draw(kinds)
        if kind == "launch":
            trace.append(("launch", draw(stream), accesses(0)))
        elif kind == "host":
            trace.append(("host", accesses(1)))
        elif kind == "resolve":
            if unresolved:
                trace.append(("resolve", unresolved.pop(draw(st.integers(0, len(unresolved) - 1)))))
        elif kind == "record":
            trace.append(("record", draw(st.integers(0, n_events - 1)), draw(stream)))
        elif kind == "handoff":
            ev = draw(st.integers(0, n_events - 1))
            trace += [("record", ev, draw(stream)), ("wait", draw(stream), ev)]
        elif kind == "event_sync":
            ev = draw(st.integers(0, n_events - 1))
            trace += [("record", ev, draw(stream)), ("sync_event", ev)]
        elif kind == "wait":
            trace.append(("wait", draw(stream), draw(st.integers(0, n_events - 1))))
        elif kind == "wait_stream":
            trace.append(("wait_stream", draw(stream), draw(stream)))
        elif kind == "sync_stream":
            trace.append(("sync_stream", draw(stream)))
        elif kind == "sync_event":
            trace.append(("sync_event", draw(st.integers(0, n_events - 1))))
        elif kind == "sync_device":
            trace.append(("sync_device",))
        elif kind == "renew":
            trace.append(("renew", draw(stream)))
        elif kind == "record_stream":
            trace.append(("record_stream", live[draw(st.integers(0, n_slots - 1))][0],
                          draw(stream)))
        else:  # free a slot's allocation and allocate again, often at an overlapping address
            slot = draw(st.integers(0, n_slots - 1))
            old_aid, old_nbytes, old_address = live.pop(slot)
            for s in draw(st.lists(stream, unique=True, max_size=2), label="record_stream"):
                trace.append(("record_stream", old_aid, s))
            trace.append(("free", old_aid))
            nbytes = draw(st.integers(1, MAX_SIZE))
            # Mostly where the freed block was (the allocator hands it out again, whole,
            # split or merged with a neighbour), sometimes anywhere in the arena.
            base = min(old_address, ARENA - nbytes)
            address = draw(st.one_of(
                st.just(base),
                st.integers(max(0, base - 4), min(ARENA - nbytes, base + 4)),
                st.integers(0, ARENA - nbytes)))
            if any(address < a + n and a < address + nbytes for _, n, a in live.values()):
                address, nbytes = old_address, old_nbytes  # taken: the freed block, whole
            allocate(slot, nbytes, address)
    # The program ends: every op has run, in any order.
    for pid in draw(st.permutations(unresolved), label="final resolves"):
        trace.append(("resolve", pid))
    return n_streams, n_events, trace


# --- the detector under test ----------------------------------------------------------------


def run_detector(n_streams, n_events, trace):
    hb = HappensBefore()
    streams = [hb.new_stream(f"s{i}") for i in range(n_streams)]
    events = [hb.new_event(f"e{i}") for i in range(n_events)]
    allocs = {}
    pending = {}  # pid -> (Pending, its exact offsets)
    renewals = [0] * n_streams

    def spec(acc):
        if acc[0] == "view":
            start, stop, region = strided(*acc[2])
            return (allocs[acc[1]], start, stop, acc[3]) if region is None else \
                (allocs[acc[1]], region, acc[3])
        if acc[0] == "pending":
            _, aid, superset, exact, w, pid = acc
            p = Pending(*superset) if len(superset) == 2 else Pending(*strided(*superset))
            pending[pid] = (p, exact)
            return (allocs[aid], p, WRITE if w else READ)
        aid, start, stop, w = acc
        return (allocs[aid], start, stop, WRITE if w else READ)

    def specs(accs):
        return [spec(acc) for acc in accs]

    for step, item in enumerate(trace):
        kind = item[0]
        if kind == "alloc":
            _, aid, nbytes, address, s = item
            allocs[aid] = hb.allocate(nbytes, f"a{aid}", address=address, stream=streams[s])
        elif kind == "free":
            hb.free(allocs[item[1]])
        elif kind == "record_stream":
            hb.record_stream(allocs[item[1]], streams[item[2]])
        elif kind == "launch":
            hb.launch(streams[item[1]], f"op{step}", specs(item[2]))
        elif kind == "host":
            hb.host_access(f"op{step}", specs(item[1]))
        elif kind == "record":
            hb.record(events[item[1]], streams[item[2]])
        elif kind == "wait":
            hb.wait(streams[item[1]], events[item[2]])
        elif kind == "wait_stream":
            hb.wait_stream(streams[item[1]], streams[item[2]])
        elif kind == "sync_stream":
            hb.sync_stream(streams[item[1]])
        elif kind == "sync_event":
            hb.sync_event(events[item[1]])
        elif kind == "sync_device":
            hb.sync_device()
        elif kind == "renew":
            s = item[1]
            hb.sync_stream(streams[s])
            assert hb.retire(streams[s])
            renewals[s] += 1
            streams[s] = hb.new_stream(agent_name((s, renewals[s])))
            assert streams[s].id == s + 1, "the new stream takes the retired one's slot"
        elif kind == "resolve":
            p, exact = pending[item[1]]
            runs = sorted(exact)
            hb.resolve(p, from_runs(runs, [b + 1 for b in runs]))
        else:
            raise AssertionError(kind)
    hb.flush()  # the drain at the end reports what the last resolves found
    return hb


# --- the specification ------------------------------------------------------------------------


@dataclass(frozen=True)
class Acc:
    seq: int  # numbered like the detector numbers them: non-empty accesses in issue order
    node: int
    aid: int
    addresses: frozenset  # the memory addresses it touches (exact, once resolved)
    write: bool


class BruteForce:
    """Explicit happens-before graph of the trace, and every racy access by exhaustion."""

    def __init__(self, n_streams, trace):
        self.preds: list[set[int]] = []  # node -> its direct predecessors
        self.agent_of: list = []  # node -> HOST or stream index
        self.last: dict = {}  # agent (HOST or stream) -> its last node
        self.latest: dict[int, int] = {}  # event -> node of its latest record
        self.accs: list[Acc] = []
        self.block: dict[int, tuple[int, int]] = {}  # aid -> (address, nbytes)
        self.alloc_step: dict[int, int] = {}
        self.free_step: dict[int, int] = {}
        self.alloc_stream: dict[int, int] = {}
        self.record_streams: dict[int, set[int]] = {}
        self.fences: dict[int, list[int]] = {}  # aid -> record_stream streams' last nodes at free
        self.renewals: dict[int, int] = {}  # stream index -> how many times it was renewed
        for step, item in enumerate(trace):
            self.apply(step, item, n_streams)
        self.ancestors = self.closure()

    def node(self, agent, *extra):
        """A new node of `agent`: after the agent's previous node (program order / FIFO),
        after `extra`, and, for a stream, after everything the host did before issuing it."""
        preds = {p for p in extra if p is not None}
        if agent in self.last:
            preds.add(self.last[agent])
        if agent != HOST and HOST in self.last:
            preds.add(self.last[HOST])
        self.preds.append(preds)
        self.agent_of.append(agent)
        self.last[agent] = len(self.preds) - 1
        return self.last[agent]

    def stream(self, s):
        """The agent behind stream index s now: a renewed stream is a new agent."""
        return (s, self.renewals.get(s, 0))

    def apply(self, step, item, n_streams):
        kind = item[0]
        if kind == "alloc":
            _, aid, nbytes, address, s = item
            self.block[aid] = (address, nbytes)
            self.alloc_step[aid] = step
            self.alloc_stream[aid] = self.stream(s)
            self.record_streams[aid] = set()
        elif kind == "free":
            aid = item[1]
            self.free_step[aid] = step
            self.fences[aid] = [self.last[s] for s in self.record_streams[aid] if s in self.last]
        elif kind == "record_stream":
            # PyTorch ignores record_stream on the allocation stream (FIFO reuse there)
            if self.stream(item[2]) != self.alloc_stream[item[1]]:
                self.record_streams[item[1]].add(self.stream(item[2]))
        elif kind in ("launch", "host"):
            agent, accs = (self.stream(item[1]), item[2]) if kind == "launch" else (HOST, item[1])
            n = self.node(agent)
            for acc in accs:
                if not issued_empty(acc):
                    aid = acc[1] if isinstance(acc[0], str) else acc[0]
                    base = self.block[aid][0]
                    write = acc[-2] if acc[0] == "pending" else acc[-1]
                    self.accs.append(Acc(len(self.accs) + 1, n, aid,
                                         frozenset(base + b for b in offsets(acc)), bool(write)))
        elif kind == "resolve":
            pass  # when an op ran changes no ordering
        elif kind == "record":
            self.latest[item[1]] = self.node(self.stream(item[2]))
        elif kind == "wait":  # after the event's latest record *now*; none: no edge
            self.node(self.stream(item[1]), self.latest.get(item[2]))
        elif kind == "wait_stream":
            self.node(self.stream(item[1]), self.node(self.stream(item[2])))
        elif kind == "sync_stream":
            self.node(HOST, self.last.get(self.stream(item[1])))
        elif kind == "sync_event":
            self.node(HOST, self.latest.get(item[1]))
        elif kind == "sync_device":
            self.node(HOST, *(self.last.get(self.stream(s)) for s in range(n_streams)))
        elif kind == "renew":  # a sync of the stream; later uses of s are a new stream
            self.node(HOST, self.last.get(self.stream(item[1])))
            self.renewals[item[1]] = self.renewals.get(item[1], 0) + 1
        else:
            raise AssertionError(kind)

    def closure(self):
        """ancestors[n]: bit set of the nodes that happen before node n (edges go forward)."""
        anc = []
        for preds in self.preds:
            bits = 0
            for p in preds:
                bits |= anc[p] | (1 << p)
            anc.append(bits)
        return anc

    def ordered(self, a: Acc, b: Acc) -> bool:
        return a.node == b.node or bool(self.ancestors[b.node] >> a.node & 1)

    def fenced(self, a: Acc, b: Acc, byte: int) -> bool:
        """Whether `byte`, touched by `a` in an older block, was handed to b's block only
        after a record_stream fence covering `a`: some block X holding the byte was freed
        before b's block was allocated, and a record_stream stream of X had `a` in its past
        at that free."""
        for x, (address, nbytes) in self.block.items():
            if (x in self.free_step and self.free_step[x] < self.alloc_step[b.aid]
                    and address <= byte < address + nbytes
                    and any(a.node == f or self.ancestors[f] >> a.node & 1
                            for f in self.fences[x])):
                return True
        return False

    def racy(self, a: Acc, b: Acc) -> bool:
        """b (issued after a) races with a: they share a byte, one writes, nothing orders
        a before b, and (for an older block at the same address) no fence covers the byte."""
        common = a.addresses & b.addresses
        if not common or not (a.write or b.write) or self.ordered(a, b):
            return False
        if a.aid == b.aid:
            return True
        return any(not self.fenced(a, b, byte) for byte in common)

    def racy_accesses(self) -> set[int]:
        return {b.seq for i, b in enumerate(self.accs) if any(self.racy(a, b) for a in self.accs[:i])}


# --- the property -------------------------------------------------------------------------------


# Found by this property (minimised): a0's bytes [0, 1) were read on s1, handed to a1,
# fenced by a1's record_stream(s1) and handed to a2; the detector used to carry a stale
# copy of the read from a0's still-free remainder straight to a2 and report a race.
CARRIED_PAST_A_FENCE = (2, 1, [
    ("alloc", 0, 2, 0, 0),
    ("launch", 1, [(0, 0, 1, READ)]),
    ("free", 0), ("alloc", 1, 1, 0, 0),
    ("record_stream", 1, 1),
    ("free", 1), ("alloc", 2, 1, 0, 0),
    ("launch", 0, [(2, 0, 1, WRITE)]),
])


@given(traces())
@example(CARRIED_PAST_A_FENCE)
def test_detector_agrees_with_brute_force(generated):
    n_streams, n_events, trace = generated
    hb = run_detector(n_streams, n_events, trace)
    spec = BruteForce(n_streams, trace)
    for race in hb.races:
        note(str(race))

    assert hb.accesses == len(spec.accs)
    flagged = [race.later.seq for race in hb.races]
    assert len(flagged) == len(set(flagged)), "more than one race reported for one access"
    # (a) the detector flags exactly the racy accesses
    assert set(flagged) == spec.racy_accesses()
    # (b) every reported pair is a real race
    by_seq = {acc.seq: acc for acc in spec.accs}
    for race in hb.races:
        earlier, later = by_seq[race.earlier.seq], by_seq[race.later.seq]
        assert spec.racy(earlier, later), f"reported pair is not a race: {race!s}"
        for acc, spec_acc in ((race.earlier, earlier), (race.later, later)):
            assert acc.agent.name == agent_name(spec.agent_of[spec_acc.node])
        # Both sets are reported in the later access's allocation, exactly; the earlier one
        # (maybe carried over from a freed block) is a piece of the earlier access.
        base = race.alloc.address
        assert reported(race.later, base) == later.addresses
        assert reported(race.earlier, base) <= earlier.addresses
        assert reported(race.earlier, base) & later.addresses
    event(f"racy accesses: {min(len(flagged), 3)}{'+' if len(flagged) >= 3 else ''}")
    if any(race.found_at is not None for race in hb.races):
        event("a race found when a pending access resolved")
    event("frees and reallocates" if any(item[0] == "free" for item in trace) else "no free")
    if any(item[0] == "renew" for item in trace):
        event("a stream retired and its slot taken by a new one")


def reported(acc, base) -> frozenset:
    if acc.region is None:
        return frozenset(range(base + acc.start, base + acc.stop))
    return frozenset(base + b for a, e in acc.region.runs() for b in range(a, e))


def agent_name(agent) -> str:
    if agent == HOST:
        return "host"
    s, renewals = agent
    return f"s{s}" if renewals == 0 else f"s{s}.{renewals}"
