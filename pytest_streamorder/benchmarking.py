"""`stream_benchmark`: pytest-benchmark for code that launches CUDA stream work.

    def test_resolve(stream_benchmark):
        stream_benchmark.pedantic(one_step, setup=make_state, rounds=20, warmup_rounds=2)
        # or, like pytest-benchmark's fixture: stream_benchmark(fn, *args, **kwargs)

Besides wall time (pytest-benchmark's own statistics), each benchmark records in
`extra_info` (so in `--benchmark-json`) how long the host was blocked in syncs, which is
what overlap schedulers are designed to keep low:

  backend             "cuda" (a real GPU) or "virtual" (the virtual device)
  host_blocked_s      median over the measured calls of the time the host spent waiting
                      in syncs; also host_blocked_s_min / _mean / _max
  host_busy_s         the rest of the call's host time: launching, Python (median)
  syncs               how many syncs one call made
  on the virtual device, the modelled timeline of one call (medians; virtual time comes
  from `torch.cuda._sleep` cycles and a per-op `CostModel`):
  device_time_s       from the call's start until its last device op finished
  host_time_s         the host's own timeline of the call: launches plus blocked time
  device_ops          device ops the call issued

Where time is measured. On real CUDA the fixture wraps `torch.cuda.synchronize`,
`torch.cuda.Stream.synchronize` and `torch.cuda.Event.synchronize` with perf_counter while
it runs. With `implicit_syncs=True` it also times, through a TorchFunctionMode, the calls
that copy a CUDA tensor to the host and wait for it (`.item()`, `.tolist()`, `.cpu()`,
`int()`, blocking `.to()` and `copy_()`, `nonzero`, ...; their copy time counts as
blocked). That is off by default: the mode costs host time on every torch call, which
shifts when the host reaches its syncs (on an H100 it hid the reference resolve's whole
0.2 ms wait). On the virtual device
every sync the program makes (these and the implicit ones) advances a virtual clock, and
the blocked time is read from it: deterministic, and independent of the machine.

Backend: "auto" picks the virtual device already active (under `pytest --streamorder`),
else a real GPU when torch has one, else a fresh virtual device per call. Force one by
setting `stream_benchmark.backend` (or `pedantic(..., backend=)`): "cuda" skips the test
when no GPU is present. On the virtual device `setup` runs inside each call's device, so
it must create the streams and tensors `fn` uses; on "cuda" it runs before each round, and
the fixture synchronizes the device after it and after each call (`sync_at_end`), so
rounds do not overlap. Wall time includes that final sync; host_blocked_s does not.

Nothing here imports torch until a benchmark runs: the plugin imports this module.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any, Callable

import pytest

from .backend import active_backend
from .cuda_sync_timer import SyncTimer

BACKENDS = ("auto", "cuda", "virtual")


@dataclasses.dataclass
class CostModel:
    """Virtual time of one device op, in ns: `cost(op_name, accesses)`; and `launch_ns`,
    the host's virtual time per launch (each op, event record or wait it enqueues).

    An op costs `op_ns` plus its bytes over HBM bandwidth; a copy between host and device
    (an access to host memory, or "H2D"/"D2H" in its name) costs `copy_ns` plus its bytes
    over PCIe. `per_op_ns` fixes the cost of ops by name ("aten.index.Tensor": 5_000).
    `torch.cuda._sleep(cycles)` is not an op: it costs cycles / 1.98 per ns (an H100's SM
    clock) whatever the model. Defaults: roughly an H100 (3.35 TB/s HBM3, ~25 GB/s of
    pinned PCIe copy for small transfers) driven from Python: 15 us of host time per
    launch, as measured for tests/benchmarks/resolve_scenario.py (10 launches, 0.15 ms of
    host time per step on an H100 host with torch 2.11). The virtual device alone (no
    cost model) charges 0.5 us per launch and 2 us per op.
    """

    launch_ns: int = 15_000
    op_ns: int = 2_000
    copy_ns: int = 4_000
    hbm_bytes_per_ns: float = 3_000.0
    pcie_bytes_per_ns: float = 25.0
    per_op_ns: dict = dataclasses.field(default_factory=dict)

    def __call__(self, name: str, accesses) -> int:
        fixed = self.per_op_ns.get(name)
        if fixed is not None:
            return int(fixed)
        nbytes = 0
        host = "H2D" in name or "D2H" in name
        for spec in accesses:  # (alloc, start, stop, w), or (alloc, set, w): its bounds
            alloc = spec[0]
            nbytes += spec[2] - spec[1] if len(spec) == 4 else spec[1].stop - spec[1].start
            host = host or alloc.space == "host"
        if host:
            return int(self.copy_ns + nbytes / self.pcie_bytes_per_ns)
        return int(self.op_ns + nbytes / self.hbm_bytes_per_ns)


@dataclasses.dataclass
class CallRecord:
    """What one measured call of the benchmarked function cost."""

    wall_s: float
    host_blocked_s: float
    syncs: int
    host_busy_s: float = 0.0  # the call's own host time: wall (or host_time) minus blocked
    device_time_s: float | None = None  # virtual device only
    host_time_s: float | None = None  # virtual device only
    device_ops: int | None = None  # virtual device only


class StreamBenchmark:
    """The `stream_benchmark` fixture's object. Call it like pytest-benchmark's `benchmark`
    (`__call__`, `pedantic`); read `records` (one CallRecord per measured call) and
    `extra_info` afterwards. Settings (attributes, or keyword arguments of `pedantic`):

      backend          "auto" | "cuda" | "virtual" (see the module doc)
      seed, policy     the virtual device's schedule: call k runs with seed + k
      cost_model       CostModel (or any callable(op name, accesses) -> ns) on the virtual
                       device; None keeps the scheduler's flat DEFAULT_OP_NS per op
      sync_at_end      synchronize the device after each call (in wall time, not blocked)
      implicit_syncs   on CUDA, also time .item()/.cpu()/.tolist()/... of CUDA tensors
                       (default False: it perturbs the host, see the module doc)
    """

    def __init__(self, benchmark, backend: str = "auto", seed: int = 0, policy: str = "random",
                 cost_model: Callable[[str, Any], int] | None = None, sync_at_end: bool = True,
                 implicit_syncs: bool = False):
        self.benchmark = benchmark
        self.backend = backend
        self.seed = seed
        self.policy = policy
        self.cost_model = CostModel() if cost_model is None else cost_model
        self.sync_at_end = sync_at_end
        self.implicit_syncs = implicit_syncs
        self.records: list[CallRecord] = []
        self.resolved_backend: str | None = None
        self._skip_records = 0
        self._calls = 0

    @property
    def extra_info(self) -> dict:
        return self.benchmark.extra_info

    # --- pytest-benchmark's two entry points ------------------------------------------

    def __call__(self, fn: Callable, *args, **kwargs):
        backend = self._resolve()
        with self._session(backend):
            result = self.benchmark(self._measured(fn, backend), *args, **kwargs)
        self._publish(backend)
        return result

    def pedantic(self, fn: Callable, args=(), kwargs=None, setup: Callable | None = None,
                 rounds: int = 1, warmup_rounds: int = 0, iterations: int = 1, **settings):
        """As pytest-benchmark's pedantic. `setup()` returns `(args, kwargs)` like there,
        or None (then `args`/`kwargs` are used), and runs outside the timed call."""
        for name, value in settings.items():
            if name not in ("backend", "seed", "policy", "cost_model", "sync_at_end",
                            "implicit_syncs"):
                raise TypeError(f"stream_benchmark.pedantic() got an unexpected keyword {name!r}")
            setattr(self, name, value)
        backend = self._resolve()
        args, kwargs = tuple(args), dict(kwargs or {})
        if self.benchmark.disabled:
            warmup_rounds = 0  # pytest-benchmark runs the function once, without warmup
        self._skip_records = warmup_rounds * iterations
        call = _Call(self, fn, backend, setup, args, kwargs)
        with self._session(backend):
            result = self.benchmark.pedantic(call.target, setup=call.setup, rounds=rounds,
                                             warmup_rounds=warmup_rounds, iterations=iterations)
        self._publish(backend)
        return result

    # --- backends -------------------------------------------------------------------------

    def _resolve(self) -> str:
        if self.backend not in BACKENDS:
            raise ValueError(f"stream_benchmark backend must be one of {BACKENDS}, got {self.backend!r}")
        running = active_backend()
        active = running is not None and running.is_virtual  # under pytest --streamorder
        if self.backend == "cuda":
            if active:
                raise RuntimeError("stream_benchmark backend='cuda' inside a virtual device "
                                   "(pytest --streamorder): use backend='auto' or 'virtual'")
            if not _real_cuda():
                pytest.skip("stream_benchmark backend='cuda' needs a real CUDA device")
            backend = "cuda"
        elif self.backend == "virtual":
            backend = "virtual-active" if active else "virtual"
        else:
            backend = "virtual-active" if active else "cuda" if _real_cuda() else "virtual"
        self.resolved_backend = backend
        return backend

    def _session(self, backend: str):
        return SyncTimer(self.implicit_syncs) if backend == "cuda" else _nullcontext()

    def _measured(self, fn: Callable, backend: str) -> Callable:
        """fn wrapped so that each call is measured on `backend` (no setup)."""
        call = _Call(self, fn, backend, None, (), {})

        def measured(*args, **kwargs):
            call.args, call.kwargs = args, kwargs
            call.setup()
            return call.target()

        return measured

    def _record(self, rec: CallRecord) -> None:
        if self._skip_records > 0:
            self._skip_records -= 1
            return
        self.records.append(rec)

    def _publish(self, backend: str) -> None:
        """Summaries of the measured calls into extra_info."""
        info = self.benchmark.extra_info
        info["backend"] = "virtual" if backend.startswith("virtual") else backend
        recs = self.records
        if not recs:
            return
        blocked = [r.host_blocked_s for r in recs]
        info["host_blocked_s"] = statistics.median(blocked)
        info["host_blocked_s_min"] = min(blocked)
        info["host_blocked_s_mean"] = statistics.fmean(blocked)
        info["host_blocked_s_max"] = max(blocked)
        info["host_busy_s"] = statistics.median(r.host_busy_s for r in recs)
        info["syncs"] = statistics.median(r.syncs for r in recs)
        info["measured_calls"] = len(recs)
        if recs[0].device_time_s is not None:
            info["device_time_s"] = statistics.median(r.device_time_s for r in recs)
            info["host_time_s"] = statistics.median(r.host_time_s for r in recs)
            info["device_ops"] = statistics.median(r.device_ops for r in recs)
            if isinstance(self.cost_model, CostModel):
                info["cost_model"] = dataclasses.asdict(self.cost_model)


class _Call:
    """One benchmark round: `setup` (outside the timing) then `target` (timed)."""

    def __init__(self, sb: StreamBenchmark, fn, backend, user_setup, args, kwargs):
        self.sb, self.fn, self.backend, self.user_setup = sb, fn, backend, user_setup
        self.args, self.kwargs = args, kwargs
        self.vd = None
        self.call_args = None

    def _run_user_setup(self):
        args, kwargs = self.args, self.kwargs
        if self.user_setup is not None:
            out = self.user_setup()
            if out is not None:
                args, kwargs = out
        return tuple(args), dict(kwargs or {})

    def setup(self):
        sb = self.sb
        if self.backend == "virtual":
            from .sim.device import virtual_device

            self.vd = virtual_device(seed=sb.seed + sb._calls, policy=sb.policy)
            sb._calls += 1
            self.vd.__enter__()
            _apply_cost_model(self.vd, sb.cost_model)
        elif self.backend == "virtual-active":
            self.vd = active_backend()
            _apply_cost_model(self.vd, sb.cost_model)
        try:
            self.call_args = self._run_user_setup()
            self._sync()  # setup's device work is not the benchmark's
        except BaseException:
            self._exit(failed=True)
            raise
        return (), {}

    def target(self):
        args, kwargs = self.call_args
        self.call_args = None
        try:
            if self.backend == "cuda":
                return self._target_cuda(args, kwargs)
            return self._target_virtual(args, kwargs)
        except BaseException:
            self._exit(failed=True)
            raise

    def _target_cuda(self, args, kwargs):
        timer = SyncTimer.current
        b0, n0 = timer.blocked_s, timer.syncs
        t0 = time.perf_counter()
        result = self.fn(*args, **kwargs)
        busy = time.perf_counter() - t0
        blocked, syncs = timer.blocked_s - b0, timer.syncs - n0
        if self.sb.sync_at_end:
            timer.raw_synchronize()
        self.sb._record(CallRecord(time.perf_counter() - t0, blocked, syncs, busy - blocked))
        return result

    def _target_virtual(self, args, kwargs):
        vd = self.vd
        sch = vd.scheduler
        h0, b0, ops0 = sch.host_time_ns, sch.host_blocked_ns, vd.ops_issued
        syncs0 = _host_syncs(vd)
        t0 = time.perf_counter()
        result = self.fn(*args, **kwargs)
        h1, b1, ops1 = sch.host_time_ns, sch.host_blocked_ns, vd.ops_issued
        syncs = _host_syncs(vd) - syncs0
        if self.sb.sync_at_end or self.backend == "virtual":
            vd.sync_device()
        device_end = max((s.time_ns for s in sch.streams), default=h0)
        self._exit(failed=False)
        wall = time.perf_counter() - t0
        self.sb._record(CallRecord(
            wall_s=wall, host_blocked_s=(b1 - b0) / 1e9, syncs=syncs,
            host_busy_s=(h1 - h0 - (b1 - b0)) / 1e9,
            device_time_s=max(device_end - h0, 0) / 1e9, host_time_s=(h1 - h0) / 1e9,
            device_ops=ops1 - ops0))
        return result

    def _sync(self):
        if self.backend == "cuda":
            SyncTimer.current.raw_synchronize()
        elif self.vd is not None:
            self.vd.sync_device()

    def _exit(self, failed: bool):
        vd, self.vd = self.vd, None
        if vd is None or self.backend != "virtual":
            return
        if failed:
            import sys

            vd.__exit__(*sys.exc_info())
        else:
            vd.__exit__(None, None, None)


def _apply_cost_model(vd, model) -> None:
    vd.cost_model = model
    launch_ns = getattr(model, "launch_ns", None)
    if launch_ns is not None:
        vd.scheduler.launch_ns = int(launch_ns)


def _host_syncs(vd) -> int:
    """How many times the host has waited on the virtual device so far."""
    return vd.scheduler.host_syncs


def _real_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.fixture
def stream_benchmark(benchmark) -> StreamBenchmark:
    """pytest-benchmark's `benchmark` for stream work: also records host_blocked_s (and on
    the virtual device the modelled device timeline) in extra_info. See
    pytest_streamorder.benchmarking."""
    return StreamBenchmark(benchmark)
