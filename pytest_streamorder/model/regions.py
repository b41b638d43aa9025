"""Exact sets of bytes of one allocation, and what the detector asks of them.

An access names its bytes as (start, stop, region): [start, stop) bounds them, and
`region` is None when every byte of [start, stop) is touched (a contiguous tensor: the
fast path, a plain span) or one of two exact forms:

  Box   a strided layout: bytes base + sum(i_k * stride_k) + b, 0 <= i_k < count_k,
        0 <= b < run. Normalised: strides positive and sorted (innermost first), no
        dims of count 1 or stride 0, contiguous inner dims folded into `run`. A column
        half x[:, :8] of a (4, 16) float32 buffer: base 0, run 32, dims ((64, 4),).
  Runs  an explicit sorted list of disjoint byte runs [starts[i], stops[i]) (what an
        indexed op's index values name, or a Box cut by an allocator reuse).

`meets` (do two sets share a byte) is exact. `within` (is one set inside another) may
answer False when unsure: only the shadow's pruning asks it, and keeping an entry is
always sound. Nothing here ever widens a set to its covering span.
"""

from __future__ import annotations

from bisect import bisect_right


class Box:
    __slots__ = ("base", "run", "dims", "start", "stop")

    def __init__(self, base: int, run: int, dims: tuple):
        self.base = base
        self.run = run
        self.dims = dims  # ((stride, count), ...), innermost (smallest stride) first
        self.start = base
        self.stop = base + _width(run, dims, len(dims))

    def __eq__(self, other) -> bool:
        return isinstance(other, Box) and (self.base, self.run, self.dims) == (
            other.base, other.run, other.dims)

    def __hash__(self) -> int:
        return hash((self.base, self.run, self.dims))

    def shifted(self, d: int) -> "Box":
        return Box(self.base + d, self.run, self.dims)

    def runs(self) -> list:
        """Every byte as sorted disjoint (start, stop) runs (may be long: reuse only)."""
        out: list = []
        _box_runs(self.base, self.run, self.dims, len(self.dims), out)
        return _merge(out)

    def describe(self) -> str:
        rows = " x ".join(f"{n} every {s}" for s, n in reversed(self.dims))
        return f"strided: runs of {self.run} bytes, {rows}"

    def __repr__(self) -> str:
        return f"Box(base={self.base}, run={self.run}, dims={self.dims})"


class Runs:
    __slots__ = ("starts", "stops", "start", "stop")

    def __init__(self, starts: list, stops: list):
        self.starts = starts  # sorted, disjoint, non-adjacent, non-empty runs
        self.stops = stops
        self.start = starts[0]
        self.stop = stops[-1]

    def __eq__(self, other) -> bool:
        return isinstance(other, Runs) and self.starts == other.starts and self.stops == other.stops

    def __hash__(self) -> int:
        return hash((tuple(self.starts), tuple(self.stops)))

    def shifted(self, d: int) -> "Runs":
        return Runs([a + d for a in self.starts], [b + d for b in self.stops])

    def runs(self) -> list:
        return list(zip(self.starts, self.stops))

    def describe(self) -> str:
        shown = ", ".join(f"[{a}, {b})" for a, b in zip(self.starts[:4], self.stops[:4]))
        more = f", ... ({len(self.starts)} runs)" if len(self.starts) > 4 else ""
        return f"only {shown}{more}"

    def __repr__(self) -> str:
        return f"Runs({self.runs()})"


# --- building ----------------------------------------------------------------------------

def strided(size, stride, offset: int, itemsize: int) -> tuple:
    """(start, stop, region) of the bytes a strided layout touches (size, stride and
    offset in elements; negative strides included); (0, 0, None) when it has no element."""
    base = offset * itemsize
    dims = []
    for n, st in zip(size, stride):
        if n == 0:
            return 0, 0, None
        if n == 1 or st == 0:
            continue  # one index, or every index names the same elements
        if st < 0:
            st = -st
            base -= (n - 1) * st * itemsize
        dims.append((st * itemsize, n))
    run = itemsize
    if not dims:
        return base, base + run, None
    dims.sort()
    kept: list = []
    for st, n in dims:
        if not kept and st <= run:  # contiguous (or overlapping) with the run: one longer run
            run += (n - 1) * st
        elif kept and kept[-1][0] * kept[-1][1] == st:  # continues the previous dim
            kept[-1] = (kept[-1][0], kept[-1][1] * n)
        else:
            kept.append((st, n))
    if not kept:
        return base, base + run, None
    box = Box(base, run, tuple(kept))
    return box.start, box.stop, box


def from_runs(starts: list, stops: list) -> tuple:
    """(start, stop, region) of sorted disjoint runs (adjacent runs are merged)."""
    if not starts:
        return 0, 0, None
    s, e = [starts[0]], [stops[0]]
    for a, b in zip(starts[1:], stops[1:]):
        if a <= e[-1]:
            e[-1] = max(e[-1], b)
        else:
            s.append(a)
            e.append(b)
    if len(s) == 1:
        return s[0], e[0], None
    return s[0], e[-1], Runs(s, e)


# --- the questions ---------------------------------------------------------------------------

def meets(a_lo: int, a_hi: int, a, b_lo: int, b_hi: int, b) -> bool:
    """Whether two byte sets share a byte (exact). Either region may be None (a span)."""
    if a_hi <= b_lo or b_hi <= a_lo or a_lo == a_hi or b_lo == b_hi:
        return False
    if a is None:
        if b is None:
            return True
        a, b, a_lo, a_hi, b_lo, b_hi = b, a, b_lo, b_hi, a_lo, a_hi
    if b is None:
        if type(a) is Box:
            return _box_meets_span(a.base, a.run, a.dims, len(a.dims), b_lo, b_hi)
        return _runs_meet_span(a, b_lo, b_hi)
    if type(a) is Runs:
        return _runs_meet(a, b)
    if type(b) is Runs:
        return _runs_meet(b, a)
    return _boxes_meet(a.base, a.run, a.dims, len(a.dims), b.base, b.run, b.dims, len(b.dims))


def within(i_lo: int, i_hi: int, inner, o_lo: int, o_hi: int, outer) -> bool:
    """Whether every byte of `inner` is in `outer`. True only when sure; False may also
    mean "could not tell cheaply" (callers use it to forget shadow entries, never to
    decide a race)."""
    if i_lo == i_hi:
        return True
    if i_lo < o_lo or i_hi > o_hi:
        return False
    if outer is None:
        return True
    if inner is not None and inner == outer:
        return True
    if type(outer) is Runs:
        if type(inner) is Runs:
            return all(_in_one_run(outer, a, b) for a, b in zip(inner.starts, inner.stops))
        return _in_one_run(outer, i_lo, i_hi)
    if type(inner) is Box:
        return _box_within_box(inner.base, inner.run, inner.dims, len(inner.dims),
                               outer.base, outer.run, outer.dims, len(outer.dims))
    if type(inner) is Runs:
        return all(_span_within_box(a, b, outer.base, outer.run, outer.dims, len(outer.dims))
                   for a, b in zip(inner.starts, inner.stops))
    return _span_within_box(i_lo, i_hi, outer.base, outer.run, outer.dims, len(outer.dims))


def shift(region, d: int):
    return None if region is None else region.shifted(d)


def clip(start: int, stop: int, region, lo: int, hi: int) -> tuple:
    """The set restricted to bytes [lo, hi), exactly."""
    if lo <= start and stop <= hi:
        return start, stop, region
    if region is None:
        s, e = max(start, lo), min(stop, hi)
        return (s, e, None) if s < e else (0, 0, None)
    kept = [(max(a, lo), min(b, hi)) for a, b in region.runs() if a < hi and b > lo]
    return from_runs([a for a, _ in kept], [b for _, b in kept])


def cut(start: int, stop: int, region, lo: int, hi: int) -> tuple:
    """The set without bytes [lo, hi), exactly."""
    if stop <= lo or start >= hi:
        return start, stop, region
    pieces = [(start, stop)] if region is None else region.runs()
    kept = []
    for a, b in pieces:
        if a < lo:
            kept.append((a, min(b, lo)))
        if b > hi:
            kept.append((max(a, hi), b))
    return from_runs([a for a, _ in kept], [b for _, b in kept])


def describe(start: int, stop: int, region) -> str:
    text = f"bytes [{start}, {stop})"
    return text if region is None else f"{text}, {region.describe()}"


# --- boxes ---------------------------------------------------------------------------------
# A box is handled as (base, run, dims, k): only dims[:k] count, so that recursion peels
# the outermost dim without building tuples. Its rows are the copies of the inner box
# (dims[:k-1]), one per index of dim k-1, `stride` apart; a row spans `_width` bytes.

def _width(run: int, dims: tuple, k: int) -> int:
    w = run
    for j in range(k):
        s, n = dims[j]
        w += (n - 1) * s
    return w


def _box_meets_span(base, run, dims, k, lo, hi) -> bool:
    if k == 0:
        return base < hi and lo < base + run
    s, n = dims[k - 1]
    w = _width(run, dims, k - 1)
    first = max(0, (lo - base - w) // s + 1)  # the first row ending after lo
    last = min(n - 1, (hi - 1 - base) // s)  # the last row starting before hi
    if first > last:
        return False
    inside = max(first, -((base - lo) // s))  # the first row starting at or after lo
    if inside <= last and base + inside * s + w <= hi:
        return True  # a whole row lies in the span
    for i in range(first, last + 1):  # rows that straddle lo or hi
        if _box_meets_span(base + i * s, run, dims, k - 1, lo, hi):
            return True
    return False


def _boxes_meet(ab, arun, adims, ka, bb, brun, bdims, kb) -> bool:
    a_stop = ab + _width(arun, adims, ka)
    b_stop = bb + _width(brun, bdims, kb)
    if a_stop <= bb or b_stop <= ab:
        return False
    if ka == 0:
        return _box_meets_span(bb, brun, bdims, kb, ab, a_stop)
    if kb == 0:
        return _box_meets_span(ab, arun, adims, ka, bb, b_stop)
    sa, na = adims[ka - 1]
    sb, nb = bdims[kb - 1]
    wa = _width(arun, adims, ka - 1)
    wb = _width(brun, bdims, kb - 1)
    if sa == sb and wa <= sa and wb <= sb:
        # Rows of one period s (views of one tensor: column blocks, every other row...).
        # Row i of A meets row j of B only if k = i - j puts B's row within less than a
        # row's width of A's: at most three k, each an exact question about the rows.
        s, d = sa, bb - ab
        k_lo = max(-(nb - 1), (d - wa) // s + 1)
        k_hi = min(na - 1, -((-(d + wb)) // s) - 1)
        for k in range(k_lo, k_hi + 1):
            if _boxes_meet(0, arun, adims, ka - 1, d - k * s, brun, bdims, kb - 1):
                return True
        return False
    # Different periods: split the box with the longer period into its rows near the other.
    if sa < sb:
        ab, arun, adims, ka, a_stop, sa, na, wa, bb, brun, bdims, kb, b_stop = \
            bb, brun, bdims, kb, b_stop, sb, nb, wb, ab, arun, adims, ka, a_stop
    first = max(0, (bb - ab - wa) // sa + 1)
    last = min(na - 1, (b_stop - 1 - ab) // sa)
    for i in range(first, last + 1):
        if _boxes_meet(ab + i * sa, arun, adims, ka - 1, bb, brun, bdims, kb):
            return True
    return False


def _span_within_box(lo, hi, base, run, dims, k) -> bool:
    while k:
        s, n = dims[k - 1]
        if _width(run, dims, k - 1) > s:
            return False  # overlapping rows: not worth working out
        i = (lo - base) // s
        if not 0 <= i < n:
            return False
        base += i * s
        k -= 1
    return base <= lo and hi <= base + run


def _box_within_box(ib, irun, idims, ki, ob, orun, odims, ko) -> bool:
    if ki == 0:
        return _span_within_box(ib, ib + irun, ob, orun, odims, ko)
    if ko == 0:
        return ob <= ib and ib + _width(irun, idims, ki) <= ob + orun
    si, ni = idims[ki - 1]
    so, no = odims[ko - 1]
    wi, wo = _width(irun, idims, ki - 1), _width(orun, odims, ko - 1)
    if wo > so:
        return False
    if si == so and wi <= si:  # row by row: inner row i lies in outer row k0 + i
        k0 = (ib - ob) // so
        return 0 <= k0 and k0 + ni <= no and _box_within_box(
            ib - k0 * so, irun, idims, ki - 1, ob, orun, odims, ko - 1)
    i = (ib - ob) // so  # the whole inner box within one outer row
    if not 0 <= i < no:
        return False
    return _box_within_box(ib, irun, idims, ki, ob + i * so, orun, odims, ko - 1)


def _box_runs(base, run, dims, k, out) -> None:
    if k == 0:
        out.append((base, base + run))
        return
    s, n = dims[k - 1]
    for i in range(n):
        _box_runs(base + i * s, run, dims, k - 1, out)


def _merge(pieces: list) -> list:
    pieces.sort()
    out: list = []
    for a, b in pieces:
        if out and a <= out[-1][1]:
            if b > out[-1][1]:
                out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


# --- runs ----------------------------------------------------------------------------------

def _runs_meet_span(r: Runs, lo: int, hi: int) -> bool:
    i = bisect_right(r.stops, lo)  # the first run ending after lo
    return i < len(r.starts) and r.starts[i] < hi


def _runs_meet(r: Runs, other) -> bool:
    """Runs against a Box or other Runs."""
    i = bisect_right(r.stops, other.start)
    starts, stops, n = r.starts, r.stops, len(r.starts)
    if type(other) is Runs:
        j = bisect_right(other.stops, r.start)
        os_, oe = other.starts, other.stops
        while i < n and j < len(os_):
            if starts[i] < oe[j] and os_[j] < stops[i]:
                return True
            if stops[i] <= oe[j]:
                i += 1
            else:
                j += 1
        return False
    while i < n and starts[i] < other.stop:
        if _box_meets_span(other.base, other.run, other.dims, len(other.dims), starts[i], stops[i]):
            return True
        i += 1
    return False


def _in_one_run(r: Runs, lo: int, hi: int) -> bool:
    i = bisect_right(r.starts, lo) - 1
    return i >= 0 and hi <= r.stops[i]
