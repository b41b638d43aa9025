"""What exploring costs under `pytest --streamorder`: the default exploration
(`--streamorder-explore=observed`) against one schedule per test
(`--streamorder-schedules 1`), in one pytest process each (pytester, in process).

- untimed: a device program that observes nothing schedule-dependent (no query(), no
  reuse decision, no timing): the default must decide it with one schedule, so the two
  runs cost the same (issue 15: at most 1.5x).
- reference: `tests/reference` as the README's main job runs it. Its overlap loops do
  observe timing (pinned blocks not yet reusable), so the default explores more there.

Run: python -m pytest tests/benchmarks/test_explore_cost.py --benchmark-only -p no:randomly
extra_info holds the schedules explored per run. Nothing here asserts a time.
"""

from __future__ import annotations

import os
import re

import pytest
import torch  # noqa: F401  (imported once here: pytester's in-process runs cannot re-import torch)
import torch._dynamo  # noqa: F401  (nor what torch's meta kernels import on first use)

import pytest_streamorder.sim.session  # noqa: F401  (nor the runtime: it registers with torch once)

pytest_plugins = ["pytester"]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODES = {"defaults": (), "one_schedule": ("--streamorder-schedules=1",)}

UNTIMED = """
import torch

def test_untimed_two_stream_program():
    side = torch.cuda.Stream()
    x = torch.arange(64, device="cuda")
    for _ in range(20):
        y = x * 2
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            z = (y + 1).sum()
        torch.cuda.current_stream().wait_stream(side)
        x = x + z
    assert x.cpu().shape == (64,)
"""


def _explored(result) -> int:
    text = result.stdout.str()
    found = re.search(r"(\d+) schedules explored", text)
    assert found, text[-2000:]
    return int(found.group(1))


def _run(benchmark, pytester, args):
    outcome = {}

    def once():
        outcome["result"] = result = pytester.runpytest("--streamorder", "-p", "no:randomly",
                                                        "-p", "no:cacheprovider", *args)
        return result

    benchmark.pedantic(once, rounds=3, iterations=1, warmup_rounds=1)
    result = outcome["result"]
    assert result.ret == 0, result.stdout.str()[-3000:]
    benchmark.extra_info["schedules_explored"] = _explored(result)
    return result


@pytest.mark.parametrize("mode", MODES)
def test_untimed_program(benchmark, pytester, mode):
    pytester.makepyfile(test_untimed=UNTIMED)
    _run(benchmark, pytester, MODES[mode])
    assert benchmark.extra_info["schedules_explored"] == 1  # nothing observed: one is enough


@pytest.mark.parametrize("mode", MODES)
def test_reference_suite(benchmark, pytester, mode):
    _run(benchmark, pytester, (os.path.join(REPO, "tests", "reference"), f"--rootdir={REPO}",
                               *MODES[mode]))
    assert benchmark.extra_info["schedules_explored"] >= 5  # one per test at least
