"""Fixtures in the way serving-engine suites build theirs: streams once per session, device
buffers and pinned staging once per module. Each runs on the (virtual) device before the
test that uses it, so the ordering of its work must carry over into that test."""

from types import SimpleNamespace

import pytest
import torch

from .device_utils import delay_current_stream
from .staging import StagingBuffer


@pytest.fixture(scope="session")
def streams():
    """The engine's streams, made once as an engine makes them at start-up."""
    return SimpleNamespace(forward=torch.cuda.Stream(), schedule=torch.cuda.Stream(),
                           copy=torch.cuda.Stream())


def _fill_pool_on_copy_stream(streams) -> torch.Tensor:
    pool = torch.empty(64, dtype=torch.int64, device="cuda")
    with torch.cuda.stream(streams.copy):
        delay_current_stream()
        pool.copy_(torch.arange(64, device="cuda") * 10)
    return pool


@pytest.fixture(scope="module")
def token_pool(streams):
    """A device pool filled on the copy stream and synced before any test reads it."""
    pool = _fill_pool_on_copy_stream(streams)
    streams.copy.synchronize()
    return pool


@pytest.fixture(scope="module")
def token_pool_unsynced(streams):
    """BROKEN on purpose: the copy-stream fill is never synced or waited for."""
    return _fill_pool_on_copy_stream(streams)


@pytest.fixture(scope="module")
def staging():
    """Pinned staging for host-built step inputs (vLLM's CpuGpuBuffer)."""
    buf = StagingBuffer(32)
    torch.cuda.synchronize()  # the device twin's zero-fill is done before any test
    yield buf
    torch.cuda.synchronize()  # no copy of this module outlives it
