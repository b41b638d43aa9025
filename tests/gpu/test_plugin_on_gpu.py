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
