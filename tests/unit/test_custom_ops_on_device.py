"""Custom ops on the virtual device (issue 14): an op registered with torch.library runs
as it is, its reads and writes from its schema; pytest_streamorder.custom_op registers one
an extension would have (schema, CPU reference, fake) and stand_in_module stands in for
the extension module; without them the call fails by name."""

import sys
import uuid

import pytest

torch = pytest.importorskip("torch")

import pytest_streamorder as so  # noqa: E402


@torch.library.custom_op("streamorder_test::scale_into", mutates_args=("out",))
def scale_into(out: torch.Tensor, x: torch.Tensor, alpha: float) -> None:
    out.copy_(x * alpha)


@torch.library.custom_op("streamorder_test::twice", mutates_args=())
def twice(x: torch.Tensor) -> torch.Tensor:
    return x * 2


@twice.register_fake
def _(x):
    return torch.empty_like(x)


def test_a_torch_library_op_runs_as_it_is_with_its_schema_access_sets():
    schema = str(torch.ops.streamorder_test.scale_into.default._schema)
    assert "Tensor(a0!) out" in schema
    with so.virtual_device(policy="random", seed=2) as vd:
        x = torch.arange(4.0).cuda()
        out = torch.zeros(4, device="cuda")
        scale_into(out, x, 3.0)
        y = twice(out)
        assert y.device.type == "cuda"
        assert out.tolist() == [0.0, 3.0, 6.0, 9.0] and y.tolist() == [0.0, 6.0, 12.0, 18.0]
    assert vd.races == []


@pytest.mark.parametrize("wait", [False, True])
def test_a_custom_op_on_a_side_stream_races_unless_the_reader_waits(wait):
    """The schema says `out` is written: reading it on the default stream without waiting
    for the side stream is a race; with the wait the value is the op's."""
    with so.virtual_device(policy="lazy", raise_on_race=False) as vd:
        x = torch.arange(4.0).cuda()
        out = torch.zeros(4, device="cuda")
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            scale_into(out, x, 2.0)
        if wait:
            torch.cuda.current_stream().wait_stream(side)
        total = out.sum().item()
    if wait:
        assert vd.races == [] and total == 12.0
    else:
        assert len(vd.races) == 1
        race = str(vd.races[0])
        assert "write by stream 'side'" in race and "streamorder_test.scale_into" in race


def _fresh(ns: str) -> str:
    return f"{ns}_{uuid.uuid4().hex[:8]}"


def test_custom_op_and_a_stand_in_module_for_an_extension_that_does_not_import():
    """conftest.py's two calls: the op from a schema and a CPU reference, and the module
    that code under test imports (vllm._C-style, a package that does not exist here)."""
    ns = _fresh("ext")

    def rms_norm_ref(out, x, weight, eps):
        out.copy_(x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight)

    op = so.custom_op(f"{ns}::rms_norm(Tensor(a!) out, Tensor x, Tensor weight, float eps) -> ()",
                      cpu_impl=rms_norm_ref)
    ns_ops = getattr(torch.ops, ns)
    module = so.stand_in_module(f"{ns}_pkg._C", rms_norm=lambda *a: ns_ops.rms_norm(*a))
    try:
        import importlib

        ext = importlib.import_module(f"{ns}_pkg._C")
        assert ext is module and sys.modules[f"{ns}_pkg"]._C is module
        x, w = torch.randn(3, 8), torch.randn(8)
        expected = torch.empty(3, 8)
        rms_norm_ref(expected, x, w, 1e-6)
        with so.virtual_device(policy="random", seed=1) as vd:
            out = torch.empty(3, 8, device="cuda")
            ext.rms_norm(out, x.cuda(), w.cuda(), 1e-6)
            got = out.cpu()
            with pytest.raises(so.NotModelledError, match=rf"{ns}_pkg\._C\.fused_add"):
                ext.fused_add(out)  # declared nowhere: fails by name
        assert vd.races == []
        torch.testing.assert_close(got, expected)
        assert op is ns_ops.rms_norm.default
    finally:
        sys.modules.pop(f"{ns}_pkg._C", None)
        sys.modules.pop(f"{ns}_pkg", None)


def test_an_op_returning_a_tensor_needs_its_fake_and_gets_it():
    ns = _fresh("ext")
    so.custom_op(f"{ns}::plus_one(Tensor x) -> Tensor", cpu_impl=lambda x: x + 1,
                 fake=lambda x: torch.empty_like(x))
    with so.virtual_device(policy="lazy"):
        assert getattr(torch.ops, ns).plus_one(torch.ones(2).cuda()).tolist() == [2.0, 2.0]


def test_an_extension_op_without_a_cpu_kernel_fails_by_name():
    """An op whose extension registered only a CUDA kernel (or nothing runnable here)."""
    ns = _fresh("ext")
    lib = torch.library.Library(ns, "DEF")
    lib.define("cuda_only(Tensor(a!) x) -> ()")
    lib.impl("cuda_only", lambda x: None, "CUDA")
    with so.virtual_device(policy="lazy"):
        t = torch.zeros(2).cuda()
        with pytest.raises(so.NotModelledError, match=rf"custom op {ns}::cuda_only.*custom_op"):
            getattr(torch.ops, ns).cuda_only(t)


def test_an_existing_op_keeps_its_kernels():
    """custom_op on an op that exists adds only what it lacks: the real CPU kernel stays."""
    op = so.custom_op("streamorder_test::twice(Tensor x) -> Tensor", cpu_impl=lambda x: x * 100)
    assert op(torch.ones(1)).tolist() == [2.0]
