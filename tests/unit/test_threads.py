"""Host threads on the virtual device: the current stream is per thread, device work from
any thread is intercepted and ordered, device calls from several threads are serialized
by the runtime lock, and a run whose threads hand work over through start/join (or a
future's result) is deterministic."""

from __future__ import annotations

import concurrent.futures as futures
import threading

import pytest
import torch

import pytest_streamorder as so
from pytest_streamorder import host_threads
from pytest_streamorder.sim import threads as sim_threads


def in_thread(fn, *args):
    """Run fn(*args) in a new thread, join it, return its result or raise its error."""
    box = {}

    def body():
        try:
            box["result"] = fn(*args)
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    t = threading.Thread(target=body)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["result"]


def in_threads(fn, count):
    """Run fn(i) in `count` threads at once; their results in order, or the first error."""
    results, errors = [None] * count, []
    barrier = threading.Barrier(count)

    def body(i):
        try:
            barrier.wait()  # all start issuing device work together
            results[i] = fn(i)
        except BaseException as exc:
            errors.append(exc)

    ts = [threading.Thread(target=body, args=(i,)) for i in range(count)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise errors[0]
    return results


def forward(params, x):
    """A small forward pass: linear, relu, bias (a few device ops)."""
    w, b = params
    return torch.relu(x @ w.t() + b) + 1


def forward_in_worker(wait: bool, seed: int = 0, policy: str = "random"):
    """A forward pass in a worker thread on its own stream, slow (a _sleep first), handed
    to the main thread with a done-event; the main stream waits on it when `wait`."""
    with so.virtual_device(seed=seed, policy=policy, raise_on_race=False) as vd:
        torch.manual_seed(0)
        params = (torch.randn(16, 16).cuda(), torch.randn(16).cuda())
        x = torch.randn(4, 16).cuda()
        expected = forward(params, x).cpu()
        torch.cuda.synchronize()

        def worker():
            stream = torch.cuda.Stream()
            with torch.cuda.stream(stream):
                torch.cuda._sleep(1_000_000)
                out = forward(params, x)
                done = torch.cuda.Event()
                done.record()
            return out, done, stream

        out, done, stream = in_thread(worker)
        assert torch.cuda.current_stream() == torch.cuda.default_stream()
        if wait:
            torch.cuda.current_stream().wait_event(done)
        got = out.cpu()
        return got, expected, vd.races, vd.schedule, stream.name


# --- ordering across threads ----------------------------------------------------------

def test_forward_in_worker_with_event_wait_is_silent_and_correct():
    got, expected, races, _, _ = forward_in_worker(wait=True, policy="lazy")
    assert races == []
    assert torch.allclose(got, expected)


def test_forward_in_worker_without_wait_is_a_race():
    got, expected, races, _, stream = forward_in_worker(wait=False, policy="lazy")
    assert len(races) == 1
    race = races[0]
    assert {race.earlier.agent.name, race.later.agent.name} == {stream, "default"}
    assert race.earlier.is_write and not race.later.is_write
    # lazy: the worker's stream had not run when the main stream read the output
    assert not torch.allclose(got, expected)


@pytest.mark.parametrize("wait", [True, False])
def test_same_seed_same_run_with_a_worker_thread(wait):
    a = forward_in_worker(wait, seed=7)
    b = forward_in_worker(wait, seed=7)
    assert a[3] == b[3] and a[3].choices  # the same scheduling decisions
    assert torch.equal(a[0], b[0]) or (torch.isnan(a[0]).any() and torch.equal(a[0].isnan(), b[0].isnan()))
    assert len(a[2]) == len(b[2]) == (0 if wait else 1)


# --- the current stream is per thread ----------------------------------------------------

def test_set_stream_in_a_worker_leaves_the_main_thread_alone():
    with so.virtual_device(seed=0, policy="eager"):
        main_side = torch.cuda.Stream()
        torch.cuda.set_stream(main_side)

        def worker():
            seen_at_start = torch.cuda.current_stream()
            s = torch.cuda.Stream()
            torch.cuda.set_stream(s)
            return seen_at_start, torch.cuda.current_stream(), s

        at_start, after, s = in_thread(worker)
        assert at_start == torch.cuda.default_stream()  # a new thread starts on default
        assert after == s
        assert torch.cuda.current_stream() == main_side
        torch.cuda.set_stream(torch.cuda.default_stream())


def test_stream_context_in_a_thread_and_a_thread_started_inside_one():
    with so.virtual_device(seed=0, policy="eager"):
        side = torch.cuda.Stream()
        with torch.cuda.stream(side):
            started_inside = in_thread(torch.cuda.current_stream)
            assert torch.cuda.current_stream() == side
        assert started_inside == torch.cuda.default_stream()

        def enter_same_stream_object():
            with side:  # torch.Stream's own context manager, in another thread
                return torch.cuda.current_stream()

        with side:
            assert in_thread(enter_same_stream_object) == side
            assert torch.cuda.current_stream() == side
        assert torch.cuda.current_stream() == torch.cuda.default_stream()


def test_threads_multiply_on_their_own_streams_at_once():
    """Several threads, each with its own stream, multiply at the same time (PyTorch's
    test_cublas_multiple_threads_same_device pattern): every result is right, no race,
    and every thread's work ran on its own stream."""
    with so.virtual_device(seed=3) as vd:
        a = torch.randn(32, 32, device="cuda")
        b = torch.randn(32, 32, device="cuda")
        expected = (a.cpu() @ b.cpu())
        main = torch.cuda.current_stream()

        def worker(i):
            s = torch.cuda.Stream()
            s.wait_stream(main)  # the inputs were written on the main stream
            torch.cuda.set_stream(s)
            outs = []
            for _ in range(10):
                outs.append(torch.mm(a, b))
            s.synchronize()
            return torch.cuda.current_stream().name, [o.cpu() for o in outs]

        results = in_threads(worker, 4)
        assert torch.cuda.current_stream() == main
        assert len({name for name, _ in results}) == 4
        for _, outs in results:
            for out in outs:
                assert torch.allclose(out, expected, rtol=1e-5, atol=1e-5)
        assert vd.races == []


def test_threads_sharing_a_stream_without_waits_race():
    """Two threads write one buffer on their own streams with no event between them."""
    with so.virtual_device(seed=0, raise_on_race=False) as vd:
        buf = torch.zeros(64, device="cuda")
        torch.cuda.synchronize()

        def worker(i):
            s = torch.cuda.Stream()
            with torch.cuda.stream(s):
                buf.add_(i + 1)

        in_threads(worker, 2)
        assert len(vd.races) == 1


# --- which threads are intercepted -------------------------------------------------------

def test_thread_pool_worker_does_device_work():
    with so.virtual_device(seed=0) as vd:
        src = torch.arange(8, device="cuda")
        with futures.ThreadPoolExecutor(2) as pool:
            got = pool.submit(lambda: (torch.ones(8, device="cuda", dtype=torch.int64) + src).tolist()).result()
        assert got == [i + 1 for i in range(8)]
        assert vd.races == []


def pool_run(seed: int):
    """Device work handed to a pool worker and back through future.result()."""
    with so.virtual_device(seed=seed, raise_on_race=False) as vd:
        x = torch.arange(16, dtype=torch.float32, device="cuda")
        with futures.ThreadPoolExecutor(1) as pool:
            def task():
                s = torch.cuda.Stream()
                with torch.cuda.stream(s):
                    y = x * 2  # no wait on the main stream (a race), nor back
                    z = y + 1
                return z
            z = pool.submit(task).result()
        return z.cpu(), vd.schedule, len(vd.races)


def test_pool_handoff_same_seed_same_run():
    a, b = pool_run(5), pool_run(5)
    assert a[1] == b[1] and a[1].choices
    assert torch.equal(a[0].isnan(), b[0].isnan())
    assert torch.equal(a[0].nan_to_num(), b[0].nan_to_num())
    assert a[2] == b[2] == 2  # x read before its write is ordered; z read on the main stream


def test_pool_started_before_the_device():
    """A pool built before the device (a fixture's pool): its worker thread already runs,
    and gets the device's mode before each task."""
    with futures.ThreadPoolExecutor(1) as pool:
        before = pool.submit(threading.get_ident).result()
        for seed in (0, 1):  # and again under a second device
            with so.virtual_device(seed=seed) as vd:
                def task():
                    x = torch.zeros(4, device="cuda")
                    x[1:3] = 5.0  # indexing: torch guards it in C++ before dispatch
                    return threading.get_ident(), x.cpu().tolist()

                ident, values = pool.submit(task).result()
                assert ident == before
                assert values == [0.0, 5.0, 5.0, 0.0]
                assert vd.races == []
        # no device: the worker's mode lets its calls through
        assert pool.submit(lambda: torch.ones(2).sum().item()).result() == 2.0


def test_plain_thread_started_before_the_device_gets_the_mode_at_its_first_device_call():
    tasks, results = [], []
    ready = threading.Event()
    go = threading.Condition()

    def loop():
        ready.set()
        while True:
            with go:
                go.wait_for(lambda: tasks)
                task = tasks.pop()
            if task is None:
                return
            try:
                results.append(("ok", task()))
            except BaseException as exc:
                results.append(("error", exc))

    def run(task):
        with go:
            tasks.append(task)
            go.notify()
        while not results:
            threading.Event().wait(0.001)
        return results.pop()

    t = threading.Thread(target=loop)
    t.start()
    ready.wait()
    try:
        with so.virtual_device(seed=0):
            d = torch.full((4,), 2.0, device="cuda")
            # first device call: an aten op on a device tensor, which dispatches from any
            # thread; from then on the thread has the mode
            assert run(lambda: (d * 3).cpu().tolist()) == ("ok", [6.0] * 4)
            assert run(lambda: d[2].item()) == ("ok", 2.0)
            assert run(lambda: torch.zeros(2, device="cuda").cpu().tolist()) == ("ok", [0.0, 0.0])
    finally:
        with go:
            tasks.append(None)
            go.notify()
        t.join()


def test_explicit_ensure_for_a_thread_that_predates_the_device():
    """A thread whose first device call torch guards in C++ calls ensure() first."""
    box = {}
    started, go, done = threading.Event(), threading.Event(), threading.Event()

    def body():
        started.set()
        go.wait()
        try:
            host_threads.ensure()
            box["v"] = torch.tensor([1, 2, 3], device="cuda").sum().item()
        except BaseException as exc:
            box["error"] = exc
        done.set()

    t = threading.Thread(target=body)
    t.start()
    started.wait()
    with so.virtual_device(seed=0):
        go.set()
        done.wait()
    t.join()
    assert box == {"v": 6}


def test_a_thread_outliving_the_device_runs_host_code_normally_afterwards():
    stop = threading.Event()
    box = {}

    def body():
        box["during"] = torch.ones(3, device="cuda").sum().item()
        stop.wait()
        box["after"] = torch.arange(4).sum().item()

    with so.virtual_device(seed=0):
        t = threading.Thread(target=body)
        t.start()
        while "during" not in box and t.is_alive():
            threading.Event().wait(0.001)
    stop.set()
    t.join()
    assert box == {"during": 3.0, "after": 6}


def test_threading_is_restored_after_the_device():
    bootstrap = threading.Thread.__dict__["_bootstrap_inner"]
    run = futures.thread._WorkItem.__dict__["run"]
    with so.virtual_device(seed=0):
        assert threading.Thread.__dict__["_bootstrap_inner"] is not bootstrap
    assert threading.Thread.__dict__["_bootstrap_inner"] is bootstrap
    assert futures.thread._WorkItem.__dict__["run"] is run
    assert sim_threads._owner is None


# --- many threads at once: the runtime lock ------------------------------------------------

def test_concurrent_device_work_and_frees_from_many_threads():
    """Threads issue, sync and free device tensors at the same time: every value is
    right and the allocator and model stay consistent (no race, no internal error)."""
    with so.virtual_device(seed=11) as vd:
        def worker(i):
            s = torch.cuda.Stream()
            total = 0.0
            with torch.cuda.stream(s):
                for k in range(20):
                    t = torch.full((64,), float(i), device="cuda") * 2 + k
                    e = torch.cuda.Event()
                    e.record()
                    e.synchronize()
                    total += t.sum().item()
                    del t  # freed in this thread, to this stream's pool
            return total

        results = in_threads(worker, 6)
        assert results == [sum(64 * (2.0 * i + k) for k in range(20)) for i in range(6)]
        assert vd.races == []
        assert vd.allocator.blocks_reused > 0


def test_a_worker_drops_the_last_reference_to_a_device_tensor():
    """The free runs in the worker (a __del__), ordered by the model like any free."""
    with so.virtual_device(seed=0, policy="lazy") as vd:
        box = {"t": torch.ones(128, device="cuda")}
        torch.cuda.synchronize()
        in_thread(box.pop, "t")  # the worker drops it
        again = torch.ones(128, device="cuda") * 4  # same stream, same size: reused
        assert again.cpu().tolist() == [4.0] * 128
        assert vd.allocator.blocks_reused == 1
        assert vd.races == []
