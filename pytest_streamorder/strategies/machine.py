"""The overlap state machine: a `RuleBasedStateMachine` over the overlap loop, and
`overlap_machine(...)`, which makes one for your own FutureMap class."""

from __future__ import annotations

import collections
import dataclasses
import sys
from typing import Callable, Optional, Sequence

import pytest
from hypothesis import HealthCheck, event
from hypothesis import settings as Settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from .chooser import POLICIES, DrawnSchedule, HypothesisChooser, policies
from .devices import DEVICES, resolve_device
from .programs import DELAY_STREAMS, Admit, Delay, Free, Reuse, Step, Sync, ToggleSpec
from .batches import SpecMode
from .runner import DEFAULT_FUTURE_MAP, DEFAULT_LOOP, DEFAULT_RELAY_LOOP, ClassSpec, OverlapRunner, RelayConfig
from .values import _check_pool_size, accept_lens, request_lengths, request_pool_indices


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
    relay: Optional[RelayConfig] = None  # set: the token-relay machine (RelayMachine)
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
        spec = self._draw_spec(data)
        n = data.draw(st.integers(0, self.pool_size - 1), label="initial requests")
        self.runner = OverlapRunner(self.pool_size, future_map_cls=self.future_map_cls,
                                    loop_cls=self.loop_cls, device=kind, schedule=schedule,
                                    spec=spec, relay=self.relay)
        for slot in range(1, n + 1):
            self.runner.apply(Admit(slot, data.draw(request_lengths(max_length=self.max_length),
                                                    label=f"length of slot {slot}")))

    def _draw_spec(self, data):
        return data.draw(st.sampled_from(("on", "off")), label="spec") == "on"

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


class RelayMachine(OverlapMachine):
    """The overlap machine over SGLang's whole relay (`overlap_machine(...,
    resolve_forward_inputs=...)`): sequence lengths as in OverlapMachine, plus output
    tokens stashed by every forward and resolved by the next step (decode, prefill, a
    prefill mixed with running decode requests), spec extras with spec on, and the
    host bound with needs_cpu_seq_lens off. Each example draws one `SpecMode` (the map
    is built for it): spec on or off, needs_cpu_seq_lens, debug poisoning, top-k and
    hidden-state widths; a fixed value set on the machine is used instead of a draw.
    No spec toggle rule: a map's spec algorithm is fixed when it is built.
    """

    spec: Optional[bool] = None
    needs_cpu_seq_lens: Optional[bool] = None
    debug_poison: Optional[bool] = None
    toggle_spec = None  # not a rule here (see the class doc)

    @precondition(lambda self: self.runner is not None and self.runner.free_slots
                  and self.runner.loop.decode_slots())
    @rule(data=st.data())
    @_runs_rule
    def prefill_with_running(self, data):
        """A new request's prefill batched with running decode requests (spec off: one
        mixed batch, the `mix_running_indices` path; spec on: prefill, then decode)."""
        slot = data.draw(st.sampled_from(self.runner.free_slots), label="slot")
        self.runner.apply(Admit(slot, data.draw(request_lengths(max_length=self.max_length),
                                                label="length")))
        running = data.draw(request_pool_indices(self.pool_size, slots=self.runner.loop.decode_slots(),
                                                 min_size=1), label="running")
        batch = (slot,) + tuple(running)
        self.runner.apply(Step(batch, data.draw(accept_lens(len(batch), max_accept=self.max_accept),
                                                label="accept")))

    def _draw_spec(self, data) -> SpecMode:
        def pick(fixed, label, options=(True, False)):
            return fixed if fixed is not None else data.draw(st.sampled_from(options), label=label)

        on = pick(self.spec, "spec")
        mode = SpecMode(on=on,
                        needs_cpu_seq_lens=pick(self.needs_cpu_seq_lens, "needs_cpu_seq_lens")
                        if on else True,
                        debug_poison=pick(self.debug_poison, "debug_poison"),
                        topk=data.draw(st.sampled_from((2, 0)), label="topk") if on else 0,
                        hidden_size=data.draw(st.sampled_from((3, 0)), label="hidden") if on else 0)
        event(f"relay: spec {'on' if on else 'off'}, needs_cpu_seq_lens={mode.needs_cpu_seq_lens}, "
              f"debug_poison={mode.debug_poison}")
        return mode


class RelayMachineWithDelays(RelayMachine, OverlapMachineWithDelays):
    """RelayMachine plus the real-GPU delay rule."""


def overlap_machine(future_map_cls: ClassSpec = None, *, loop_cls: ClassSpec = None,
                    pool_size: int = 8, device: str = "auto",
                    policies: Sequence[str] = POLICIES, max_accept: int = 4,
                    max_length: int = 64, settings: Optional[Settings] = None,
                    stateful_step_count: int = 20, name: Optional[str] = None,
                    resolve_forward_inputs: ClassSpec = None, resolve_on: str = "schedule",
                    batch_factory: Optional[Callable] = None,
                    draft_factory: Optional[Callable] = None, spec: Optional[bool] = None,
                    needs_cpu_seq_lens: Optional[bool] = None,
                    debug_poison: Optional[bool] = None) -> type[OverlapMachine]:
    """The overlap state machine for your own FutureMap (and optionally loop) class.

        from pytest_streamorder.strategies import overlap_machine
        TestMyFutureMap = overlap_machine(MyFutureMap, pool_size=8).TestCase

    `future_map_cls`: a class with the reference's interface (`__init__(pool_size,
    device, spec_algo)`, `publish(future_indices, new_seq_lens)`,
    `resolve_seq_lens_cpu(batch)`, attributes `publish_ready`, `fwd_prepare_d2h_stream`
    and optionally `new_seq_lens_buf`), a factory `(pool_size, device, spec_algo) ->
    map` (any callable that is not a class), or "module:name" of either, looked up when
    each example starts; None: reference_impl.future_map.FutureMap, looked up the same way.

    The token relay (SGLang's whole FutureMap; docs/RELAY_MACHINE.md): pass
    `resolve_forward_inputs` (SGLang's module-level function, or "module:name") and the
    machine also stashes each forward's output tokens and checks what the next step
    resolves. Then `future_map_cls` is a factory `(pool_size, device, spec) -> map`
    (`spec` a `SpecMode`), or a class built as SGLang's (`__init__(device, spec_algo,
    req_to_token_pool, needs_cpu_seq_lens=True)`, given a ReqToTokenPool stand-in of
    `pool_size` rows and the SpecMode as spec_algo). `resolve_on`: "schedule" (resolve
    on the schedule stream: the map must fence its stash with an event) or "forward"
    (as SGLang's scheduler: on the forward stream after it waits for the schedule
    stream). `batch_factory(**fields)` / `draft_factory(**fields)` build the batch and
    draft input (default: `RelayBatch`, `DraftInput`); an object missing an attribute of
    `BATCH_PROTOCOL` is an InvalidArgument naming the rule that needs it. `spec`,
    `needs_cpu_seq_lens`, `debug_poison`: fixed values (None: drawn per example).
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
    for spec_, what in ((future_map_cls, "future_map_cls"), (loop_cls, "loop_cls"),
                        (resolve_forward_inputs, "resolve_forward_inputs")):
        if spec_ is not None and not (callable(spec_) or isinstance(spec_, str)):
            raise InvalidArgument(f"{what} must be a class, a callable or 'module:name', got {spec_!r}")
    relay = None
    if resolve_forward_inputs is not None:
        if resolve_on not in ("schedule", "forward"):
            raise InvalidArgument(f"resolve_on must be 'schedule' or 'forward', got {resolve_on!r}")
        for value, what in ((batch_factory, "batch_factory"), (draft_factory, "draft_factory")):
            if value is not None and not callable(value):
                raise InvalidArgument(f"{what} must be callable, got {value!r}")
        if future_map_cls is None:
            raise InvalidArgument("the token relay needs future_map_cls: a factory "
                                  "(pool_size, device, spec) -> map, or an SGLang-shaped class")
        relay = RelayConfig(resolve_forward_inputs, resolve_on, batch_factory, draft_factory)
    elif any(v is not None for v in (batch_factory, draft_factory, spec, needs_cpu_seq_lens,
                                     debug_poison)) or resolve_on != "schedule":
        raise InvalidArgument("batch_factory, draft_factory, resolve_on, spec, needs_cpu_seq_lens "
                              "and debug_poison belong to the token relay: pass "
                              "resolve_forward_inputs too")
    label = name or _class_name(future_map_cls) + "Machine"
    if relay is not None:
        base = RelayMachineWithDelays if device in ("auto", "cuda") else RelayMachine
    else:
        base = OverlapMachineWithDelays if device in ("auto", "cuda") else OverlapMachine
    machine = type(label, (base,), {
        # staticmethod: a factory function must not become a bound method of the machine
        "future_map_cls": (staticmethod(future_map_cls) if callable(future_map_cls)
                           and not isinstance(future_map_cls, type) else
                           future_map_cls if future_map_cls is not None else DEFAULT_FUTURE_MAP),
        "loop_cls": loop_cls if loop_cls is not None else (
            DEFAULT_RELAY_LOOP if relay is not None else DEFAULT_LOOP),
        "pool_size": pool_size,
        "device": device,
        "policies": policies_,
        "max_accept": max_accept,
        "max_length": max_length,
        "reached": collections.Counter(),
        "__module__": _caller_module(),
        **({"relay": relay, "spec": spec, "needs_cpu_seq_lens": needs_cpu_seq_lens,
            "debug_poison": debug_poison} if relay is not None else {}),
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
    if callable(spec):
        return getattr(spec, "__name__", "FutureMap").replace("<lambda>", "FutureMap")
    return str(spec).rpartition(":")[2].rpartition(".")[2] or "FutureMap"


def _caller_module() -> str:
    frame = sys._getframe(2)
    return frame.f_globals.get("__name__", __name__)
