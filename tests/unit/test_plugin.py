"""The pytest plugin, driven through pytester on small plain torch.cuda test files."""

import subprocess
import sys

import pytest
import torch  # noqa: F401  (imported once here: pytester's in-process runs cannot re-import torch)
import torch._dynamo  # noqa: F401

import pytest_streamorder.sim.device  # noqa: F401  (likewise)

pytest_plugins = ["pytester"]

BROKEN = """
import torch

def test_d2h_not_gated():
    fwd, d2h = torch.cuda.Stream(), torch.cuda.Stream()
    buf = torch.zeros(4, dtype=torch.int64, device="cuda")
    pinned = torch.empty(4, dtype=torch.int64, pin_memory=True)
    torch.cuda.synchronize()
    with torch.cuda.stream(fwd):
        buf.add_(7)
    with torch.cuda.stream(d2h):          # missing: d2h.wait_stream(fwd)
        pinned.copy_(buf, non_blocking=True)
    d2h.synchronize()
    assert pinned.tolist() == [7, 7, 7, 7]
"""

CORRECT = BROKEN.replace("    with torch.cuda.stream(d2h):          # missing: d2h.wait_stream(fwd)",
                         "    d2h.wait_stream(fwd)\n    with torch.cuda.stream(d2h):")


def test_broken_test_fails_with_report_and_replay_line(pytester):
    pytester.makepyfile(test_broken=BROKEN)
    result = pytester.runpytest("--streamorder", "-p", "no:randomly")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*StreamRaceError: stream-order race on 'buf'*",
        "*missing edge: stream 'd2h' read this before waiting for any event recorded on 'fwd'*",
        "*replay: pytest --streamorder --streamorder-replay=v1.lazy.s0.* 'test_broken.py::test_d2h_not_gated'*",
        "*1 tests checked, 1 schedules explored*1 races found*",
    ])


def test_correct_twin_passes_every_schedule(pytester):
    pytester.makepyfile(test_correct=CORRECT)
    result = pytester.runpytest("--streamorder", "--streamorder-schedules=12",
                                "--streamorder-explore=random")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*1 tests checked, 12 schedules explored*0 races found*"])


def test_replay_runs_exactly_that_schedule_and_fails_the_same_way(pytester):
    pytester.makepyfile(test_broken=BROKEN)
    result = pytester.runpytest("--streamorder", "--streamorder-replay=delay:5")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*policy delay, seed 5*",
        "*--streamorder-replay=v1.delay.s5.* *",
        "*1 tests checked, 1 schedules explored*",
    ])


def test_header_and_seed_last(pytester):
    pytester.makepyfile(test_correct=CORRECT)
    first = pytester.runpytest("--streamorder", "--streamorder-seed=41")
    first.stdout.fnmatch_lines(["streamorder: virtual CUDA device, seed=41 policy=mix schedules=8"])
    again = pytester.runpytest("--streamorder", "--streamorder-seed=last")
    again.stdout.fnmatch_lines(["streamorder: virtual CUDA device, seed=41 *"])


def test_precedence_ini_env_cli_marker(pytester, monkeypatch):
    monkeypatch.setenv("STREAMORDER_EXPLORE", "random")  # every schedule the budget allows
    pytester.makeini("[pytest]\nstreamorder_schedules = 3\n")
    pytester.makepyfile(test_correct=CORRECT + """

import pytest

@pytest.mark.streamorder(schedules=2, policy="lazy")
def test_marked():
    test_d2h_not_gated()
""")
    result = pytester.runpytest("--streamorder", "-v")
    result.stdout.fnmatch_lines(["*policy=mix schedules=3*", "*2 tests checked, 5 schedules*"])
    monkeypatch.setenv("STREAMORDER_SCHEDULES", "4")
    result = pytester.runpytest("--streamorder")
    result.stdout.fnmatch_lines(["*2 tests checked, 6 schedules*"])
    result = pytester.runpytest("--streamorder", "--streamorder-schedules=1")
    result.stdout.fnmatch_lines(["*2 tests checked, 3 schedules*"])


def test_no_streamorder_marker_runs_plainly(pytester):
    pytester.makepyfile(test_plain="""
import pytest, torch

@pytest.mark.no_streamorder
def test_plain():
    assert not torch.cuda.is_available()   # the CPU machine, not the virtual device
""")
    result = pytester.runpytest("--streamorder", "--strict-markers")
    result.assert_outcomes(passed=1)


def test_off_without_the_flag(pytester):
    pytester.makepyfile(test_plain="""
import torch

def test_plain():
    assert not torch.cuda.is_available()
""")
    result = pytester.runpytest()
    result.assert_outcomes(passed=1)
    out = result.stdout.str()
    assert "streamorder: virtual CUDA device" not in out and "schedules explored" not in out


@pytest.mark.parametrize("args, message", [
    (["--streamorder-replay=fast:1"], "--streamorder-replay takes the token*"),
    (["--streamorder", "--streamorder-seed=abc"],
     "flag --streamorder-seed=abc: seed must be an integer, or 'last'*"),
    (["--streamorder", "--streamorder-schedules=0"],
     "flag --streamorder-schedules=0: schedules must be an integer >= 1"),
])
def test_bad_options_are_usage_errors(pytester, args, message):
    pytester.makepyfile(test_correct=CORRECT)
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{message}"])


def test_op_bound_is_a_clear_error(pytester):
    pytester.makepyfile(test_correct=CORRECT)
    result = pytester.runpytest("--streamorder", "--streamorder-max-ops=2")  # it issues 3
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*DeviceOpLimitExceeded: the program issued more than 2 device ops*"])


def test_loading_the_plugin_does_not_import_torch():
    code = ("import sys, pytest_streamorder, pytest_streamorder.plugin; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_trace_dir_gets_a_perfetto_trace_and_an_html_timeline(pytester):
    import json

    pytester.makepyfile(test_broken=BROKEN)
    result = pytester.runpytest("--streamorder", "--streamorder-trace-dir=traces")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*trace: traces/*lazy-0.trace.json and traces/*lazy-0.html*"])
    trace_file, = pytester.path.joinpath("traces").glob("*.trace.json")
    events = json.loads(trace_file.read_text())["traceEvents"]
    tracks = {e["args"]["name"] for e in events if e["ph"] == "M"}
    assert tracks == {"host", "stream 'default'", "stream 'fwd'", "stream 'd2h'"}
    racy = [e for e in events if e.get("cname") == "terrible"]
    assert sorted(e["name"] for e in racy) == ["D2H copy_", "aten.add_.Tensor"]
    assert any(e["ph"] == "i" and "missing edge" in e["args"]["report"] for e in events)
    page, = pytester.path.joinpath("traces").glob("*.html")
    text = page.read_text()
    assert "<svg" in text and "stream-order race on" in text
    assert "http" not in text and "<script" not in text  # self-contained: nothing to fetch


FIXTURE_PROGRAM = """
import torch

def test_fixture(streamorder):
    assert streamorder.active and streamorder.schedule.policy == "lazy"
    s = torch.cuda.Stream()
    streamorder.name_stream(s, "prefill")
    x = torch.ones(4, device="cuda")
    out = torch.empty(4, device="cuda")
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        streamorder.kernel("triton_double", reads=[x], writes=[out], launch=None,
                           cpu_impl=lambda a, o: o.copy_(a * 2))
    torch.cuda.synchronize()
    assert out.tolist() == [2.0] * 4
    assert streamorder.races == []
"""


def test_streamorder_fixture_names_streams_declares_kernels_and_reads_state(pytester):
    pytester.makepyfile(test_fixture=FIXTURE_PROGRAM)
    args = ("--streamorder", "--streamorder-policy=lazy", "--streamorder-schedules=1")
    pytester.runpytest(*args).assert_outcomes(passed=1)
    pytester.makepyfile(test_fixture=FIXTURE_PROGRAM.replace(
        "    s.wait_stream(torch.cuda.current_stream())\n", ""))
    result = pytester.runpytest(*args)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*read by stream 'prefill' in triton_double*"])


def test_streamorder_fixture_without_the_flag_runs_the_real_launch(pytester):
    pytester.makepyfile(test_fixture="""
def test_fixture(streamorder):
    ran = []
    streamorder.kernel("k", reads=[], writes=[], launch=lambda: ran.append(1))
    assert ran == [1] and not streamorder.active and streamorder.races == []
""")
    pytester.runpytest().assert_outcomes(passed=1)


def test_xdist_gives_the_same_results_and_summary(pytester):
    pytest.importorskip("xdist")
    pytester.makepyfile(test_broken=BROKEN, test_correct=CORRECT)
    plain = pytester.runpytest("--streamorder", "--streamorder-seed=7")
    spread = pytester.runpytest("--streamorder", "--streamorder-seed=7", "-n", "2")
    plain.assert_outcomes(passed=1, failed=1)
    spread.assert_outcomes(passed=1, failed=1)
    for result in (plain, spread):
        result.stdout.fnmatch_lines([
            "*--streamorder-replay=v1.lazy.s7.* 'test_broken.py::test_d2h_not_gated'*",
            "*2 tests checked, 2 schedules explored, 6 device ops simulated, 1 races found*",
        ])


HYPOTHESIS_BROKEN = """
import torch
from hypothesis import given, strategies as st

@given(st.integers(1, 8))
def test_gate_only_small_batches(n):
    fwd, d2h = torch.cuda.Stream(), torch.cuda.Stream()
    buf = torch.zeros(n, dtype=torch.int64, device="cuda")
    pinned = torch.empty(n, dtype=torch.int64, pin_memory=True)
    torch.cuda.synchronize()
    with torch.cuda.stream(fwd):
        buf.add_(7)
    if n < 3:                              # the bug: large batches skip the wait
        d2h.wait_stream(fwd)
    with torch.cuda.stream(d2h):
        pinned.copy_(buf, non_blocking=True)
    d2h.synchronize()
    assert pinned.tolist() == [7] * n
"""


def test_hypothesis_examples_each_get_a_device_and_the_failure_shrinks(pytester):
    pytester.makepyfile(test_hyp=HYPOTHESIS_BROKEN)
    result = pytester.runpytest("--streamorder", "-p", "no:randomly", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "Flaky" not in out
    result.stdout.fnmatch_lines([
        "*StreamRaceError*",
        "*n=3*",  # shrunk to the smallest batch that skips the wait
        "*streamorder: failed in a Hypothesis example*",
    ])


def test_hypothesis_examples_are_counted_as_schedules(pytester):
    pytester.makepyfile(test_hyp=HYPOTHESIS_BROKEN.replace("if n < 3:", "if True:"))
    result = pytester.runpytest("--streamorder", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    line = result.stdout.str().split("1 tests checked, ")[1].split(" schedules")[0]
    assert int(line) >= 20, line  # one virtual device per example, not one per test


def test_inside_a_hypothesis_example_the_schedule_is_drawn_from_its_data(pytester):
    pytester.makepyfile(test_hyp="""
import torch
from hypothesis import given, settings, strategies as st
from pytest_streamorder.strategies import HypothesisChooser
seen = set()

@settings(max_examples=30)
@given(st.integers(0, 3))
def test_each_example_has_its_own_device(n):
    import pytest_streamorder.sim.device as dev
    vd = dev._active  # the session's device: each example is a run (schedule) of its own
    assert vd is not None and vd.hypothesis_example
    assert isinstance(vd.chooser, HypothesisChooser)
    seen.add(id(vd.run))
    torch.ones(2, device="cuda").add_(n).tolist()

def test_after():
    assert len(seen) >= 30
""")
    result = pytester.runpytest("--streamorder", "-p", "no:randomly", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


def test_backend_option(pytester):
    pytester.makepyfile(test_correct=CORRECT)
    result = pytester.runpytest("--streamorder", "--streamorder-backend=sim")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["streamorder: virtual CUDA device, *"])
    if not torch.cuda.is_available():
        result = pytester.runpytest("--streamorder", "--streamorder-backend=cuda")
        assert result.ret != 0
        result.stderr.fnmatch_lines(["*--streamorder-backend=cuda needs a CUDA GPU*"])
