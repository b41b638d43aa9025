"""The written schedule through the plugin: the token a failure prints replays that run
exactly; a long one is written to pytest's cache and named with '@'; a bad token or a
replay that no longer fits the test says what is wrong."""

from __future__ import annotations

import re
import shlex

import pytest
import torch  # noqa: F401  (imported once here: pytester's in-process runs cannot re-import torch)
import torch._dynamo  # noqa: F401

import pytest_streamorder.sim.device  # noqa: F401  (likewise)
from pytest_streamorder.scheduling import MAX_INLINE, parse_replay

pytest_plugins = ["pytester"]

BROKEN = """
import torch

def test_d2h_not_gated():
    buf = torch.zeros(4, dtype=torch.int64, device="cuda")
    pinned = torch.zeros(4, dtype=torch.int64, pin_memory=True)
    fwd, d2h = torch.cuda.Stream(), torch.cuda.Stream()
    torch.cuda.synchronize()
    with torch.cuda.stream(fwd):
        buf.add_(7)
    with torch.cuda.stream(d2h):          # missing: d2h.wait_stream(fwd)
        pinned.copy_(buf, non_blocking=True)
    d2h.synchronize()
    assert pinned.tolist() == [7, 7, 7, 7]
"""

# Many launches on three streams (each stream only touches its own buffer: no race), then
# a failure at the end, so that the plugin prints the whole schedule's replay argument.
LONG = """
import torch

ROUNDS = {rounds}

def test_long():
    streams = [torch.cuda.Stream() for _ in range(3)]
    bufs = [torch.zeros(2, dtype=torch.int64, device="cuda") for _ in streams]
    torch.cuda.synchronize()
    for i in range(ROUNDS):
        for s, b in zip(streams, bufs):
            with torch.cuda.stream(s):
                b.add_(1)
    torch.cuda.synchronize()
    assert [b.tolist() for b in bufs] == [[ROUNDS, ROUNDS]] * 3
    assert False, "fail after the work, so that the schedule is printed"
"""


def replay_arg(result) -> str:
    out = result.stdout.str()
    found = re.findall(r"replay: pytest --streamorder --streamorder-replay=(\S+) ", out)
    assert found, out
    return shlex.split(found[0])[0]


def test_the_printed_token_replays_the_failing_run(pytester):
    pytester.makepyfile(test_broken=BROKEN)
    first = pytester.runpytest("--streamorder", "--streamorder-policy=random",
                               "--streamorder-seed=3", "-p", "no:randomly")
    first.assert_outcomes(failed=1)
    token = replay_arg(first)
    schedule = parse_replay(token)
    assert (schedule.policy, schedule.seed) == ("random", 3) and schedule.choices is not None
    again = pytester.runpytest("--streamorder", f"--streamorder-replay={token}", "-p", "no:randomly")
    again.assert_outcomes(failed=1)
    again.stdout.fnmatch_lines([f"streamorder: virtual CUDA device, replay {token}",
                                "*StreamRaceError: stream-order race on 'buf'*",
                                "*1 tests checked, 1 schedules explored*1 races found*"])
    assert replay_arg(again) == token  # the same run, so the same schedule


def test_a_long_schedule_goes_to_the_cache_and_replays_from_there(pytester):
    pytester.makepyfile(test_long=LONG.format(rounds=300))
    first = pytester.runpytest("--streamorder", "--streamorder-policy=random", "-p", "no:randomly")
    first.assert_outcomes(failed=1)
    arg = replay_arg(first)
    assert arg.startswith("@.pytest_cache/d/streamorder/test_long.py_test_long-") and \
        arg.endswith(".schedule") and len(arg) <= MAX_INLINE
    path = pytester.path / arg[1:]
    text = path.read_text()
    assert "# test test_long.py::test_long" in text
    token = text.splitlines()[-1]
    assert token.startswith("v1.random.s0.") and len(token) > MAX_INLINE
    again = pytester.runpytest("--streamorder", f"--streamorder-replay={arg}", "-p", "no:randomly")
    again.assert_outcomes(failed=1)
    again.stdout.fnmatch_lines(["*AssertionError: fail after the work*"])
    assert replay_arg(again) == arg


def test_without_a_cache_the_file_goes_to_the_temp_dir(pytester, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(pytester.path / "tmp"))
    (pytester.path / "tmp").mkdir()
    pytester.makepyfile(test_long=LONG.format(rounds=300))
    first = pytester.runpytest("--streamorder", "--streamorder-policy=random",
                               "-p", "no:randomly", "-p", "no:cacheprovider")
    first.assert_outcomes(failed=1)
    arg = replay_arg(first)
    assert arg.startswith("@") and "pytest-streamorder" in arg
    assert parse_replay(arg).policy == "random"


@pytest.mark.parametrize("token, message", [
    ("v1.random.s0.AAAA", "*--streamorder-replay takes the token a failure printed (or @file): "
                          "replay token 'v1.random.s0.AAAA' fails its checksum*"),
    ("v9.random.s0.AAAA", "*has version 'v9'; this pytest-streamorder reads 'v1'*"),
    ("@nowhere.schedule", "*cannot read the schedule file 'nowhere.schedule'*"),
])
def test_a_bad_token_is_a_usage_error(pytester, token, message):
    pytester.makepyfile(test_broken=BROKEN)
    result = pytester.runpytest(f"--streamorder-replay={token}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_a_replay_that_no_longer_fits_the_test_says_where(pytester):
    pytester.makepyfile(test_long=LONG.format(rounds=20))
    first = pytester.runpytest("--streamorder", "--streamorder-policy=random", "-p", "no:randomly")
    token = replay_arg(first)
    pytester.makepyfile(test_long=LONG.format(rounds=12))  # the test changed since
    again = pytester.runpytest("--streamorder", f"--streamorder-replay={token}", "-p", "no:randomly")
    again.assert_outcomes(failed=1)
    again.stdout.fnmatch_lines(["*ScheduleDiverged: replayed schedule diverged at choice #*"])
