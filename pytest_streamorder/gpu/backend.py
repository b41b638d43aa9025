"""The real-GPU backend: the happens-before detector fed from a real CUDA run, plus
BUGGIFY-style delay injection so that a missing edge shows up as a stale value.

`with cuda_backend(seed=0) as be:` runs the body on the GPU with

- a TorchDispatchMode that sees every aten op on CUDA tensors: the op's reads and
  writes come from its schema (rwsets.py), tensors are byte ranges of their storage
  (views and offsets count), and the op is issued in the model on the current stream;
  host<->device copies read or write pinned host memory; blocking copies, `.item()`,
  `nonzero` and friends make the host wait for the current stream;
- PyTorch's GPU trace callbacks (torch.cuda._gpu_trace) for event record and wait,
  stream/event/device synchronize and allocator frees (a freed block handed out again
  carries the old owner's unfinished accesses: a missing record_stream is a race);
- a TorchFunctionMode that sees the host read or write pinned tensors (tolist, numpy,
  print, indexing, in-place ops, out=);
- small wrappers (restored on exit) around torch.cuda.Event/Stream methods: a True
  query() is a host sync, a wait on a never-recorded event is noted (CUDA skips it, and
  no trace fires), syncs are timed, and delays go before event records.

Detection happens when work is issued, as on the virtual device, so a race is found
whether or not the GPU happened to run the racing work late.
"""

from __future__ import annotations

import dataclasses
import functools
import linecache
import os
import re
import sys
import time
import weakref

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from ..model import HappensBefore, Race, Site
from ..model.site import _internal_prefixes
from ..backend import activate, deactivate
from ..backend import active_backend as running_backend  # either backend, or None
from ..errors import DeviceOpLimitExceeded, StreamRaceError
from .delay import DEFAULT_DELAY_MS, DEFAULT_FIRE_PROBABILITY, DEFAULT_SITE_PROBABILITY, DelayPlan
from .rwsets import byte_range, plan_of, storage_base

aten = torch.ops.aten
T = torch.Tensor
_perf = time.perf_counter

STACK_DEPTH = 10
# Debugging switches (comma list in STREAMORDER_CUDA_DEBUG), used to bisect crashes:
# flocals: name streams/events by scanning the user's frame locals (off: by the source
# line that created them); weakevents: weak map of torch.cuda.Event objects; evdelete:
# the event-deletion trace callback; nofree: no allocator-free callback; nofunction: no
# host-access function mode; nocallbacks: no GPU trace callbacks at all.
_DEBUG = frozenset(filter(None, os.environ.get("STREAMORDER_CUDA_DEBUG", "").split(",")))
_active: "CudaBackend | None" = None

# Measured once per process: torch.cuda._sleep cycles per millisecond on this GPU.
_cycles_per_ms: float | None = None
_warmed_up = False


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


def cycles_per_ms() -> float:
    """torch.cuda._sleep cycles per millisecond, calibrated on first use."""
    global _cycles_per_ms
    if _cycles_per_ms is None:
        torch.cuda._sleep(1000)
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        cycles = 20_000_000
        best = None
        for _ in range(2):
            start.record()
            torch.cuda._sleep(cycles)
            end.record()
            end.synchronize()
            ms = start.elapsed_time(end)
            best = ms if best is None else min(best, ms)
        _cycles_per_ms = cycles / max(best, 1e-3)
    return _cycles_per_ms


def warm_up_streams() -> None:
    """Put a tiny kernel on every stream of PyTorch's stream pools (and the default
    stream) once per process: a stream's or kernel's first use can order work by
    accident (lazy creation, module loading) and hide a race for a whole run."""
    global _warmed_up
    if _warmed_up:
        return
    torch.cuda.synchronize()
    x = torch.zeros(8, device="cuda")
    for priority in (0, -1):
        for _ in range(32):  # the pools hand out 32 streams per priority, round robin
            s = torch.cuda.Stream(priority=priority)
            with torch.cuda.stream(s):
                torch.cuda._sleep(1)
                x.add_(0)
                torch.cuda.Event().record()
    torch.cuda.synchronize()
    _warmed_up = True


def _is_cuda_device(dev) -> bool:
    if isinstance(dev, torch.device):
        return dev.type == "cuda"
    if isinstance(dev, str):
        return dev.startswith("cuda")
    return isinstance(dev, int) and not isinstance(dev, bool)


_ASSIGNED = re.compile(r"^\s*((?:self\.)?\w+)\s*(?::[^=]*)?=(?!=)")


class _Label:
    """An allocation's name in reports, worked out only when a report prints it."""

    __slots__ = ("op", "what", "site", "_text")

    def __init__(self, op: str, t: torch.Tensor, site: Site):
        self.op, self.site, self._text = op, site, None
        self.what = f"{str(t.dtype).replace('torch.', '')}{list(t.shape)}"

    def __str__(self) -> str:
        if self._text is None:
            var = ""
            user = _user_frames(self.site)
            if user:
                code, line = user[0]
                m = _ASSIGNED.match(linecache.getline(code.co_filename, line))
                if m:
                    var = m.group(1).removeprefix("self.")
            origin = (f"'{var}'" if var else "a pinned tensor" if self.op == "pinned"
                      else f"output of {self.op}" if self.op else "a tensor")
            self._text = f"{origin} ({self.what})"
        return self._text

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


_PREFIXES: tuple | None = None
_INTERNAL: dict = {}  # code object -> whether it is ours / torch's / pytest's


def _is_internal(code) -> bool:
    flag = _INTERNAL.get(code)
    if flag is None:
        global _PREFIXES
        if _PREFIXES is None:
            _PREFIXES = _internal_prefixes()
        flag = _INTERNAL[code] = os.path.abspath(code.co_filename).startswith(_PREFIXES)
    return flag


def _user_frames(site: Site) -> tuple:
    for i, (code, _line) in enumerate(site.frames):
        if not _is_internal(code):
            return site.frames[i:]
    return ()


def _user_pyframe():
    """The innermost live frame of user code (for naming streams and events)."""
    frame = sys._getframe(1)
    while frame is not None and _is_internal(frame.f_code):
        frame = frame.f_back
    return frame


def _name_in_frame(match) -> str | None:
    """The variable (or self.attribute) of the innermost user frame holding an object
    for which `match(obj)` is true."""
    frame = _user_pyframe()
    if frame is None:
        return None
    try:
        for name, value in frame.f_locals.items():
            if match(value):
                return name
        owner = frame.f_locals.get("self")
        if owner is not None and hasattr(owner, "__dict__"):
            for name, value in vars(owner).items():
                if match(value):
                    return name
    except Exception:  # a weird local's __eq__ or property: naming is best effort
        return None
    return None


class _DispatchMode(TorchDispatchMode):
    def __init__(self, be: "CudaBackend"):
        super().__init__()
        self.be = be

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        if kwargs is None:
            kwargs = {}
        plan = plan_of(func)
        tensors = plan.tensor_args(args, kwargs)
        for t, _w in tensors:
            if t.is_cuda:
                break
        else:
            dev = kwargs.get("device")
            if dev is None or not _is_cuda_device(dev):
                return func(*args, **kwargs)  # host-only op
        be = self.be
        if plan.metadata or not be.active:
            return func(*args, **kwargs)
        return be._device_op(func, plan, args, kwargs, tensors)


_METADATA_FUNCS = frozenset({
    "size", "stride", "dim", "numel", "nelement", "ndimension", "storage_offset",
    "element_size", "data_ptr", "untyped_storage", "storage", "_typed_storage", "is_pinned",
    "is_contiguous", "is_complex", "is_floating_point", "is_signed", "__len__", "__hash__",
    "get_device", "type", "dim_order", "is_set_to", "is_shared", "record_stream", "__get__",
    "__del__", "_is_view", "is_inference", "is_nonzero_", "__dlpack_device__",
})


class _FunctionMode(TorchFunctionMode):
    def __init__(self, be: "CudaBackend"):
        super().__init__()
        self.be = be

    def __torch_function__(self, func, types, args=(), kwargs=None):
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        if kwargs is None:
            kwargs = {}
        be = self.be
        if be._pinned and be.active:
            hits = _pinned_args(be, args, kwargs)
            if hits:
                return be._host_call(func, args, kwargs, hits)
        if kwargs.get("pin_memory") or func is T.pin_memory:
            out = func(*args, **kwargs)
            if be.active and isinstance(out, T) and not out.is_cuda:
                be._register_pinned(out, Site.here(1, STACK_DEPTH))
            return out
        return func(*args, **kwargs)


def _pinned_args(be: "CudaBackend", args, kwargs):
    """(tensor, position) of each registered pinned tensor among the arguments; None when
    a CUDA tensor is among them (a device op: the dispatch mode sees it)."""
    hits = None
    pinned = be._pinned
    for where, v in (*enumerate(args), *kwargs.items()):
        if isinstance(v, T):
            if v.is_cuda:
                return None
            try:
                base = storage_base(v)
            except Exception:  # a tensor without storage (meta, sparse): not pinned memory
                continue
            if base in pinned:
                hits = hits or []
                hits.append((v, where))
        elif isinstance(v, (list, tuple)) and any(isinstance(x, T) and x.is_cuda for x in v):
            return None
    return hits


def _func_name(func) -> str:
    name = getattr(func, "__name__", "")
    if name == "__get__":  # a property: metadata or a view, never a data access
        return "__get__"
    return name or str(func)


class CudaBackend:
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
        self.ops_issued = 0
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
        self._pinned: dict = {}  # pinned host storage address -> Allocation
        self._pinned_keep: list = []  # their storages, alive until the context ends
        self._in_op = False
        self._pending: list | None = None  # trace callbacks seen while an op ran
        self._synced_in_op = False
        self._recording_py = None  # the torch.cuda.Event whose record() is running
        self._cycles_per_ms = 0.0
        self._modes: list = []
        self._patches: list = []
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
        finally:
            self._teardown()

    def _install(self) -> None:
        import torch.cuda._gpu_trace as gpu_trace

        torch._C._activate_gpu_trace()  # idempotent; PyTorch has no way to switch it off
        callbacks = [
            (gpu_trace.EventRecordCallbacks, self._cb_record),
            (gpu_trace.EventWaitCallbacks, self._cb_wait),
            (gpu_trace.StreamSynchronizationCallbacks, self._cb_sync_stream),
            (gpu_trace.EventSynchronizationCallbacks, self._cb_sync_event),
            (gpu_trace.DeviceSynchronizationCallbacks, self._cb_sync_device),
        ]
        if "nofree" not in _DEBUG:
            callbacks.append((gpu_trace.MemoryDeallocationCallbacks, self._cb_free))
        if "evdelete" in _DEBUG:
            # Not needed: a CUDA event is created at its first record, so a reused handle
            # is always recorded (replacing the capture) before anything waits on it.
            callbacks.append((gpu_trace.EventDeletionCallbacks, self._cb_event_deleted))
        if "nocallbacks" in _DEBUG:
            callbacks = []
        for registry, cb in callbacks:
            registry.callback_list.append(cb)
            self._callbacks.append((registry, cb))
        self._patch_torch()
        dispatch = _DispatchMode(self)
        dispatch.__enter__()
        self._modes.append(dispatch)
        if "nofunction" not in _DEBUG:
            function = _FunctionMode(self)
            function.__enter__()
            self._modes.append(function)

    def _teardown(self) -> None:
        global _active
        self.active = False
        try:
            while self._modes:
                self._modes.pop().__exit__(None, None, None)
        finally:
            for registry, cb in self._callbacks:
                # CallbackRegistry has no remove(); its list is plain. `active` gates too.
                try:
                    registry.callback_list.remove(cb)
                except ValueError:
                    pass
            self._callbacks.clear()
            for owner, name, original in reversed(self._patches):
                setattr(owner, name, original)
            self._patches.clear()
            self._pinned_keep.clear()
            if _active is self:
                _active = None
            deactivate(self)

    # --- wrappers around torch.cuda methods -------------------------------------------

    def _patch(self, owner, name, make) -> None:
        original = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
        if isinstance(original, staticmethod):
            wrapper = staticmethod(functools.wraps(original.__func__)(make(original.__func__)))
        else:
            wrapper = make(original)
            functools.update_wrapper(wrapper, original)
        self._patches.append((owner, name, original))
        setattr(owner, name, wrapper)

    def _patch_torch(self) -> None:
        be = self
        Event, Stream = torch.cuda.Event, torch.cuda.Stream

        def record(orig):
            def record(ev_self, stream=None):
                if stream is None:
                    stream = torch.cuda.current_stream()
                if be.active and be.delay.enabled:
                    be._maybe_delay(Site.here(1, be.depth), "event.record", stream)
                prev, be._recording_py = be._recording_py, ev_self
                try:
                    return orig(ev_self, stream)
                finally:
                    be._recording_py = prev
            return record

        def wait(orig):
            def wait(ev_self, stream=None):
                if stream is None:
                    stream = torch.cuda.current_stream()
                if be.active and ev_self.cuda_event == 0:
                    # Never recorded: CUDA skips the wait and no trace fires. Note it, so
                    # that a race behind it is explained ("waited before the record").
                    be.hb.wait(be._agent_of_stream(stream), be._py_event(ev_self),
                               Site.here(1, be.depth))
                return orig(ev_self, stream)
            return wait

        def event_query(orig):
            def query(ev_self):
                done = orig(ev_self)
                if done and be.active:
                    ev = be._events.get(ev_self.cuda_event)
                    if ev is not None:
                        be.hb.sync_event(ev)
                return done
            return query

        def stream_query(orig):
            def query(st_self):
                done = orig(st_self)
                if done and be.active:
                    be.hb.sync_stream(be._agent_by_ptr(st_self.cuda_stream))
                return done
            return query

        def timed(orig):
            def timed(*args, **kwargs):
                t0 = _perf()
                try:
                    return orig(*args, **kwargs)
                finally:
                    be.host_blocked_s += _perf() - t0
            return timed

        def empty_cache(orig):
            def empty_cache(*args, **kwargs):
                result = orig(*args, **kwargs)
                if be.active:  # cudaFree waits for the device: freed blocks are idle now
                    be.hb.sync_device()
                return result
            return empty_cache

        def new(orig):
            def __new__(cls, *args, **kwargs):
                obj = orig(cls, *args, **kwargs)
                if be.active and "stream_id" not in kwargs:
                    try:
                        be._named_at_creation(obj, Site.here(1, be.depth))
                    except Exception:  # naming is best effort
                        pass
                return obj
            return __new__

        if "flocals" not in _DEBUG:
            self._patch(Event, "__new__", new)
            self._patch(Stream, "__new__", new)
        self._patch(Event, "record", record)
        self._patch(Event, "wait", wait)
        self._patch(Event, "query", event_query)
        self._patch(Stream, "query", stream_query)
        self._patch(Event, "synchronize", timed)
        self._patch(Stream, "synchronize", timed)
        self._patch(torch.cuda, "synchronize", timed)
        self._patch(torch.cuda, "empty_cache", empty_cache)

    # --- streams and events -------------------------------------------------------------

    def _new_agent(self, ptr: int):
        if ptr == 0:
            base = "default"
        elif "flocals" in _DEBUG:
            base = _name_in_frame(
                lambda v: isinstance(v, torch.cuda.Stream) and v.cuda_stream == ptr) \
                or f"stream#{len(self._by_ptr)}"
        else:
            base = self._stream_names.get(ptr) or f"stream#{len(self._by_ptr)}"
        name, n = base, 1
        while name in self.hb._stream_names or name == "host":
            n += 1
            name = f"{base}#{n}"
        agent = self.hb.new_stream(name)
        self._by_ptr[ptr] = agent
        return agent

    def _agent_by_ptr(self, ptr: int):
        agent = self._by_ptr.get(ptr)
        return agent if agent is not None else self._new_agent(ptr)

    def _agent_by_sid(self, data):
        """data: (stream_id, device_index, device_type) as torch reports them."""
        agent = self._by_sid.get(data[0])
        if agent is None:
            s = torch.cuda.Stream(stream_id=data[0], device_index=data[1], device_type=data[2])
            agent = self._by_sid[data[0]] = self._agent_by_ptr(s.cuda_stream)
        return agent

    def _agent_of_stream(self, stream):
        ptr = getattr(stream, "cuda_stream", None)
        if ptr is not None:
            return self._agent_by_ptr(ptr)
        return self._agent_by_sid((stream.stream_id, stream.device_index, stream.device_type))

    def _current_agent(self):
        return self._agent_by_sid(torch._C._cuda_getCurrentStream(self._device_index))

    def _py_event(self, py):
        """The model event of a torch.cuda.Event object (made on first use)."""
        if isinstance(self._py_events, dict):
            hit = self._py_events.get(id(py))
            if hit is not None:
                return hit[1]
            ev = self.hb.new_event(self._event_name(py, 0))
            self._py_events[id(py)] = (py, ev)
            return ev
        ev = self._py_events.get(py)
        if ev is None:
            ev = self._py_events[py] = self.hb.new_event(self._event_name(py, 0))
        return ev

    def _event_name(self, py, ptr: int) -> str:
        name = None
        if "flocals" in _DEBUG:
            if py is not None:
                name = _name_in_frame(lambda v: v is py)
            else:
                name = _name_in_frame(
                    lambda v: isinstance(v, torch.cuda.Event) and ptr and v.cuda_event == ptr)
        elif py is not None:
            hit = self._event_names.get(id(py))
            name = hit[1] if hit is not None else None
        self._n_events += 1
        return name or f"event#{self._n_events}"

    def _named_at_creation(self, obj, site: Site) -> None:
        """A torch.cuda.Stream/Event made in the run: its name from the creating line."""
        from ..sim.streams import name_from_source

        user = _user_frames(site)
        name = name_from_source(Site(user), "") if user else ""
        if isinstance(obj, torch.cuda.Event):
            self._event_names[id(obj)] = (obj, name or None)
        elif name:
            ptr = obj.cuda_stream
            self._stream_names[ptr] = name
            agent = self._by_ptr.get(ptr)
            if agent is not None and agent.name != name and name not in self.hb._stream_names:
                self.hb.rename_stream(agent, name)

    def _event_by_ptr(self, ptr: int):
        ev = self._events.get(ptr)
        if ev is None:
            py = self._recording_py
            ev = self._py_event(py) if py is not None else self.hb.new_event(self._event_name(None, ptr))
            self._events[ptr] = ev
        return ev

    # --- GPU trace callbacks (they fire inside torch's C++; exceptions there are only
    # logged, so nothing here raises a race: races come from launches and host accesses)

    def _defer(self, fn, *args) -> None:
        if self._in_op:
            self._pending.append((fn, args))
        else:
            fn(*args)

    def _cb_record(self, event: int, stream: int) -> None:
        if self.active:
            self._defer(self._record, event, stream, Site.here(1, self.depth + 4))

    def _record(self, event: int, stream: int, site: Site) -> None:
        self.hb.record(self._event_by_ptr(event), self._agent_by_ptr(stream), site)

    def _cb_wait(self, event: int, stream: int) -> None:
        if self.active:
            self._defer(self._wait, event, stream, Site.here(1, self.depth + 4))

    def _wait(self, event: int, stream: int, site: Site) -> None:
        self.hb.wait(self._agent_by_ptr(stream), self._event_by_ptr(event), site)

    def _cb_event_deleted(self, event: int) -> None:
        if self.active:
            self._events.pop(event, None)  # the handle may be reused by a new event

    def _cb_sync_stream(self, stream: int) -> None:
        if self.active:
            if self._in_op:
                self._synced_in_op = True
            self._defer(self._sync_stream, stream)

    def _sync_stream(self, stream: int) -> None:
        self.hb.sync_stream(self._agent_by_ptr(stream))

    def _cb_sync_event(self, event: int) -> None:
        if self.active:
            self._defer(self._sync_event, event)

    def _sync_event(self, event: int) -> None:
        ev = self._events.get(event)
        if ev is not None:
            self.hb.sync_event(ev)

    def _cb_sync_device(self) -> None:
        if self.active:
            self._defer(self.hb.sync_device)

    def _cb_free(self, ptr: int) -> None:
        # Handled at once, even inside an op: the op's accesses are looked up after it
        # ran, so a block it freed (resize_ of an out= tensor) is never touched as live.
        if self.active:
            alloc = self._live.pop(ptr, None)
            if alloc is not None:
                self.hb.free(alloc, Site.here(1, self.depth + 4))

    # --- memory -----------------------------------------------------------------------

    def _alloc_of(self, t: torch.Tensor, stop: int, site: Site):
        """The model allocation of a CUDA tensor's storage, made on first sight."""
        base = storage_base(t)
        alloc = self._live.get(base)
        if alloc is None:
            alloc = self._allocate(t, base, None, site, "")
        elif stop > alloc.nbytes:  # storage grown in place
            alloc.nbytes = t.untyped_storage().nbytes()
        return alloc

    def _allocate(self, t: torch.Tensor, base: int, agent, site: Site, op: str):
        nbytes = t.untyped_storage().nbytes()
        alloc = self.hb.allocate(nbytes, _Label(op, t, site), site, stream=agent,
                                 space="device", address=base)
        self._live[base] = alloc
        return alloc

    def _register_pinned(self, t: torch.Tensor, site: Site):
        base = storage_base(t)
        alloc = self._pinned.get(base)
        if alloc is not None:
            return alloc
        storage = t.untyped_storage()
        alloc = self.hb.allocate(storage.nbytes(), _Label("pinned", t, site), site, space="host")
        self._pinned[base] = alloc
        # Keep the pinned storage until the context ends, so that its address names it
        # for the whole run (the host allocator cannot hand the block to another tensor
        # under the same key). No weakref finalizer: early versions with one (and with a
        # frame-locals scan and a weak event map) crashed in the garbage collector on
        # torch 2.11; the cause was not isolated, this configuration did not crash.
        self._pinned_keep.append(storage)
        return alloc

    def _pinned_of(self, t: torch.Tensor, site: Site):
        """The model allocation of a pinned host tensor (registered on first sight), or
        None for pageable memory."""
        try:
            base = storage_base(t)
        except Exception:
            return None
        alloc = self._pinned.get(base)
        if alloc is None and t.numel() > 0 and t.is_pinned():
            alloc = self._register_pinned(t, site)
        return alloc

    # --- device ops -------------------------------------------------------------------

    def _count_op(self, name: str) -> None:
        self.ops_issued += 1
        if self.max_ops is not None and self.ops_issued > self.max_ops:
            raise DeviceOpLimitExceeded(
                f"the program issued more than {self.max_ops} device ops (at {name}); "
                f"raise max_ops or make the test smaller")

    def _maybe_delay(self, site: Site, what: str, stream=None) -> None:
        user = _user_frames(site)
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

    def _device_op(self, func, plan, args, kwargs, tensors):
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        if plan.is_view:
            return func(*args, **kwargs)  # no device work
        site = Site.here(2, self.depth)
        agent = self._current_agent()
        if func is aten.record_stream.default:
            stream = args[1] if len(args) > 1 else kwargs["s"]
            t = args[0]
            if t.numel() > 0:
                self.hb.record_stream(self._alloc_of(t, 0, site), self._agent_of_stream(stream))
            return func(*args, **kwargs)
        if plan.is_empty:  # memory only, no kernel
            out = func(*args, **kwargs)
            if isinstance(out, T) and out.is_cuda and out.numel() > 0:
                base = storage_base(out)
                if base not in self._live:
                    self._allocate(out, base, agent, site, plan.name)
            return out
        if self.delay.enabled:
            self._maybe_delay(site, plan.name)

        self._pending = pending = []
        self._synced_in_op = False
        self._in_op = True
        t0 = _perf()
        try:
            out = func(*args, **kwargs)
        finally:
            self._in_op = False
            self._pending = None
        elapsed = _perf() - t0

        accesses = []
        sync_after = plan.syncs
        bases = set()
        cpu_involved = False
        for t, write in tensors:
            if t.is_cuda:
                start, stop = byte_range(t)
                if start == stop:
                    continue
                alloc = self._alloc_of(t, stop, site)
                bases.add(alloc.address)
                accesses.append((alloc, start, stop, write))
            elif t.dim() > 0 or write:
                cpu_involved = True
                palloc = self._pinned_of(t, site)
                if palloc is not None:
                    start, stop = byte_range(t)
                    if start < stop:
                        accesses.append((palloc, start, stop, write))
                elif write:
                    sync_after = True  # a D2H copy into pageable memory: synchronous
        undeclared_views = 0
        if plan.returns_tensors and out is not None:
            outs = out if isinstance(out, (list, tuple)) else (out,)
            aliases = plan.returns_alias
            for i, o in enumerate(outs):
                if not isinstance(o, T):
                    continue
                if (aliases[i] if i < len(aliases) else aliases[-1]) is not None:
                    continue
                if o.is_cuda:
                    start, stop = byte_range(o)
                    if start == stop:
                        continue
                    base = storage_base(o)
                    if base in bases:
                        undeclared_views += 1  # a view the schema does not declare
                        continue
                    alloc = self._live.get(base)
                    if alloc is not None and stop > alloc.nbytes:
                        # a stale entry (its free was not traced): the block is new memory
                        self._live.pop(base)
                        self.hb.free(alloc, site)
                        alloc = None
                    if alloc is None:
                        alloc = self._allocate(o, base, agent, site, plan.name)
                    accesses.append((alloc, start, stop, True))
                else:  # D2H into a new host tensor (Tensor.to("cpu") / .cpu())
                    cpu_involved = True
                    palloc = self._pinned_of(o, site) if o.numel() > 0 else None
                    if palloc is not None:
                        start, stop = byte_range(o)
                        accesses.append((palloc, start, stop, True))
                    else:
                        sync_after = True
        if plan.is_copy and cpu_involved and not _non_blocking(func, args, kwargs):
            sync_after = True
        if undeclared_views and not plan.written and not cpu_involved and not sync_after \
                and not pending and not any(a[3] for a in accesses):
            return out  # _unsafe_view, unsafe_split: views in all but the schema

        self._count_op(plan.name)
        self.hb.launch(agent, plan.name, accesses, site)
        for fn, fargs in pending:
            fn(*fargs)
        if sync_after:
            self.hb.sync_stream(agent)
        if sync_after or self._synced_in_op:
            self.host_blocked_s += elapsed
        return out

    # --- host accesses ----------------------------------------------------------------

    def _host_call(self, func, args, kwargs, hits):
        """A host-side torch call with registered pinned tensors among its arguments: it
        writes its first argument when in-place (name ends in '_') or __setitem__, and
        out=; it reads the others, unless it only made a view of them."""
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        name = _func_name(func)
        if name in _METADATA_FUNCS:
            return func(*args, **kwargs)
        site = Site.here(2, self.depth)
        out = func(*args, **kwargs)
        if isinstance(out, T) and out.is_cuda:
            return out  # an upload: the dispatch mode saw the copy
        writes_self = name == "__setitem__" or (name.endswith("_") and not name.endswith("__"))
        for t, where in hits:
            is_write = (where == 0 and writes_self) or where == "out"
            if not is_write and isinstance(out, T) and not out.is_cuda:
                try:
                    if storage_base(out) == storage_base(t):
                        continue  # a view of the pinned tensor: no data read yet
                except Exception:
                    pass
            self.host_access(t, is_write, f"host {name}", site)
        return out

    def host_access(self, t: torch.Tensor, is_write: bool, op: str, site: Site | None = None) -> None:
        """The host reads or writes a pinned tensor (for code torch cannot see, e.g. a
        NumPy view of it)."""
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        alloc = self._pinned_of(t, site or Site.here(1, self.depth))
        if alloc is not None:
            start, stop = byte_range(t)
            self.hb.host_access(op, [(alloc, start, stop, is_write)], site or Site.here(1, self.depth))

    def name_stream(self, stream, name: str) -> None:
        """Use `name` for this stream in race reports."""
        self.hb.rename_stream(self._agent_of_stream(stream), name)

    # --- custom kernels ---------------------------------------------------------------

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
                start, stop = byte_range(t)
                if start < stop:
                    accesses.append((self._alloc_of(t, stop, site), start, stop, write))
        if self.delay.enabled:
            self._maybe_delay(site, name)
        self._count_op(name)
        self.hb.launch(self._current_agent(), name, accesses, site)


def _non_blocking(func, args, kwargs) -> bool:
    if func is aten.copy_.default:
        return bool(args[2] if len(args) > 2 else kwargs.get("non_blocking", False))
    return bool(kwargs.get("non_blocking", False))


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
