"""nn.Module.to("cuda") / .cuda() on the virtual device: parameters and buffers become
virtual CUDA tensors, a forward pass is device work on the current stream (values equal
the CPU's), and a module's forward on a side stream races like any other kernel.
Forward passes with grad enabled are modelled; a backward pass is refused by name."""

import pytest
import torch

import pytest_streamorder as so
from pytest_streamorder.sim.tensor import DeviceTensor


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16),
                               torch.nn.ReLU(), torch.nn.Linear(16, 4))


@pytest.mark.parametrize("move", ["cuda", "to"])
def test_module_parameters_become_device_tensors_and_forward_matches_cpu(move):
    cpu_model = _model()
    x = torch.randn(3, 8)
    with torch.no_grad():
        expected = cpu_model(x)
    with so.virtual_device(policy="random", seed=2):
        model = _model()
        model = model.cuda() if move == "cuda" else model.to("cuda")
        assert all(isinstance(p, DeviceTensor) for p in model.parameters())
        assert all(p.device == torch.device("cuda", 0) for p in model.parameters())
        with torch.no_grad():
            out = model(x.cuda()).cpu()
    torch.testing.assert_close(out, expected)
    assert not torch.__future__.get_swap_module_params_on_conversion()  # restored


@pytest.mark.parametrize("wait", [False, True])
def test_a_forward_on_a_side_stream_races_unless_the_reader_waits(wait):
    """The broken twin reads the output on the default stream without waiting for the
    side stream: one race. With the wait it is silent and the value is the CPU's."""
    x = torch.randn(3, 8)
    with torch.no_grad():
        expected = _model()(x).sum()
    with so.virtual_device(policy="lazy", raise_on_race=False) as vd:
        model = _model().cuda()
        x_dev = x.cuda()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.no_grad(), torch.cuda.stream(side):
            out = model(x_dev)
        if wait:
            torch.cuda.current_stream().wait_stream(side)
        total = out.sum().cpu()
    if wait:
        assert vd.races == []
        torch.testing.assert_close(total, expected)
    else:
        assert len(vd.races) == 1 and "side" in str(vd.races[0])


@pytest.mark.parametrize("mode", ["inference_mode", "no_grad"])
def test_under_inference_mode_to_cpu_is_a_copy_and_races_are_found(mode):
    """Serving code runs under torch.inference_mode(), where composite ops (aten.to, ...)
    reach the device whole: `.cpu()` must still be a D2H copy on the current stream,
    not taken for a view of the device tensor (a silent wrong path)."""
    ctx = getattr(torch, mode)
    with so.virtual_device(policy="lazy", raise_on_race=False) as vd:
        x = torch.ones(4).cuda()
        torch.cuda.synchronize()
        side = torch.cuda.Stream()
        with ctx(), torch.cuda.stream(side):
            z = x * 2
        got = z.cpu()                  # missing: current_stream().wait_stream(side)
        assert type(got) is torch.Tensor and got.device.type == "cpu"
    assert len(vd.races) == 1
    with so.virtual_device(policy="lazy") as vd:
        with ctx():
            z = torch.ones(4).cuda() * 2
            assert z.to("cpu").tolist() == [2.0] * 4
    assert vd.races == []


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_and_bfloat16_modules_compute_what_the_cpu_does(dtype):
    x = torch.randn(3, 8)
    cpu_model = _model().to(dtype)
    with torch.no_grad():
        expected = cpu_model(x.to(dtype))
    with so.virtual_device(policy="random", seed=4):
        model = _model().cuda()
        model = model.half() if dtype is torch.float16 else model.bfloat16()
        assert all(p.dtype is dtype and isinstance(p, DeviceTensor) for p in model.parameters())
        with torch.no_grad():
            out = model(x.to(dtype).cuda()).cpu()
    assert out.dtype is dtype
    torch.testing.assert_close(out, expected)


def test_state_dict_round_trips_between_host_and_device():
    """save a device module's state, load it into a CPU module, and load CPU tensors into
    a device module: values survive, device parameters stay device tensors, and a module's
    buffers (BatchNorm's running stats) are device tensors too."""
    import io

    torch.manual_seed(3)
    source = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4)).eval()
    for p in source.parameters():
        torch.nn.init.normal_(p)
    with torch.no_grad():
        source[1].running_mean.add_(torch.randn(4))
    x = torch.randn(5, 4)
    with torch.no_grad():
        expected = source(x)
    with so.virtual_device(policy="lazy") as vd:
        target = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4)).eval().cuda()
        target.load_state_dict(source.state_dict())       # CPU tensors into a device module
        assert all(isinstance(b, DeviceTensor) for b in target.buffers())
        assert all(isinstance(p, DeviceTensor) for p in target.parameters())
        with torch.no_grad():
            got = target(x.cuda()).cpu()
        buffer = io.BytesIO()
        torch.save(target.state_dict(), buffer)           # device tensors saved
        buffer.seek(0)
        loaded = torch.load(buffer, map_location="cpu")
    assert vd.races == []
    torch.testing.assert_close(got, expected)
    roundtrip = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4)).eval()
    roundtrip.load_state_dict(loaded)
    with torch.no_grad():
        torch.testing.assert_close(roundtrip(x), expected)


def test_a_forward_with_grad_enabled_matches_the_cpu_and_builds_a_graph():
    x = torch.randn(3, 8)
    expected = _model()(x)
    with so.virtual_device(policy="random", seed=1):
        out = _model().cuda()(x.cuda())
        assert out.requires_grad and out.grad_fn is not None
        got = out.detach().cpu()
    torch.testing.assert_close(got, expected.detach())


@pytest.mark.parametrize("how", ["Tensor.backward", "torch.autograd.backward",
                                 "torch.autograd.grad"])
def test_a_backward_pass_fails_by_name(how):
    """A CPU build's autograd engine stops at its accelerator check ("Cannot access
    accelerator device when none is available"): refused by name, before it starts."""
    with so.virtual_device(policy="lazy"):
        model = _model().cuda()
        loss = model(torch.randn(3, 8).cuda()).sum()
        with pytest.raises(so.NotModelledError, match=rf"backward \({how}\).*CPU build's autograd"):
            if how == "Tensor.backward":
                loss.backward()
            elif how == "torch.autograd.backward":
                torch.autograd.backward([loss])
            else:
                torch.autograd.grad(loss, list(model.parameters()))
