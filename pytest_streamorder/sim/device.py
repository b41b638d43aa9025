"""The virtual CUDA device: `with virtual_device(): ...` runs unchanged torch.cuda code on
a CPU-only machine, with every device op queued on its stream until the scheduler runs it.

It wires three things together: the happens-before model (finds races when work is
issued, whatever the schedule), the scheduler (decides when queued work runs, so a
missing edge also shows up as a stale value), and the caching-allocator model.

A device lives as long as its user wants: one `with virtual_device():` block, or a whole
`pytest --streamorder` session (sim/session.py). What differs between schedules is a
`Run` (policy, chooser, scheduler, op counter, races, timeline): the session starts one
per schedule with `start_run`; streams, memory, pinned buffers and the happens-before
model stay. Queued work is drained between runs without any happens-before edge.
"""

from __future__ import annotations

import itertools
import threading
import weakref

import torch

from ..backend import activate, deactivate
from ..errors import DeviceOpLimitExceeded, StreamRaceError  # noqa: F401  (re-exported)
from ..host_threads import RUNTIME_LOCK, locked
from ..model import HappensBefore, Race, Site
from ..ops.limit import OpCounter
from ..ops.naming import TensorLabel
from ..ops.pinned import PinnedRegistry
from ..ops.ranges import access_spec, extent, tensor_access
from ..scheduling import POLICIES, Chooser, Item, Schedule, ScheduleDiverged, Scheduler
from .cuda_module import install as install_cuda_module, uninstall as uninstall_cuda_module
from .interception import arm, enter as enter_interception, exit as exit_interception, relax
from .issue import Ref, _access
from .graphs import Graphs
from .memory import CachingAllocator, poison_
from .streams import VirtualStream
from .runtime import active_device, current, set_active  # noqa: F401  (active_device: re-exported)
from .tensor import DeviceTensor
from .triton import install as install_triton, uninstall as uninstall_triton

# Cycles per nanosecond assumed for torch.cuda._sleep: an H100's SM clock (1.98 GHz).
SLEEP_CYCLES_PER_NS = 1.98
DEFAULT_MAX_OPS = 1_000_000


def __getattr__(name):
    # `device._active` (read by the plugin, strategies, benchmarking) lives in runtime.py.
    if name == "_active":
        return current()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class RunScheduler(Scheduler):
    """A run's scheduler. Streams made before the run started are adopted at their first
    work in it, numbered in order of use (the default stream first), so a schedule's
    choices never depend on streams that other tests made: a replay of one test in a
    fresh session makes the same choices."""

    def adopt(self, queue) -> None:
        queue.index = len(self.streams)
        queue.time_ns = 0  # the run's virtual time starts at 0; the queue is empty
        self.streams.append(queue)
        self._live.append(queue)
        self.rule.new_stream(queue)

    def enqueue(self, stream, item) -> None:
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        i = stream.index
        if i >= len(self.streams) or self.streams[i] is not stream:
            self.adopt(stream)
        super().enqueue(stream, item)


class Run:
    """One schedule on a device: what differs from one schedule to the next. Its results
    (races, ops, the schedule that replays it, the timeline) stay readable after it ends."""

    is_virtual = True

    def __init__(self, seed: int | None = 0, policy: str = "random", replay: Schedule | None = None,
                 raise_on_race: bool = True, max_ops: int | None = DEFAULT_MAX_OPS,
                 chooser: Chooser | None = None, record_timeline: bool = False,
                 flips: tuple[int, ...] = ()):
        if replay is not None:
            if not isinstance(replay, Schedule):
                raise TypeError(f"replay= takes a Schedule (vd.schedule), got {type(replay).__name__}")
            if replay.backend != "sim":
                raise ValueError(f"a {replay.policy!r} schedule replays on the real-GPU backend, "
                                 f"not on the virtual device")
            policy, seed = replay.policy, replay.seed
            flips = replay.flips or flips
        if policy not in POLICIES:
            raise ValueError(f"unknown scheduling policy {policy!r}; choose one of {POLICIES}")
        self.seed = seed
        self.policy = policy
        self.raise_on_race = raise_on_race
        self.max_ops = max_ops
        # Every scheduling decision comes from the chooser: seeded, replayed, or (for
        # Hypothesis, so a failing schedule shrinks) drawn from a test case's data.
        # A replay with choices=None (an old `policy:seed` token) reruns from the seed.
        self.chooser = chooser or (Chooser(seed, replay.choices, replay.options)
                                   if replay is not None and replay.choices is not None
                                   else Chooser(seed))
        self.scheduler = RunScheduler(policy, self.chooser)
        # Observations this schedule turns the other way (scheduling/scheduler.py).
        self.flips = tuple(sorted(set(flips)))
        self.scheduler.flips = frozenset(self.flips)
        if record_timeline:
            self.scheduler.timeline = []
        self.op_counter = OpCounter(max_ops)
        self.races: list[Race] = []
        self.race_times_ns: list[int] = []  # host virtual time when each race was found
        self.hypothesis_example = False  # strategies.OverlapRunner may run on this run

    @property
    def ops_issued(self) -> int:
        return self.op_counter.issued

    @property
    def schedule(self) -> Schedule:
        options = getattr(self.chooser, "options", None)  # only our Chooser records them
        return Schedule(self.policy, self.seed, tuple(self.chooser.choices),
                        tuple(options) if options is not None else None, self.flips)

    @property
    def host_blocked_s(self) -> float:
        """Virtual time the host spent waiting in syncs."""
        return self.scheduler.host_blocked_ns / 1e9


def _from_run(name: str, doc: str = ""):
    """A VirtualDevice attribute that is the current run's."""
    return property(lambda self: getattr(self.run, name),
                    lambda self, value: setattr(self.run, name, value), doc=doc)


class VirtualDevice:
    """The virtual device: one `virtual_device(...)` block, or a pytest session."""

    is_virtual = True  # the real-GPU backend says False

    def __init__(self, seed: int | None = 0, policy: str = "random", replay: Schedule | None = None,
                 raise_on_race: bool = True, max_ops: int = DEFAULT_MAX_OPS,
                 chooser: Chooser | None = None, record_timeline: bool = False):
        self.run = Run(seed=seed, policy=policy, replay=replay, raise_on_race=raise_on_race,
                       max_ops=max_ops, chooser=chooser, record_timeline=record_timeline)
        self.hb = HappensBefore(on_race=self._on_race)
        self.hb.races = self.run.races
        # Streams collected since the last host sync: (agent, queue), retired at the next.
        self._gone: list[tuple] = []
        self.hb.on_host_sync = self._after_host_sync
        self.allocator = CachingAllocator(self)
        self.graphs = Graphs(self)  # CUDA graph captures in progress, graph pools
        # Per-op virtual cost: None gives every op the scheduler's DEFAULT_OP_NS; else a
        # callable (op name, accesses) -> ns, e.g. pytest_streamorder.benchmarking.CostModel.
        self.cost_model = None
        self.active = False
        self.session = False  # True: the device of a `pytest --streamorder` session
        self._handles = itertools.count(0x1000, 0x10)
        self._stream_names: dict[str, int] = {"default": 1}
        self._streams = weakref.WeakSet()  # streams made on this device, while alive
        self._reserved_names: set[str] = set()  # names no later run may give a new stream
        # Pinned host storages; an entry goes (and the model frees it) with its storage.
        self._pinned = PinnedRegistry(on_free=self._unpin)
        self._pinned_storages: dict[int, tuple] = {}  # address -> (weakref to storage, alloc)
        self._blocks: dict[int, tuple] = {}  # id(block) -> (block, alloc) of its latest allocation
        self.default_stream = VirtualStream(_vd=self, _name="default")
        self._thread = threading.local()  # .stream: the calling thread's current stream
        self._patches = None
        self._modes = None
        self._triton = None  # sim/triton.py: Triton launches go to this device
        self._used = False

    @property
    def current_stream(self) -> VirtualStream:
        """The calling thread's current stream: per host thread, as in CUDA, so a new
        thread starts on the default stream."""
        stream = getattr(self._thread, "stream", None)
        return self.default_stream if stream is None else stream

    @current_stream.setter
    def current_stream(self, stream: VirtualStream) -> None:
        self._thread.stream = stream

    # --- results ------------------------------------------------------------------

    seed = _from_run("seed")
    policy = _from_run("policy")
    chooser = _from_run("chooser")
    scheduler = _from_run("scheduler")
    op_counter = _from_run("op_counter")
    raise_on_race = _from_run("raise_on_race")
    max_ops = _from_run("max_ops")
    race_times_ns = _from_run("race_times_ns")
    hypothesis_example = _from_run("hypothesis_example")

    @property
    def ops_issued(self) -> int:
        return self.run.ops_issued

    @property
    def races(self) -> list[Race]:
        """The current run's races (a session: this schedule's)."""
        return self.run.races

    @property
    def schedule(self) -> Schedule:
        return self.run.schedule

    @property
    def host_blocked_s(self) -> float:
        """Virtual time the host spent waiting in syncs."""
        return self.run.host_blocked_s

    def _on_race(self, race: Race) -> None:
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        self.run.race_times_ns.append(self.scheduler.host_time_ns)
        if self.run.raise_on_race:
            raise StreamRaceError(race)

    # --- runs (schedules) -----------------------------------------------------------

    def start_run(self, run: Run) -> Run:
        """Make `run` the current one; returns the run it replaces. The queues must be
        empty (`drain_quietly()` first). Each run names its streams afresh, so a
        schedule's streams keep the names their code gives them."""
        previous = self.run
        self.run = run
        self.hb.races = run.races
        run.scheduler.adopt(self.default_stream.queue)  # index 0, as on a fresh device
        # Names of streams made in earlier runs are free again (their work is done), but
        # not those of streams the memory snapshot saw (broader fixtures, import time).
        self.hb._stream_names = set(self._reserved_names) | {"default"}
        self._stream_names = {}
        return previous

    def queued(self) -> bool:
        return any(s.queue for s in self.scheduler.streams)

    def drain_quietly(self) -> None:
        """Run every queued item now, with NO happens-before edge (the host learns
        nothing): between schedules and tests, and to snapshot memory. If queued work
        fails, the rest is dropped (its event marks count as done) and the error raised."""
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        try:
            self.scheduler.drain_all()
        except BaseException:
            self.discard_queued()
            raise

    def discard_queued(self) -> None:
        """Drop queued work without running it (after a failure): nothing waits on it."""
        for stream in self.scheduler.streams:
            while stream.queue:
                item = stream.queue.popleft()
                item.done = True
                if item.done_mark is not None:
                    item.done_mark.done = True

    def races_after_failure(self) -> list[Race]:
        """A schedule failed (a stale value, say) with work still queued: run that work
        anyway, raising nothing, so that accesses whose elements were not known yet (an
        index_put_ on a late stream) resolve and the race behind the failure is known;
        whatever cannot run is dropped. Returns the races found this way."""
        run = self.run
        before = len(run.races)
        raise_on_race, run.raise_on_race = run.raise_on_race, False
        try:
            self.scheduler.drain_all()
        except Exception:  # leftover work failing after the failure tells nothing more
            pass
        finally:
            self.discard_queued()
            self.hb.flush()
            run.raise_on_race = raise_on_race
        return run.races[before:]

    def end_of_test(self) -> None:
        """A test's schedule ended: every stream's work counts as done for later ones, so
        a later schedule or test never fails for this one's leftovers."""
        self.graphs.abandon()  # a capture the test left open ends (no graph)
        self.discard_queued()
        # Outside any test phase: a race still deferred here is kept in the run's races,
        # never raised (the teardown flush raised every race the test's work showed).
        raise_on_race, self.run.raise_on_race = self.run.raise_on_race, False
        try:
            self.hb.sync_device()
        finally:
            self.run.raise_on_race = raise_on_race
        # And in virtual time: the next run's clock starts again at 0, so nothing of this
        # one may still look in flight (a stream's last item, a block's reuse fence).
        for stream in list(self._streams) + [self.default_stream]:
            stream.queue.last = None
        self.allocator.forget_pending()
        host = getattr(self, "_host_allocator", None)
        if host is not None:
            host.forget_pending()

    def stream_gone(self, agent, queue) -> None:
        """A VirtualStream was collected (its finalizer, in any thread)."""
        self._gone.append((agent, queue))

    def _after_host_sync(self) -> None:
        """hb.on_host_sync: streams the program dropped may go; the function mode may go
        if no stream's access to pinned memory is in flight any more."""
        self._retire_gone_streams()
        if self.active:
            relax(self)

    def _retire_gone_streams(self) -> None:
        """After each host sync: streams the program dropped give back
        their clock slots, scheduler queues and cached blocks once the host is ordered
        after all their work, so the per-op cost and memory of a session, or of a test
        that makes a stream per iteration, follow the streams alive at once, not all
        that were ever made."""
        if not self._gone:
            return
        gone, self._gone = self._gone, []  # a finalizer may append meanwhile
        for agent, queue in gone:
            if queue.queue or not self.hb.retire(agent):
                self._gone.append((agent, queue))  # the host does not know it all yet
                continue
            self.run.scheduler.retire(queue)
            self.allocator.release_stream(agent)

    def forget_block(self, block) -> None:
        """The allocator released the block (cudaFree): no snapshot or restore reads it,
        and the model forgets the accesses its freed allocations left there."""
        self._blocks.pop(id(block), None)
        self.hb.release("device", block.address, block.nbytes)

    def snapshot(self) -> "MemorySnapshot":
        """The bytes of every live device allocation and registered pinned buffer now
        (queued work is not run: drain first)."""
        device = [(block, alloc, block.data.clone()) for block, alloc in self._blocks.values()
                  if not alloc.freed]
        self._reserved_names = {s.agent.name for s in self._streams}
        pinned = []
        with torch._C.DisableTorchFunction(), torch._C._DisableTorchDispatch():
            for key, (ref, alloc) in list(self._pinned_storages.items()):
                storage = ref()
                if storage is None:
                    del self._pinned_storages[key]
                else:
                    pinned.append((ref, alloc, _storage_bytes(storage).clone()))
        return MemorySnapshot(device, pinned)

    def restore(self, snap: "MemorySnapshot") -> None:
        """Put back what `snapshot()` saw, for allocations still alive; fresh memory
        (free blocks in the pools) becomes poison again, as after a fresh start."""
        with torch._C.DisableTorchFunction(), torch._C._DisableTorchDispatch():
            for block, alloc, data in snap.device:
                if not alloc.freed and self._blocks.get(id(block), (None, None))[1] is alloc:
                    block.data.copy_(data)
            for ref, alloc, data in snap.pinned:
                storage = ref()
                if storage is not None:
                    _storage_bytes(storage).copy_(data)
            for block, alloc in self._blocks.values():
                if alloc.freed:
                    poison_(block.data)

    # --- context ------------------------------------------------------------------

    def __enter__(self) -> "VirtualDevice":
        running = current()
        if running is not None and running.session:
            raise RuntimeError(
                "virtual_device() inside a test under pytest --streamorder: the session's "
                "virtual device is already active and runs this test (read its schedule and "
                "races through the `streamorder` fixture), or mark the test "
                "@pytest.mark.no_streamorder to open a device of its own")
        if running is not None:
            raise RuntimeError("virtual_device() is already active: nesting is not supported")
        if self.active or self._used:
            raise RuntimeError("a VirtualDevice runs once; create a new one")
        self._used = True
        self.attach()
        return self

    def attach(self) -> None:
        """Become the device torch.cuda and device ops go to (a session attaches once, and
        again after a no_streamorder test suspended it)."""
        activate(self)  # one backend at a time, either kind
        set_active(self)
        self.active = True
        try:
            self._patches = install_cuda_module(self)
            self._triton = install_triton(self)
            self._modes = enter_interception(self)
        except BaseException:
            self._teardown()
            raise

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                with RUNTIME_LOCK:  # a worker thread may still be issuing work
                    self.scheduler.drain_all()  # the program ends: queued work still runs
                    self.hb.sync_device()
            _check_replay_finished(self.chooser, exc)
        finally:
            self._teardown()

    def _teardown(self) -> None:
        try:
            if self._modes is not None:
                exit_interception(self._modes)
        finally:
            self._modes = None
            if self._triton is not None:
                uninstall_triton(self._triton)
            self._triton = None
            if self._patches is not None:
                uninstall_cuda_module(self._patches)
            self._patches = None
            self.active = False
            set_active(None)
            deactivate(self)

    detach = _teardown  # torch.cuda and the modes as they were; the device keeps its state

    def check_active(self, what: str) -> None:
        if not self.active:
            raise RuntimeError(f"{what}: this virtual device is no longer active")

    # --- streams --------------------------------------------------------------------

    def next_handle(self) -> int:
        return next(self._handles)

    def unique_stream_name(self, base: str) -> str:
        n = self._stream_names.get(base, 0)
        while True:
            n += 1
            name = base if n == 1 else f"{base}#{n}"
            if name not in self.hb._stream_names:  # a live stream's name is taken
                break
        self._stream_names[base] = n
        return name

    @locked
    def name_stream(self, stream: VirtualStream, name: str) -> None:
        """Use `name` for this stream in race reports and traces."""
        self.hb.rename_stream(stream.agent, name)
        stream.queue.name = name

    def sync_stream(self, stream: VirtualStream) -> None:
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        self.graphs.forbid(f"a host sync on stream '{stream.name}'", stream=stream)
        self.scheduler.drain(stream.queue)
        self.hb.sync_stream(stream.agent)

    def sync_device(self) -> None:
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        self.scheduler.drain_all()
        self.hb.sync_device()

    def sleep(self, cycles: int, site: Site) -> None:
        """torch.cuda._sleep: occupy the current stream for `cycles` of virtual time."""
        stream = self.current_stream
        if self.graphs.captures and self.graphs.on_sleep(stream, cycles):
            return  # captured: it runs at each replay
        self._count_op("_sleep")
        self.hb.launch(stream.agent, "cuda._sleep", (), site)
        self.scheduler.enqueue(stream.queue, Item("_sleep", None, cost_ns=int(cycles / SLEEP_CYCLES_PER_NS)))

    # --- work -----------------------------------------------------------------------

    def _count_op(self, name: str) -> None:
        self.run.op_counter.count(name)

    def launch(self, name: str, accesses, site: Site, run, stream: VirtualStream | None = None) -> None:
        """Tell the model, then queue `run` (None: nothing to execute) on the stream."""
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        stream = stream or self.current_stream
        if self.graphs.captures and self.graphs.on_launch(stream, name, accesses, site, run):
            return  # captured: it runs at each replay (sim/graphs.py)
        self._count_op(name)  # (strategies/runner.py counts D2H copies through it)
        agent = stream.agent
        self.hb.launch(agent, name, accesses, site)
        if self.hb.host_memory_in_flight:  # host calls on pinned memory are accesses now
            arm(self)
        item = Item(name, run) if self.cost_model is None else \
            Item(name, run, cost_ns=int(self.cost_model(name, accesses)))
        item.op_count = agent.clock[agent.id]
        self.run.scheduler.enqueue(stream.queue, item)

    def new_tensor(self, size, stride, offset, dtype, label, site: Site, op: str = "",
                   nbytes: int | None = None) -> DeviceTensor:
        """Fresh device memory (from the current stream's pool) laid out as given
        (`nbytes`: the extent of that layout, when the caller knows it already)."""
        if nbytes is None:
            nbytes = extent(size, stride, offset, dtype.itemsize)[1]
        storage = self._new_storage(nbytes, label or TensorLabel(op, dtype, size, site), site)
        return DeviceTensor(storage, size, stride, offset, dtype)

    def _new_storage(self, nbytes: int, label, site: Site):
        storage = self.allocator.allocate(nbytes, label, site)
        if storage.nbytes:
            self._blocks[id(storage.block)] = (storage.block, storage.alloc)
        return storage

    def resize_empty(self, t: DeviceTensor, size, stride, offset, nbytes: int, site: Site,
                     op: str) -> None:
        """CUDA resizes a zero-size out= tensor to the result's layout (C++ composites fill
        `at::empty({0})` that way: F.one_hot's arange): fresh memory from the current
        stream's pool, in place of its zero bytes (DeviceTensor gave such a tensor room
        in its data-less C++ storage for the new layout)."""
        t._vs = self._new_storage(nbytes, TensorLabel(op, t.dtype, size, site), site)
        t.set_layout(size, stride, offset)

    @locked
    def custom_kernel(self, name: str, reads, writes, cpu_impl, site: Site) -> None:
        """A kernel torch cannot see into (Triton, a C++ extension): its reads and writes
        as declared, and `cpu_impl(*reads, *writes)` run on CPU views when it is scheduled."""
        for t in list(reads) + list(writes):
            if not isinstance(t, DeviceTensor):
                raise TypeError(f"custom kernel {name!r}: {type(t).__name__} is not a virtual CUDA tensor")
        accesses = [_access(t, False) for t in reads] + [_access(t, True) for t in writes]
        refs = [Ref(t) for t in list(reads) + list(writes)]

        def run():
            with torch._C.DisableTorchFunction(), torch._C._DisableTorchDispatch():
                cpu_impl(*[r.view() for r in refs])

        self.launch(name, accesses, site, run)

    # --- pinned host memory ---------------------------------------------------------

    @locked
    def register_pinned(self, t: torch.Tensor, site: Site) -> torch.Tensor:
        storage = t.untyped_storage()
        alloc = self.hb.allocate(storage.nbytes(), TensorLabel("pinned", t.dtype, tuple(t.shape), site),
                                 site, space="host")
        self._pinned.add(t, alloc)
        self._pinned_storages[storage.data_ptr()] = (weakref.ref(storage), alloc)
        return t

    @locked
    def _unpin(self, alloc) -> None:
        if self.active:
            self.hb.free(alloc)

    def pinned_alloc(self, t: torch.Tensor):
        """The model allocation of a pinned host tensor, or None if it is pageable."""
        return self._pinned.lookup(t)

    @locked
    def host_access(self, t: torch.Tensor, is_write: bool, op: str, site: Site) -> None:
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        alloc = self.pinned_alloc(t)
        if alloc is not None:
            self.hb.host_access(op, [tensor_access(alloc, t, is_write)], site)

    @locked
    def host_access_sets(self, t: torch.Tensor, op: str, sets, site: Site) -> None:
        """The host accessed byte sets [(start, stop, region, is_write)] of pinned tensor
        t's storage (through a NumPy view: ops/numpy_views.py)."""
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        alloc = self.pinned_alloc(t) if self.active else None
        if alloc is not None and not alloc.freed:
            self.hb.host_access(op, [access_spec(alloc, *s) for s in sets], site)

    def host_read(self, t: torch.Tensor, op: str, site: Site) -> None:
        __tracebackhide__ = True  # pytest: show the user's frames, not ours
        self.host_access(t, False, op, site)


class MemorySnapshot:
    """Bytes of device allocations and pinned buffers at one moment (VirtualDevice.snapshot)."""

    __slots__ = ("device", "pinned")

    def __init__(self, device: list, pinned: list):
        self.device = device  # [(block, alloc, bytes)]
        self.pinned = pinned  # [(weakref to storage, alloc, bytes)]

    @property
    def nbytes(self) -> int:
        return sum(d.numel() for _, _, d in self.device) + sum(d.numel() for _, _, d in self.pinned)


def _storage_bytes(storage) -> torch.Tensor:
    """A host storage's bytes as a uint8 tensor (no dispatch mode may see this)."""
    t = torch.empty(0, dtype=torch.uint8)
    t.set_(storage, 0, (storage.nbytes(),), (1,))
    return t


def _check_replay_finished(chooser, exc: BaseException | None) -> None:
    """A replay that ends with recorded choices unused diverged: raise ScheduleDiverged,
    or, when the run already fails, add the news to its exception."""
    check = getattr(chooser, "check_finished", None)
    if check is None:
        return
    try:
        check()
    except ScheduleDiverged as diverged:
        if exc is None:
            raise
        if hasattr(exc, "add_note") and not isinstance(exc, ScheduleDiverged):
            exc.add_note(str(diverged))


def virtual_device(seed: int | None = 0, policy: str = "random", replay: Schedule | None = None,
                   raise_on_race: bool = True, max_ops: int = DEFAULT_MAX_OPS,
                   chooser: Chooser | None = None, record_timeline: bool = False) -> VirtualDevice:
    """Run torch.cuda code on the virtual device inside `with virtual_device(...) as vd:`.

    policy: eager (ops run at launch, like CUDA_LAUNCH_BLOCKING), lazy (only when the
    host waits), random, pct (random stream priorities with change points), delay (one
    stream held back as long as legal). Same seed, same schedule; `vd.schedule` replays
    it exactly. The first race raises StreamRaceError unless raise_on_race=False;
    `vd.races` lists them all. `chooser` (anything with `choose(n) -> int in [0, n)` and
    a `choices` list) replaces the seeded one, e.g. to draw the schedule from Hypothesis.
    record_timeline keeps what ran when, for pytest_streamorder.timeline's trace files.
    """
    return VirtualDevice(seed=seed, policy=policy, replay=replay, raise_on_race=raise_on_race,
                         max_ops=max_ops, chooser=chooser, record_timeline=record_timeline)
