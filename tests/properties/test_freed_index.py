"""The freed-block index (model/freed.py) against a brute-force list of byte sets: a
take of [lo, hi) returns exactly the freed allocations that still hold a byte there, in
the order they were freed, and removes those bytes; discard drops an allocation. Blocks
may overlap (also blocks freed while overlapping, which a correct allocator never
makes): the index must not depend on disjointness for being right."""

from hypothesis import given, strategies as st

from pytest_streamorder.model.freed import FreedIndex
from pytest_streamorder.model.objects import Allocation

ARENA = 48


@st.composite
def programs(draw):
    steps = []
    for _ in range(draw(st.integers(1, 40))):
        kind = draw(st.sampled_from(["add", "add", "take", "take", "discard"]))
        lo = draw(st.integers(0, ARENA - 1))
        hi = draw(st.integers(lo + 1, ARENA))
        steps.append((kind, lo, hi, draw(st.integers(0, 1000))))
    return steps


@given(programs())
def test_index_matches_brute_force(steps):
    index = FreedIndex()
    held: dict = {}  # alloc -> set of bytes it still holds (insertion order = free order)
    for n, (kind, lo, hi, pick) in enumerate(steps):
        if kind == "add":
            alloc = Allocation(n, f"a{n}", hi - lo, "device", lo, None, None)
            index.add(alloc)
            held[alloc] = set(range(lo, hi))
        elif kind == "take":
            expected = [a for a, bytes_ in held.items() if bytes_ & set(range(lo, hi))]
            assert index.take(lo, hi) == expected
            for a in held:
                held[a] -= set(range(lo, hi))
        elif held:
            alloc = list(held)[pick % len(held)]
            index.discard(alloc)
            del held[alloc]
        assert len(index) == len(held)
    for lo in range(0, ARENA, 7):  # and nothing left behind
        expected = [a for a, bytes_ in held.items() if bytes_ & set(range(lo, lo + 7))]
        assert index.take(lo, lo + 7) == expected
        for a in held:
            held[a] -= set(range(lo, lo + 7))
    assert index.pieces() == 0


def test_steady_reuse_keeps_the_list_small():
    """A block freed and reused at one address, over and over: one start in the list."""
    index = FreedIndex()
    for n in range(1000):
        alloc = Allocation(n, "a", 512, "device", 4096, None, None)
        index.add(alloc)
        assert index.take(4096, 4096 + 512) == [alloc]
        index.discard(alloc)
    assert len(index) == 0 and index.pieces() == 0 and len(index._starts) <= 1
