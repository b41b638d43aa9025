"""torch.compile on the virtual device (issue 14): compiled functions run eagerly while
the device is attached, so their ops are device work the model sees; Dynamo's config is
put back afterwards; torch.compiler.is_compiling() is False inside them."""

import subprocess
import sys
import textwrap

import pytest

torch = pytest.importorskip("torch")
import torch._dynamo  # noqa: E402

import pytest_streamorder as so  # noqa: E402


@torch.compile
def scale_and_shift(x, out):
    """A compiled helper writing into a buffer, as SGLang's small helpers do."""
    out.copy_(x * 2 + 1)
    return torch.compiler.is_compiling()


def test_a_compiled_helper_runs_eagerly_with_the_eager_values():
    before = torch._dynamo.config.disable
    with so.virtual_device(policy="random", seed=3) as vd:
        x = torch.arange(6.0).cuda()
        out = torch.empty(6, device="cuda")
        compiling = scale_and_shift(x, out)
        assert compiling is False  # eager: documented in the README
        assert out.tolist() == [1.0, 3.0, 5.0, 7.0, 9.0, 11.0]
        assert vd.ops_issued >= 3  # its ops reached the device one by one
    assert vd.races == []
    assert torch._dynamo.config.disable is before


@pytest.mark.parametrize("wait", [False, True])
def test_a_compiled_helper_on_a_side_stream_races_unless_the_reader_waits(wait):
    with so.virtual_device(policy="lazy", raise_on_race=False) as vd:
        x = torch.arange(6.0).cuda()
        out = torch.zeros(6, device="cuda")
        forward = torch.cuda.Stream()
        forward.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(forward):
            scale_and_shift(x, out)
        if wait:
            torch.cuda.current_stream().wait_stream(forward)
        total = out.sum().item()
    if wait:
        assert vd.races == [] and total == 36.0
    else:
        assert len(vd.races) == 1
        assert "forward" in str(vd.races[0]) and "aten.copy_" in str(vd.races[0])


def test_a_module_compiled_inside_the_device_runs_eagerly():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
    x = torch.randn(2, 4)
    with torch.no_grad():
        expected = model(x)
    with so.virtual_device(policy="random", seed=0) as vd:
        compiled = torch.compile(model.cuda(), mode="reduce-overhead")  # no CUDA graphs either
        with torch.no_grad():
            got = compiled(x.cuda()).cpu()
    assert vd.races == []
    torch.testing.assert_close(got, expected)


def test_dynamo_is_not_imported_until_something_compiles():
    """Lazy: the switch only wraps torch.compile while Dynamo is not imported; the first
    compile sets Dynamo's flag, and undo puts both back."""
    code = textwrap.dedent("""
        import sys
        import torch
        from pytest_streamorder import compiled
        assert "torch._dynamo" not in sys.modules
        original = torch.compile
        undo = compiled.install()
        assert "torch._dynamo" not in sys.modules and torch.compile is not original
        f = torch.compile(lambda x: x + 1)
        import torch._dynamo
        assert torch._dynamo.config.disable is True
        assert f(torch.ones(2)).tolist() == [2.0, 2.0]
        undo()
        assert torch.compile is original and torch._dynamo.config.disable is False
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "ok"
