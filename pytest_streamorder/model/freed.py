"""Freed allocations whose accesses a reuse of their memory may still race with, indexed
by address, so that an allocation finds the freed blocks it overlaps without a scan.

The index holds disjoint byte ranges ("pieces"), each with the freed allocations
(owners) that may still have shadow entries there. A freed block enters with its whole
range. A reuse of [lo, hi) takes every piece there out: the reuse carries those owners'
entries into the new block and cuts [lo, hi) from their shadows (hb.py), so no freed
shadow has bytes there afterwards. Hence the pieces stay disjoint as long as live blocks
do not overlap; where a caller frees overlapping blocks anyway, a piece simply gets
several owners, and a reuse there takes them all.

Costs: a lookup is a bisection plus the pieces it returns. Starts stay in the sorted list
when their piece goes (a tombstone) so that a block freed and reused at one address, the
caching allocator's steady state, moves no list memory; the list is compacted when
tombstones outnumber pieces.
"""

from __future__ import annotations

from bisect import bisect_left, insort

from .objects import Allocation


class FreedIndex:
    """The freed allocations of one address space, by the bytes they may still hold."""

    __slots__ = ("_starts", "_listed", "_pieces", "_order", "_seq", "_tombstones")

    def __init__(self):
        self._starts: list[int] = []  # sorted; some are tombstones (not in _pieces)
        self._listed: set[int] = set()  # the values in _starts
        self._pieces: dict[int, list] = {}  # start -> [end, owners]
        self._order: dict[Allocation, int] = {}  # owner -> when it was freed
        self._seq = 0
        self._tombstones = 0

    def __len__(self) -> int:
        """Freed allocations held."""
        return len(self._order)

    def pieces(self) -> int:
        return len(self._pieces)

    def add(self, alloc: Allocation) -> None:
        """A freed block with shadow entries: it may race with a later owner's accesses."""
        self._seq += 1
        self._order[alloc] = self._seq
        lo, hi = alloc.address, alloc.address + alloc.nbytes
        before = self._last_live_before(hi)
        if before is None or (before < lo and self._pieces[before][0] <= lo):
            self._put(lo, hi, [alloc])  # the common case: no freed bytes there yet
            return
        self._split(lo)
        self._split(hi)
        at = lo
        for start in self._starts_in(lo, hi):
            if start > at:
                self._put(at, start, [alloc])
            piece = self._pieces[start]
            piece[1].append(alloc)
            at = piece[0]
        if at < hi:
            self._put(at, hi, [alloc])

    def take(self, lo: int, hi: int) -> list[Allocation]:
        """Remove [lo, hi) from the index; the owners it had there, in the order they
        were freed (the caller carries their entries over and cuts their shadows)."""
        pieces = self._pieces
        if not pieces:
            return []
        piece = pieces.get(lo)
        if piece is not None and piece[0] == hi:  # the block freed here, reused whole
            owners = self._drop(lo)[1]
            self._maybe_compact()
            return owners if len(owners) == 1 else sorted(owners, key=self._order.__getitem__)
        self._split(lo)
        self._split(hi)
        owners: dict[Allocation, None] = {}
        for start in self._starts_in(lo, hi):
            for owner in self._drop(start)[1]:
                owners[owner] = None
        order = self._order
        found = sorted(owners, key=order.__getitem__)
        self._maybe_compact()
        return found

    def discard(self, alloc: Allocation) -> None:
        """The allocation holds nothing any more (its shadow is empty, or all of it was
        reused): drop it from every piece of its range."""
        if self._order.pop(alloc, None) is None:
            return
        lo, hi = alloc.address, alloc.address + alloc.nbytes
        for start in self._starts_in_or_around(lo, hi):
            piece = self._pieces[start]
            owners = piece[1]
            if alloc in owners:
                owners.remove(alloc)
                if not owners:
                    self._drop(start)
        self._maybe_compact()

    # --- the sorted pieces ------------------------------------------------------------

    def _put(self, start: int, end: int, owners: list) -> None:
        self._pieces[start] = [end, owners]
        if start in self._listed:
            self._tombstones -= 1  # revived
        else:
            self._listed.add(start)
            insort(self._starts, start)

    def _drop(self, start: int) -> list:
        self._tombstones += 1
        return self._pieces.pop(start)

    def _starts_in(self, lo: int, hi: int) -> list[int]:
        """Live piece starts in [lo, hi), ascending."""
        starts, pieces = self._starts, self._pieces
        found = []
        i = bisect_left(starts, lo)
        while i < len(starts) and starts[i] < hi:
            if starts[i] in pieces:
                found.append(starts[i])
            i += 1
        return found

    def _starts_in_or_around(self, lo: int, hi: int) -> list[int]:
        """Live piece starts of the pieces meeting [lo, hi)."""
        before = self._containing(lo)
        inside = self._starts_in(lo, hi)
        return inside if before is None or before == lo else [before] + inside

    def forget(self, alloc: Allocation) -> None:
        """discard() for an allocation none of whose bytes are in the index any more (a
        take() just removed them all)."""
        self._order.pop(alloc, None)

    def _last_live_before(self, x: int) -> int | None:
        """The start of the last live piece starting before x, if any."""
        starts, pieces = self._starts, self._pieces
        i = bisect_left(starts, x) - 1
        while i >= 0:
            if starts[i] in pieces:
                return starts[i]
            i -= 1  # a tombstone
        return None

    def _containing(self, x: int) -> int | None:
        """The start of the live piece holding byte x, if any."""
        starts, pieces = self._starts, self._pieces
        i = bisect_left(starts, x + 1) - 1
        while i >= 0:
            start = starts[i]
            piece = pieces.get(start)
            if piece is not None:
                return start if piece[0] > x else None
            i -= 1  # a tombstone
        return None

    def _split(self, x: int) -> None:
        """Make x a piece boundary (if a piece straddles it)."""
        start = self._containing(x)
        if start is None or start == x:
            return
        piece = self._pieces[start]
        end, owners = piece
        piece[0] = x
        self._put(x, end, list(owners))

    def _maybe_compact(self) -> None:
        if self._tombstones > 64 and self._tombstones > len(self._pieces):
            self._starts = sorted(self._pieces)
            self._listed = set(self._starts)
            self._tombstones = 0
