"""The shared op layer (pytest_streamorder/ops/): what an op does to memory, decided once
for the virtual device and the GPU backend. Checked against torch's real schemas and
CUDA's behaviour, then through the virtual device where a fact shows in values."""

from __future__ import annotations

import ast
import gc
import os

import pytest
import torch

import pytest_streamorder as so
from pytest_streamorder.errors import DeviceOpLimitExceeded
from pytest_streamorder.model import Site
from pytest_streamorder.ops.host import host_accesses, pinned_operands, writes_first_argument
from pytest_streamorder.ops.limit import OpCounter
from pytest_streamorder.ops.naming import TensorLabel, assigned_names, name_from_source
from pytest_streamorder.ops.pinned import PinnedRegistry
from pytest_streamorder.ops.ranges import byte_range, extent, storage_base
from pytest_streamorder.ops.schema import op_info

aten = torch.ops.aten
T = torch.Tensor
I64 = torch.int64


# --- read/write sets from schemas ---------------------------------------------------

def test_index_put_writes_self_and_reads_indices_and_values():
    a, v, i = torch.zeros(4), torch.ones(1), torch.tensor([1])
    info = op_info(aten.index_put_.default)
    got = info.operands((a, [i, None], v), {})
    assert [(n, t is a, t is i, t is v, w) for n, t, w in got] == [
        ("self", True, False, False, True), ("indices", False, True, False, False),
        ("values", False, False, True, False)]
    assert info.returns_alias == ["self"] and not info.is_view and info.writes


def test_copy_writes_dst_reads_src_and_is_a_copy():
    info = op_info(aten.copy_.default)
    a, b = torch.zeros(2), torch.ones(2)
    assert info.tensor_args((a, b, True), {}) == [(a, True), (b, False)]
    assert info.is_copy and info.returns_alias == ["self"]


@pytest.mark.parametrize("op", [aten.split.Tensor, aten.unbind.int,
                                aten.split_with_sizes.default])
def test_list_outputs_alias_their_input(op):
    # torch's AliasInfo of `Tensor(a)[]` has an empty set; the elements alias `self`
    info = op_info(op)
    assert info.returns_alias == ["self"] and info.returns_list and info.is_view
    assert info.output_alias(0) == info.output_alias(5) == "self"


def test_out_argument_is_written_and_returned():
    info = op_info(aten.add.out)
    a, b, o = torch.zeros(2), torch.ones(2), torch.empty(2)
    assert info.tensor_args((a, b), {"out": o}) == [(a, False), (b, False), (o, True)]
    assert info.returns_alias == ["out"] and info.written == {"out"}
    inplace = op_info(aten.add_.Tensor)
    assert inplace.written == {"self"} and inplace.returns_alias == ["self"]
    assert op_info(aten.add.Tensor).returns_alias == [None]  # fresh memory, written


def test_empty_ops_allocate_only():
    for op in (aten.empty_like.default, aten.empty.memory_format, aten.empty_strided.default):
        assert op_info(op).is_empty
    assert not op_info(aten.zeros_like.default).is_empty


def test_values_returned_to_python_and_data_dependent_shapes_sync():
    for op in (aten._local_scalar_dense.default, aten.item.default, aten.equal.default,
               aten.is_nonzero.default, aten.nonzero.default, aten.masked_select.default,
               aten._unique2.default, aten.bincount.default):
        assert op_info(op).syncs, op
    assert not op_info(aten.is_nonzero.default).metadata  # "is_" but it reads the value
    assert op_info(aten.is_same_size.default).metadata
    assert not op_info(aten.is_same_size.default).syncs
    assert not op_info(aten.nonzero_static.default).syncs  # sized by its argument


def test_indexing_syncs_only_with_a_mask():
    x = torch.arange(6)
    long_index, mask = torch.tensor([0, 2]), x > 2
    index = op_info(aten.index.Tensor)
    assert not index.syncs_with((x, [long_index]), {})
    assert index.syncs_with((x, [mask]), {})
    assert index.syncs_with((x, [None, mask.to(torch.uint8)]), {})
    put = op_info(aten.index_put_.default)
    assert not put.syncs_with((x, [long_index], x[:2]), {})
    assert put.syncs_with((x, [mask], x[:3]), {})
    rep = op_info(aten.repeat_interleave.Tensor)
    assert rep.syncs_with((long_index,), {}) and not rep.syncs_with((long_index,), {"output_size": 2})


# --- byte ranges ------------------------------------------------------------------

def test_byte_ranges_of_views_offsets_and_strides():
    x = torch.arange(16, dtype=I64).reshape(4, 4)
    assert byte_range(x) == (0, 128)
    assert byte_range(x[1:3]) == (32, 96)
    assert byte_range(x[:, 1]) == (8, 8 + 13 * 8)  # column: strided, spans rows 0..3
    assert byte_range(x[1:, ::2]) == (32, 32 + 11 * 8)
    assert byte_range(x.t()) == (0, 128)
    assert byte_range(x.view(-1)[4:6]) == (32, 48)
    assert byte_range(x[2, 3]) == (88, 96)  # a 0-d element
    assert byte_range(x[0:1].expand(3, 4)) == (0, 32)  # stride 0: the same row thrice
    assert storage_base(x[2:]) == storage_base(x)


def test_zero_size_tensors_touch_nothing():
    x = torch.arange(16, dtype=I64)
    assert byte_range(x[5:5]) == (0, 0)
    assert byte_range(x.reshape(4, 4)[:, 2:2]) == (0, 0)
    assert byte_range(x.reshape(4, 4)[1:, ::2][:, 2:]) == (0, 0)
    assert extent((2, 0), (3, 1), 7, 8) == (0, 0)  # inside even a zero-byte allocation


def test_extent_of_negative_strides():
    # 3 elements walking backwards from element 5: elements 3, 4, 5
    assert extent((3,), (-1,), 5, 4) == (12, 24)


# --- host calls on pinned tensors --------------------------------------------------

def test_which_host_calls_write_their_first_argument():
    assert writes_first_argument("add_") and writes_first_argument("__setitem__")
    assert not writes_first_argument("add") and not writes_first_argument("__iadd__"[:-2] + "__")
    assert not writes_first_argument("__getitem__")


def _registry(*tensors):
    reg = PinnedRegistry()
    allocs = [reg.add(t, object()) for t in tensors]
    return reg, allocs


def test_host_accesses_reads_writes_out_and_lists():
    p, q = torch.zeros(4), torch.zeros(4)
    reg, (pa, qa) = _registry(p, q)
    hits = pinned_operands((p, q), {}, reg.lookup)
    assert [(t is p, where, a is pa) for t, where, a in hits] == [(True, 0, True), (False, 1, False)]
    assert [(t is p, w) for t, _a, w in host_accesses(T.add_, hits, p)] == [(True, True), (False, False)]
    hits = pinned_operands((torch.ones(4),), {"out": p}, reg.lookup)
    assert [(t is p, w) for t, _a, w in host_accesses(torch.neg, hits, p)] == [(True, True)]
    hits = pinned_operands(([p, torch.ones(4)],), {}, reg.lookup)  # torch.cat([pinned, x])
    assert [(t is p, w) for t, _a, w in host_accesses(torch.cat, hits, torch.zeros(8))] == [(True, False)]


def test_views_and_metadata_of_pinned_tensors_touch_no_data():
    p = torch.zeros(8)
    reg, _ = _registry(p)
    hits = pinned_operands((p, slice(0, 4)), {}, reg.lookup)
    assert host_accesses(T.__getitem__, hits, p[:4]) == []  # a view: nothing read yet
    assert host_accesses(T.size, pinned_operands((p,), {}, reg.lookup), torch.Size([8])) == []
    assert host_accesses(T.numel, pinned_operands((p,), {}, reg.lookup), 8) == []
    got = host_accesses(T.__getitem__, pinned_operands((p, 0), {}, reg.lookup), p[0].clone())
    assert [w for _t, _a, w in got] == [False]  # a copy of an element: read


def test_pinned_registry_is_keyed_by_storage():
    p = torch.zeros(8)
    reg, (alloc,) = _registry(p)
    assert reg.lookup(p[2:5]) is alloc and reg.lookup(p.view(2, 4).t()) is alloc
    assert reg.lookup(torch.zeros(8)) is None and reg.lookup(torch.empty(2, device="meta")) is None
    freed = []
    weak = PinnedRegistry(on_free=freed.append)
    q = torch.zeros(4)
    a = weak.add(q, object())
    del q
    gc.collect()
    assert freed == [a] and not weak


def test_op_counter_stops_at_the_limit():
    c = OpCounter(2)
    c.count("a")
    c.count("b")
    with pytest.raises(DeviceOpLimitExceeded, match=r"more than 2 device ops \(at c\)"):
        c.count("c")
    unlimited = OpCounter(None)
    for _ in range(5):
        unlimited.count("x")
    assert unlimited.issued == 5


# --- naming -----------------------------------------------------------------------

PROGRAM = """\
fwd, d2h = make(), make()
self.buf = alloc()
staging = torch.empty(
    8, pin_memory=True)
_ = alloc()
call(alloc())
a, b = (make(),
        make())
"""


def test_names_from_the_source_line(tmp_path):
    path = tmp_path / "prog.py"
    path.write_text(PROGRAM)
    code = compile(PROGRAM, str(path), "exec")

    def at(line):
        return Site(((code, line),))

    assert [name_from_source(at(1), "s"), name_from_source(at(1), "s")] == ["fwd", "d2h"]
    assert name_from_source(at(2), "s") == "buf"
    assert name_from_source(at(4), "s") == "staging"  # the call continues line 3
    assert name_from_source(at(5), "s") == "s" and name_from_source(at(6), "s") == "s"
    assert assigned_names(str(path), 1) == ["fwd", "d2h"]
    assert [name_from_source(at(7), "s"), name_from_source(at(8), "s")] == ["a", "b"]
    assert str(TensorLabel("aten.add.Tensor", torch.float32, (4,), at(2))) == "'buf' (float32[4])"
    assert str(TensorLabel("aten.add.Tensor", torch.int64, (2, 2), at(1))) == \
        "output of aten.add.Tensor (int64[2, 2])"  # `a, b = ...`: which one is unknown
    assert str(TensorLabel("pinned", torch.int64, (2,), at(6))) == "a pinned tensor (int64[2])"
    assert str(TensorLabel("", torch.int64, (2,), at(6))) == "a tensor (int64[2])"


# --- the same facts through the virtual device -------------------------------------

def test_writes_through_split_and_unbind_reach_the_base():
    with so.virtual_device(policy="lazy") as vd:
        x = torch.zeros(8, device="cuda")
        a, b = x.split(4)
        b.fill_(1)
        rows = x.view(2, 4).unbind(0)
        rows[0][1:3] = 2
        assert x.tolist() == [0, 2, 2, 0, 1, 1, 1, 1]
    assert vd.races == []


@pytest.mark.parametrize("touch", ["shape", "numel", "view", "size"])
def test_pinned_metadata_and_views_do_not_read_an_in_flight_buffer(touch):
    with so.virtual_device(policy="lazy") as vd:
        x = torch.ones(8, device="cuda")
        buf = torch.empty(8, pin_memory=True)
        buf.copy_(x, non_blocking=True)
        if touch == "shape":
            assert buf.shape == (8,)
        elif touch == "numel":
            assert buf.numel() == 8
        elif touch == "size":
            assert buf.size(0) == 8
        else:
            head = buf[:4]
        torch.cuda.synchronize()
        if touch == "view":
            assert head.tolist() == [1.0] * 4
    assert vd.races == []


def test_reading_a_view_of_an_in_flight_pinned_buffer_is_a_race():
    with so.virtual_device(policy="lazy", raise_on_race=False) as vd:
        x = torch.ones(8, device="cuda")
        buf = torch.empty(8, pin_memory=True)
        buf.copy_(x, non_blocking=True)
        head = buf[:4]
        head.sum()
        torch.cuda.synchronize()
    assert len(vd.races) == 1 and "host sum" in str(vd.races[0])


def test_metadata_queries_issue_no_device_op():
    with so.virtual_device(policy="lazy") as vd:
        a, b = torch.zeros(4, device="cuda"), torch.ones(4, device="cuda")
        before = vd.ops_issued
        assert torch.is_same_size(a, b)
        assert vd.ops_issued == before


def test_boolean_mask_index_put_syncs_like_cuda():
    with so.virtual_device(policy="lazy") as vd:
        x = torch.zeros(6, device="cuda")
        mask = torch.tensor([True, False, True, False, False, True], device="cuda")
        stream = vd.current_stream
        x.index_put_((mask,), torch.ones(3, device="cuda"))
        assert vd.scheduler.poll_stream(stream.queue)  # the host waited for the stream
        assert x.tolist() == [1, 0, 1, 0, 0, 1]


# --- the import graph -----------------------------------------------------------------

PKG = os.path.join(os.path.dirname(__file__), "..", "..", "pytest_streamorder")


def _imports(package: str) -> dict[str, set[str]]:
    """module -> pytest_streamorder modules it imports (inside functions and under
    TYPE_CHECKING too), for the modules of one subpackage."""
    root = os.path.abspath(os.path.join(PKG, package))
    graph = {}
    for name in sorted(os.listdir(root)):
        if not name.endswith(".py"):
            continue
        mod = f"pytest_streamorder.{package}" + ("" if name == "__init__.py" else f".{name[:-3]}")
        anchor = f"pytest_streamorder.{package}".split(".")
        targets = set()
        for node in ast.walk(ast.parse(open(os.path.join(root, name)).read())):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = ".".join(anchor[:len(anchor) - node.level + 1] + [node.module or ""]).rstrip(".")
                else:
                    base = node.module or ""
                targets.add(base)
                targets |= {f"{base}.{a.name}" for a in node.names}
        graph[mod] = {t for t in targets if t.startswith("pytest_streamorder") and t != mod}
    return graph


def test_backends_never_import_each_other_and_the_op_layer_imports_neither():
    for package, forbidden in (("sim", "gpu"), ("gpu", "sim"), ("ops", "sim"), ("ops", "gpu")):
        for mod, targets in _imports(package).items():
            bad = [t for t in targets if t.startswith(f"pytest_streamorder.{forbidden}")]
            assert not bad, f"{mod} imports {bad}"


@pytest.mark.parametrize("package", ["sim", "gpu", "ops"])
def test_no_import_cycle_inside(package):
    graph = _imports(package)
    mods = set(graph)
    package_name = f"pytest_streamorder.{package}"
    edges = {m: {t for t in graph[m] if t in mods and not (m == package_name)} for m in mods}

    def reaches(start, goal, seen):
        for n in edges[start]:
            if n == goal or (n not in seen and (seen.add(n) or reaches(n, goal, seen))):
                return True
        return False

    cyclic = sorted(m for m in mods if reaches(m, m, set()))
    assert cyclic == []


def test_host_indexing_of_pinned_memory_is_a_view_and_keys_are_exact():
    """pinned[i] (basic indexing) reads nothing: it is a view; pinned[key] = v writes
    only the elements the key names; pinned[idx] (a gather) reads only those."""
    from pytest_streamorder.model.regions import Box
    from pytest_streamorder.ops.host import host_access_specs

    pinned = torch.zeros(4, 4, dtype=torch.int64)
    alloc = object()
    hits = [(pinned, 0, alloc)]
    T = torch.Tensor
    assert host_access_specs(T.__getitem__, hits, pinned[1], (pinned, 1)) == []
    assert host_access_specs(T.__setitem__, hits, None, (pinned, 1, 5)) == [(alloc, 32, 64, True)]
    column = host_access_specs(T.__setitem__, hits, None, (pinned, (slice(None), 2), 5))
    assert column[0][1] == Box(16, 8, ((32, 4),)) and column[0][2] is True
    rows = torch.tensor([3, 1])
    got = host_access_specs(T.__getitem__, hits, pinned[rows], (pinned, rows))
    assert [(a, r.runs(), w) for a, r, w in got] == [(alloc, [(32, 64), (96, 128)], False)]
    mask = torch.tensor([True, False, False, False])
    assert host_access_specs(T.__setitem__, hits, None, (pinned, mask, 0)) == [(alloc, 0, 32, True)]


def test_composite_views_that_may_copy_are_told_apart_from_real_views():
    """`to`, `contiguous`, `reshape` return their input or a fresh copy: the GPU backend
    checks the output (an inference tensor's `.cpu()` reaches the dispatch mode as
    aten.to.dtype_layout, a D2H copy that was once skipped as a view)."""
    aten = torch.ops.aten
    for func in (aten.to.dtype_layout, aten.to.device, aten.contiguous.default,
                 aten.reshape.default, aten.flatten.using_ints):
        info = op_info(func)
        assert info.is_view and info.may_copy, info
    for func in (aten.view.default, aten.slice.Tensor, aten.as_strided.default,
                 aten.t.default, aten.expand.default, aten.unsqueeze.default):
        info = op_info(func)
        assert info.is_view and not info.may_copy, info
    assert not op_info(aten.add.Tensor).may_copy
