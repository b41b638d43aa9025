"""torch.cuda.Stream and torch.cuda.Event stand-ins for the virtual device.

Each call does two things: it tells the happens-before model the ordering edge (so
races are found whatever the schedule), and it queues or waits for work in the
scheduler (so values really are stale when an edge is missing).
"""

from __future__ import annotations

import threading
import weakref

import torch

from ..errors import NotModelledError
from ..host_threads import locked
from ..model import Site
from ..ops.naming import name_from_source
from .runtime import active_device
from ..scheduling import EventMark, Item


PRIORITY_RANGE = (0, -1)  # (low, high): what torch reports on most GPUs


class VirtualStream(torch.Stream):
    """A CUDA stream of the virtual device (what torch.cuda.Stream() returns inside). It
    is a real torch.Stream (device cuda:0), so torch's own checks such as
    Tensor.record_stream accept it."""

    def __new__(cls, device=None, priority: int = 0, *, _vd=None,
                _name: str | None = None, **kwargs):
        vd = _vd or active_device("torch.cuda.Stream()")
        stream_id = 0 if _name == "default" else vd.next_handle()
        self = super().__new__(cls, stream_id=stream_id, device_index=0, device_type=1)
        self._vd = vd
        return self

    @locked
    def __init__(self, device=None, priority: int = 0, *, _vd=None,
                 _name: str | None = None, **kwargs):
        vd = self._vd
        _check_device_arg(device)
        if kwargs:
            raise NotModelledError(f"torch.cuda.Stream({', '.join(kwargs)}=...)")
        self.priority = priority
        site = Site.here(1)
        name = _name or vd.unique_stream_name(name_from_source(site, "stream"))
        self.agent = vd.hb.new_stream(name)
        self.queue = vd.scheduler.new_stream(name)
        self.cuda_stream = self.stream_id
        self._prev: dict[int, list] = {}  # thread id -> current streams `with self:` replaced
        vd._streams.add(self)  # its name is freed for reuse when it is gone
        # Collected: its clock slot, queue and cached blocks go at the next host sync.
        weakref.finalize(self, vd.stream_gone, self.agent, self.queue).atexit = False

    @property
    def name(self) -> str:
        return self.agent.name

    # protocol attributes: opaque handles (cuda_stream is set in __init__)
    def __cuda_stream__(self) -> tuple[int, int]:
        """The CUDA stream protocol: (version 0, the stream's handle)."""
        return (0, self.cuda_stream)

    @staticmethod
    def priority_range() -> tuple[int, int]:
        """(lowest, highest) priority, as CUDA numbers them. Priorities order nothing, so
        the model ignores them; they are kept for code that reads them back."""
        return PRIORITY_RANGE

    # ordering
    @locked
    def wait_event(self, event: "VirtualEvent") -> None:
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        self._vd.check_active("Stream.wait_event")
        if not isinstance(event, VirtualEvent):
            raise TypeError(f"Stream.wait_event expects a torch.cuda.Event, got {type(event).__name__}")
        event._wait_on(self, Site.here(1))

    @locked
    def wait_stream(self, stream) -> None:
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        self._vd.check_active("Stream.wait_stream")
        if not isinstance(stream, VirtualStream):
            raise TypeError(f"Stream.wait_stream expects a torch.cuda.Stream, got {type(stream).__name__}")
        if stream is self:
            return
        fresh = VirtualEvent(_name=f"wait_stream({stream.name})", _vd=self._vd)
        site = Site.here(1)
        fresh._record_on(stream, site)
        fresh._wait_on(self, site)

    @locked
    def record_event(self, event: "VirtualEvent | None" = None) -> "VirtualEvent":
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        if event is None:
            event = VirtualEvent(_vd=self._vd, _name=f"{self.name}.record_event")
        event._record_on(self, Site.here(1))
        return event

    # host side
    @locked
    def query(self) -> bool:
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        self._vd.check_active("Stream.query")
        self._vd.graphs.forbid("Stream.query()", stream=self)
        hb = self._vd.hb
        done = self._vd.scheduler.poll_stream(self.queue, lambda: hb.host_knows_stream(self.agent))
        if done:
            hb.sync_stream(self.agent)
        return done

    @locked
    def synchronize(self) -> None:
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        self._vd.check_active("Stream.synchronize")
        self._vd.sync_stream(self)

    # identity, as torch.cuda.Stream compares
    def __eq__(self, other) -> bool:
        return isinstance(other, VirtualStream) and other.stream_id == self.stream_id

    def __hash__(self) -> int:
        return hash(("virtual-cuda-stream", self.stream_id))

    # `with stream:` sets the calling thread's current stream (per thread, as in CUDA)
    def __enter__(self):
        self._prev.setdefault(threading.get_ident(), []).append(self._vd.current_stream)
        self._vd.current_stream = self
        return self

    def __exit__(self, *exc):
        stack = self._prev[threading.get_ident()]
        self._vd.current_stream = stack.pop()
        if not stack:
            del self._prev[threading.get_ident()]

    def __repr__(self) -> str:
        return f"<torch.cuda.Stream '{self.name}' device=cuda:0 cuda_stream={self.cuda_stream:#x} (virtual)>"


class VirtualEvent:
    """A CUDA event of the virtual device."""

    device = torch.device("cuda", 0)
    _handle = 0  # cuda_event: 0 until the first record creates the event, as on CUDA
    _captured = None  # (graph, fence) while its latest record is one a capture took

    @property
    def cuda_event(self) -> int:
        """An opaque handle, like the cudaEvent_t torch.cuda.Event exposes."""
        return self._handle

    def ipc_handle(self):
        raise NotModelledError("torch.cuda.Event.ipc_handle (interprocess events)")

    @classmethod
    def from_ipc_handle(cls, device, handle):
        raise NotModelledError("torch.cuda.Event.from_ipc_handle (interprocess events)")

    @locked
    def __init__(self, enable_timing: bool = False, blocking: bool = False,
                 interprocess: bool = False, *, _vd=None,
                 _name: str | None = None):
        vd = _vd or active_device("torch.cuda.Event()")
        if interprocess:
            raise NotModelledError("torch.cuda.Event(interprocess=True)")
        self._vd = vd
        self.enable_timing = enable_timing
        self.blocking = blocking
        self.name = _name or name_from_source(Site.here(1), "event")
        self.model_event = vd.hb.new_event(self.name)
        self._mark: EventMark | None = None  # the latest record; None: never recorded

    def _record_on(self, stream: VirtualStream, site: Site) -> None:
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        vd = self._vd
        vd.check_active("Event.record")
        if vd.graphs.on_record(self, stream):
            return  # a fence inside a CUDA graph capture (sim/graphs.py)
        vd.hb.record(self.model_event, stream.agent, site)
        if not self._handle:
            self._handle = vd.next_handle()
        mark = EventMark(stream.queue)
        self._mark = mark
        vd.scheduler.enqueue(stream.queue, Item(f"record {self.name}", None, done_mark=mark, cost_ns=0))

    def _wait_on(self, stream: VirtualStream, site: Site) -> None:
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        vd = self._vd
        if vd.graphs.on_wait(self, stream):
            return  # inside a CUDA graph capture (sim/graphs.py)
        vd.hb.wait(stream.agent, self.model_event, site)
        if self._mark is not None:  # waiting on a never-recorded event is a no-op
            vd.scheduler.enqueue(stream.queue, Item(f"wait {self.name}", None, blocked_on=self._mark, cost_ns=0))

    @locked
    def record(self, stream: VirtualStream | None = None) -> None:
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        self._record_on(_stream_or_current(self._vd, stream), Site.here(1))

    @locked
    def wait(self, stream: VirtualStream | None = None) -> None:
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        self._vd.check_active("Event.wait")
        self._wait_on(_stream_or_current(self._vd, stream), Site.here(1))

    @locked
    def query(self) -> bool:
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        self._vd.check_active("Event.query")
        self._vd.graphs.forbid("Event.query()", event=self)
        if self._mark is None:
            return True
        hb = self._vd.hb
        done = self._vd.scheduler.poll(self._mark, lambda: hb.host_knows_event(self.model_event))
        if done:
            hb.sync_event(self.model_event)
        return done

    @locked
    def synchronize(self) -> None:
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        vd = self._vd
        vd.check_active("Event.synchronize")
        vd.graphs.forbid("Event.synchronize()", event=self)
        if self._mark is None:
            return
        vd.scheduler.wait_mark(self._mark)
        vd.hb.sync_event(self.model_event)

    def elapsed_time(self, end_event: "VirtualEvent") -> float:
        """Milliseconds of virtual time between two records that have completed as the
        host sees them (CUDA's cudaErrorNotReady otherwise): the difference of their
        completion times, so `_sleep(n * cycles_per_ms)` between them measures n ms."""
        if not (self.enable_timing and end_event.enable_timing):
            raise RuntimeError("Both events must be created with argument 'enable_timing=True'.")
        scheduler = self._vd.scheduler
        scheduler.note("elapsed_time")
        for ev in (self, end_event):
            if ev._mark is None or not scheduler.mark_completed(ev._mark):
                raise RuntimeError(
                    f"elapsed_time: event '{ev.name}' has not completed; synchronize it first")
        return (end_event._mark.time_ns - self._mark.time_ns) / 1e6

    def __repr__(self) -> str:
        return f"<torch.cuda.Event '{self.name}' (virtual)>"


def _stream_or_current(vd, stream) -> VirtualStream:
    if stream is None:
        return vd.current_stream
    if not isinstance(stream, VirtualStream):
        raise TypeError(f"expected a torch.cuda.Stream of the virtual device, got {stream!r}")
    return stream


def _check_device_arg(device) -> None:
    if device is None:
        return
    dev = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
    if dev.type != "cuda" or (dev.index or 0) != 0:
        raise ValueError(f"the virtual device has one GPU, cuda:0; got device={device!r}")
