"""Host writes no interception sees, found by their effect on a pinned H2D source.

A non_blocking H2D copy reads its pinned source when it runs, so the host must not write
the source between issuing the copy and a sync that covers it. Writes through torch and
through NumPy views (numpy_views.py) are reported at their line; writes from C code
(ctypes, a C extension, a plain `np.asarray` view, the buffer protocol) are not. For
those, a backend snapshots the source's bytes when the copy is issued and compares them
later: when the copy runs (virtual device) or at the host sync that covers it (real GPU).
Bytes that changed were written by the host in that window, unordered with the copy: a
race, reported with the copy's stack and the window. A write of the same value changes
nothing and is not seen.

The snapshot is a host memcpy (ctypes), outside torch, so no mode sees it and no
allocator is involved. Backends must not watch a source that device work may write in
the window (a D2H copy into the same buffer): its change is not the host's.
"""

from __future__ import annotations

import ctypes

from ..model import Site
from ..model.objects import Access
from ..model.regions import describe, from_runs
from ..model.report import Race, format_race
from ..model.site import UNKNOWN_SITE

UNSEEN_WRITE = "code the plugin does not see (C code, ctypes, a plain NumPy view, ...)"


class SourceSnapshot:
    """The bytes [start, stop) of a pinned source at `address` (its storage's base),
    taken now; `region` (model/regions.py) says which of them the copy reads."""

    __slots__ = ("address", "start", "stop", "region", "itemsize", "data")

    def __init__(self, address: int, start: int, stop: int, region, itemsize: int):
        self.address = address
        self.start = start
        self.stop = stop
        self.region = region
        self.itemsize = itemsize
        self.data = ctypes.string_at(address + start, stop - start)

    def changed(self) -> tuple | None:
        """(start, stop, region) of the elements the copy reads whose bytes differ from
        the snapshot now, or None when none does."""
        now = ctypes.string_at(self.address + self.start, self.stop - self.start)
        if now == self.data:
            return None
        pieces = [(self.start, self.stop)] if self.region is None else self.region.runs()
        starts, stops = [], []
        isz, base = self.itemsize, self.start
        for a, b in pieces:
            lo, hi = a - base, b - base
            if now[lo:hi] == self.data[lo:hi]:
                continue
            for i in range(lo, hi, isz):  # element by element: a changed byte marks it
                if now[i:i + isz] != self.data[i:i + isz]:
                    if stops and stops[-1] == base + i:
                        stops[-1] += isz
                    else:
                        starts.append(base + i)
                        stops.append(base + i + isz)
        return from_runs(starts, stops) if starts else None


class UnseenHostWrite(Race):
    """A race between an H2D copy's read of its pinned source and a host write that only
    its effect revealed: the window it happened in, instead of the write's line."""

    __slots__ = ("issued_at", "seen_at", "seen_when")

    def __init__(self, earlier: Access, later: Access, issued_at: Site, seen_at: Site,
                 seen_when: str):
        super().__init__(earlier, later, later.alloc, ())
        self.issued_at = issued_at
        self.seen_at = seen_at
        self.seen_when = seen_when  # "when the copy ran" / "at the host sync that covered it"

    def __str__(self) -> str:
        found_at, self.found_at = self.found_at, None  # our own "found" line below
        try:
            text = format_race(self)
        finally:
            self.found_at = found_at
        head, edge = text.rsplit("\n  missing edge:", 1)
        reported = f"; reported at {found_at.location()}" if found_at is not None else ""
        changed = describe(self.later.start, self.later.stop, self.later.region)
        found = (f"  found: {self.seen_when} (at {self.seen_at.location()}), its source no "
                 f"longer held the bytes it had at issue (at {self.issued_at.location()}): "
                 f"the host wrote {changed} in between, in code the plugin does not see (a "
                 f"write of the same value is not seen){reported}")
        return f"{head}\n{found}\n  missing edge:{edge}"


def unseen_write_race(hb, alloc, stream, op_count: int, op: str, read_set: tuple,
                      changed: tuple, issued_at: Site, seen_at: Site, seen_when: str):
    """The race for a changed H2D source, or None when the model already reported a host
    write racing with this copy (a write it saw, through torch or a NumPy view)."""
    for race in hb.races:
        first, second = race.earlier, race.later
        if first.agent is stream and first.count == op_count and first.alloc is alloc \
                and second.agent.is_host and second.is_write:
            return None
    copy = Access(0, stream, op_count, alloc, *read_set[:2], False, op, issued_at, read_set[2])
    host = hb.host
    write = Access(0, host, host.clock[host.id], alloc, *changed[:2], True, UNSEEN_WRITE,
                   UNKNOWN_SITE, changed[2])
    return UnseenHostWrite(copy, write, issued_at, seen_at, seen_when)
