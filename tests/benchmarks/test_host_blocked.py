"""Issue 7 (a): host blocked time of resolve_seq_lens_cpu, reference vs syncing the
schedule stream (see resolve_scenario.py), measured on a real GPU and predicted by the
virtual device's model.

Run: python -m pytest tests/benchmarks/test_host_blocked.py --benchmark-only \
         --benchmark-json=bench.json && python scripts/plot_benchmarks.py bench.json
host_blocked_s (median over rounds) is in each benchmark's extra_info. Nothing asserts a
time (tests/unit/test_benchmarking.py checks the model's prediction); the cuda cases skip
without a GPU.
"""

import pytest
import torch

from .resolve_scenario import (H100_REFERENCE_MS, POST_PUBLISH_MS, PRE_PUBLISH_MS, VARIANTS,
                               make_state, overlap_step, sleep_cycles)

CUDA = pytest.param("cuda", marks=[
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a real CUDA device")])


@pytest.mark.benchmark(group="resolve_seq_lens_cpu host blocked")
@pytest.mark.parametrize("backend", ["virtual", CUDA])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_resolve_host_blocked(stream_benchmark, variant, backend):
    on_gpu = backend == "cuda"
    batch = stream_benchmark.pedantic(
        overlap_step, setup=lambda: make_state(variant), backend=backend,
        rounds=30 if on_gpu else 3, warmup_rounds=3 if on_gpu else 0)
    assert batch.seq_lens_cpu.tolist() == [10 + i for i in range(16)]
    info = stream_benchmark.extra_info
    assert info["host_blocked_s"] >= 0 and info["backend"] == backend
    info.update(variant=variant, pre_publish_ms=PRE_PUBLISH_MS, post_publish_ms=POST_PUBLISH_MS,
                h100_reference_ms=H100_REFERENCE_MS[variant])
    if on_gpu:
        info["gpu"] = torch.cuda.get_device_name()
        info["sleep_ms_measured"] = _measured_sleep_ms()


def _measured_sleep_ms() -> dict:
    """What the _sleep calls really took on this GPU (the model assumes 1.98 cycles/ns)."""
    out = {}
    for name, ms in (("pre_publish", PRE_PUBLISH_MS), ("post_publish", POST_PUBLISH_MS)):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        times = []
        for _ in range(5):
            start.record()
            torch.cuda._sleep(sleep_cycles(ms))
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        out[name] = round(sorted(times)[2], 4)
    return out
