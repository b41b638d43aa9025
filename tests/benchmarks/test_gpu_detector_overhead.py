"""Cost of the CUDA backend's detector per device op, on a real GPU (skipped without CUDA).

    PYTHONPATH=. python -m pytest tests/benchmarks/test_gpu_detector_overhead.py --benchmark-only

The workload (tests/gpu/test_cuda_backend_measure.py: small ops on two streams, a
non_blocking D2H into pinned memory, an event, a host sync and read per iteration) runs
plain and under cuda_backend() without delays; extra_info holds the device ops per run.
The CSAN comparison needs a separate process (TORCH_CUDA_SANITIZER is read at import):
`python tests/gpu/test_cuda_backend_measure.py --out DIR` measures all three.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a real CUDA device"),
]

ITERS = 200


def _workload():
    from tests.gpu.test_cuda_backend_measure import workload

    return workload


def test_plain(benchmark):
    workload = _workload()
    workload(10)
    benchmark(workload, ITERS)


def test_with_detector(benchmark):
    from pytest_streamorder.gpu import cuda_backend

    workload = _workload()
    with cuda_backend(seed=0, delay_probability=0) as be:
        workload(ITERS)
    benchmark.extra_info["device_ops"] = be.ops_issued

    def run():
        with cuda_backend(seed=0, delay_probability=0) as be:
            workload(ITERS)
        assert not be.races

    benchmark(run)
