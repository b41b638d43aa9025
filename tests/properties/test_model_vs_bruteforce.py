"""The race detector against a brute-force happens-before computed from first principles.

Hypothesis generates small random traces (streams, events, allocations, launches with
random byte ranges, host accesses, records, waits, syncs, frees and reuse of the same
addresses with or without record_stream). `BruteForce` is the specification: it builds
the explicit graph of trace nodes with one edge per CUDA ordering rule of DESIGN.md, takes
its transitive closure, and calls an access racy when it conflicts with an earlier access
not ordered before it. It shares no code with hb.py's vector clocks.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import event, example, given, note
from hypothesis import strategies as st

from pytest_streamorder.model import READ, WRITE, HappensBefore

HOST = "host"

# --- traces -------------------------------------------------------------------------------
#
# A trace is a list of tuples, valid by construction (no access to freed memory, no live
# allocations overlapping in memory):
#   ("alloc", aid, nbytes, address, s)   ("free", aid)      ("record_stream", aid, s)
#   ("launch", s, [(aid, start, stop, is_write), ...])     ("host", [(aid, ...), ...])
#   ("record", e, s)   ("wait", s, e)   ("wait_stream", waiter, other)
#   ("sync_stream", s)   ("sync_event", e)   ("sync_device",)
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
                  "sync_device", "record_stream", "realloc", "handoff", "event_sync")


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

    def accesses(min_size):
        out = []
        for _ in range(draw(st.integers(min_size, 3))):
            aid, nbytes, _ = live[draw(st.integers(0, n_slots - 1))]
            start = draw(st.integers(0, nbytes))
            stop = draw(st.integers(min(start + 1, nbytes), nbytes))  # zero-size at the end
            out.append((aid, start, stop, draw(st.booleans())))
        return out

    for _ in range(draw(st.integers(0, 30))):
        kind = draw(kinds)
        if kind == "launch":
            trace.append(("launch", draw(stream), accesses(0)))
        elif kind == "host":
            trace.append(("host", accesses(1)))
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
    return n_streams, n_events, trace


# --- the detector under test ----------------------------------------------------------------


def run_detector(n_streams, n_events, trace):
    hb = HappensBefore()
    streams = [hb.new_stream(f"s{i}") for i in range(n_streams)]
    events = [hb.new_event(f"e{i}") for i in range(n_events)]
    allocs = {}

    def specs(accs):
        return [(allocs[aid], start, stop, WRITE if w else READ) for aid, start, stop, w in accs]

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
        else:
            raise AssertionError(kind)
    return hb


# --- the specification ------------------------------------------------------------------------


@dataclass(frozen=True)
class Acc:
    seq: int  # numbered like the detector numbers them: non-empty accesses in issue order
    node: int
    aid: int
    lo: int  # memory addresses [lo, hi)
    hi: int
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

    def apply(self, step, item, n_streams):
        kind = item[0]
        if kind == "alloc":
            _, aid, nbytes, address, s = item
            self.block[aid] = (address, nbytes)
            self.alloc_step[aid] = step
            self.alloc_stream[aid] = s
            self.record_streams[aid] = set()
        elif kind == "free":
            aid = item[1]
            self.free_step[aid] = step
            self.fences[aid] = [self.last[s] for s in self.record_streams[aid] if s in self.last]
        elif kind == "record_stream":
            # PyTorch ignores record_stream on the allocation stream (FIFO reuse there)
            if item[2] != self.alloc_stream[item[1]]:
                self.record_streams[item[1]].add(item[2])
        elif kind in ("launch", "host"):
            agent, accs = (item[1], item[2]) if kind == "launch" else (HOST, item[1])
            n = self.node(agent)
            for aid, start, stop, write in accs:
                if start < stop:
                    base = self.block[aid][0]
                    self.accs.append(Acc(len(self.accs) + 1, n, aid, base + start, base + stop,
                                         write))
        elif kind == "record":
            self.latest[item[1]] = self.node(item[2])
        elif kind == "wait":  # after the event's latest record *now*; none: no edge
            self.node(item[1], self.latest.get(item[2]))
        elif kind == "wait_stream":
            self.node(item[1], self.node(item[2]))
        elif kind == "sync_stream":
            self.node(HOST, self.last.get(item[1]))
        elif kind == "sync_event":
            self.node(HOST, self.latest.get(item[1]))
        elif kind == "sync_device":
            self.node(HOST, *(self.last.get(s) for s in range(n_streams)))
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
        lo, hi = max(a.lo, b.lo), min(a.hi, b.hi)
        if lo >= hi or not (a.write or b.write) or self.ordered(a, b):
            return False
        if a.aid == b.aid:
            return True
        return any(not self.fenced(a, b, byte) for byte in range(lo, hi))

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
        # Both byte ranges are reported in the later access's allocation; the earlier one
        # (maybe carried over from a freed block) is a piece of the earlier access.
        base = race.alloc.address
        assert (base + race.later.start, base + race.later.stop) == (later.lo, later.hi)
        assert earlier.lo <= base + race.earlier.start < base + race.earlier.stop <= earlier.hi
    event(f"racy accesses: {min(len(flagged), 3)}{'+' if len(flagged) >= 3 else ''}")
    event("frees and reallocates" if any(item[0] == "free" for item in trace) else "no free")


def agent_name(agent) -> str:
    return "host" if agent == HOST else f"s{agent}"
