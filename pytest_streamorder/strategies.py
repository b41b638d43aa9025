"""Hypothesis strategies for overlap-scheduler code, and a ready-made state machine.

Everything here generates what SGLang's overlap scheduler feeds a `FutureMap`, and checks
that what `resolve_seq_lens_cpu` hands back equals the ground truth:

  request_pool_indices  a batch: unique request-pool slots (sizes 0, 1, small, up to the
                        whole pool; slot 0 is the padding row and never drawn)
  accept_lens           tokens each request of a batch accepts in one forward
  request_lengths       a new request's initial length
  dp_idle_steps         a DP-idle step (empty batch: the rank runs no forward)
  spec_modes            a program's speculative mode: "on", "off" or "mixed" (toggling)
  overlap_programs      a whole overlap program: a list of ops (`Admit`, `Free`, `Reuse`,
                        `Step`, `ToggleSpec`, `Sync`, `Delay`) valid by construction
  policies, schedules   a scheduling policy of the virtual device, and a schedule whose
                        every choice is drawn from Hypothesis (`HypothesisChooser`), so
                        that a failing schedule shrinks together with the program
  run_program           run a program on an `OverlapLoop` and check every value it resolves
  overlap_machine       a `RuleBasedStateMachine` over the overlap loop, for your own
                        FutureMap class: `TestMine = overlap_machine(MyFutureMap).TestCase`

What is checked, after every step (`Step` = schedule a batch, resolve its lengths while
the previous forward still runs, then launch its forward, which publishes): the host
`seq_lens_cpu` and `seq_lens_sum` equal the oracle's; after every `Sync` (a full device
sync) the device `batch.seq_lens` of every step since the last sync and the FutureMap's
`new_seq_lens_buf` equal it too; and the virtual device reported no race. A wrong value
raises `StaleValueError`, a race `StreamRaceError` (both are AssertionErrors).

Devices. `device="virtual"` runs on the virtual CUDA device (a CPU-only machine is
enough; the schedule is drawn from Hypothesis and races are reported), `"cuda"` on a real
GPU (values only, with `Delay` ops injecting `torch.cuda._sleep` on a chosen stream to
make races manifest), `"cpu"` eagerly without streams (only checks the bookkeeping), and
`"auto"` takes `$STREAMORDER_DEVICE` if set, else `"cuda"` when a real GPU is present,
else `"virtual"`. Every example gets its own virtual device: it must not run inside one
that is already active (`pytest --streamorder` activates one per test *function*; mark
`@given` tests that use these helpers `@pytest.mark.no_streamorder`; the state machine's
TestCase is a unittest class, which the plugin does not wrap, and is marked anyway).

Importing this module imports hypothesis and pytest but not torch: the virtual device,
torch and the reference implementation load when an example first runs.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import importlib
import os
import sys
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import pytest
from hypothesis import HealthCheck, event
from hypothesis import settings as Settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

__all__ = [
    "Admit",
    "DEVICE_ENV",
    "DEFAULT_FUTURE_MAP",
    "DEFAULT_LOOP",
    "Delay",
    "DrawnSchedule",
    "Free",
    "HypothesisChooser",
    "OverlapMachine",
    "OverlapMachineWithDelays",
    "OverlapProgram",
    "OverlapRunner",
    "POLICIES",
    "Reuse",
    "SPEC_MODES",
    "StaleValueError",
    "Step",
    "Sync",
    "ToggleSpec",
    "accept_lens",
    "dp_idle_steps",
    "overlap_machine",
    "overlap_programs",
    "policies",
    "request_lengths",
    "request_pool_indices",
    "resolve_device",
    "run_program",
    "schedules",
    "spec_modes",
]

# The virtual device's scheduling policies (pytest_streamorder.sim.scheduler.POLICIES;
# repeated here so that importing this module does not import torch; a test checks they
# agree). Ordered so that Hypothesis shrinks toward the simplest one.
POLICIES = ("eager", "lazy", "random", "pct", "delay")
SPEC_MODES = ("on", "off", "mixed")
DEVICES = ("auto", "virtual", "cuda", "cpu")
DEVICE_ENV = "STREAMORDER_DEVICE"
# The classes under test, looked up by name each time an example starts (not bound at
# import), so that swapping `reference_impl.future_map.FutureMap` (a mutation tool, a
# monkeypatch) changes what is tested.
DEFAULT_FUTURE_MAP = "reference_impl.future_map:FutureMap"
DEFAULT_LOOP = "reference_impl.overlap_loop:OverlapLoop"
# Streams a `Delay` op can hold back (real GPU only).
DELAY_STREAMS = ("forward", "schedule", "d2h", "default")

ClassSpec = Union[type, str, None]


class StaleValueError(AssertionError):
    """A value the FutureMap resolved (host seq_lens_cpu / seq_lens_sum, device seq_lens,
    or new_seq_lens_buf after a full sync) differs from the oracle's ground truth."""


# ------------------------------------------------------------------------ validation


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


def policies(allowed: Sequence[str] = POLICIES) -> st.SearchStrategy[str]:
    """One of the virtual device's scheduling policies; labels each with
    `event("policy: <name>")` so Hypothesis' statistics show which were reached."""
    allowed = tuple(allowed)
    unknown = [p for p in allowed if p not in POLICIES]
    if not allowed or unknown:
        raise InvalidArgument(f"policies must be a non-empty subset of {POLICIES}, got {allowed}")

    def label(policy: str) -> str:
        event(f"policy: {policy}")
        return policy

    return st.sampled_from(allowed).map(label)


class HypothesisChooser:
    """The virtual device's source of scheduling decisions, drawn from a Hypothesis test
    case, so that a failing schedule shrinks with the program (toward choice 0: run the
    first ready stream, as the eager policy does).

    `data` is what `st.data()` gives (or its `.conjecture_data`). Choices are drawn
    quietly, without a "Draw n:" line each. Same interface as
    pytest_streamorder.sim.scheduler.Chooser: `choose(n) -> int in [0, n)` and the
    `choices` made so far (for `virtual_device(replay=vd.schedule)`).
    """

    def __init__(self, data: Any):
        cd = getattr(data, "conjecture_data", data)
        draw_integer = getattr(cd, "draw_integer", None)
        if draw_integer is not None:
            self._draw = lambda n: draw_integer(0, n - 1)
        elif hasattr(cd, "draw"):
            self._draw = lambda n: cd.draw(st.integers(0, n - 1))
        else:
            raise InvalidArgument(f"HypothesisChooser needs st.data()'s object, got {data!r}")
        self.choices: list[int] = []
        self.frozen = False

    def choose(self, n: int) -> int:
        if n <= 1:
            return 0
        c = 0 if self.frozen else self._draw(n)
        self.choices.append(c)
        return c

    def freeze(self) -> None:
        """From now on choose 0 without drawing: for work that runs after the test case
        ended (the final drain when the device closes)."""
        self.frozen = True


@dataclasses.dataclass
class DrawnSchedule:
    """A schedule for the virtual device whose choices come from Hypothesis: pass to
    `run_program(schedule=...)`, or use `policy` and `chooser` with
    `virtual_device(policy=s.policy, chooser=s.chooser)`."""

    policy: str
    chooser: HypothesisChooser

    def __repr__(self) -> str:
        return f"schedule(policy={self.policy!r})"


def schedules(allowed: Sequence[str] = POLICIES) -> st.SearchStrategy[DrawnSchedule]:
    """A scheduling policy (see `policies`) and a `HypothesisChooser` drawing every
    scheduling decision from the same test case, so the schedule shrinks with it."""
    return st.builds(_drawn_schedule, policies(allowed), st.data())


def _drawn_schedule(policy: str, data) -> DrawnSchedule:
    return DrawnSchedule(policy, HypothesisChooser(data))


# ------------------------------------------------------------------------ programs


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


# ------------------------------------------------------------------------ devices


def _active_virtual_device():
    mod = sys.modules.get("pytest_streamorder.sim.device")
    return mod._active if mod is not None else None


def _virtual_device_active() -> bool:
    return _active_virtual_device() is not None


def resolve_device(device: str = "auto") -> str:
    """"virtual", "cuda" or "cpu" for `device` ("auto": $STREAMORDER_DEVICE if set, else
    "cuda" when a real GPU is present, else "virtual")."""
    if device not in DEVICES:
        raise InvalidArgument(f"device must be one of {DEVICES}, got {device!r}")
    if device == "auto":
        device = os.environ.get(DEVICE_ENV, "auto") or "auto"
        if device not in DEVICES:
            raise InvalidArgument(f"${DEVICE_ENV} must be one of {DEVICES}, got {device!r}")
    if device == "auto":
        if _virtual_device_active():
            return "virtual"  # torch.cuda is the virtual device's now; __enter__ explains
        import torch

        return "cuda" if torch.cuda.is_available() else "virtual"
    return device


def _load_class(spec: ClassSpec, default: str) -> type:
    """A class, or "module:qualname" imported now (so a swapped attribute is seen)."""
    spec = default if spec is None else spec
    if isinstance(spec, type):
        return spec
    if not isinstance(spec, str) or ":" not in spec:
        raise InvalidArgument(f"expected a class or 'module:ClassName', got {spec!r}")
    module, _, qualname = spec.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


# ------------------------------------------------------------------------ running


class OverlapRunner:
    """Runs ops on one `OverlapLoop` on one device and checks what it resolves.

    Used by `run_program` (checks after every op) and by the state machine (its
    invariants call `check_host`, `check_device`, `check_races`). Results wait in
    `pending_host` / `pending_device` until checked.
    """

    def __init__(self, pool_size: int, *, future_map_cls: ClassSpec = None, loop_cls: ClassSpec = None,
                 device: str = "auto", schedule: Optional[DrawnSchedule] = None,
                 policy: str = "random", seed: int = 0, spec: bool = True):
        self.pool_size = _check_pool_size(pool_size)
        self.device_kind = resolve_device(device)
        self.future_map_cls = _load_class(future_map_cls, DEFAULT_FUTURE_MAP)
        self.loop_cls = _load_class(loop_cls, DEFAULT_LOOP)
        self.policy = schedule.policy if schedule is not None else policy
        self.chooser = schedule.chooser if schedule is not None else None
        self.spec = spec
        self.ops: list = []
        self.steps = 0
        self.reached: collections.Counter = collections.Counter()  # event labels seen
        self.pending_host: list = []
        self.pending_device: list = []
        self.buffer_problems: list[str] = []
        self.vd = None
        self._stack = contextlib.ExitStack()
        self._closed = False
        if self.device_kind == "virtual":
            from .sim.device import virtual_device

            active = _active_virtual_device()
            if active is not None and getattr(active, "hypothesis_example", False):
                # `pytest --streamorder` already gave this example a device of its own,
                # with a schedule drawn from the example: run on it.
                self.vd, self.policy, self.chooser = active, active.policy, active.chooser
            elif active is not None:
                raise RuntimeError(
                    "a virtual device is already active: pytest_streamorder.strategies gives "
                    "every Hypothesis example its own (with a schedule drawn from Hypothesis). "
                    "Call it from a @given test (pytest --streamorder then runs each example "
                    "on its own device), or mark this test @pytest.mark.no_streamorder.")
            else:
                self.vd = self._stack.enter_context(
                    virtual_device(seed=seed, policy=self.policy, chooser=self.chooser))
            self.reached[f"policy: {self.policy}"] += 1
            torch_device = "cuda"
        elif self.device_kind == "cuda":
            import torch

            if _virtual_device_active() or not torch.cuda.is_available():
                raise RuntimeError("device='cuda' needs a real CUDA GPU (use 'virtual' or 'auto')")
            torch_device = "cuda"
        else:
            torch_device = "cpu"
        try:
            self.loop = self.loop_cls(self.pool_size, device=torch_device,
                                      future_map_cls=self.future_map_cls)
        except BaseException:
            self.close()
            raise

    # --- state -------------------------------------------------------------------------

    @property
    def live_slots(self) -> list[int]:
        return self.loop.live_slots

    @property
    def free_slots(self) -> list[int]:
        return self.loop.free_slots

    @property
    def on_real_gpu(self) -> bool:
        return self.device_kind == "cuda"

    def describe(self) -> str:
        where = {"virtual": f"virtual device, policy {self.policy!r}", "cuda": "real GPU",
                 "cpu": "cpu (eager)"}[self.device_kind]
        return f"{self.future_map_cls.__qualname__} in {self.loop_cls.__qualname__} on {where}"

    # --- ops ---------------------------------------------------------------------------

    def apply(self, op) -> None:
        """Run one op (see the op classes)."""
        self.ops.append(op)
        if isinstance(op, Step):
            self._step(op)
        elif isinstance(op, Admit):
            self.loop.admit(op.slot, op.length)
        elif isinstance(op, Free):
            self.loop.free(op.slot)
        elif isinstance(op, Reuse):
            self._event("slot reuse (freed and admitted again)")
            self.loop.free(op.slot)
            self.loop.admit(op.slot, op.length)
        elif isinstance(op, ToggleSpec):
            self.spec = not self.spec
        elif isinstance(op, Sync):
            self.sync()
        elif isinstance(op, Delay):
            self._delay(op)
        else:
            raise TypeError(f"not an overlap op: {op!r}")

    def _event(self, label: str) -> None:
        """A Hypothesis event (shown by --hypothesis-show-statistics), counted here too."""
        self.reached[label] += 1
        event(label)

    def _step(self, op: Step) -> None:
        previous = self.ops[-2] if len(self.ops) > 1 else None
        n = len(op.indices)
        if n == 0:
            self._event("step: DP-idle (empty batch)")
        elif n == self.pool_size - 1:
            self._event("step: whole pool")
        self._event("step: spec on" if self.spec else "step: spec off")
        if n and isinstance(previous, Step) and set(op.indices) & set(previous.indices):
            self._event("step: same slot as the previous step")
        self.steps += 1  # counted when issued, so a step that raises counts too
        result = self.loop.step(list(op.indices), list(op.accept_lens), spec=self.spec)
        self.pending_host.append((op, self.spec, result))

    def _delay(self, op: Delay) -> None:
        if not self.on_real_gpu:
            return  # the virtual device's schedule is drawn instead; delays add nothing
        import torch

        loop = self.loop
        stream = {"forward": loop.forward_stream, "schedule": loop.schedule_stream,
                  "d2h": getattr(loop.future_map, "fwd_prepare_d2h_stream", None),
                  "default": torch.cuda.current_stream()}.get(op.stream)
        if stream is not None and op.cycles > 0:
            self._event(f"delay: {op.stream} stream")
            with torch.cuda.stream(stream):
                torch.cuda._sleep(op.cycles)

    def sync(self) -> None:
        """Full device sync; queue the synced results and the buffer for checking."""
        self.pending_device.extend(self.loop.synchronize())
        buf = getattr(self.loop.future_map, "new_seq_lens_buf", None)
        if buf is not None and hasattr(self.loop, "device_seq_lens"):
            actual = self.loop.device_seq_lens()
            expected = {s: self.loop.oracle.lens[s] for s in actual}
            if actual != expected:
                wrong = {s: (actual[s], expected[s]) for s in actual if actual[s] != expected[s]}
                self.buffer_problems.append(
                    "after a full sync, FutureMap.new_seq_lens_buf holds stale lengths: "
                    + ", ".join(f"slot {s}: {a} (expected {e})" for s, (a, e) in sorted(wrong.items())))

    # --- checks ------------------------------------------------------------------------

    def _where(self) -> str:
        return f"{self.describe()}, after {len(self.ops)} ops / {self.steps} steps"

    def check_host(self) -> None:
        """Each step's host seq_lens_cpu and seq_lens_sum equal the oracle's."""
        pending, self.pending_host = self.pending_host, []
        for op, spec, r in pending:
            problems = []
            if r.seq_lens_cpu != r.expected_seq_lens:
                problems.append(f"seq_lens_cpu={r.seq_lens_cpu} expected {r.expected_seq_lens}")
            if r.seq_lens_sum != r.expected_sum:
                problems.append(f"seq_lens_sum={r.seq_lens_sum} expected {r.expected_sum}")
            if problems:
                raise StaleValueError(
                    f"stale value resolved at step #{r.step} (batch {list(op.indices)}, spec "
                    f"{'on' if spec else 'off'}): {'; '.join(problems)}\n  ({self._where()})")

    def check_device(self) -> None:
        """After a sync: each step's device seq_lens, and the FutureMap buffer."""
        pending, self.pending_device = self.pending_device, []
        for r in pending:
            if r.seq_lens is not None and r.seq_lens != r.expected_seq_lens:
                raise StaleValueError(
                    f"stale device value at step #{r.step} (batch {r.indices}, spec "
                    f"{'on' if r.spec else 'off'}): batch.seq_lens={r.seq_lens} expected "
                    f"{r.expected_seq_lens}\n  ({self._where()})")
        problems, self.buffer_problems = self.buffer_problems, []
        if problems:
            raise StaleValueError(f"{problems[0]}\n  ({self._where()})")

    def check_races(self) -> None:
        """The virtual device reported no race (each raises at once; this catches one a
        user's code swallowed)."""
        if self.vd is not None and self.vd.races:
            from .sim.device import StreamRaceError

            raise StreamRaceError(self.vd.races[0])

    def check(self) -> None:
        self.check_races()
        self.check_host()
        self.check_device()

    def finish(self) -> None:
        """End of a run: sync and check everything still pending."""
        self.sync()
        self.check()

    def close(self) -> None:
        """Leave the device. Pass-through of a failure: queued work is not drained."""
        if self._closed:
            return
        self._closed = True
        freeze = getattr(self.chooser, "freeze", None)
        if freeze is not None:
            freeze()
        self._stack.__exit__(*sys.exc_info())


def run_program(program: OverlapProgram, schedule: Optional[DrawnSchedule] = None, *,
                future_map_cls: ClassSpec = None, loop_cls: ClassSpec = None,
                device: str = "auto") -> OverlapRunner:
    """Run `program` on a fresh `OverlapLoop(program.pool_size)` and check every value it
    resolves, after every op and once more after a final sync. Raises StaleValueError or
    StreamRaceError; returns the (closed) runner.

    `schedule` (from `schedules()`) draws the virtual device's choices from Hypothesis;
    without it a seeded random schedule is used. The classes default to the reference
    `FutureMap` / `OverlapLoop`, looked up when the program starts.
    """
    runner = OverlapRunner(program.pool_size, future_map_cls=future_map_cls, loop_cls=loop_cls,
                           device=device, schedule=schedule, spec=program.spec_mode != "off")
    try:
        for op in program.ops:
            runner.apply(op)
            runner.check()
        runner.finish()
    finally:
        runner.close()
    return runner


# ------------------------------------------------------------------------ state machine


@dataclasses.dataclass
class RunRecord:
    """What one state-machine run did: rules run (initialize included), its ops (the
    program), device steps issued, policy, scheduling choices drawn; `final` for
    Hypothesis' final (shrunk) replay of a failure."""

    rules: int
    ops: list
    steps: int
    policy: Optional[str]
    choices: int
    final: bool

    @property
    def program(self) -> str:
        return "\n".join(f"  {op}" for op in self.ops)


def _is_final_run() -> bool:
    try:
        from hypothesis.control import current_build_context

        return bool(current_build_context().is_final)
    except Exception:
        return False


def _runs_rule(method: Callable) -> Callable:
    """Marks the machine busy while a rule or invariant runs, so teardown can tell a
    failure (leave the device at once) from a run that ended (final sync and checks)."""

    def wrapper(self, *args, **kwargs):
        self._busy = True
        if not method.__name__.startswith("check_"):
            self._rules_run += 1
        method(self, *args, **kwargs)
        self._busy = False

    wrapper.__name__ = method.__name__
    wrapper.__qualname__ = method.__qualname__
    wrapper.__doc__ = method.__doc__
    return wrapper


class OverlapMachine(RuleBasedStateMachine):
    """A RuleBasedStateMachine over the overlap loop. Use `overlap_machine(...)` to get one
    for your classes; the class attributes below are what it sets.

    Each example builds a fresh `loop_cls(pool_size, device=..., future_map_cls=...)` on
    its own device (see the module doc): on the virtual device, with a policy drawn from
    `policies()` and every scheduling choice from the same example. Rules: admit a
    request, step a batch (spec per the current mode), a DP-idle step, the same slot over
    consecutive steps, free a slot, free and reuse it, toggle spec, full sync, and on a
    real GPU a delay. Invariants: no race report, the host values of every step and
    (after a sync) the device values equal the oracle. Teardown syncs and checks once
    more, then leaves the device.
    """

    future_map_cls: ClassSpec = DEFAULT_FUTURE_MAP
    loop_cls: ClassSpec = DEFAULT_LOOP
    pool_size: int = 8
    device: str = "auto"
    policies: tuple = POLICIES
    max_accept: int = 4
    max_length: int = 64
    # The last run (and the last final, i.e. shrunk, run) of this machine class, and
    # how often each event label was reached over all its runs.
    last_run: Optional[RunRecord] = None
    final_run: Optional[RunRecord] = None
    reached: collections.Counter = collections.Counter()

    def __init__(self):
        super().__init__()
        self.runner: Optional[OverlapRunner] = None
        self._busy = False
        self._rules_run = 0

    # --- setup --------------------------------------------------------------------------

    @initialize(data=st.data())
    @_runs_rule
    def start(self, data):
        """A fresh loop on a fresh device; policy and schedule drawn from this example."""
        kind = resolve_device(self.device)
        schedule = None
        if kind == "virtual":
            schedule = DrawnSchedule(data.draw(policies(self.policies), label="policy"),
                                     HypothesisChooser(data))
        else:
            event(f"device: {kind}")
        spec = data.draw(st.sampled_from(("on", "off")), label="spec") == "on"
        n = data.draw(st.integers(0, self.pool_size - 1), label="initial requests")
        self.runner = OverlapRunner(self.pool_size, future_map_cls=self.future_map_cls,
                                    loop_cls=self.loop_cls, device=kind, schedule=schedule,
                                    spec=spec)
        for slot in range(1, n + 1):
            self.runner.apply(Admit(slot, data.draw(request_lengths(max_length=self.max_length),
                                                    label=f"length of slot {slot}")))

    def _live(self) -> list[int]:
        return self.runner.live_slots

    # --- rules --------------------------------------------------------------------------

    @precondition(lambda self: self.runner is not None and self.runner.free_slots)
    @rule(data=st.data())
    @_runs_rule
    def admit(self, data):
        """A new request takes a free slot."""
        slot = data.draw(st.sampled_from(self.runner.free_slots), label="slot")
        self.runner.apply(Admit(slot, data.draw(request_lengths(max_length=self.max_length),
                                                label="length")))

    @precondition(lambda self: self.runner is not None)
    @rule(data=st.data())
    @_runs_rule
    def step(self, data):
        """Schedule a batch of live requests, resolve it, run and publish its forward."""
        live = self._live()
        batch = (data.draw(request_pool_indices(self.pool_size, slots=live), label="batch")
                 if live else ())
        accept = data.draw(accept_lens(len(batch), max_accept=self.max_accept), label="accept")
        self.runner.apply(Step(batch, accept))

    @precondition(lambda self: self.runner is not None)
    @rule()
    @_runs_rule
    def idle(self):
        """A DP-idle step: empty batch."""
        self.runner.apply(Step((), ()))

    @precondition(lambda self: self.runner is not None and self.runner.live_slots)
    @rule(data=st.data())
    @_runs_rule
    def same_slot_steps(self, data):
        """The same slot in 2-4 consecutive steps (chunked prefill; one request decoding)."""
        slot = data.draw(st.sampled_from(self._live()), label="slot")
        n = data.draw(st.integers(2, 4), label="steps")
        for a in data.draw(accept_lens(n, max_accept=self.max_accept), label="accept"):
            self.runner.apply(Step((slot,), (a,)))

    @precondition(lambda self: self.runner is not None and self.runner.live_slots)
    @rule(data=st.data())
    @_runs_rule
    def reuse(self, data):
        """A request finishes and a new one takes its slot at once."""
        slot = data.draw(st.sampled_from(self._live()), label="slot")
        self.runner.apply(Reuse(slot, data.draw(request_lengths(max_length=self.max_length),
                                                label="length")))

    @precondition(lambda self: self.runner is not None and self.runner.live_slots)
    @rule(data=st.data())
    @_runs_rule
    def free(self, data):
        """A request finishes; its slot stays free."""
        self.runner.apply(Free(data.draw(st.sampled_from(self._live()), label="slot")))

    @precondition(lambda self: self.runner is not None)
    @rule()
    @_runs_rule
    def toggle_spec(self):
        """Speculative decoding off for the following steps (or back on)."""
        self.runner.apply(ToggleSpec())

    @precondition(lambda self: self.runner is not None)
    @rule()
    @_runs_rule
    def sync(self):
        """Full device sync: device values become checkable."""
        self.runner.apply(Sync())

    # --- invariants ---------------------------------------------------------------------

    @invariant()
    @_runs_rule
    def check_no_race_report(self):
        """The virtual device reported no stream-ordering race."""
        if self.runner is not None:
            self.runner.check_races()

    @invariant()
    @_runs_rule
    def check_resolved_host_values(self):
        """Every step's seq_lens_cpu and seq_lens_sum equal the oracle's."""
        if self.runner is not None:
            self.runner.check_host()

    @invariant()
    @_runs_rule
    def check_device_values_after_sync(self):
        """After a sync: every step's device seq_lens and the FutureMap buffer too."""
        if self.runner is not None:
            self.runner.check_device()

    # --- end ----------------------------------------------------------------------------

    def teardown(self):
        runner = self.runner
        if runner is None:
            return
        try:
            if not self._busy and sys.exc_info()[0] is None:
                runner.finish()
        finally:
            record = RunRecord(self._rules_run, list(runner.ops), runner.steps,
                               runner.policy if runner.vd is not None else None,
                               len(runner.chooser.choices) if runner.chooser else 0,
                               _is_final_run())
            cls = type(self)
            cls.last_run = record
            if record.final:
                cls.final_run = record
            cls.reached.update(runner.reached)
            runner.close()


class OverlapMachineWithDelays(OverlapMachine):
    """OverlapMachine plus a rule that, on a real GPU, holds one stream back by up to
    ~1 ms (`torch.cuda._sleep`) before the next op, so a missing edge shows as a stale
    value. Used for device "cuda" and "auto"."""

    @precondition(lambda self: self.runner is not None and self.runner.on_real_gpu)
    @rule(stream=st.sampled_from(DELAY_STREAMS), cycles=st.integers(0, 2_000_000))
    @_runs_rule
    def delay(self, stream, cycles):
        """Real GPU: hold one stream back (torch.cuda._sleep) before the next op."""
        self.runner.apply(Delay(stream, cycles))


def overlap_machine(future_map_cls: ClassSpec = None, *, loop_cls: ClassSpec = None,
                    pool_size: int = 8, device: str = "auto",
                    policies: Sequence[str] = POLICIES, max_accept: int = 4,
                    max_length: int = 64, settings: Optional[Settings] = None,
                    stateful_step_count: int = 20, name: Optional[str] = None) -> type[OverlapMachine]:
    """The overlap state machine for your own FutureMap (and optionally loop) class.

        from pytest_streamorder.strategies import overlap_machine
        TestMyFutureMap = overlap_machine(MyFutureMap, pool_size=8).TestCase

    `future_map_cls`: a class with the reference's interface (`__init__(pool_size,
    device, spec_algo)`, `publish(future_indices, new_seq_lens)`,
    `resolve_seq_lens_cpu(batch)`, attributes `publish_ready`, `fwd_prepare_d2h_stream`
    and optionally `new_seq_lens_buf`), or "module:Class" looked up when each example
    starts; None: reference_impl.future_map.FutureMap, looked up the same way.
    `loop_cls` likewise (an OverlapLoop subclass; None: the reference loop).
    `device`: "virtual", "cuda" (real GPU), "cpu" or "auto" (see `resolve_device`).
    `policies`: which virtual-device scheduling policies examples draw from.
    `settings`: Hypothesis settings for `.TestCase` (default: the loaded profile, with
    no deadline, `stateful_step_count` rules per example and too_slow not checked).

    Raises InvalidArgument for pool_size < 2 and other bad arguments.
    """
    pool_size = _check_pool_size(pool_size)
    if device not in DEVICES:
        raise InvalidArgument(f"device must be one of {DEVICES}, got {device!r}")
    policies_ = tuple(policies)
    if not policies_ or any(p not in POLICIES for p in policies_):
        raise InvalidArgument(f"policies must be a non-empty subset of {POLICIES}, got {policies_}")
    accept_lens(0, max_accept=max_accept)
    request_lengths(max_length=max_length)
    for spec, what in ((future_map_cls, "future_map_cls"), (loop_cls, "loop_cls")):
        if spec is not None and not isinstance(spec, (type, str)):
            raise InvalidArgument(f"{what} must be a class or 'module:Class', got {spec!r}")
    label = name or _class_name(future_map_cls) + "Machine"
    base = OverlapMachineWithDelays if device in ("auto", "cuda") else OverlapMachine
    machine = type(label, (base,), {
        "future_map_cls": future_map_cls if future_map_cls is not None else DEFAULT_FUTURE_MAP,
        "loop_cls": loop_cls if loop_cls is not None else DEFAULT_LOOP,
        "pool_size": pool_size,
        "device": device,
        "policies": policies_,
        "max_accept": max_accept,
        "max_length": max_length,
        "reached": collections.Counter(),
        "__module__": _caller_module(),
    })
    case = machine.TestCase
    case.settings = settings if settings is not None else Settings(
        deadline=None, stateful_step_count=stateful_step_count,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    # The machine manages a virtual device per example; --streamorder must not wrap it.
    case.pytestmark = [pytest.mark.no_streamorder]
    return machine


def _class_name(spec: ClassSpec) -> str:
    if spec is None:
        return "FutureMap"
    if isinstance(spec, type):
        return spec.__name__
    return str(spec).rpartition(":")[2].rpartition(".")[2] or "FutureMap"


def _caller_module() -> str:
    frame = sys._getframe(2)
    return frame.f_globals.get("__name__", __name__)
