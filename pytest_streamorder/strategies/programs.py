"""Overlap programs: the ops of one (`Admit`, `Free`, `Reuse`, `Step`, `ToggleSpec`,
`Sync`, `Delay`), and the strategy that generates whole programs, valid by construction."""

from __future__ import annotations

import dataclasses
from typing import Optional, Union

from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from .values import (
    SPEC_MODES, _check_int, _check_pool_size, _check_range, accept_lens, request_lengths,
    request_pool_indices, spec_modes,
)

# Streams a `Delay` op can hold back (real GPU only).
DELAY_STREAMS = ("forward", "schedule", "d2h", "default")


@dataclasses.dataclass(frozen=True)
class Admit:
    """A new request takes the free `slot` with `length` tokens (seeded into the
    FutureMap at the next step, on the schedule stream)."""

    slot: int
    length: int


@dataclasses.dataclass(frozen=True)
class Free:
    """The request in `slot` finished; the slot is free (its forward may still run)."""

    slot: int


@dataclasses.dataclass(frozen=True)
class Reuse:
    """The request in `slot` finished and a new one of `length` tokens takes the slot at
    once, while forwards that used it may still be in flight."""

    slot: int
    length: int


@dataclasses.dataclass(frozen=True)
class Step:
    """One overlap step: schedule a batch of live slots, resolve its lengths (spec: through
    `FutureMap.resolve_seq_lens_cpu` while the previous forward still runs; spec off: from
    the host), then launch its forward, which publishes the new lengths. An empty batch is
    a DP-idle step. Spec or not follows the program's current mode."""

    indices: tuple[int, ...] = ()
    accept_lens: tuple[int, ...] = ()

    @property
    def idle(self) -> bool:
        return not self.indices


@dataclasses.dataclass(frozen=True)
class ToggleSpec:
    """Switch speculative decoding off (or back on) for the following steps."""


@dataclasses.dataclass(frozen=True)
class Sync:
    """The host syncs the whole device, then checks the device `seq_lens` of every step
    since the last sync and the FutureMap's buffer against the oracle."""


@dataclasses.dataclass(frozen=True)
class Delay:
    """Real GPU only: hold `stream` (forward, schedule, d2h or default) back by
    `cycles` GPU cycles (`torch.cuda._sleep`) before the next op."""

    stream: str
    cycles: int


Op = Union[Admit, Free, Reuse, Step, ToggleSpec, Sync, Delay]


@dataclasses.dataclass(frozen=True)
class OverlapProgram:
    """A sequence of ops over a request pool of `pool_size` slots (see `run_program`)."""

    pool_size: int
    spec_mode: str
    ops: tuple

    @property
    def n_steps(self) -> int:
        return sum(isinstance(op, Step) for op in self.ops)

    def __str__(self) -> str:
        lines = [f"OverlapProgram(pool_size={self.pool_size}, spec_mode={self.spec_mode!r}):"]
        lines += [f"  {op}" for op in self.ops]
        return "\n".join(lines)


def dp_idle_steps() -> st.SearchStrategy[Step]:
    """A DP-idle step: this data-parallel rank has no request this round (an empty batch;
    nothing is resolved or published, the previous publish event stays current)."""
    return st.just(Step((), ()))


_OP_KINDS = ("step", "idle", "admit", "reuse", "free", "same_slot", "sync", "toggle", "delay")


def overlap_programs(pool_size: int = 8, *, min_ops: int = 0, max_ops: int = 20,
                     spec_mode: Optional[str] = None, max_accept: int = 4, max_length: int = 64,
                     delays: bool = False) -> st.SearchStrategy[OverlapProgram]:
    """Whole overlap programs, valid by construction (every batch holds live requests).

    A program starts by admitting requests into slots 1..k, then runs up to `max_ops`
    ops: a step over a batch of live slots (sizes 0, 1, small, all), a DP-idle step, a
    new request in a free slot, a slot freed and reused for a new request at once, a slot
    freed, the same slot across 2-4 consecutive steps (chunked prefill, or decode of one
    request), a full sync, a spec toggle (spec_mode "mixed"), and with `delays=True` a
    `Delay` (for real GPUs). `spec_mode` None draws one of `spec_modes()`.
    """
    pool_size = _check_pool_size(pool_size)
    _check_range(_check_int(min_ops, "min_ops"), _check_int(max_ops, "max_ops"), "min_ops", "max_ops")
    if spec_mode is not None and spec_mode not in SPEC_MODES:
        raise InvalidArgument(f"spec_mode must be one of {SPEC_MODES} or None, got {spec_mode!r}")
    accept = accept_lens(1, max_accept=max_accept)  # validates max_accept
    lengths = request_lengths(max_length=max_length)
    del accept

    @st.composite
    def programs(draw):
        mode = spec_mode if spec_mode is not None else draw(spec_modes(), label="spec mode")
        kinds = [k for k in _OP_KINDS
                 if (k != "toggle" or mode == "mixed") and (k != "delay" or delays)]
        live: set[int] = set()
        ops: list = []
        for slot in range(1, draw(st.integers(0, pool_size - 1), label="initial requests") + 1):
            ops.append(Admit(slot, draw(lengths)))
            live.add(slot)
        n_ops = draw(st.integers(min_ops, max_ops), label="ops")
        while n_ops > 0:
            n_ops -= 1
            kind = draw(st.sampled_from(kinds), label="op")
            free = [s for s in range(1, pool_size) if s not in live]
            if kind in ("reuse", "free", "same_slot") and not live:
                kind = "idle"
            if kind == "admit" and not free:
                kind = "step"
            if kind == "step":
                batch = draw(request_pool_indices(pool_size, slots=live)) if live else ()
                ops.append(Step(batch, draw(accept_lens(len(batch), max_accept=max_accept))))
            elif kind == "idle":
                ops.append(Step((), ()))
            elif kind == "admit":
                slot = draw(st.sampled_from(free))
                ops.append(Admit(slot, draw(lengths)))
                live.add(slot)
            elif kind == "reuse":
                ops.append(Reuse(draw(st.sampled_from(sorted(live))), draw(lengths)))
            elif kind == "free":
                slot = draw(st.sampled_from(sorted(live)))
                ops.append(Free(slot))
                live.discard(slot)
            elif kind == "same_slot":
                slot = draw(st.sampled_from(sorted(live)))
                for a in draw(accept_lens(draw(st.integers(2, 4)), max_accept=max_accept)):
                    ops.append(Step((slot,), (a,)))
            elif kind == "sync":
                ops.append(Sync())
            elif kind == "toggle":
                ops.append(ToggleSpec())
            elif kind == "delay":
                ops.append(Delay(draw(st.sampled_from(DELAY_STREAMS)),
                                 draw(st.integers(0, 2_000_000))))
        return OverlapProgram(pool_size, mode, tuple(ops))

    return programs()
