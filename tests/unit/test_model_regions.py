"""Exact byte sets (model/regions.py) against brute-force enumeration of the bytes.

Strided views of one small buffer (any sizes, strides, signs, offsets, overlapping
as_strided layouts) and explicit run lists: `meets` must equal "the two byte sets share
a byte", `within` must never say True when a byte is missing, and clip/cut/shift must
give exactly the enumerated result.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pytest_streamorder.model.regions import (Box, Runs, clip, cut, from_runs, meets, shift,
                                              strided, within)

BUF = 96  # elements of the buffer every view lives in


def enumerate_bytes(size, stride, offset, itemsize) -> frozenset:
    """Every byte a strided layout touches, by walking every index."""
    out = set()
    idx = [0] * len(size)
    if any(n == 0 for n in size):
        return frozenset()
    while True:
        e = offset + sum(i * s for i, s in zip(idx, stride))
        out.update(range(e * itemsize, (e + 1) * itemsize))
        for k in reversed(range(len(size))):
            idx[k] += 1
            if idx[k] < size[k]:
                break
            idx[k] = 0
        else:
            return frozenset(out)


def set_bytes(start, stop, region) -> frozenset:
    if region is None:
        return frozenset(range(start, stop))
    return frozenset(b for a, e in region.runs() for b in range(a, e))


@st.composite
def views(draw):
    """A strided layout inside BUF elements: (size, stride, offset, itemsize)."""
    itemsize = draw(st.sampled_from([1, 2, 4, 8]))
    ndim = draw(st.integers(0, 3))
    size = [draw(st.integers(0, 5)) for _ in range(ndim)]
    stride = [draw(st.integers(-12, 12)) for _ in range(ndim)]
    lo = sum((n - 1) * s for n, s in zip(size, stride) if s < 0 and n)
    hi = sum((n - 1) * s for n, s in zip(size, stride) if s > 0 and n)
    offset = draw(st.integers(-lo, max(-lo, BUF - 1 - hi)))
    return tuple(size), tuple(stride), offset, itemsize


@st.composite
def tensor_views(draw):
    """Views that torch hands out: slices and steps of a row-major (4, 24) buffer."""
    itemsize = draw(st.sampled_from([1, 4]))
    r0 = draw(st.integers(0, 4))
    r1 = draw(st.integers(r0, 4))
    rs = draw(st.integers(1, 3))
    c0 = draw(st.integers(0, 24))
    c1 = draw(st.integers(c0, 24))
    cs = draw(st.integers(1, 4))
    size = (len(range(r0, r1, rs)), len(range(c0, c1, cs)))
    return size, (24 * rs, cs), r0 * 24 + c0, itemsize


@st.composite
def run_lists(draw):
    cuts = sorted(draw(st.sets(st.integers(0, BUF * 8), min_size=0, max_size=10)))
    pairs = [(a, b) for a, b in zip(cuts[::2], cuts[1::2]) if a < b]
    return from_runs([a for a, _ in pairs], [b for _, b in pairs])


def any_set():
    return st.one_of(views().map(lambda v: strided(*v)), tensor_views().map(lambda v: strided(*v)),
                     run_lists())


@given(views())
def test_strided_is_exact(view):
    start, stop, region = strided(*view)
    expected = enumerate_bytes(*view)
    assert set_bytes(start, stop, region) == expected
    if expected:
        assert (start, stop) == (min(expected), max(expected) + 1)
    else:
        assert (start, stop, region) == (0, 0, None)


@given(any_set(), any_set())
def test_meets_is_exact(a, b):
    assert meets(*a, *b) == bool(set_bytes(*a) & set_bytes(*b))
    assert meets(*b, *a) == meets(*a, *b)


@given(tensor_views(), tensor_views())
def test_meets_is_exact_on_views_of_one_tensor(a, b):
    sa, sb = strided(*a), strided(*b)
    assert meets(*sa, *sb) == bool(enumerate_bytes(*a) & enumerate_bytes(*b))


@given(any_set(), any_set())
def test_within_is_never_wrong(a, b):
    if within(*a, *b):
        assert set_bytes(*a) <= set_bytes(*b)


@given(any_set())
def test_within_itself_and_its_span(a):
    assert within(*a, *a)
    assert within(*a, a[0], a[1], None)


@given(any_set(), st.integers(0, BUF * 8), st.integers(0, BUF * 8), st.integers(-50, 50))
def test_clip_cut_shift_are_exact(a, lo, hi, d):
    lo, hi = min(lo, hi), max(lo, hi)
    window = frozenset(range(lo, hi))
    assert set_bytes(*clip(*a, lo, hi)) == set_bytes(*a) & window
    assert set_bytes(*cut(*a, lo, hi)) == set_bytes(*a) - window
    moved = (a[0] + d, a[1] + d, shift(a[2], d))
    assert set_bytes(*moved) == frozenset(x + d for x in set_bytes(*a))


def test_column_halves_are_disjoint_and_one_column_more_is_not():
    """x[:, :8] and x[:, 8:] of a (4, 16) float32 buffer share no byte; x[:, 7:] does."""
    left = strided((4, 8), (16, 1), 0, 4)
    right = strided((4, 8), (16, 1), 8, 4)
    wider = strided((4, 9), (16, 1), 7, 4)
    assert isinstance(left[2], Box) and left[2].run == 32 and left[2].dims == ((64, 4),)
    assert (left[0], left[1]) == (0, 224)  # the bounding spans overlap: [0, 224) and [32, 256)
    assert not meets(*left, *right)
    assert meets(*left, *wider)


def test_even_and_odd_elements_are_disjoint():
    even = strided((8,), (2,), 0, 8)
    odd = strided((8,), (2,), 1, 8)
    assert not meets(*even, *odd)
    assert meets(*even, *strided((1,), (1,), 6, 8))
    assert not meets(*even, *strided((1,), (1,), 7, 8))


def test_contiguous_and_dense_layouts_are_plain_spans():
    assert strided((4, 16), (16, 1), 0, 4) == (0, 256, None)
    assert strided((16, 4), (1, 16), 0, 4) == (0, 256, None)  # transposed: every byte
    assert strided((3,), (-1,), 2, 8) == (0, 24, None)  # flipped
    assert strided((5, 2), (0, 1), 3, 2) == (6, 10, None)  # expanded: stride 0
    assert strided((0, 4), (4, 1), 0, 4) == (0, 0, None)


def test_runs_describe_and_merge():
    s, e, r = from_runs([0, 8, 24], [8, 16, 32])
    assert (s, e) == (0, 32) and isinstance(r, Runs) and r.runs() == [(0, 16), (24, 32)]
    assert from_runs([4], [12]) == (4, 12, None)
    assert "[0, 16), [24, 32)" in r.describe()
