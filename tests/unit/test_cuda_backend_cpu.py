"""The CUDA backend's CPU-testable parts: BUGGIFY delay sites, read/write sets from op
schemas, byte ranges of views, and that importing it needs neither torch nor CUDA."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from pytest_streamorder.gpu.delay import DelayPlan
from pytest_streamorder.ops.ranges import byte_range, storage_base
from pytest_streamorder.ops.schema import op_info as plan_of

aten = torch.ops.aten
SITES = [("prog.py", line, "aten.add.Tensor") for line in range(200)]


def _run(plan: DelayPlan, visits=3):
    return [plan.decide(site) for site in SITES for _ in range(visits)]


def test_same_seed_same_delays():
    a, b = DelayPlan(5), DelayPlan(5)
    assert _run(a) == _run(b)
    assert a.fired == b.fired and a.fired


def test_other_seed_other_delays():
    assert _run(DelayPlan(1)) != _run(DelayPlan(2))


def test_site_choice_does_not_depend_on_visit_order():
    a, b = DelayPlan(3), DelayPlan(3)
    assert [a.site_on(s) for s in SITES] == [b.site_on(s) for s in reversed(SITES)][::-1]


@pytest.mark.parametrize("site_p, fire_p", [(0.5, 0.5), (0.2, 1.0), (1.0, 0.3)])
def test_probabilities(site_p, fire_p):
    plan = DelayPlan(0, site_p, fire_p, (0.1, 0.2))
    on = sum(plan.site_on(s) for s in SITES) / len(SITES)
    assert abs(on - site_p) < 0.12
    decisions = [plan.decide(s) for s in plan.sites_on() for _ in range(20)]
    fired = sum(d > 0 for d in decisions) / len(decisions)
    assert abs(fired - fire_p) < 0.08
    assert all(0.1 <= d <= 0.2 for d in decisions if d > 0)


def test_switched_off():
    assert not DelayPlan(0, 0.0).enabled
    assert not any(_run(DelayPlan(0, 0.0)))
    assert DelayPlan(0, 1.0, 1.0, 0.5).decide(SITES[0]) == 0.5
    with pytest.raises(ValueError):
        DelayPlan(0, 1.5)
    with pytest.raises(ValueError):
        DelayPlan(0, 0.5, 0.5, (2.0, 1.0))


def test_read_write_sets_from_schemas():
    p = plan_of(aten.copy_.default)
    assert [(n, w) for _, n, w, _ in p.args] == [("self", True), ("src", False)]
    assert p.returns_alias == ["self"] and not p.is_view and p.is_copy
    p = plan_of(aten.index_put_.default)
    assert [(n, w, lst) for _, n, w, lst in p.args] == [
        ("self", True, False), ("indices", False, True), ("values", False, False)]
    p = plan_of(aten.add.out)
    assert ("out", True) in [(n, w) for _, n, w, _ in p.args] and p.returns_alias == ["out"]
    assert plan_of(aten.add.Tensor).returns_alias == [None]  # fresh output: written


@pytest.mark.parametrize("op", [aten.slice.Tensor, aten.view.default, aten.detach.default,
                                aten.split.Tensor, aten.unbind.int, aten.lift_fresh.default,
                                aten.expand.default])
def test_views_do_no_device_work(op):
    assert plan_of(op).is_view


def test_syncing_metadata_and_empty_ops():
    assert plan_of(aten._local_scalar_dense.default).syncs
    assert plan_of(aten.nonzero.default).syncs
    assert plan_of(aten.equal.default).syncs
    assert not plan_of(aten.index.Tensor).syncs  # integer gathers do not sync
    assert plan_of(aten.is_pinned.default).metadata
    assert plan_of(aten.sym_size.int).metadata
    assert plan_of(aten.empty.memory_format).is_empty
    assert not plan_of(aten.record_stream.default).metadata


def test_tensor_args_binds_positional_keyword_and_lists():
    a, b, i = torch.zeros(4), torch.ones(4), torch.tensor([1])
    got = plan_of(aten.index_put_.default).tensor_args((a, [i, None], b), {})
    assert [(t is a, t is i, t is b, w) for t, w in got] == [
        (True, False, False, True), (False, True, False, False), (False, False, True, False)]
    got = plan_of(aten.add.out).tensor_args((a, b), {"out": i})
    assert [w for _, w in got] == [False, False, True]


def test_byte_ranges_of_views():
    x = torch.arange(16, dtype=torch.int64).reshape(4, 4)
    assert byte_range(x) == (0, 128)
    assert byte_range(x[1:3]) == (32, 96)
    assert byte_range(x[:, 1]) == (8, 8 + (3 * 4 + 1) * 8)
    assert byte_range(x[2:2]) == (0, 0)  # empty: touches nothing
    assert byte_range(x.t()) == (0, 128)
    assert byte_range(x.view(-1)[4:6]) == (32, 48)
    assert storage_base(x[2:]) == storage_base(x)


def test_import_needs_no_torch():
    code = ("import sys; import pytest_streamorder.gpu as g; "
            "assert 'torch' not in sys.modules; print(g.__all__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_entering_without_cuda_fails_loudly():
    from pytest_streamorder.gpu import cuda_backend

    be = cuda_backend(seed=0)
    with pytest.raises(RuntimeError, match="needs a CUDA device"):
        with be:
            pass
    assert be.schedule.token == "cuda:0" and be.schedule.policy == "buggify"
    assert be.races == [] and be.ops_issued == 0 and be.host_blocked_s == 0.0
