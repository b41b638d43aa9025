"""The settings layer: ini < environment variable < flag < marker, every value checked
once, and every bad value reported with where it came from and what is allowed."""

import pytest
import torch
import torch._dynamo  # noqa: F401  (pytester's in-process runs cannot re-import torch)

import pytest_streamorder.sim.device  # noqa: F401  (likewise)
from tests.unit.test_plugin import BROKEN, CORRECT

pytest_plugins = ["pytester"]

POLICIES = "one of eager, lazy, random, pct, delay, mix"


@pytest.fixture(autouse=True)
def _no_streamorder_environment(monkeypatch):
    """The outer run's STREAMORDER_* variables must not leak into the runs under test."""
    import os

    for name in list(os.environ):
        if name.startswith("STREAMORDER_"):
            monkeypatch.delenv(name)


def usage_error(result, line: str) -> None:
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.ret
    result.stderr.fnmatch_lines([f"ERROR: {line}"])


# --- each source named in its errors -------------------------------------------------------

@pytest.mark.parametrize("variable, value, line", [
    ("STREAMORDER_POLICY", "foo", f"environment variable STREAMORDER_POLICY=foo: policy must be {POLICIES}"),
    ("STREAMORDER_SCHEDULES", "0", "environment variable STREAMORDER_SCHEDULES=0: schedules must be an integer >= 1"),
    ("STREAMORDER_SCHEDULES", "-1", "environment variable STREAMORDER_SCHEDULES=-1: schedules must be an integer >= 1"),
    ("STREAMORDER_SEED", "1.5", "environment variable STREAMORDER_SEED=1.5: seed must be an integer, or 'last'*"),
    ("STREAMORDER_MAX_OPS", "0", "environment variable STREAMORDER_MAX_OPS=0: max_ops must be an integer >= 1"),
    ("STREAMORDER_BACKEND", "gpu", "environment variable STREAMORDER_BACKEND=gpu: backend must be one of auto, sim, cuda"),
])
def test_a_bad_environment_variable_is_named(pytester, monkeypatch, variable, value, line):
    pytester.makepyfile(test_correct=CORRECT)
    monkeypatch.setenv(variable, value)
    result = pytester.runpytest("--streamorder")
    usage_error(result, line)
    assert "--streamorder-" not in result.stderr.str()  # no flag the user never passed


@pytest.mark.parametrize("key, value, line", [
    ("streamorder_policy", "foo", f"policy must be {POLICIES}"),
    ("streamorder_schedules", "0", "schedules must be an integer >= 1"),
    ("streamorder_seed", "abc", "seed must be an integer, or 'last'*"),
    ("streamorder_max_ops", "many", "max_ops must be an integer >= 1"),
    ("streamorder_backend", "gpu", "backend must be one of auto, sim, cuda"),
    ("streamorder", "maybe", "streamorder must be true or false*"),
])
def test_a_bad_ini_value_is_named_with_its_file(pytester, key, value, line):
    pytester.makepyfile(test_correct=CORRECT)
    ini = pytester.makeini(f"[pytest]\n{key} = {value}\n")
    on = () if key == "streamorder" else ("--streamorder",)  # the flag would win over the key
    result = pytester.runpytest(*on)
    usage_error(result, f"ini key {key} = {value} in {ini}: {line}")
    result = pytester.runpytest(*on, "-o", f"{key}={value}")  # -o is an ini value too
    usage_error(result, f"-o {key}={value}: {line}")


@pytest.mark.parametrize("flag, line", [
    ("--streamorder-policy=foo", f"flag --streamorder-policy=foo: policy must be {POLICIES}"),
    ("--streamorder-schedules=-3", "flag --streamorder-schedules=-3: schedules must be an integer >= 1"),
    ("--streamorder-schedules=two", "flag --streamorder-schedules=two: schedules must be an integer >= 1"),
    ("--streamorder-max-ops=0", "flag --streamorder-max-ops=0: max_ops must be an integer >= 1"),
    ("--streamorder-seed=", "flag --streamorder-seed=: seed must be an integer, or 'last'*"),
    ("--streamorder-backend=gpu", "flag --streamorder-backend=gpu: backend must be one of auto, sim, cuda"),
])
def test_a_bad_flag_is_named(pytester, flag, line):
    pytester.makepyfile(test_correct=CORRECT)
    usage_error(pytester.runpytest("--streamorder", flag), line)


def test_seed_last_with_an_empty_cache_names_its_source(pytester, monkeypatch):
    pytester.makepyfile(test_correct=CORRECT)
    monkeypatch.setenv("STREAMORDER_SEED", "last")
    usage_error(pytester.runpytest("--streamorder"),
                "environment variable STREAMORDER_SEED=last: no earlier run's seed in pytest's cache")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_a_cuda_replay_token_without_a_gpu_blames_the_replay_flag(pytester):
    pytester.makepyfile(test_correct=CORRECT)
    result = pytester.runpytest("--streamorder", "--streamorder-replay=cuda:3")
    usage_error(result, "flag --streamorder-replay=cuda:3 needs a CUDA GPU, and "
                        "torch.cuda.is_available() is False here")
    assert "backend" not in result.stderr.str()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_the_cuda_backend_from_the_environment_without_a_gpu_blames_the_variable(pytester, monkeypatch):
    pytester.makepyfile(test_correct=CORRECT)
    monkeypatch.setenv("STREAMORDER_BACKEND", "cuda")
    usage_error(pytester.runpytest("--streamorder"),
                "environment variable STREAMORDER_BACKEND=cuda needs a CUDA GPU*")


def test_settings_are_not_read_without_streamorder(pytester, monkeypatch):
    """A bad value in a setting that is not used stops nothing; nor one a higher source
    overrides (it is never read)."""
    pytester.makepyfile(test_plain="def test_plain():\n    pass\n", test_correct=CORRECT)
    monkeypatch.setenv("STREAMORDER_POLICY", "foo")
    pytester.runpytest("test_plain.py").assert_outcomes(passed=1)
    result = pytester.runpytest("--streamorder", "--streamorder-policy=lazy", "test_correct.py")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["streamorder: virtual CUDA device, seed=0 policy=lazy schedules=8"])


def test_precedence_of_policy_and_seed_ini_env_flag(pytester, monkeypatch):
    pytester.makepyfile(test_correct=CORRECT)
    pytester.makeini("[pytest]\nstreamorder_policy = eager\nstreamorder_seed = 3\n"
                     "streamorder_schedules = 2\n")
    header = "streamorder: virtual CUDA device, seed={} policy={} schedules=2"
    pytester.runpytest("--streamorder").stdout.fnmatch_lines([header.format(3, "eager")])
    monkeypatch.setenv("STREAMORDER_POLICY", "delay")
    pytester.runpytest("--streamorder").stdout.fnmatch_lines([header.format(3, "delay")])
    monkeypatch.setenv("STREAMORDER_SEED", "5")
    result = pytester.runpytest("--streamorder", "--streamorder-policy=pct")
    result.stdout.fnmatch_lines([header.format(5, "pct")])
    result = pytester.runpytest("--streamorder", "--streamorder-seed=9")
    result.stdout.fnmatch_lines([header.format(9, "delay")])


def test_the_streamorder_switch_from_ini(pytester):
    pytester.makepyfile(test_correct=CORRECT)
    pytester.makeini("[pytest]\nstreamorder = yes\n")
    result = pytester.runpytest()
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*1 tests checked, 1 schedules explored*"])
    pytester.makeini("[pytest]\nstreamorder = off\n")
    assert "schedules explored" not in pytester.runpytest().stdout.str()


# --- markers: checked at collection ------------------------------------------------------

MARKED = """
import pytest

{decorators}
def test_marked():
    open("body_ran", "a").write("x")
    assert False
"""


def marker_error(pytester, decorators: str, line: str, *args) -> None:
    """The marked test (whose body fails) is a collection error naming the test, its body
    never runs, and the run fails."""
    pytester.makepyfile(test_marked=MARKED.format(decorators=decorators))
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.INTERRUPTED, result.ret
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([f"{line}", "*Interrupted: 1 error during collection*"])
    assert not pytester.path.joinpath("body_ran").exists()


NODE = "on test_marked.py::test_marked"


@pytest.mark.parametrize("value", [-1, 0, True, "3", 2.0])
def test_marker_schedules_must_be_at_least_one(pytester, value):
    marker_error(pytester, f"@pytest.mark.streamorder(schedules={value!r})",
                 f"marker @pytest.mark.streamorder(schedules={value!r}) {NODE}: schedules "
                 "must be an integer >= 1", "--streamorder")


@pytest.mark.parametrize("decorators, line", [
    ("@pytest.mark.streamorder(schedule=3)",
     f"marker @pytest.mark.streamorder(schedule=3) {NODE}: unknown argument 'schedule'; the "
     "marker takes schedules=, policy=, seed="),
    ("@pytest.mark.streamorder(max_ops=3)",  # a session setting, not a test's
     f"marker @pytest.mark.streamorder(max_ops=3) {NODE}: unknown argument 'max_ops'*"),
    ("@pytest.mark.streamorder(3)",
     f"marker @pytest.mark.streamorder(3) {NODE}: it takes keyword arguments only "
     "(schedules=, policy=, seed=)"),
    ('@pytest.mark.streamorder(policy="foo")',
     f"marker @pytest.mark.streamorder(policy='foo') {NODE}: policy must be {POLICIES}"),
    ('@pytest.mark.streamorder(seed="7")',
     f"marker @pytest.mark.streamorder(seed='7') {NODE}: seed must be an integer*"),
    ('@pytest.mark.streamorder(seed="last")',
     f"marker @pytest.mark.streamorder(seed='last') {NODE}: seed must be *(a marker pins one "
     "test's seed: 'last' is for a whole run)"),
    ("@pytest.mark.streamorder(schedules=2)\n@pytest.mark.no_streamorder",
     f"markers @pytest.mark.streamorder and @pytest.mark.no_streamorder both {NODE}: a test "
     "is either checked or run plainly; remove one"),
    ("@pytest.mark.no_streamorder(schedules=2)",
     f"marker @pytest.mark.no_streamorder {NODE} takes no arguments"),
])
def test_a_bad_marker_is_a_collection_error_naming_the_test(pytester, decorators, line):
    marker_error(pytester, decorators, line, "--streamorder")


def test_markers_are_checked_without_streamorder_too(pytester):
    marker_error(pytester, "@pytest.mark.streamorder(schedules=-1)",
                 f"marker @pytest.mark.streamorder(schedules=-1) {NODE}: *")


def test_both_markers_one_on_the_class_is_an_error(pytester):
    pytester.makepyfile(test_marked="""
import pytest

@pytest.mark.no_streamorder
class TestPlain:
    @pytest.mark.streamorder(schedules=2)
    def test_marked(self):
        assert False
""")
    result = pytester.runpytest("--streamorder")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["markers @pytest.mark.streamorder and @pytest.mark.no_streamorder "
                                 "both on test_marked.py::TestPlain::test_marked*"])


def test_every_bad_marker_is_reported_and_good_tests_are_not_run(pytester):
    pytester.makepyfile(test_marked="""
import pytest

@pytest.mark.streamorder(schedules=-1)
def test_one():
    assert False

@pytest.mark.streamorder(policy="fast")
def test_two():
    assert False

def test_fine():
    open("body_ran", "a").write("x")
""")
    result = pytester.runpytest("--streamorder")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(["*test_marked.py::test_one: schedules must be*",
                                 "*test_marked.py::test_two: policy must be*"])
    assert not pytester.path.joinpath("body_ran").exists()
    assert "tests checked" not in result.stdout.str()  # nothing ran: no summary


def test_a_bad_marker_under_xdist_is_a_collection_error_not_an_internal_error(pytester):
    pytest.importorskip("xdist")
    pytester.makepyfile(test_marked=MARKED.format(decorators="@pytest.mark.streamorder(schedules=-1)"))
    result = pytester.runpytest("--streamorder", "-n", "2")
    assert result.ret not in (pytest.ExitCode.OK, pytest.ExitCode.INTERNAL_ERROR)
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    result.stdout.fnmatch_lines([f"*schedules=-1) {NODE}: schedules must be an integer >= 1*"])
    assert not pytester.path.joinpath("body_ran").exists()


def test_a_deselected_test_is_not_checked(pytester):
    pytester.makepyfile(test_marked=MARKED.format(decorators="@pytest.mark.streamorder(schedules=-1)")
                        + "\ndef test_other():\n    pass\n")
    pytester.runpytest("--streamorder", "-k", "test_other").assert_outcomes(passed=1, deselected=1)


def test_markers_merge_and_the_nearest_wins(pytester):
    pytester.makepyfile(test_marked="""
import pytest
import torch

pytestmark = pytest.mark.streamorder(schedules=5, seed=100)

@pytest.mark.streamorder(schedules=3, policy="lazy")
class TestMarked:
    @pytest.mark.streamorder(seed=40)
    def test_marked(self, streamorder):
        schedule = streamorder.schedule
        assert schedule.policy == "lazy"
        open("seeds", "a").write(f"{schedule.seed} ")
        torch.ones(2, device="cuda").tolist()
""")
    result = pytester.runpytest("--streamorder", "--streamorder-schedules=7",
                                "--streamorder-explore=random")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*1 tests checked, 3 schedules explored*"])
    assert pytester.path.joinpath("seeds").read_text().split() == ["40", "41", "42"]


def test_a_marker_with_schedules_one_runs_the_body_once_and_fails_it(pytester):
    pytester.makepyfile(test_marked=MARKED.format(decorators="@pytest.mark.streamorder(schedules=1)"))
    result = pytester.runpytest("--streamorder")
    result.assert_outcomes(failed=1)
    assert pytester.path.joinpath("body_ran").read_text() == "x"


def test_the_replay_token_runs_one_schedule_despite_the_marker(pytester):
    pytester.makepyfile(test_broken=BROKEN.replace(
        "def test_d2h", "import pytest\n\n@pytest.mark.streamorder(schedules=4)\ndef test_d2h"))
    result = pytester.runpytest("--streamorder", "--streamorder-replay=lazy:2")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*policy lazy, seed 2*", "*1 tests checked, 1 schedules explored*"])
