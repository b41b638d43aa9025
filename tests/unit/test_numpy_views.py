"""Host accesses to pinned memory through NumPy views (ops/numpy_views.py), on the virtual
device: each access kind has a silent correct twin (the host synced first) and a reported
broken one whose report names both lines; views of views report exact byte ranges."""

from __future__ import annotations

import inspect

import pytest

np = pytest.importorskip("numpy", reason="NumPy views of pinned memory need NumPy")
import torch  # noqa: E402

import pytest_streamorder as so  # noqa: E402
from pytest_streamorder.ops.numpy_views import PinnedArray  # noqa: E402

I32 = torch.int32
pytest_plugins = ["pytester"]


def _line(marker: str) -> int:
    """The line of this file holding `marker` (a comment), for asserting report sites."""
    lines = inspect.getsource(inspect.getmodule(_line)).splitlines()
    return next(i for i, text in enumerate(lines, 1) if marker in text and "_line(" not in text)


def _h2d_pending(n=8):
    """A pinned staging buffer filled with 1s, its NumPy view, and an H2D copy of it
    queued on a side stream behind a long sleep."""
    cpu = torch.ones(n, dtype=I32, pin_memory=True)
    view = cpu.numpy()
    gpu = torch.zeros(n, dtype=I32, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda._sleep(1_000_000)
        gpu.copy_(cpu, non_blocking=True)  # H2D-ISSUE
    return cpu, view, gpu, side


def _d2h_pending(n=8):
    """A pinned buffer, its NumPy view, and a D2H copy into it queued on a side stream."""
    gpu = torch.arange(n, dtype=I32, device="cuda")
    cpu = torch.zeros(n, dtype=I32, pin_memory=True)
    view = cpu.numpy()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda._sleep(1_000_000)
        cpu.copy_(gpu, non_blocking=True)  # D2H-ISSUE
    return cpu, view, gpu, side


# Host writes to the source of a pending H2D copy: (name, the write).
WRITES = {
    "slice": lambda v: v.__setitem__(slice(0, 4), 2),
    "item": lambda v: v.__setitem__(3, 2),
    "mask": lambda v: v.__setitem__(v.view(np.ndarray) > 0, 2),
    "ufunc_out": lambda v: np.add(v, 1, out=v),
    "inplace_op": lambda v: v.__iadd__(1),
    "copyto": lambda v: np.copyto(v, np.full(8, 5, dtype=np.int32)),
    "fill": lambda v: v.fill(3),
    "put": lambda v: np.put(v, [1, 2], 9),
    "ufunc_at": lambda v: np.add.at(v, [0, 0], 1),
}
# Host reads of the target of a pending D2H copy.
READS = {
    "tolist": lambda v: v.tolist(),
    "item": lambda v: int(v[2]),
    "slice_tolist": lambda v: v[:4].tolist(),
    "sum_method": lambda v: v.sum(),
    "np_sum": lambda v: np.sum(v),
    "ufunc": lambda v: v + 1,
    "fancy": lambda v: v[[0, 2]],
    "iterate": lambda v: list(v),
    "copy": lambda v: v.copy(),
    "repr": lambda v: repr(v),
    "take": lambda v: np.take(v, [1]),
    "copyto_source": lambda v: np.copyto(np.empty(8, np.int32), v),
}


def _run(fn, policy="lazy"):
    with so.virtual_device(seed=0, policy=policy, raise_on_race=False) as vd:
        result = fn()
        torch.cuda.synchronize()
    return vd, result


@pytest.mark.parametrize("kind", list(WRITES))
def test_host_write_to_a_pending_h2d_source_is_reported_at_its_line(kind):
    def program():
        cpu, view, gpu, side = _h2d_pending()
        WRITES[kind](view)  # HOST-WRITE
        return gpu

    vd, _ = _run(program)
    assert len(vd.races) == 1, [str(r) for r in vd.races]
    race = vd.races[0]
    assert race.earlier.op == "H2D copy_" and not race.earlier.is_write
    assert race.later.agent.is_host and race.later.is_write
    text = str(race)
    assert f"test_numpy_views.py:{_line('# H2D-ISSUE')}" in text
    assert f"test_numpy_views.py:{_line('# HOST-WRITE')}" in text
    assert "Synchronize 'side'" in race.explain()


@pytest.mark.parametrize("kind", list(WRITES))
def test_host_write_after_the_sync_is_silent_and_lands(kind):
    def program():
        cpu, view, gpu, side = _h2d_pending()
        side.synchronize()
        before = gpu.tolist()
        WRITES[kind](view)
        return before, cpu.tolist()

    vd, (before, after) = _run(program)
    assert not vd.races, [str(r) for r in vd.races]
    assert before == [1] * 8  # the copy read the buffer before the write
    assert after != [1] * 8  # the write went through the view


@pytest.mark.parametrize("kind", list(READS))
def test_host_read_of_a_pending_d2h_target_is_reported_at_its_line(kind):
    def program():
        cpu, view, gpu, side = _d2h_pending()
        READS[kind](view)  # HOST-READ
        return cpu

    vd, _ = _run(program)
    assert vd.races, "not reported"
    # one race (iteration reads element by element: one per element, all one pair of lines)
    assert len({r.key() for r in vd.races}) == 1, [str(r) for r in vd.races]
    assert len(vd.races) == (8 if kind == "iterate" else 1)
    race = vd.races[0]
    assert race.earlier.op == "D2H copy_" and race.earlier.is_write
    assert race.later.agent.is_host and not race.later.is_write
    text = str(race)
    assert f"test_numpy_views.py:{_line('# D2H-ISSUE')}" in text
    assert f"test_numpy_views.py:{_line('# HOST-READ')}" in text
    assert "before synchronizing with 'side'" in race.explain()


@pytest.mark.parametrize("kind", list(READS))
def test_host_read_after_the_sync_is_silent(kind):
    def program():
        cpu, view, gpu, side = _d2h_pending()
        side.synchronize()
        READS[kind](view)
        return view.tolist()

    vd, values = _run(program)
    assert not vd.races, [str(r) for r in vd.races]
    assert values == list(range(8))


def test_taking_the_view_and_views_of_it_read_nothing():
    def program():
        cpu, view, gpu, side = _d2h_pending()
        again = cpu.numpy()  # a view, taken while the copy is pending
        rows = again[2:6][::2]  # views of views
        shaped = np.reshape(again, (2, 4)).T  # a view through __array_function__
        torch.cuda.synchronize()
        return type(rows), rows.tolist(), shaped.tolist()

    vd, (kind, rows, shaped) = _run(program)
    assert not vd.races
    assert kind is PinnedArray
    assert rows == [2, 4]
    assert shaped == [[0, 4], [1, 5], [2, 6], [3, 7]]


def test_views_of_views_touch_exactly_their_elements():
    """Rows 0-3 are copied H2D (pending); the host writes other elements through views
    of views: silent. The one view that reaches row 3 is reported, with its exact bytes."""
    def program():
        cpu = torch.ones(4, 4, dtype=I32, pin_memory=True)
        view = cpu.numpy()
        gpu = torch.zeros(2, 4, dtype=I32, device="cuda")
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            torch.cuda._sleep(1_000_000)
            gpu.copy_(cpu[:2], non_blocking=True)  # rows 0 and 1
        lower = view[2:]
        lower[:, ::2][0] = 7  # row 2, even columns
        lower.T[1] = 8  # column 1 of rows 2 and 3
        assert not vd_races()
        view[1:][::2, 3] = 9  # rows 1 and 3, column 3: row 1 is being copied
        return gpu

    def vd_races():
        from pytest_streamorder.backend import active_backend
        return list(active_backend().races)

    vd, _ = _run(program)
    assert len(vd.races) == 1
    later = vd.races[0].later
    # the write touched element (1, 3) and (3, 3): bytes [28, 32) and [60, 64)
    assert (later.start, later.stop) == (28, 64)
    assert later.region is not None and later.region.runs() == [(28, 32), (60, 64)]


def test_disjoint_elements_are_silent_and_one_shared_element_is_not():
    def program(key):
        cpu = torch.ones(8, dtype=I32, pin_memory=True)
        view = cpu.numpy()
        gpu = torch.zeros(4, dtype=I32, device="cuda")
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            torch.cuda._sleep(1_000_000)
            gpu.copy_(cpu[::2], non_blocking=True)  # even elements
        view[key] = 3
        return gpu

    vd, _ = _run(lambda: program(slice(1, None, 2)))  # odd elements: disjoint
    assert not vd.races
    vd, _ = _run(lambda: program([1, 3, 4]))  # element 4 is read by the copy
    assert len(vd.races) == 1
    later = vd.races[0].later  # elements 1, 3 and 4: exactly their bytes
    assert later.region is not None and later.region.runs() == [(4, 8), (12, 20)]


def test_plain_tensors_give_plain_arrays():
    with so.virtual_device(seed=0):
        a = torch.zeros(4).numpy()
        b = torch.zeros(4, pin_memory=True).numpy()
    assert type(a) is np.ndarray
    assert type(b) is PinnedArray
    assert type(b + 1) is np.ndarray  # new memory is plain
    assert type(b.copy()) is np.ndarray


def test_the_view_reports_nothing_once_the_device_is_gone():
    with so.virtual_device(seed=0):
        view = torch.zeros(4, dtype=I32, pin_memory=True).numpy()
    view[:] = 3  # no backend: plain NumPy
    assert view.tolist() == [3, 3, 3, 3]


def test_raised_by_default_at_the_users_line():
    with so.virtual_device(seed=0, policy="lazy"):
        cpu, view, gpu, side = _h2d_pending()
        with pytest.raises(so.StreamRaceError) as info:
            view[:2] = 0
        torch.cuda.synchronize()
    assert "numpy write a[key] = ..." in str(info.value)
    assert f"test_numpy_views.py:{_line('view[:2] = 0')}" in str(info.value)


@pytest.mark.parametrize("args, element", [((), None), ((5,), 5), ((-1,), 7), ((1, 1), 5),
                                           (((0, 3),), 3)])
def test_item_reads_exactly_the_element_it_names(args, element):
    """item() reads one element: a flat index, a negative one, or a tuple, exactly."""
    def program():
        cpu, view, gpu, side = _d2h_pending()
        target = view[:1] if not args else (view.reshape(2, 4) if len(args) == 2 or
                                            isinstance(args[0], tuple) else view)
        target.item(*args)
        return cpu

    vd, _ = _run(program)
    assert len(vd.races) == 1
    want = 0 if element is None else element
    assert (vd.races[0].later.start, vd.races[0].later.stop) == (4 * want, 4 * want + 4)


def test_selecting_functions_read_only_the_elements_they_select():
    """np.take / compress of elements the pending D2H does not write: silent; out= of a
    plain array is written with the values, not with offsets."""
    def program():
        gpu = torch.arange(8, dtype=I32, device="cuda")
        cpu = torch.full((8,), 5, dtype=I32, pin_memory=True)
        view = cpu.numpy()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            torch.cuda._sleep(1_000_000)
            cpu[4:].copy_(gpu[4:], non_blocking=True)
        out = np.zeros(2, dtype=np.int32)
        np.take(view, [0, 3], out=out)
        kept = view.compress([True, False, True])
        return out.tolist(), kept.tolist()

    vd, (taken, kept) = _run(program)
    assert not vd.races, [str(r) for r in vd.races]
    assert taken == [5, 5] and kept == [5, 5]


CPU_GPU_BUFFER = """
import torch

class CpuGpuBuffer:  # vLLM's: the host fills .np, copy_to_gpu() queues the H2D copy
    def __init__(self, n):
        self.cpu = torch.zeros(n, dtype=torch.int32, pin_memory=True)
        self.np = self.cpu.numpy()
        self.gpu = torch.zeros(n, dtype=torch.int32, device="cuda")
        torch.cuda.synchronize()

    def copy_to_gpu(self, n):
        return self.gpu[:n].copy_(self.cpu[:n], non_blocking=True)

def _steps(buf, wait):
    done = torch.cuda.Event()
    totals = []
    for step in range(3):
        if wait:
            done.synchronize()
        buf.np[:4] = step + 1
        totals.append(buf.copy_to_gpu(4).sum())
        done.record()
    torch.cuda.synchronize()
    return [t.item() for t in totals]

def test_refill_waits_for_the_copy():
    assert _steps(CpuGpuBuffer(8), wait=True) == [4, 8, 12]

def test_refill_before_the_copy_ran():
    _steps(CpuGpuBuffer(8), wait=False)
"""


def test_plugin_reports_a_numpy_refill_before_the_copy_ran(pytester):
    pytester.makepyfile(test_buffer=CPU_GPU_BUFFER)
    result = pytester.runpytest("--streamorder", "-p", "no:randomly", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([
        "*test_refill_before_the_copy_ran*",
        "*StreamRaceError: stream-order race on 'cpu' (int32[[]8]): write by the host is "
        "unordered with an earlier read by stream 'default'*",
        "*earlier: read by stream 'default' in H2D copy_, bytes [[]0, 16)*",
        "*at test_buffer.py:11 in copy_to_gpu*",
        "*later: write by the host in numpy write a[[]key] = ..., bytes [[]0, 16)*",
        "*at test_buffer.py:19 in _steps*",
        "*missing edge: the host overwrote memory that H2D copy_ on 'default'*",
    ])
