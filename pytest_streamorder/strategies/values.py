"""Strategies for the values an overlap scheduler handles: batches of request-pool slots,
accepted tokens, request lengths, the speculative mode; and the argument checks the
other strategies share."""

from __future__ import annotations

from typing import Iterable, Optional

from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

SPEC_MODES = ("on", "off", "mixed")


def _check_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{name} must be an int, got {value!r}")
    return value


def _check_pool_size(pool_size) -> int:
    pool_size = _check_int(pool_size, "pool_size")
    if pool_size < 2:
        raise InvalidArgument(
            f"pool_size must be at least 2, got {pool_size}: slot 0 is the padding row, so a "
            f"pool of N slots holds N - 1 requests (slots 1..N-1)")
    return pool_size


def _check_range(lo, hi, lo_name: str, hi_name: str) -> None:
    if lo < 0:
        raise InvalidArgument(f"{lo_name} must be >= 0, got {lo}")
    if hi < lo:
        raise InvalidArgument(f"{lo_name}={lo} is larger than {hi_name}={hi}")


# ------------------------------------------------------------------------ strategies


def request_pool_indices(pool_size: int, *, min_size: int = 0, max_size: Optional[int] = None,
                         slots: Optional[Iterable[int]] = None) -> st.SearchStrategy[tuple[int, ...]]:
    """Batches of unique request-pool indices, as a tuple in batch order.

    Slots are drawn from 1..pool_size-1 (slot 0 is the padding row: padded batches may
    index it, but no request lives there), or from `slots` when given (e.g. the live
    requests). Sizes favour the edge cases: 0 (a DP-idle batch), 1, small (2-4) and the
    whole pool (every slot at once), besides any size in [min_size, max_size]. Shrinks
    toward smaller batches of lower slots.

    Raises InvalidArgument for pool_size < 2, a batch larger than the pool (max_size or
    min_size > pool_size - 1) or than `slots`, and for slots outside 1..pool_size-1.
    """
    pool_size = _check_pool_size(pool_size)
    min_size = _check_int(min_size, "min_size")
    if slots is None:
        candidates = tuple(range(1, pool_size))
    else:
        candidates = tuple(sorted(set(slots)))
        bad = [s for s in candidates if isinstance(s, bool) or not isinstance(s, int)
               or not 0 < s < pool_size]
        if bad:
            raise InvalidArgument(
                f"slots {bad} are not request slots of a pool of {pool_size} "
                f"(slots 1..{pool_size - 1}; slot 0 is the padding row)")
    hi = len(candidates) if max_size is None else _check_int(max_size, "max_size")
    for size, name in ((min_size, "min_size"), (hi, "max_size")):
        if size > pool_size - 1:
            raise InvalidArgument(
                f"a batch of {name}={size} is larger than the pool: pool_size={pool_size} "
                f"holds {pool_size - 1} requests (slot 0 is the padding row)")
        if size > len(candidates):
            raise InvalidArgument(
                f"a batch of {name}={size} is larger than the {len(candidates)} slots it "
                f"draws from ({list(candidates)})")
    _check_range(min_size, hi, "min_size", "max_size")
    special = sorted({s for s in (min_size, 1, 2, 3, 4, hi) if min_size <= s <= hi})

    @st.composite
    def batches(draw):
        size = draw(st.sampled_from(special) | st.integers(min_size, hi), label="batch size")
        if size == 0:
            return ()
        if size == len(candidates):
            return tuple(draw(st.permutations(candidates), label="batch"))
        return tuple(draw(st.permutations(candidates), label="batch")[:size])

    return batches()


def accept_lens(n: int, *, min_accept: int = 1, max_accept: int = 4) -> st.SearchStrategy[tuple[int, ...]]:
    """Tokens each of `n` requests accepts in one forward (speculative verify, or a
    prefill chunk). The default minimum is 1, so that every forward changes the length
    and a stale read cannot pass for a fresh one."""
    n = _check_int(n, "n")
    _check_range(_check_int(min_accept, "min_accept"), _check_int(max_accept, "max_accept"),
                 "min_accept", "max_accept")
    if n < 0:
        raise InvalidArgument(f"n must be >= 0, got {n}")
    return st.lists(st.integers(min_accept, max_accept), min_size=n, max_size=n).map(tuple)


def request_lengths(*, min_length: int = 1, max_length: int = 64) -> st.SearchStrategy[int]:
    """A new request's initial sequence length (its prompt)."""
    _check_range(_check_int(min_length, "min_length"), _check_int(max_length, "max_length"),
                 "min_length", "max_length")
    return st.integers(min_length, max_length)


def spec_modes() -> st.SearchStrategy[str]:
    """A program's speculative-decoding mode: "on" (every step resolves lengths through
    the FutureMap), "off" (the host supplies them; spec_info is None) or "mixed" (the
    program toggles between the two with `ToggleSpec`)."""
    return st.sampled_from(SPEC_MODES)
