"""A shape or dtype mistake in the user's code raises on the virtual device what it raises
on CUDA: torch's RuntimeError with the CPU kernels' wording (which CUDA's argument checks
share), not a NotModelledError, so `pytest.raises(RuntimeError, match=...)` in a
downstream suite still means what it says. The meta kernel that computes output shapes
words some of these differently; the device asks the CPU kernel for the text."""

import pytest
import torch

import pytest_streamorder as so

MISTAKES = {
    "setitem_not_broadcastable": lambda d: torch.zeros(4, 3, device=d).__setitem__(0, torch.ones(2, device=d)),
    "mm_inner_dims": lambda d: torch.mm(torch.ones(2, 3, device=d), torch.ones(2, 3, device=d)),
    "add_not_broadcastable": lambda d: torch.ones(3, device=d) + torch.ones(4, device=d),
    "cat_sizes": lambda d: torch.cat([torch.ones(2, 3, device=d), torch.ones(2, 4, device=d)]),
    "view_numel": lambda d: torch.ones(3, device=d).view(2, 2),
    "inplace_broadcast_out": lambda d: torch.ones(3, device=d).add_(torch.ones(2, 3, device=d)),
    "matmul_dtypes": lambda d: torch.ones(2, 2, device=d) @ torch.ones(2, 2, dtype=torch.float64, device=d),
}


def _error(program, device):
    with pytest.raises(RuntimeError) as info:
        program(device)
    return info


@pytest.mark.parametrize("name", MISTAKES)
def test_the_error_is_torchs_own(name):
    host = _error(MISTAKES[name], "cpu")
    with so.virtual_device(policy="delay"):
        device = _error(MISTAKES[name], "cuda")
    assert not isinstance(device.value, so.NotModelledError)
    assert type(device.value) is type(host.value)
    assert str(device.value).splitlines()[0] == str(host.value).splitlines()[0]


def test_a_correct_call_after_a_mistake_still_runs():
    with so.virtual_device(policy="delay"):
        a = torch.ones(2, 3, device="cuda")
        with pytest.raises(RuntimeError):
            torch.mm(a, a)
        assert torch.mm(a, a.t()).cpu().tolist() == [[3.0, 3.0], [3.0, 3.0]]
