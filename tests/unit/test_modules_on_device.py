"""nn.Module.to("cuda") / .cuda() on the virtual device: parameters and buffers become
virtual CUDA tensors, a forward pass is device work on the current stream (values equal
the CPU's), and a module's forward on a side stream races like any other kernel.
(Autograd through device tensors is issue 14's; these run under no_grad.)"""

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
