"""What the plugin must not do: import torch when it need not, die under `-W error`,
print a section that says nothing (or one twice), show Hypothesis' frames in a race
stack, or run a failing test's body again to write its trace."""

import json
import subprocess
import sys

import pytest
import torch  # noqa: F401  (pytester's in-process runs cannot re-import torch)
import torch._dynamo  # noqa: F401

import pytest_streamorder.sim.device  # noqa: F401  (likewise)
from tests.unit.test_plugin import BROKEN, CORRECT, HYPOTHESIS_BROKEN

pytest_plugins = ["pytester"]

# Written by the run under test when it ends: was torch (NumPy) ever imported in it?
TORCH_PROBE = """
import sys

def pytest_unconfigure(config):
    open("torch_loaded", "w").write(str("torch" in sys.modules))
    open("numpy_loaded", "w").write(str("numpy" in sys.modules))
"""
TORCH_FREE_TEST = """
def test_nothing_of_torch():
    pass
"""


@pytest.mark.parametrize("args", [("--collect-only", "--streamorder"), ()],
                         ids=["collect-only", "without-streamorder"])
def test_no_torch_import_when_no_test_runs_under_the_device(pytester, args):
    pytester.makeconftest(TORCH_PROBE)
    pytester.makepyfile(test_plain=TORCH_FREE_TEST)
    result = pytester.runpytest_subprocess(*args)
    assert result.ret == pytest.ExitCode.OK
    assert pytester.path.joinpath("torch_loaded").read_text() == "False"
    # NumPy is imported only by torch, or when a pinned tensor's .numpy() is called
    assert pytester.path.joinpath("numpy_loaded").read_text() == "False"
    assert "schedules explored" not in result.stdout.str()  # no summary of nothing


def test_the_probe_sees_torch_when_tests_run_under_streamorder(pytester):
    """The probe above can fail: a real --streamorder run imports torch."""
    pytester.makeconftest(TORCH_PROBE)
    pytester.makepyfile(test_plain=TORCH_FREE_TEST)
    result = pytester.runpytest_subprocess("--streamorder")
    result.assert_outcomes(passed=1)
    assert pytester.path.joinpath("torch_loaded").read_text() == "True"
    result.stdout.fnmatch_lines(["*1 tests checked, 1 schedules explored*"])


def test_collect_only_prints_the_header_and_no_summary(pytester):
    pytester.makepyfile(test_correct=CORRECT)
    result = pytester.runpytest("--collect-only", "--streamorder", "--streamorder-trace-dir=traces")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["streamorder: backend auto, seed=0 policy=mix schedules=8"])
    assert "tests checked" not in result.stdout.str()
    assert not pytester.path.joinpath("traces").exists()  # nothing made for a run that runs nothing


# An environment without NumPy, made in the subprocess whether or not this one has it: a
# `numpy` package first on sys.path (the run's folder) that fails to import as a missing
# one does. The test extra installs NumPy (for the NumPy-view tests), so without this the
# case below would never run in CI.
NUMPY_HIDDEN = """raise ModuleNotFoundError("No module named 'numpy'", name="numpy")\n"""


def _hide_numpy(pytester) -> None:
    pytester.path.joinpath("numpy").mkdir()
    pytester.path.joinpath("numpy", "__init__.py").write_text(NUMPY_HIDDEN)


@pytest.mark.parametrize("backend", ["auto", "sim"])
def test_warnings_as_errors_without_numpy_is_no_internal_error(pytester, backend):
    _hide_numpy(pytester)
    # the case this is about: torch's import warns here
    warns = subprocess.run([sys.executable, "-W", "error", "-c", "import torch"],
                           capture_output=True, text=True, cwd=pytester.path)
    assert "Failed to initialize NumPy" in warns.stderr
    pytester.makepyfile(test_correct=CORRECT)
    result = pytester.runpytest_subprocess("-W", "error", "--streamorder", "-p", "no:randomly",
                                           f"--streamorder-backend={backend}")
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    result.assert_outcomes(passed=1)


def test_only_torchs_numpy_warning_is_ignored_and_only_while_the_plugin_imports(pytester):
    pytester.makepyfile(test_warns="""
import warnings

def test_user_warning_with_the_same_words():
    warnings.warn("Failed to initialize NumPy: from the test itself", UserWarning)

def test_other_warning():
    warnings.warn("something else", UserWarning)
""")
    result = pytester.runpytest_subprocess("-W", "error", "--streamorder", "-p", "no:randomly")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*UserWarning: Failed to initialize NumPy: from the test itself*",
                                 "*UserWarning: something else*"])


# --- report sections ---------------------------------------------------------------------

SECTION = "Captured streamorder call"


def test_a_passing_test_shows_a_section_only_when_passes_are_asked_for(pytester):
    pytester.makepyfile(test_correct=CORRECT)
    plain = pytester.runpytest("--streamorder", "--streamorder-schedules=3")
    plain.assert_outcomes(passed=1)
    assert SECTION not in plain.stdout.str()
    asked = pytester.runpytest("--streamorder", "--streamorder-schedules=3", "-rA")
    assert asked.stdout.str().count(SECTION) == 1
    # no timing-dependent observation: one schedule decides it, and the section says so
    asked.stdout.fnmatch_lines([f"*{SECTION}*", "1 schedule(s), 3 device ops, 0 race(s)",
                                "1 schedule: no timing-dependent observation"])
    forced = pytester.runpytest("--streamorder", "--streamorder-schedules=3", "-rA",
                                "--streamorder-explore=random")
    forced.stdout.fnmatch_lines([f"*{SECTION}*", "3 schedule(s), 9 device ops, 0 race(s)"])


def test_a_failure_says_its_replay_line_once_and_has_one_section(pytester):
    pytester.makepyfile(test_broken=BROKEN)
    result = pytester.runpytest("--streamorder", "-rA", "-p", "no:randomly")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    # the report itself; under CI=true pytest also repeats the whole message in its short
    # summary, which is pytest's, not ours
    report = out.split("short test summary info")[0]
    assert report.count("replay: pytest --streamorder --streamorder-replay=v1.lazy.s0.") == 1
    assert out.count(SECTION) == 1
    result.stdout.fnmatch_lines([f"*{SECTION}*", "1 schedule(s), 3 device ops, 1 race(s)"])


def test_hypothesis_frames_are_not_in_race_stacks(pytester):
    pytester.makepyfile(test_hyp=HYPOTHESIS_BROKEN)
    result = pytester.runpytest("--streamorder", "-p", "no:randomly", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*earlier: write by stream 'fwd'*", "*at test_hyp.py:11 in *",
                                 "*later: read by stream 'd2h'*", "*at test_hyp.py:15 in *"])
    out = result.stdout.str()
    stack = out[out.index("earlier: write"):out.index("missing edge:")]
    assert "hypothesis" not in stack, stack


# --- trace files -------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["a_file/traces", "a_file"])
def test_a_trace_dir_that_cannot_be_made_is_a_usage_error(pytester, where, monkeypatch):
    pytester.makepyfile(test_correct=CORRECT)
    pytester.path.joinpath("a_file").write_text("not a directory")
    result = pytester.runpytest("--streamorder", f"--streamorder-trace-dir={where}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([
        f"ERROR: flag --streamorder-trace-dir={where}: trace_dir must be a writable directory, "
        f"or one that can be created (*a_file is not a directory)"])
    monkeypatch.setenv("STREAMORDER_TRACE_DIR", where)
    result = pytester.runpytest("--streamorder")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: environment variable STREAMORDER_TRACE_DIR={where}: *"])


COUNTED = """
import os
import torch

def test_fails_on_the_third_run():
    runs = int(open("runs").read()) + 1 if os.path.exists("runs") else 1
    open("runs", "w").write(str(runs))
    x = torch.ones(4, device="cuda")
    x.add_(runs)
    assert runs < 3, "failed on run %d" % runs
"""


def test_the_trace_is_of_the_failing_run_itself(pytester):
    pytester.makepyfile(test_counted=COUNTED)
    result = pytester.runpytest("--streamorder", "--streamorder-trace-dir=traces", "-p", "no:randomly",
                                "--streamorder-explore=random")
    result.assert_outcomes(failed=1)
    # Schedules 1 and 2 pass; the third (policy pct, seed 2) fails: its trace is written
    # from that run, so the body ran three times, not four.
    assert pytester.path.joinpath("runs").read_text() == "3"
    result.stdout.fnmatch_lines(["*failed on schedule 3 (policy pct, seed 2)*",
                                 "*replay: pytest --streamorder --streamorder-replay=v1.pct.s2.*",
                                 "*trace: traces/*pct-2.trace.json and traces/*pct-2.html*"])
    trace, = pytester.path.joinpath("traces").glob("*.trace.json")
    data = json.loads(trace.read_text())
    assert data["otherData"] == {"policy": "pct", "seed": 2}
    assert "aten.add_.Tensor" in {e["name"] for e in data["traceEvents"]}


def test_a_trace_that_cannot_be_written_keeps_the_replay_line(pytester):
    pytester.makepyfile(test_broken=BROKEN.replace(
        "    torch.cuda.synchronize()\n",  # the run itself puts a file where the dir should be
        "    torch.cuda.synchronize()\n    open('traces', 'w').write('in the way')\n", 1))
    result = pytester.runpytest("--streamorder", "--streamorder-trace-dir=traces", "-p", "no:randomly")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*StreamRaceError: stream-order race on 'buf'*",
        "*replay: pytest --streamorder --streamorder-replay=v1.lazy.s0.* 'test_broken.py::test_d2h_not_gated'*",
        "*trace: not written to traces: FileExistsError*"])


def test_a_race_trace_shows_both_sides_though_the_run_stopped_at_the_race(pytester):
    """The racing launch is refused and the write it races with may not have run yet:
    the trace draws them after what ran, with a note, both marked as the race."""
    pytester.makepyfile(test_broken=BROKEN)
    result = pytester.runpytest("--streamorder", "--streamorder-trace-dir=traces",
                                "--streamorder-replay=lazy:0")
    result.assert_outcomes(failed=1)
    trace, = pytester.path.joinpath("traces").glob("*lazy-0.trace.json")
    events = json.loads(trace.read_text())["traceEvents"]
    racy = {e["name"]: e["args"].get("note") for e in events if e.get("cname") == "terrible"}
    assert racy == {"aten.add_.Tensor": "queued, never ran: the run stopped at a race",
                    "D2H copy_": "launched here, never queued: the race was found at its launch"}
