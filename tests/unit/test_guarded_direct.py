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
basic = st.one_of(ints, slices, st.none(), st.just(Ellipsis))
indices = st.one_of(basic, st.lists(basic, max_size=5).map(tuple),
                    st.sampled_from([True, False, [0], (0, [0]), 2**70, (0, 1.0)]))


def _getitem_both(shape, index, monkeypatch):
    results = []
    for twin in (False, True):
        with monkeypatch.context() as m:
            if twin:
                _twin_path(m)
            try:
                with so.virtual_device() as vd:
                    x = torch.arange(max(1, torch.Size(shape).numel()), device="cuda")
                    x = x[: torch.Size(shape).numel()].reshape(shape)
                    got = _outcome(lambda: x[index])
                    if got[0] == "ok":  # a view of x's storage, or the copy C++ made
                        y = x[index]
                        got += (y.untyped_storage().data_ptr()
                                == x.untyped_storage().data_ptr(), y is x)
                assert vd.races == []
            except Exception as exc:  # noqa: BLE001 - a queued op failing at exit
                got = ("exit error", type(exc).__name__, str(exc))
        results.append(got)
    return results


@settings(max_examples=400, deadline=None)
@given(shape=st.sampled_from(SHAPES), index=indices)
def test_getitem_direct_matches_twin_and_cpu(shape, index):
    mp = pytest.MonkeyPatch()
    try:
        direct, twin = _getitem_both(shape, index, mp)
    finally:
        mp.undo()
    assert direct == twin
    cpu = torch.arange(max(1, torch.Size(shape).numel()))[: torch.Size(shape).numel()].reshape(shape)
    eager = _outcome(lambda: cpu[index])
    if eager[0] == "error":
        assert direct[:2] == eager[:2]
    else:
        assert direct[:2] == eager[:2] and direct[4:6] == eager[4:6]


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
            got = ("ok", out is dst, dst.cpu().tolist())
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


def _racy(index_write: bool, depth: int):
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
            if index_write:
                with torch.cuda.stream(side):
                    row = x[1]  # a basic index: a view
                    row.copy_(host, non_blocking=True)  # unordered with torch.zeros
            else:
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    y = x[1:3, ::2] * 2  # reads x on the side stream
                x[1, 2:].copy_(host[:6])  # the default stream writes it, unordered
            torch.cuda.synchronize()
    except so.StreamRaceError as exc:
        return str(exc)
    return None


@pytest.mark.parametrize("depth", [0, 3, 5, 6, 7, 9])
@pytest.mark.parametrize("index_write", [True, False])
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
