"""The one Backend interface, active_backend(), and the named errors (errors.py)."""

from __future__ import annotations

import pytest

import pytest_streamorder as so
from pytest_streamorder import backend, errors
from pytest_streamorder.model import READ, WRITE, HappensBefore, Race

pytestmark = pytest.mark.no_streamorder  # these tests open (or must not have) their own device


def _race() -> Race:
    hb = HappensBefore()
    a, b = hb.new_stream("forward"), hb.new_stream("d2h")
    buf = hb.allocate(64, "buf")
    hb.launch(a, "fill_", [(buf, 0, 64, WRITE)])
    (race,) = hb.launch(b, "copy_", [(buf, 0, 64, READ)])
    return race


# ------------------------------------------------------------------------ errors


def test_stream_race_error_carries_the_race_and_its_report():
    race = _race()
    err = errors.StreamRaceError(race)
    assert err.race is race
    assert str(err) == str(race)
    assert str(err).startswith("stream-order race on buf: read by stream 'd2h'")
    assert isinstance(err, AssertionError) and isinstance(err, errors.StreamOrderError)


def test_each_error_is_also_the_builtin_users_expect():
    assert issubclass(errors.DeviceOpLimitExceeded, RuntimeError)
    assert issubclass(errors.ScheduleDiverged, RuntimeError)
    assert issubclass(errors.NotModelledError, NotImplementedError)
    assert issubclass(errors.StaleValueError, AssertionError)
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.StreamOrderError)


def test_not_modelled_error_names_the_api():
    err = errors.NotModelledError("torch.cuda.Event(interprocess=True)")
    assert str(err) == "torch.cuda.Event(interprocess=True) is not modelled by the virtual device"
    assert err.api == "torch.cuda.Event(interprocess=True)"
    hinted = errors.NotModelledError("torch.cuda.graph", "run the test on a GPU")
    assert str(hinted) == "torch.cuda.graph is not modelled by the virtual device: run the test on a GPU"
    with pytest.raises(NotImplementedError, match="torch.cuda.graph"):
        raise hinted


def test_one_class_per_error_wherever_it_is_imported_from():
    """The backends and the strategies raise the classes of errors.py, so one except
    clause catches them whichever backend ran."""
    from pytest_streamorder import strategies
    from pytest_streamorder.sim import device

    assert device.StreamRaceError is errors.StreamRaceError is so.StreamRaceError
    assert device.DeviceOpLimitExceeded is errors.DeviceOpLimitExceeded
    assert strategies.StaleValueError is errors.StaleValueError is so.StaleValueError


def test_the_op_limit_raises_the_named_error():
    import torch

    with pytest.raises(errors.DeviceOpLimitExceeded, match="more than 3 device ops"):
        with so.virtual_device(max_ops=3):
            x = torch.zeros(4, device="cuda")
            for _ in range(4):
                x.add_(1)


# ------------------------------------------------------------------------ backends


def test_both_backends_offer_the_interface():
    from pytest_streamorder.gpu.backend import CudaBackend

    vd = so.virtual_device()
    assert isinstance(vd, backend.Backend) and vd.is_virtual
    assert isinstance(vd.schedule, backend.RunSchedule)
    be = CudaBackend()  # built without a GPU; entering it needs one
    assert isinstance(be, backend.Backend) and not be.is_virtual
    assert isinstance(be.schedule, backend.RunSchedule)


def test_active_backend_follows_the_virtual_device():
    assert backend.active_backend() is None
    with so.virtual_device() as vd:
        assert backend.active_backend() is vd
        assert so.active_backend() is vd
    assert backend.active_backend() is None


def test_a_failed_run_leaves_no_backend_active():
    with pytest.raises(ZeroDivisionError):
        with so.virtual_device():
            1 / 0
    assert backend.active_backend() is None


def test_a_gpu_backend_cannot_start_inside_the_virtual_device():
    from pytest_streamorder.gpu import cuda_backend

    with so.virtual_device() as vd:
        with pytest.raises(RuntimeError, match=r"cuda_backend\(\) cannot run inside virtual_device\(\)"):
            cuda_backend().__enter__()
        assert backend.active_backend() is vd
    assert backend.active_backend() is None


def test_activate_refuses_a_second_backend_and_deactivate_is_idempotent():
    class Fake:
        is_virtual = False

    first, second = Fake(), Fake()
    backend.activate(first)
    try:
        with pytest.raises(RuntimeError, match="cuda_backend.. cannot start while cuda_backend.. "
                                               "is active: nesting is not supported"):
            backend.activate(second)
        backend.deactivate(second)  # not the active one: nothing changes
        assert backend.active_backend() is first
    finally:
        backend.deactivate(first)
    assert backend.active_backend() is None
    backend.deactivate(first)
    assert backend.active_backend() is None


def test_the_streamorder_fixture_sees_the_active_backend():
    from pytest_streamorder.plugin import StreamOrderHandle

    handle = StreamOrderHandle()
    assert handle.device is None and not handle.active and handle.races == []
    with so.virtual_device() as vd:
        assert handle.device is vd and handle.active
        assert handle.schedule == vd.schedule
