"""`pytest --streamorder` with the real-GPU backend, through pytester. Skipped without CUDA."""

import pytest
import torch

from tests.unit.test_plugin import BROKEN, CORRECT

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a real CUDA device"),
]
pytest_plugins = ["pytester"]


def test_auto_picks_the_gpu_and_a_broken_test_fails_with_a_cuda_replay_token(pytester):
    pytester.makepyfile(test_broken=BROKEN)
    result = pytester.runpytest_subprocess("--streamorder", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "streamorder: real GPU (cuda backend)*",
        "*StreamRaceError*",
        "*--streamorder-replay=cuda:0*",
    ])


def test_correct_twin_passes_on_the_gpu(pytester):
    pytester.makepyfile(test_correct=CORRECT)
    result = pytester.runpytest_subprocess("--streamorder", "--streamorder-backend=cuda")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*1 tests checked, 8 schedules explored*0 races found*"])


def test_fixture_names_streams_and_declares_kernels_on_the_gpu(pytester):
    pytester.makepyfile(test_fixture="""
import torch

def test_kernel(streamorder):
    side = torch.cuda.Stream()
    streamorder.name_stream(side, "my_side")
    buf = torch.zeros(4, device="cuda")
    torch.cuda.synchronize()
    with torch.cuda.stream(side):                   # missing: side.wait_stream(default)
        # launch does nothing torch can see, as a Triton kernel: only the declaration
        # tells the detector that it writes buf
        streamorder.kernel("my_triton_kernel", reads=[], writes=[buf], launch=lambda: None)
    buf.add_(1)
    torch.cuda.synchronize()
""")
    result = pytester.runpytest_subprocess("--streamorder", "--streamorder-backend=cuda",
                                           "--streamorder-schedules=1")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*StreamRaceError*", "*my_side*", "*my_triton_kernel*"])


# --- the session scope on the GPU backend (the same programs as on the virtual device) ---

def test_broader_fixture_memory_is_restored_per_schedule_on_the_gpu(pytester):
    from tests.unit.test_session_runtime import FIXTURES, POOL_TESTS
    pytester.makeconftest(FIXTURES.format(sync="side.synchronize()"))
    pytester.makepyfile(test_pool=POOL_TESTS)  # pinned staging: registered by the fixture
    result = pytester.runpytest_subprocess("--streamorder", "--streamorder-backend=cuda",
                                           "--streamorder-schedules=5", "-p", "no:randomly")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*2 tests checked, 10 schedules explored*0 races found*"])


def test_unsynced_fixture_write_read_by_the_test_is_a_race_on_the_gpu(pytester):
    from tests.unit.test_session_runtime import FIXTURES
    pytester.makeconftest(FIXTURES.format(sync="pass  # the bug: no sync, no wait"))
    pytester.makepyfile(test_pool="""
def test_reads_pool(pool):
    buf, _ = pool
    assert buf.sum().item() == 28
""")
    result = pytester.runpytest_subprocess("--streamorder", "--streamorder-backend=cuda",
                                           "-p", "no:randomly")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*StreamRaceError: stream-order race on 'buf'*",
                                 "*at conftest.py:17 in pool*"])


def test_unittest_setupclass_state_restored_per_schedule_on_the_gpu(pytester):
    from tests.unit.test_session_runtime import UNITTEST
    pytester.makepyfile(test_relay=UNITTEST)
    result = pytester.runpytest_subprocess("--streamorder", "--streamorder-backend=cuda",
                                           "--streamorder-schedules=3", "-p", "no:randomly")
    result.assert_outcomes(passed=2, failed=1)
    # (class attributes are not named on the GPU backend: "a tensor (int64[4])")
    result.stdout.fnmatch_lines(["*StreamRaceError: stream-order race on *int64?4?*",
                                 "FAILED test_relay.py::TestRelay::test_ungated*"])


def test_snapshot_restores_device_blocks_and_leaves_allocator_stats_alone():
    """gpu/snapshot.py directly: bytes come back, memory_allocated does not move."""
    from pytest_streamorder.gpu import snapshot

    buf = torch.arange(1000, dtype=torch.int32, device="cuda")
    before = torch.cuda.memory_allocated()
    snap = snapshot.take()
    assert torch.cuda.memory_allocated() == before  # host copies only
    buf.fill_(-5)
    snap.restore()
    assert buf.tolist() == list(range(1000))
    assert torch.cuda.memory_allocated() == before
    snap.release()
