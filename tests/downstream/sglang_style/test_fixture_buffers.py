"""Device buffers and streams built in fixtures (session and module scope, conftest.py):
the ordering of a fixture's device work carries into the tests that use it."""

import torch

from .device_utils import delay_current_stream

POOL_SUM = sum(range(64)) * 10


def test_pool_read_after_fixture_sync(token_pool):
    """The module fixture synced its copy stream: the pool is ready for any stream."""
    assert token_pool.sum().item() == POOL_SUM


def test_pool_read_unsynced_fixture(token_pool_unsynced):
    """Twin: the fixture's copy-stream fill has no edge to this read."""
    assert token_pool_unsynced.sum().item() == POOL_SUM  # holds only when the fill won


def test_schedule_stream_waits_for_init(streams):
    """A buffer zero-filled on the default stream is rewritten on the schedule stream after
    wait_stream."""
    delay_current_stream()
    buf = torch.zeros(32, dtype=torch.int64, device="cuda")
    streams.schedule.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(streams.schedule):
        buf[:16] = 7
    streams.schedule.synchronize()
    assert buf.sum().item() == 16 * 7


def test_schedule_stream_races_init(streams):
    """Twin: the schedule stream writes the buffer while its zero-fill may still be queued."""
    delay_current_stream()
    buf = torch.zeros(32, dtype=torch.int64, device="cuda")
    with torch.cuda.stream(streams.schedule):
        buf[:16] = 7
    torch.cuda.synchronize()
    assert buf.sum().item() == 16 * 7  # holds only when the zero-fill ran first


def test_forward_stream_reads_pool(streams, token_pool):
    """The session's forward stream gathers from the module's pool after the fixture's sync."""
    slots = torch.tensor([1, 3, 5], device="cuda")
    streams.forward.wait_stream(torch.cuda.current_stream())  # slots' H2D first
    with torch.cuda.stream(streams.forward):
        picked = token_pool[slots]
    streams.forward.synchronize()
    assert picked.tolist() == [10, 30, 50]
