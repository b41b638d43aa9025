"""Running an overlap program: `OverlapRunner` applies ops to one `OverlapLoop` on one
device and checks every value it resolves against the oracle; `run_program` runs a
whole program with it."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import importlib
import inspect
import sys
from typing import Any, Callable, Optional, Union

from hypothesis import event
from hypothesis.errors import InvalidArgument

from ..errors import StaleValueError, StreamRaceError
from .batches import MAP_PROTOCOL, SpecMode, build_batch, build_draft, check_protocol
from .chooser import DrawnSchedule
from .devices import active_virtual_device, resolve_device
from .programs import Admit, Delay, Free, OverlapProgram, Reuse, Step, Sync, ToggleSpec
from .values import _check_pool_size

# The classes under test, looked up by name each time an example starts (not bound at
# import), so that swapping `reference_impl.future_map.FutureMap` (a mutation tool, a
# monkeypatch) changes what is tested.
DEFAULT_FUTURE_MAP = "reference_impl.future_map:FutureMap"
DEFAULT_LOOP = "reference_impl.overlap_loop:OverlapLoop"
DEFAULT_RELAY_LOOP = "reference_impl.relay_loop:RelayLoop"

# A class, a factory (any other callable), or "module:name" of either.
ClassSpec = Union[type, Callable, str, None]


def _load_class(spec: ClassSpec, default: str) -> Any:
    """A class or callable, or "module:qualname" imported now (so a swapped attribute is
    seen)."""
    spec = default if spec is None else spec
    if callable(spec):
        return spec
    if not isinstance(spec, str) or ":" not in spec:
        raise InvalidArgument(f"expected a class, a factory or 'module:name', got {spec!r}")
    module, _, qualname = spec.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _is_sglang_shaped(cls: type) -> bool:
    """A FutureMap class built as SGLang's: `__init__(self, device, spec_algo,
    req_to_token_pool, needs_cpu_seq_lens=...)`."""
    try:
        params = list(inspect.signature(cls).parameters)
    except (TypeError, ValueError):
        return False
    return params[:3] == ["device", "spec_algo", "req_to_token_pool"]


def relay_map_factory(obj: Any) -> Callable:
    """`(pool_size, device, spec) -> map` for a factory (returned as is) or a class: an
    SGLang-shaped class gets a ReqToTokenPool stand-in of `pool_size` rows, the spec
    mode as its spec_algo, `needs_cpu_seq_lens`, and `debug_poison` if it takes one."""
    if not isinstance(obj, type):
        return obj
    if not _is_sglang_shaped(obj):
        return lambda pool_size, device, spec: obj(pool_size, device, spec)
    takes_poison = "debug_poison" in inspect.signature(obj).parameters

    def build(pool_size, device, spec):
        from reference_impl.relay_map import ReqToTokenPool

        extra = {"debug_poison": spec.debug_poison} if takes_poison else {}
        return obj(device, spec, ReqToTokenPool.make(pool_size, device),
                   needs_cpu_seq_lens=spec.needs_cpu_seq_lens, **extra)

    return build


@dataclasses.dataclass(frozen=True)
class RelayConfig:
    """The token-relay machine's settings (see `overlap_machine`)."""

    resolve_forward_inputs: Any
    resolve_on: str = "schedule"
    batch_factory: Optional[Callable] = None
    draft_factory: Optional[Callable] = None


@contextlib.contextmanager
def _count_host_copies(vd):
    """The D2H copies the virtual device is asked for inside the block."""
    copies: list[str] = []
    count = vd._count_op

    def counting(name: str) -> None:
        if name.startswith("D2H"):
            copies.append(name)
        count(name)

    vd._count_op = counting
    try:
        yield copies
    finally:
        del vd._count_op


# ------------------------------------------------------------------------ running


class OverlapRunner:
    """Runs ops on one `OverlapLoop` on one device and checks what it resolves.

    Used by `run_program` (checks after every op) and by the state machine (its
    invariants call `check_host`, `check_device`, `check_races`). Results wait in
    `pending_host` / `pending_device` until checked.
    """

    def __init__(self, pool_size: int, *, future_map_cls: ClassSpec = None, loop_cls: ClassSpec = None,
                 device: str = "auto", schedule: Optional[DrawnSchedule] = None,
                 policy: str = "random", seed: int = 0, spec: Union[bool, SpecMode] = True,
                 relay: Optional[RelayConfig] = None):
        self.pool_size = _check_pool_size(pool_size)
        self.device_kind = resolve_device(device)
        self.future_map_cls = _load_class(future_map_cls, DEFAULT_FUTURE_MAP)
        self.loop_cls = _load_class(loop_cls, DEFAULT_RELAY_LOOP if relay else DEFAULT_LOOP)
        self.relay = relay
        if relay is not None and not isinstance(spec, SpecMode):
            spec = SpecMode(on=bool(spec))
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
            from ..sim.device import virtual_device

            active = active_virtual_device()
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

            if active_virtual_device() is not None or not torch.cuda.is_available():
                raise RuntimeError("device='cuda' needs a real CUDA GPU (use 'virtual' or 'auto')")
            torch_device = "cuda"
        else:
            torch_device = "cpu"
        try:
            self.loop = self._make_loop(torch_device)
        except BaseException:
            self.close()
            raise

    def _make_loop(self, torch_device: str):
        if self.relay is None:
            return self.loop_cls(self.pool_size, device=torch_device,
                                 future_map_cls=self.future_map_cls)
        relay = self.relay
        resolve = _load_class(relay.resolve_forward_inputs, "")
        vd = self.vd
        loop = self.loop_cls(
            self.pool_size, device=torch_device,
            future_map_cls=relay_map_factory(self.future_map_cls), spec=self.spec,
            resolve_forward_inputs=resolve, resolve_on=relay.resolve_on,
            make_batch=lambda **fields: build_batch(relay.batch_factory, fields),
            make_draft=lambda **fields: build_draft(relay.draft_factory, fields),
            count_host_copies=(lambda: _count_host_copies(vd)) if vd is not None else None)
        rules = dict(MAP_PROTOCOL)
        if not self.spec.on:
            rules = {k: v for k, v in rules.items() if "resolve_seq_lens_cpu" not in v}
        check_protocol(loop.future_map, rules, "the FutureMap")
        return loop

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
        name = getattr(self.future_map_cls, "__qualname__", repr(self.future_map_cls))
        text = f"{name} in {self.loop_cls.__qualname__} on {where}"
        if self.relay is not None:
            text += f", {self.spec}, resolved on the {self.relay.resolve_on} stream"
        return text

    @property
    def spec_on(self) -> bool:
        return self.spec.on if isinstance(self.spec, SpecMode) else bool(self.spec)

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
            if self.relay is not None:
                raise InvalidArgument("the token-relay machine draws spec on or off per example "
                                      "(the map is built for one spec algorithm); no ToggleSpec")
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
        self._event("step: spec on" if self.spec_on else "step: spec off")
        if n and isinstance(previous, Step) and set(op.indices) & set(previous.indices):
            self._event("step: same slot as the previous step")
        if self.relay is not None:
            return self._relay_step(op)
        self.steps += 1  # counted when issued, so a step that raises counts too
        result = self.loop.step(list(op.indices), list(op.accept_lens), spec=self.spec)
        self.pending_host.append((op, self.spec, result))

    def _relay_step(self, op: Step) -> None:
        """Spec on: SGLang's map resolves no spec extras of a mixed batch, so a drawn
        batch of new and running requests runs as two steps, prefill first."""
        accept = dict(zip(op.indices, op.accept_lens))
        new = set(self.loop.prefill_slots())
        parts = [list(op.indices)]
        if self.spec_on:
            parts = [[i for i in op.indices if i in new], [i for i in op.indices if i not in new]]
            parts = [p for p in parts if p] or [[]]
        for part in parts:
            self.steps += 1
            result = self.loop.step(part, [accept[i] for i in part])
            self._event(f"relay: {result.kind} batch")
            if result.spec:
                self._event("relay: spec extras resolved")
                if not result.needs_cpu_seq_lens:
                    self._event("relay: seq_len_cpu_ub (needs_cpu_seq_lens=False)")
            self.pending_host.append((Step(tuple(part), tuple(accept[i] for i in part)),
                                      result.spec, result))

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
            if not getattr(r, "needs_cpu_seq_lens", True):
                problems = self._bound_problems(r)
            else:
                if r.seq_lens_cpu != r.expected_seq_lens:
                    problems.append(f"seq_lens_cpu={r.seq_lens_cpu} expected {r.expected_seq_lens}")
                if r.seq_lens_sum != r.expected_sum:
                    problems.append(f"seq_lens_sum={r.seq_lens_sum} expected {r.expected_sum}")
            if problems:
                raise StaleValueError(
                    f"stale value resolved at step #{r.step} (batch {list(op.indices)}, spec "
                    f"{'on' if spec else 'off'}): {'; '.join(problems)}\n  ({self._where()})")

    @staticmethod
    def _bound_problems(r) -> list[str]:
        """needs_cpu_seq_lens=False: a host bound, never below the truth, and no D2H."""
        problems = []
        if r.seq_len_cpu_ub is None or r.seq_len_cpu_ub < r.true_max_seq_len:
            problems.append(f"seq_len_cpu_ub={r.seq_len_cpu_ub} is below the true maximum "
                            f"length {r.true_max_seq_len}")
        if r.host_copies:
            problems.append(f"resolve_seq_lens_cpu issued {r.host_copies} device-to-host "
                            "cop(ies) with needs_cpu_seq_lens=False")
        return problems

    def check_device(self) -> None:
        """After a sync: each step's device seq_lens, relayed tokens, and the buffer."""
        pending, self.pending_device = self.pending_device, []
        for r in pending:
            relay = getattr(r, "relay", None)
            if relay is not None:
                self._check_relay(r, relay)
            if r.seq_lens is not None and r.seq_lens != r.expected_seq_lens:
                raise StaleValueError(
                    f"stale device value at step #{r.step} (batch {r.indices}, spec "
                    f"{'on' if r.spec else 'off'}): batch.seq_lens={r.seq_lens} expected "
                    f"{r.expected_seq_lens}\n  ({self._where()})")
        problems, self.buffer_problems = self.buffer_problems, []
        if problems:
            raise StaleValueError(f"{problems[0]}\n  ({self._where()})")

    # Spec extras every relay must carry; the rest are checked where the map resolved them.
    REQUIRED_EXTRAS = ("verified_id", "bonus_tokens")

    def _check_relay(self, r, relay: dict) -> None:
        """Every resolved token (or spec extra) is the one the oracle says was stashed."""
        for name, expected in r.expected_relay.items():
            if name not in relay:
                if name in ("input_ids",) + self.REQUIRED_EXTRAS:
                    raise StaleValueError(
                        f"step #{r.step} ({r.kind} batch {r.indices}): resolve_forward_inputs "
                        f"left {name} unresolved\n  ({self._where()})")
                continue
            actual = relay[name]
            if actual != expected:
                raise StaleValueError(self._relay_message(r, name, actual, expected))

    def _relay_message(self, r, name: str, actual: list, expected: list) -> str:
        wrong = [(j, a, e) for j, (a, e) in enumerate(zip(actual, expected)) if a != e]
        if len(actual) != len(expected):
            detail = f"{len(actual)} values for {len(expected)}"
        else:
            j, a, e = wrong[0]
            owner = (f"slot {r.indices[j]}" if name != "input_ids" or r.kind == "decode"
                     else f"position {j}")
            what = "the debug poison" if a == -1 or a == [-1] else "stale"
            detail = f"{owner}: {a} ({what}) where the oracle says {e} was stashed"
        return (f"stale relayed {name} at step #{r.step} ({r.kind} batch {r.indices}): {detail}; "
                f"resolved {actual}, expected {expected}\n  ({self._where()})")

    def check_races(self) -> None:
        """The virtual device reported no race (each raises at once; this catches one a
        user's code swallowed)."""
        if self.vd is not None and self.vd.races:
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
                device: str = "auto", relay: Optional[RelayConfig] = None) -> OverlapRunner:
    """Run `program` on a fresh `OverlapLoop(program.pool_size)` and check every value it
    resolves, after every op and once more after a final sync. Raises StaleValueError or
    StreamRaceError; returns the (closed) runner.

    `schedule` (from `schedules()`) draws the virtual device's choices from Hypothesis;
    without it a seeded random schedule is used. The classes default to the reference
    `FutureMap` / `OverlapLoop`, looked up when the program starts.
    """
    runner = OverlapRunner(program.pool_size, future_map_cls=future_map_cls, loop_cls=loop_cls,
                           device=device, schedule=schedule, spec=program.spec_mode != "off",
                           relay=relay)
    try:
        for op in program.ops:
            runner.apply(op)
            runner.check()
        runner.finish()
    finally:
        runner.close()
    return runner
