"""The real-GPU backend: the happens-before detector fed from a real CUDA run, plus
BUGGIFY-style delay injection so that a missing edge shows up as a stale value.

`with cuda_backend(seed=0) as be:` runs the body on the GPU with

- a TorchDispatchMode that sees every aten op on CUDA tensors: the op's reads and
  writes come from its schema (the shared op layer, ops/), tensors are exact sets of
  bytes of their storage (views and offsets count, strided views element by element),
  and the op is issued in the model on the current stream (device_op.py); an indexed
  op's set is resolved from its index values, copied to a private pinned ring
  (index_ring.py) and read at a later host sync;
  host<->device copies read or write pinned host memory; blocking copies, `.item()`,
  `nonzero` and friends make the host wait for the current stream;
- PyTorch's GPU trace callbacks (torch.cuda._gpu_trace) for event record and wait,
  stream/event/device synchronize and allocator frees (a freed block handed out again
  carries the old owner's unfinished accesses: a missing record_stream is a race)
  (trace.py, memory.py);
- a TorchFunctionMode that sees the host read or write pinned tensors (tolist, numpy,
  print, indexing, in-place ops, out=) (modes.py);
- small wrappers (restored on exit) around torch.cuda.Event/Stream methods: a True
  query() is a host sync, a wait on a never-recorded event is noted (CUDA skips it, and
  no trace fires), syncs are timed, and delays go before event records (patches.py).

This file holds the run itself: entering and leaving, results, delay injection, host
accesses and custom kernels; CudaBackend gathers the parts above (one file each) as
mixins that share its state. Streams and events: streams.py; once-per-process
calibration and warm-up: calibration.py.

Detection happens when work is issued, as on the virtual device, so a race is found
whether or not the GPU happened to run the racing work late.
"""

from __future__ import annotations

import dataclasses
import weakref

import torch

from .. import compiled
from ..errors import StreamRaceError
from ..host_threads import locked
from ..model import HappensBefore, Race, Site
from ..backend import activate, deactivate
from ..backend import active_backend as running_backend  # either backend, or None
from ..ops.frames import user_frames
from ..ops.host import call_name, host_access_specs, host_result
from ..ops.limit import OpCounter
from ..ops.ranges import access_spec, tensor_access, tensor_set
from .calibration import cycles_per_ms, warm_up_streams
from .debug import DEBUG as _DEBUG
from .delay import DEFAULT_DELAY_MS, DEFAULT_FIRE_PROBABILITY, DEFAULT_SITE_PROBABILITY, DelayPlan
from .device_op import DeviceOps
from .index_ring import process_ring
from .memory import DeviceMemory
from .modes import DispatchMode, FunctionMode
from .pinned import PinnedBlocks, UploadWatches
from .patches import TorchPatches
from .streams import StreamsAndEvents
from . import threads
from .trace import TraceCallbacks
from .triton import install as install_triton, uninstall as uninstall_triton

T = torch.Tensor
STACK_DEPTH = 10
_active: "CudaBackend | None" = None


@dataclasses.dataclass(frozen=True)
class CudaSchedule:
    """What replays a run of the CUDA backend: the seed decides every delay."""

    policy: str
    seed: int | None
    delay_probability: float
    fire_probability: float
    delay_ms: tuple

    @property
    def token(self) -> str:
        return f"cuda:{self.seed}"

    @property
    def choices(self) -> tuple:  # the virtual device's Schedule has one; nothing to list here
        return ()


def active_backend() -> "CudaBackend | None":
    return _active


class CudaBackend(StreamsAndEvents, DeviceMemory, DeviceOps, TraceCallbacks, TorchPatches):
    """One run of a program on the real GPU with the detector attached."""

    is_virtual = False

    def __init__(self, seed: int | None = 0, raise_on_race: bool = True, max_ops: int | None = None,
                 delay_probability: float = DEFAULT_SITE_PROBABILITY,
                 fire_probability: float = DEFAULT_FIRE_PROBABILITY,
                 delay_ms=DEFAULT_DELAY_MS, warmup: bool = True, stack_depth: int = STACK_DEPTH):
        self.seed = seed
        self.raise_on_race = raise_on_race
        self.max_ops = max_ops
        self.delay = DelayPlan(seed, delay_probability, fire_probability, delay_ms)
        self.warmup = warmup
        self.depth = stack_depth
        self.hb = HappensBefore(on_race=self._on_race)
        # Syncs arrive in trace callbacks, inside C++, where a raised race would only be
        # logged: races found at a sync wait for the next launch or host access.
        self.hb.flush_on_sync = False
        self._ring = None  # index_ring.IndexRing, from __enter__ on
        self.op_counter = OpCounter(max_ops)
        self.host_blocked_s = 0.0
        self.active = False
        self._used = False
        self._device_index = 0
        self._by_sid: dict = {}  # stream id (torch) -> Agent
        self._by_ptr: dict = {}  # cudaStream_t -> Agent
        self._events: dict = {}  # cudaEvent_t -> model Event
        # id(torch.cuda.Event) -> (the event, its model Event); strong, so ids stay unique
        self._py_events = weakref.WeakKeyDictionary() if "weakevents" in _DEBUG else {}
        self._event_names: dict = {}  # id(torch.cuda.Event) -> (event, name from source)
        self._stream_names: dict = {}  # cudaStream_t -> name from the creating line
        self._live: dict = {}  # device storage address -> Allocation
        self._pinned = PinnedBlocks(on_free=self._pinned_freed)  # not kept alive
        # H2D sources compared at the host sync that covers them: host writes from C code
        self._uploads = UploadWatches()
        self.hb.on_host_sync = lambda: self._uploads.host_synced(self.hb)
        self._in_op = False
        self._pending: list | None = None  # trace callbacks seen while an op ran
        self._synced_in_op = False
        self._recording_py = None  # the torch.cuda.Event whose record() is running
        self._cycles_per_ms = 0.0
        self._modes: list = []
        self._patches: list = []
        self._triton = None  # triton.py's patches of Triton's launcher, while active
        self._undo_compile = None  # compiled.install()'s undo while active
        self._callbacks: list = []
        self._n_events = 0

    # --- results ----------------------------------------------------------------------

    @property
    def races(self) -> list[Race]:
        return self.hb.races

    @property
    def schedule(self) -> CudaSchedule:
        d = self.delay
        return CudaSchedule("buggify", self.seed, d.site_probability, d.fire_probability,
                            d.delay_ms)

    @property
    def ops_issued(self) -> int:
        return self.op_counter.issued

    @property
    def delays_fired(self) -> list:
        """(site, ms) of every injected delay, in order."""
        return list(self.delay.fired)

    def _on_race(self, race: Race) -> None:
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        if self.raise_on_race:
            raise StreamRaceError(race)

    # --- context ----------------------------------------------------------------------

    def __enter__(self) -> "CudaBackend":
        global _active
        if not torch.cuda.is_available():
            raise RuntimeError("cuda_backend() needs a CUDA device; use virtual_device() "
                               "(pytest --streamorder-backend=virtual) on a machine without one")
        if _active is not None:
            raise RuntimeError("cuda_backend() is already active: nesting is not supported")
        if running_backend() is not None:  # the virtual device (ours is checked above)
            raise RuntimeError("cuda_backend() cannot run inside virtual_device()")
        if self._used:
            raise RuntimeError("a CudaBackend runs once; create a new one")
        self._used = True
        torch.cuda.init()
        self._device_index = torch.cuda.current_device()
        if self.warmup:
            warm_up_streams()
        if self.delay.enabled:
            self._cycles_per_ms = cycles_per_ms()
        torch.cuda.synchronize()  # a clean slate: no earlier work is still queued
        self._ring = process_ring()  # registered once per process, outside torch's allocators
        self._ring.staged = self._ring.unknown = 0  # counted per run, readable after it
        activate(self)
        _active = self
        self.active = True
        try:
            self._install()
        except BaseException:
            self._teardown()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            try:
                torch.cuda.synchronize()  # the run ends: no work of it outlives the context
            finally:
                if exc_type is None and self.active:
                    self.hb.sync_device()
                    if self._ring is not None:
                        self._harvest(force=True)  # every index copy is done now
                    self.hb.flush()
        finally:
            self._teardown()

    def _install(self) -> None:
        # Every other thread gets modes that serve this backend (threads.py); this one is
        # the owner before its modes are pushed and until they are popped.
        threads.start(self)
        self._install_callbacks()
        self._patch_torch()
        self._triton = install_triton(self)  # Triton launches: triton.py
        # Compiled functions run eagerly, so their ops reach the dispatch mode (Inductor's
        # kernels would launch unseen).
        self._undo_compile = compiled.install()
        dispatch = DispatchMode(self)
        dispatch.__enter__()
        self._modes.append(dispatch)
        if "nofunction" not in _DEBUG:
            function = FunctionMode(self)
            function.__enter__()
            self._modes.append(function)

    def _teardown(self) -> None:
        global _active
        self.active = False
        try:
            while self._modes:
                self._modes.pop().__exit__(None, None, None)
        finally:
            threads.stop()
            self._remove_callbacks()
            undo, self._undo_compile = self._undo_compile, None
            if undo is not None:
                undo()
            for owner, name, original in reversed(self._patches):
                setattr(owner, name, original)
            self._patches.clear()
            if self._triton is not None:
                uninstall_triton(self._triton)
                self._triton = None
            self._pinned.clear()
            self._uploads.clear()
            if self._ring is not None:
                self._ring.clear()
            if _active is self:
                _active = None
            deactivate(self)

    def _maybe_delay(self, site: Site, what: str, stream=None) -> None:
        if getattr(self.hb, "captures", None):
            return  # a delay would be captured into the graph (gpu/graphs.py)
        user = user_frames(site)
        if not user:
            return
        code, line = user[0]
        ms = self.delay.decide((code.co_filename, line, what))
        if ms > 0:
            cycles = int(ms * self._cycles_per_ms)
            if stream is None:
                torch.cuda._sleep(cycles)
            else:
                with torch.cuda.stream(stream):
                    torch.cuda._sleep(cycles)

    # --- host accesses ----------------------------------------------------------------

    def _host_call(self, func, args, kwargs, hits):
        """A host-side torch call with registered pinned tensors among its arguments
        (ops/host.py says which it reads and writes)."""
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        out = func(*args, **kwargs)
        specs = host_access_specs(func, hits, out, args)
        if specs:
            if self._ring is not None:
                self._harvest()
            self.hb.host_access(f"host {call_name(func)}", specs, Site.here(2, self.depth))
        return host_result(func, out, args)

    @locked
    def host_access(self, t: torch.Tensor, is_write: bool, op: str, site: Site | None = None) -> None:
        """The host reads or writes a pinned tensor (for code torch cannot see, e.g. a
        NumPy view of it)."""
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        alloc = self._pinned_of(t, site or Site.here(1, self.depth))
        if alloc is not None:
            if self._ring is not None:
                self._harvest()
            self.hb.host_access(op, [tensor_access(alloc, t, is_write)],
                                site or Site.here(1, self.depth))

    @locked
    def host_access_sets(self, t: torch.Tensor, op: str, sets, site: Site) -> None:
        """The host accessed byte sets [(start, stop, region, is_write)] of pinned tensor
        t's storage (through a NumPy view: ops/numpy_views.py)."""
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        alloc = self._pinned.lookup(t) if self.active else None
        if alloc is not None and not alloc.freed:
            if self._ring is not None:
                self._harvest()
            self.hb.host_access(op, [access_spec(alloc, *s) for s in sets], site)

    @locked
    def name_stream(self, stream, name: str) -> None:
        """Use `name` for this stream in race reports."""
        self.hb.rename_stream(self._agent_of_stream(stream), name)

    # --- custom kernels ---------------------------------------------------------------

    @locked
    def custom_kernel(self, name: str, reads, writes, cpu_impl=None, site: Site | None = None) -> None:
        """A kernel torch cannot see into (Triton, a C++ extension), about to be launched
        on the current stream: its declared reads and writes go to the detector (and a
        delay may be injected before it). cpu_impl is not used on a GPU."""
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        site = site or Site.here(1, self.depth)
        accesses = []
        for ts, write in ((reads, False), (writes, True)):
            for t in ts:
                if not isinstance(t, T) or not t.is_cuda:
                    raise TypeError(f"custom kernel {name!r}: {type(t).__name__} is not a CUDA tensor")
                start, stop, region = tensor_set(t)
                if start < stop:
                    accesses.append(access_spec(self._alloc_of(t, stop, site), start, stop,
                                                region, write))
        if self.delay.enabled:
            self._maybe_delay(site, name)
        self.op_counter.count(name)
        self.hb.launch(self._current_agent(), name, accesses, site)


def cuda_backend(seed: int | None = 0, raise_on_race: bool = True, max_ops: int | None = None,
                 delay_probability: float = DEFAULT_SITE_PROBABILITY,
                 fire_probability: float = DEFAULT_FIRE_PROBABILITY,
                 delay_ms=DEFAULT_DELAY_MS, warmup: bool = True,
                 stack_depth: int = STACK_DEPTH) -> CudaBackend:
    """Run torch.cuda code on the real GPU inside `with cuda_backend(...) as be:`, with
    the stream-order race detector attached and delays injected at BUGGIFY sites.

    seed: decides every delay (`be.schedule.token` is "cuda:<seed>"). delay_probability:
    the chance that a site (file, line, op) is switched on for this seed;
    fire_probability: the chance that a visit of a switched-on site stalls its stream;
    delay_ms: (low, high) of the uniform stall, or one number; delay_probability=0 turns
    delays off. The first race raises StreamRaceError unless raise_on_race=False;
    `be.races` lists them all. max_ops (None: no limit) stops a runaway test with
    DeviceOpLimitExceeded. warmup: put a tiny kernel on every pooled stream first (once
    per process).
    """
    return CudaBackend(seed=seed, raise_on_race=raise_on_race, max_ops=max_ops,
                       delay_probability=delay_probability, fire_probability=fire_probability,
                       delay_ms=delay_ms, warmup=warmup, stack_depth=stack_depth)
