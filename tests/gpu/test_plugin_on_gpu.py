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
