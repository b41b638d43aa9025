"""torch.distributed under the virtual device: the NCCL backend exists, as in a CUDA
build, and a process group asking for it fails with NotModelledError naming it (not the
CPU build's "Distributed package doesn't have NCCL built in"); gloo groups work as
without the plugin, and everything is as it was after the device detaches."""

import warnings

import pytest
import torch
import torch.distributed as dist

import pytest_streamorder as so

pytestmark = [
    pytest.mark.skipif(not dist.is_available(), reason="torch built without torch.distributed"),
    pytest.mark.skipif(dist.is_nccl_available(), reason="this torch has NCCL of its own"),
]


def _init(backend, tmp_path, name):
    dist.init_process_group(backend, init_method=f"file://{tmp_path / name}", rank=0,
                            world_size=1)


@pytest.mark.parametrize("backend", ["nccl", "cpu:gloo,cuda:nccl", None])
def test_an_nccl_process_group_is_refused_by_name(tmp_path, backend):
    with so.virtual_device(seed=0):
        assert dist.is_nccl_available()  # as in a CUDA build: no silent no-NCCL branch
        with warnings.catch_warnings():  # torch's: no NCCL default timeout compiled in
            warnings.simplefilter("ignore")
            with pytest.raises(so.NotModelledError, match="NCCL backend"):
                _init(backend, tmp_path, "nccl")
        assert not dist.is_initialized()
    assert not dist.is_nccl_available() and not hasattr(dist, "ProcessGroupNCCL")


def test_a_gloo_process_group_works_while_attached(tmp_path):
    with so.virtual_device(seed=0):
        _init("gloo", tmp_path, "gloo")
        try:
            t = torch.arange(3.0)
            dist.all_reduce(t)  # world size 1: the sum is itself
            assert t.tolist() == [0.0, 1.0, 2.0] and dist.get_backend() == "gloo"
        finally:
            dist.destroy_process_group()


def test_torch_cuda_nccl_answers_as_a_cuda_build_and_refuses_collectives():
    import torch.cuda.nccl as nccl

    with so.virtual_device(seed=0):
        x, y = torch.ones(4, device="cuda"), torch.ones(4, device="cuda")
        assert nccl.version() == (2, 21, 5)
        assert nccl.is_available([x]) and not nccl.is_available([x, y])  # one per device
        assert not nccl.is_available([torch.ones(4)]) and not nccl.is_available([x[::2]])
        with pytest.raises(so.NotModelledError, match=r"torch\.cuda\.nccl\.all_reduce"):
            nccl.all_reduce([x])
    with warnings.catch_warnings():  # detached: the CPU build's answer again
        warnings.simplefilter("ignore")
        assert not nccl.is_available([torch.ones(4)])
