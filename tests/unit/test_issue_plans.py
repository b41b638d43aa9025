"""Issue plans (sim/issue.py): what an op does, worked out once per (op, argument kinds,
dtypes, layouts, Python scalars) and applied per call, must match working it out per call:
no plan may be shared by calls that differ in output dtype or in which argument is where.
Also: an indexed op's resolved access forgets the entries it covers (model/hb.py _prune),
so a buffer written only through indexing keeps a bounded shadow."""

import pytest
import torch

import pytest_streamorder as so
from pytest_streamorder.model import WRITE, HappensBefore, Pending
from pytest_streamorder.sim import issue


def test_python_scalars_of_another_type_get_their_own_plan():
    with so.virtual_device(policy="eager"):
        x = torch.arange(4, device="cuda")
        as_int = x * 2
        as_float = x * 2.0  # 2 == 2.0, but the output is float
        flags = torch.tensor([True, False], device="cuda")
        bool_plus_int = flags + 1
        bool_plus_bool = flags + True
        assert as_int.dtype == torch.int64
        assert as_float.dtype == torch.float32
        assert as_float.cpu().tolist() == [0.0, 2.0, 4.0, 6.0]
        assert bool_plus_int.dtype == torch.int64 and bool_plus_int.cpu().tolist() == [2, 1]
        assert bool_plus_bool.dtype == torch.bool and bool_plus_bool.cpu().tolist() == [True, True]


def test_a_plan_finds_operands_by_position_not_by_identity():
    """add(x, x) and add(x, y) share a key: the second must read y, and the detector must
    see y's allocation (a write to y on another stream races with it)."""
    with so.virtual_device(policy="eager", raise_on_race=False) as vd:
        x = torch.arange(4, device="cuda")
        y = torch.full((4,), 10, device="cuda", dtype=torch.int64)
        torch.cuda.synchronize()
        doubled = x + x
        summed = x + y
        assert doubled.cpu().tolist() == [0, 2, 4, 6]
        assert summed.cpu().tolist() == [10, 11, 12, 13]
        assert vd.races == []
        side = torch.cuda.Stream()
        with torch.cuda.stream(side):
            y.fill_(1)
        x + y  # reads y on the default stream, not ordered after the fill
        assert len(vd.races) == 1
        assert vd.races[0].alloc is y._vs.alloc


def test_out_variant_results_equal_eager_cpu():
    base = torch.linspace(-2, 2, 24).reshape(4, 6)
    with so.virtual_device(policy="delay"):
        d = base.cuda()
        got = {
            "add_strided": (d.t() + d.t()).cpu(),
            "mul_scalar": (d[:, ::2] * 3).cpu(),
            "exp": torch.exp(d).cpu(),
            "where": torch.where(d > 0, d, -d).cpu(),
            "clone": d.t().clone().cpu(),
            "index": d[torch.tensor([3, 0], device="cuda")].cpu(),
        }
    want = {
        "add_strided": base.t() + base.t(), "mul_scalar": base[:, ::2] * 3,
        "exp": torch.exp(base), "where": torch.where(base > 0, base, -base),
        "clone": base.t().clone(), "index": base[torch.tensor([3, 0])],
    }
    for name, value in want.items():
        assert torch.equal(got[name], value), name


def test_out_variants_are_only_used_where_values_cannot_change():
    aten = torch.ops.aten
    info = issue.op_info
    out = ((None, (4,), (1,), 0, torch.float32),)
    assert issue._out_variant(aten.add.Tensor, info(aten.add.Tensor), out) is aten.add.out
    assert issue._out_variant(aten.add.Scalar, info(aten.add.Scalar), out) is aten.add.Scalar_out
    # a reduction's order may depend on the output's layout: computed, then copied
    assert issue._out_variant(aten.sum.dim_IntList, info(aten.sum.dim_IntList), out) is None
    # a non-contiguous output: computed, then copied
    strided = ((None, (2, 2), (1, 2), 0, torch.float32),)
    assert issue._out_variant(aten.add.Tensor, info(aten.add.Tensor), strided) is None


def test_resolved_indexed_writes_keep_the_shadow_bounded():
    hb = HappensBefore()
    s = hb.new_stream("s")
    buf = hb.allocate(64, "buf")
    for i in range(200):
        p = Pending(0, 64)
        hb.launch(s, "index_put_", [(buf, p, WRITE)])
        hb.resolve(p, (8 * (i % 4), 8 * (i % 4) + 8, None))
    # one entry per element ever written (4 of them), not one per write
    assert len(buf.shadow) <= 4
    other = hb.new_stream("other")
    races = hb.launch(other, "read", [(buf, 0, 64, False)])
    assert len(races) == 1  # pruning kept the latest writes: the unordered read races


def test_an_unresolved_pending_write_is_never_pruned_away():
    hb = HappensBefore(on_race=None)
    s, other = hb.new_stream("s"), hb.new_stream("other")
    buf = hb.allocate(64, "buf")
    first = Pending(0, 64)
    hb.launch(other, "index_put_", [(buf, first, WRITE)])  # unordered with s
    second = Pending(0, 64)
    hb.launch(s, "index_put_", [(buf, second, WRITE)])
    hb.resolve(second, (0, 64, None))  # covers everything, but `first` is still pending
    hb.resolve(first, (0, 8, None))
    hb.flush()
    assert len(hb.races) == 1


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__, "-q"]))
