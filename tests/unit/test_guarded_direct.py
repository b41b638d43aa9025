"""Guarded calls without a twin (sim/interception.py DIRECT): basic indexing and copy_
into a device tensor go straight to the aten ops C++ would dispatch. Each form is
compared with the twin path (DIRECT emptied) and with eager CPU: values, layout, storage
sharing, error type and text, and the race reports with their sites."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pytest_streamorder as so
from pytest_streamorder.sim import interception

SHAPES = [(), (5,), (2, 3), (2, 3, 4), (1, 4, 1)]


def _twin_path(monkeypatch):
    monkeypatch.setattr(interception, "DIRECT", {})


def _outcome(fn):
    """(kind, payload): the result's layout and values, or the exception's type and text."""
    try:
        out = fn()
    except Exception as exc:  # noqa: BLE001 - compared, not swallowed
        return ("error", type(exc).__name__, str(exc))
    return ("ok", tuple(out.shape), out.stride(), out.storage_offset(), out.dtype,
            out.cpu().tolist())


ints = st.integers(-7, 7)
bounds = st.one_of(st.none(), st.integers(-8, 8), st.sampled_from([2**40, -(2**40), 2**70]))
slices = st.builds(slice, bounds, bounds, st.one_of(st.none(), st.integers(-2, 4)))
# Tensor indices, made inside the device block (_make): device and host, long and bool,
# a 0-dim one and a float one (C++ and aten reject or sync on those).
TENSORS = ["Ldev", "Lcpu", "Bdev", "Bcpu", "L0dev", "Fcpu", "Ldev2"]
basic = st.one_of(ints, slices, st.none(), st.just(Ellipsis), st.sampled_from(TENSORS))
indices = st.one_of(basic, st.lists(basic, max_size=5).map(tuple),
                    st.sampled_from([True, False, [0], (0, [0]), 2**70, (0, 1.0)]))
VALUES = ["cpu0", "dev0", "devrow", "dev1row", "cpurow", "cpu0f", "devbad", 3, -1, 2.5,
          True, 300, 1e40, float("nan"), 2**70, 1 + 2j]


def _make(token, shape, device):
    """An index or value token as a tensor on `device` ("cuda" for the direct and twin
    runs, "cpu" for eager), where the token does not name a side itself."""
    if isinstance(token, tuple):
        return tuple(_make(t, shape, device) for t in token)
    if not isinstance(token, str):
        return token
    dev = "cpu" if token.endswith("cpu") or token.startswith("cpu") else device
    last = shape[-1] if shape else 1
    return {
        "Ldev": lambda: torch.tensor([0, -1], device=dev),
        "Ldev2": lambda: torch.tensor([[0], [-1]], device=dev),
        "Lcpu": lambda: torch.tensor([0, -1]),
        "Bdev": lambda: torch.tensor([True, False], device=dev),
        "Bcpu": lambda: torch.tensor([True, False]),
        "L0dev": lambda: torch.tensor(0, device=dev),
        "Fcpu": lambda: torch.tensor([0.0]),
        "cpu0": lambda: torch.tensor(5),
        "cpu0f": lambda: torch.tensor(2.5),
        "dev0": lambda: torch.tensor(6, device=dev),
        "devrow": lambda: torch.arange(last, device=dev) + 10,
        "dev1row": lambda: (torch.arange(last, device=dev) + 20).reshape(1, 1, last),
        "cpurow": lambda: torch.arange(last) + 30,
        "devbad": lambda: torch.arange(last + 1, device=dev),
    }[token]()


def _base(shape, device, dtype=torch.int64):
    n = torch.Size(shape).numel()
    return torch.arange(n, device=device).reshape(shape).to(dtype)


def _run_both(program, monkeypatch):
    """program() on the device through the direct path and the twin path: outcomes,
    including an error raised by queued work at the block's exit."""
    results = []
    for twin in (False, True):
        with monkeypatch.context() as m:
            if twin:
                _twin_path(m)
            try:
                with so.virtual_device() as vd:
                    got = program()
                assert vd.races == []
            except Exception as exc:  # noqa: BLE001 - a queued op failing at exit
                got = ("exit error", type(exc).__name__, str(exc))
        results.append(got)
    return results


def _check_eager(direct, eager):
    """Where the device succeeds, eager CPU gives the same values. (Errors are compared
    between the two device paths only: a host tensor into a device index_put_ is
    CUDA's cross-device error, fine on CPU.)"""
    if direct[0] == "ok":
        assert direct[:2] == eager[:2] and direct[4:6] == eager[4:6]


@settings(max_examples=500, deadline=None)
@given(shape=st.sampled_from(SHAPES), index=indices)
def test_getitem_direct_matches_twin_and_cpu(shape, index):
    def program():
        x = _base(shape, "cuda")
        idx = _make(index, shape, "cuda")
        got = _outcome(lambda: x[idx])
        if got[0] == "ok":  # a view of x's storage, or a fresh block
            y = x[idx]
            got += (y.untyped_storage().data_ptr() == x.untyped_storage().data_ptr(), y is x)
        return got

    with pytest.MonkeyPatch.context() as mp:
        direct, twin = _run_both(program, mp)
    assert direct == twin
    _check_eager(direct, _outcome(lambda: _base(shape, "cpu")[_make(index, shape, "cpu")]))


def _set_outcome(x, index, value):
    try:
        x[index] = value
    except Exception as exc:  # noqa: BLE001 - compared, not swallowed
        return ("error", type(exc).__name__, str(exc))
    return ("ok", tuple(x.shape), x.stride(), x.storage_offset(), x.dtype,
            repr(x.cpu().tolist()), x._version)  # repr: nan == nan


DTYPES = [torch.int64, torch.float32, torch.uint8, torch.bool, torch.float16]


@settings(max_examples=600, deadline=None)
@given(shape=st.sampled_from(SHAPES), index=indices, value=st.sampled_from(VALUES),
       dtype=st.sampled_from(DTYPES))
def test_setitem_direct_matches_twin_and_cpu(shape, index, value, dtype):
    def program():
        x = _base(shape, "cuda", dtype)
        return _set_outcome(x, _make(index, shape, "cuda"), _make(value, shape, "cuda"))

    with pytest.MonkeyPatch.context() as mp:
        direct, twin = _run_both(program, mp)
    assert direct == twin
    eager = _set_outcome(_base(shape, "cpu", dtype), _make(index, shape, "cpu"),
                         _make(value, shape, "cpu"))
    _check_eager(direct, eager)


def _dispatch_log(monkeypatch, program):
    """The aten ops the device's dispatch receives, twins shown as the device tensors
    they stand for: the direct path must issue the same ops with the same arguments."""
    from pytest_streamorder.sim import tensor

    log = []
    real = interception.dispatch

    def norm(v):
        if isinstance(v, (list, tuple)):
            return type(v)(norm(x) for x in v)
        if isinstance(v, interception.Twin):
            v = v._dt
        if isinstance(v, torch.Tensor):
            return (type(v).__name__, tuple(v.shape), v.stride(), v.storage_offset())
        return v

    def spy(func, types, args, kwargs, site=None):
        log.append((str(func), norm(args), norm(tuple(sorted((kwargs or {}).items())))))
        return real(func, types, args, kwargs, site)

    monkeypatch.setattr(interception, "dispatch", spy)
    tensor.set_dispatch(spy)
    try:
        with so.virtual_device():
            program()
    finally:
        tensor.set_dispatch(real)
    return log


CASES = [(0, None), (-1, None), (slice(1, None), None), ((0, slice(1, 3)), None),
         ((None, 0), None), ((slice(None), slice(None)), None), (Ellipsis, None),
         ((0, Ellipsis, 1), None), ((slice(0, 2), 1), None), ((), None), (None, None),
         ("Ldev", None), (("Ldev", slice(None), "Lcpu"), None), ((slice(None), "Ldev"), None),
         ((Ellipsis, "Ldev"), None),
         (0, "devrow"), (0, "cpu0"), ((1, 1, 1), "dev0"), (slice(None), "cpurow"),
         (Ellipsis, "dev1row"), (None, "devrow"), ("Ldev", "dev1row"), ("Ldev", "devrow"),
         (("Ldev", 0), "dev0"), ((slice(None), "Ldev"), "cpu0"), (0, 7), ((0, 1, 2), 2.5),
         ("Ldev", True), (("Bdev",), -1)]


@pytest.mark.parametrize("index,value", CASES)
def test_direct_path_dispatches_what_cpp_does(index, value, monkeypatch):
    shape = (2, 3, 4)

    def program():
        x = _base(shape, "cuda")
        idx, val = _make(index, shape, "cuda"), _make(value, shape, "cuda")
        if value is None:
            x[idx]
        else:
            x[idx] = val
        torch.cuda.synchronize()

    made = []
    real_twin = interception._twin
    with monkeypatch.context() as m:
        m.setattr(interception, "_twin", lambda v: made.append(v) or real_twin(v))
        direct = _dispatch_log(m, program)
    assert made == []  # no twin on the direct path
    with monkeypatch.context() as m:
        _twin_path(m)
        twin = _dispatch_log(m, program)
    assert direct == twin


@pytest.mark.parametrize("index", [0, -1, slice(1, None), (0, slice(1, 3)), (None, 0),
                                   (slice(None), slice(None)), Ellipsis, (0, Ellipsis, 1),
                                   (slice(0, 2), 1), (), None])
def test_getitem_direct_issues_no_twin(index, monkeypatch):
    """The direct path really runs: no twin is made for a basic index."""
    made = []
    real = interception._twin
    monkeypatch.setattr(interception, "_twin", lambda v: made.append(v) or real(v))
    with so.virtual_device():
        x = torch.arange(24, device="cuda").reshape(2, 3, 4)
        y = x[index]
        assert made == []
        assert y.cpu().tolist() == torch.arange(24).reshape(2, 3, 4)[index].tolist()
        x[[0, 1]]  # an advanced index keeps the twin path
        assert made


SOURCES = ["host", "pinned", "device", "host_long", "broadcast", "bad_shape"]


def _copy_program(source: str, non_blocking, as_kw: bool):
    with so.virtual_device() as vd:
        dst = torch.zeros(4, 3, device="cuda")
        if source == "host":
            src = torch.arange(12.0).reshape(4, 3)
        elif source == "pinned":
            src = torch.arange(12.0).reshape(4, 3).pin_memory()
        elif source == "device":
            src = torch.arange(12.0, device="cuda").reshape(4, 3)
        elif source == "host_long":
            src = torch.arange(12).reshape(4, 3)
        elif source == "broadcast":
            src = torch.arange(3.0)
        else:
            src = torch.arange(5.0)
        try:
            if non_blocking is None:
                out = dst.copy_(src)
            elif as_kw:
                out = dst.copy_(src, non_blocking=non_blocking)
            else:
                out = dst.copy_(src, non_blocking)
            got = ("ok", out is dst, dst.cpu().tolist(), dst._version, src._version)
        except Exception as exc:  # noqa: BLE001 - compared
            got = ("error", type(exc).__name__, str(exc))
        torch.cuda.synchronize()
    return got, vd.ops_issued, vd.races


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("non_blocking,as_kw", [(None, False), (True, False), (False, True),
                                                (True, True), (1, True)])
def test_copy_direct_matches_twin(source, non_blocking, as_kw, monkeypatch):
    direct = _copy_program(source, non_blocking, as_kw)
    with monkeypatch.context() as m:
        _twin_path(m)
        twin = _copy_program(source, non_blocking, as_kw)
    assert direct == twin
    assert direct[2] == []


DESTS = ["host", "pinned", "host_int", "host_grad", "host_inference", "host_bad_shape",
         "host_view"]


def _d2h_program(dest: str, non_blocking):
    with so.virtual_device() as vd:
        src = torch.arange(12.0, device="cuda").reshape(4, 3) + 1
        if dest == "host_grad":
            dst = torch.zeros(4, 3, requires_grad=True)
        elif dest == "host_inference":
            with torch.inference_mode():
                dst = torch.zeros(4, 3)
        elif dest == "pinned":
            dst = torch.zeros(4, 3).pin_memory()
        elif dest == "host_int":
            dst = torch.zeros(4, 3, dtype=torch.int32)
        elif dest == "host_bad_shape":
            dst = torch.zeros(5)
        elif dest == "host_view":
            dst = torch.zeros(4, 6)[:, ::2]
        else:
            dst = torch.zeros(4, 3)
        def version():  # an inference tensor has none
            return None if dst.is_inference() else dst._version

        v0 = version()
        try:
            out = dst.copy_(src) if non_blocking is None else dst.copy_(src, non_blocking)
            torch.cuda.synchronize()
            got = ("ok", out is dst, v0 is not None and version() - v0, dst.tolist())
        except Exception as exc:  # noqa: BLE001 - compared
            got = ("error", type(exc).__name__, str(exc), v0 is not None and version() - v0)
    return got, vd.ops_issued, vd.races


@pytest.mark.parametrize("dest", DESTS)
@pytest.mark.parametrize("non_blocking", [None, True, False])
def test_copy_into_host_matches_twin(dest, non_blocking, monkeypatch):
    """D2H copy_: value, identity, the host tensor's version counter, autograd's errors."""
    direct = _d2h_program(dest, non_blocking)
    with monkeypatch.context() as m:
        _twin_path(m)
        twin = _d2h_program(dest, non_blocking)
    assert direct == twin
    if dest in ("host", "pinned", "host_view"):
        # bumped by the call, and again by a non-blocking copy when it runs (both paths)
        bumps = 2 if dest == "pinned" and non_blocking else 1
        assert direct[0][:3] == ("ok", True, bumps)


def _racy(index_write: str, depth: int):
    """A side-stream copy into a view taken by basic indexing, unordered with the
    default stream's work on x, reached `depth` helper calls down (the user frames a
    10-frame capture holds vary with it): the reports, sites included, as text."""
    if depth:
        return _racy(index_write, depth - 1)
    try:
        with so.virtual_device():
            x = torch.zeros(4, 8, device="cuda")
            side = torch.cuda.Stream()
            host = torch.ones(8).pin_memory()
            if index_write == "copy":
                with torch.cuda.stream(side):
                    row = x[1]  # a basic index: a view
                    row.copy_(host, non_blocking=True)  # unordered with torch.zeros
            else:
                idx = torch.tensor([1, 2], device="cuda")
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    y = x[1:3, ::2] * 2 if index_write == "read" else x[idx]  # reads x
                if index_write == "read":
                    x[1, 2:].copy_(host[:6])  # the default stream writes it, unordered
                elif index_write == "setitem":
                    x[1, None] = y[0, :1]  # a basic-index write
                else:
                    x[idx] = y  # an index_put_
            torch.cuda.synchronize()
    except so.StreamRaceError as exc:
        return str(exc)
    return None


@pytest.mark.parametrize("depth", [0, 3, 5, 6, 7, 9])
@pytest.mark.parametrize("index_write", ["copy", "read", "setitem", "advanced"])
def test_race_reports_identical(index_write, depth, monkeypatch):
    reports = []
    for twin in (False, True):  # one call line: the reports name it
        with monkeypatch.context() as m:
            if twin:
                _twin_path(m)
            reports.append(_racy(index_write, depth))
    direct, twin = reports
    assert direct is not None and direct == twin
    assert "test_guarded_direct.py" in direct


SCALAR_DTYPES = [torch.float32, torch.float16, torch.float64, torch.int64, torch.int32,
                 torch.uint8, torch.bool, torch.complex64]
SCALAR_VALUES = [0, 1, -3, 2.75, -0.5, float("nan"), float("inf"), 300]
CONVERSIONS = {"item": lambda t: t.item(), "bool": bool, "float": float, "int": int,
               "index": lambda t: [10, 11, 12, 13][t], "if": lambda t: 1 if t else 0}


@pytest.mark.parametrize("numel", [1, 0, 2])
@pytest.mark.parametrize("dtype", SCALAR_DTYPES)
@pytest.mark.parametrize("conversion", sorted(CONVERSIONS))
def test_scalar_conversions_match_twin(conversion, dtype, numel, monkeypatch):
    """item(), bool(), float(), int(), an index: value and type, or the error text."""
    convert = CONVERSIONS[conversion]

    def program():
        out = []
        for v in SCALAR_VALUES:
            try:
                host = torch.full((numel,), v).to(dtype)
            except (RuntimeError, OverflowError):
                continue
            t = host.cuda()
            got = _outcome_value(lambda: convert(t if numel != 1 else t[0] if v != 0 else t))
            out.append(got)
            if numel == 1:
                assert got == _outcome_value(lambda: convert(host if v != 0 else host))
        return out

    with pytest.MonkeyPatch.context() as mp:
        direct, twin = _run_both(program, mp)
    assert direct == twin


def _outcome_value(fn):
    try:
        v = fn()
    except Exception as exc:  # noqa: BLE001 - compared
        return ("error", type(exc).__name__, str(exc))
    return ("ok", type(v).__name__, repr(v))


def test_scalar_conversions_make_no_twin(monkeypatch):
    made = []
    real = interception._twin
    monkeypatch.setattr(interception, "_twin", lambda v: made.append(v) or real(v))
    with so.virtual_device():
        x = torch.tensor([2.5, 0.0], device="cuda")
        n = torch.tensor([3], device="cuda")
        got = (x[0].item(), bool(x[1]), float(n), int(x[0]), [0, 1, 2, 3][n[0]])
        assert made == []
    assert got == (2.5, False, 3.0, 2, 3)
    assert [type(v) for v in got] == [float, bool, float, int, int]


@pytest.mark.parametrize("call", ["item", "bool", "getitem_mask", "setitem", "copy"])
def test_host_versions_of_copies_run_inside_a_call_match_twin(call, monkeypatch):
    """A queued D2H copy into pinned memory runs inside a syncing call: whether it bumps
    the host tensor's version depends on the guard C++'s autograd kernels set around
    the op (any op), the same on both paths."""
    def program():
        x = torch.tensor([1.0, 0.0, 2.0], device="cuda")  # (a blocking upload: before)
        src = torch.arange(4.0, device="cuda") + 1
        host = torch.zeros(4).pin_memory()
        host.copy_(src, non_blocking=True)  # queued
        v0 = host._version
        if call == "item":
            x[0].item()
        elif call == "bool":
            bool(x[1])
        elif call == "getitem_mask":
            x[x > 0.5]  # a nonzero sync
        elif call == "setitem":
            x[x > 0.5] = 3.0
            x[0].item()
        else:
            torch.zeros(3).copy_(x)  # a blocking D2H
        return host._version - v0, host.tolist()

    with pytest.MonkeyPatch.context() as mp:
        direct, twin = _run_both(program, mp)
    assert direct == twin
    assert direct[1] == [1.0, 2.0, 3.0, 4.0]
