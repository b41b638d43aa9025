"""The pytest plugin: `pytest --streamorder` runs each test on the virtual CUDA device
under several adversarial schedules, and fails it on a race report or a stale value.

Settings (ini < environment variable < flag < marker) are declared and checked in
settings.py; this module reads the checked `Settings`, never the environment.

Loading it stays cheap: nothing here imports torch without --streamorder, or under
--collect-only. With --streamorder, torch is imported once when the session starts
(to pick the backend), with torch's one NumPy warning filtered out so that `-W error`
does not turn it into an INTERNALERROR.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import sys
import warnings

import pytest

from .backend import active_backend
from .errors import NotModelledError
from .benchmarking import stream_benchmark  # noqa: F401  (a fixture: pytest-benchmark for stream code)
from .settings import MIX, NO_MARKER, Settings, add_options, check_markers, marker_help

CACHE_KEY = "streamorder/seed"
# A test's checked marker values, from collection to its run.
_MARKER_VALUES = pytest.StashKey[dict]()


def pytest_addoption(parser):
    add_options(parser)


def pytest_configure(config):
    for line in marker_help():
        config.addinivalue_line("markers", line)
    switch = Settings.from_config(config, ["streamorder", "replay"])
    if not switch.streamorder and switch.replay is None:
        return
    config.pluginmanager.register(StreamOrderRun(config, Settings.from_config(config)),
                                  "streamorder-run")


@pytest.hookimpl(trylast=True)  # after -k/-m deselection: check the tests that will run
def pytest_collection_modifyitems(config, items):
    """Markers are checked here, with or without --streamorder. A bad one is a collection
    error of its test (named by node id), which stops the run before any test runs (also
    under xdist), and never runs that test: it cannot pass without its body running."""
    good = []
    for item in items:
        try:
            item.stash[_MARKER_VALUES] = check_markers(item)
        except pytest.UsageError as exc:
            report = pytest.CollectReport(item.nodeid, "failed", str(exc), [])
            config.hook.pytest_collectreport(report=report)
        else:
            good.append(item)
    items[:] = good


@contextlib.contextmanager
def _numpy_warning_ignored():
    """torch's CPU wheel warns "Failed to initialize NumPy" when imported without NumPy,
    which it does not need; under `-W error` that warning would become an exception.
    Only this message is ignored, and only while we import."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Failed to initialize NumPy", category=UserWarning)
        yield


def _import(name: str):
    """A module that may import torch, imported with its NumPy warning ignored."""
    if name in sys.modules:
        return sys.modules[name]
    with _numpy_warning_ignored():
        return importlib.import_module(name)


class StreamOrderRun:
    """State of one `pytest --streamorder` session."""

    def __init__(self, config, settings: Settings):
        self.config = config
        self.collect_only = config.getoption("collectonly", False)
        # "last" becomes the previous run's seed once, here; a marker's seed overrides it.
        self.settings = settings.for_test({"seed": (self._base_seed(settings),
                                                    settings.source("seed"))})
        # The Schedule a replay token names (its recorded choices, not only the seed); a
        # bad token is a usage error now, not per test.
        self.replay = None if settings.replay is None else _parse_token(settings.replay)
        # Picking the backend imports torch: not for a run that only collects.
        self.backend = None if self.collect_only else self._resolve_backend()
        self.tests = self.schedules_run = self.device_ops = self.races = 0  # all tests
        self.calls = 0  # tests that ran, checked or not
        self._ops = self._races = 0  # the test running now

    def _base_seed(self, settings: Settings) -> int:
        seed, cache = settings.seed, getattr(self.config, "cache", None)
        if seed == "last":
            if cache is None or cache.get(CACHE_KEY, None) is None:
                raise pytest.UsageError(f"{settings.source('seed')}: no earlier run's seed in "
                                        "pytest's cache")
            return int(cache.get(CACHE_KEY, 0))
        if cache is not None:
            cache.set(CACHE_KEY, seed)
        return seed

    def _resolve_backend(self) -> str:
        """"sim" or "cuda"; "auto" picks cuda when torch sees a GPU. A replay token
        names its backend ("cuda:7" or "v1.delay..."), and then it is the one to blame."""
        choice, source = self.settings.backend, self.settings.source("backend")
        if self.replay is not None:
            choice = self.replay.backend
            source = self.settings.source("replay")
        torch = _import("torch")  # every backend needs it: import it once, quietly
        if choice == "sim":
            return choice
        gpu = torch.cuda.is_available()
        if choice == "cuda" and not gpu:
            raise pytest.UsageError(f"{source} needs a CUDA GPU, and "
                                    "torch.cuda.is_available() is False here")
        return "cuda" if gpu else "sim"

    def pytest_report_header(self, config):
        s = self.settings
        what = f"replay {s.replay}" if self.replay else \
            f"seed={s.seed} policy={s.policy} schedules={s.schedules}"
        where = {"sim": "virtual CUDA device", "cuda": "real GPU (cuda backend)"}.get(
            self.backend, f"backend {s.backend}")
        return f"streamorder: {where}, {what}"

    def open_device(self, policy: str, seed: int, **kwargs):
        """A fresh device context for one schedule, on the chosen backend."""
        if self.backend == "cuda":
            kwargs.pop("chooser", None)
            return _import("pytest_streamorder.gpu.backend").cuda_backend(
                seed=seed, max_ops=self.settings.max_ops, **kwargs)
        # The timeline, for a trace file, is recorded as the schedule runs: the trace is
        # of the failing run itself.
        record = self.settings.trace_dir is not None
        if self.replay is not None and kwargs.get("chooser") is None:
            kwargs["replay"] = self.replay  # its recorded choices, not only the seed
        return _import("pytest_streamorder.sim.device").virtual_device(
            seed=seed, policy=policy, max_ops=self.settings.max_ops, record_timeline=record,
            **kwargs)

    def settings_for(self, item) -> Settings:
        """The session's settings with this test's marker values."""
        marked = item.stash.get(_MARKER_VALUES, None)
        if marked is None:  # an item made after collection: check its markers now
            marked = item.stash[_MARKER_VALUES] = check_markers(item)
        return self.settings.for_test(marked)

    def plan(self, item) -> list[tuple[str, int]]:
        """(policy, seed) of every schedule to run for this test: at least one."""
        if self.replay is not None:
            return [(self.replay.policy, self.replay.seed)]
        s = self.settings_for(item)
        policies = self.policies(s)
        return [(policies[i % len(policies)], s.seed + i) for i in range(s.schedules)]

    def policies(self, settings: Settings) -> tuple[str, ...]:
        """The policies a test's schedules cycle through."""
        if self.backend == "cuda":
            return ("cuda",)  # one kind of run: real streams, delays injected per seed
        return MIX if settings.policy == "mix" else (settings.policy,)

    @pytest.hookimpl(tryfirst=True)
    def pytest_pyfunc_call(self, pyfuncitem):
        if pyfuncitem.get_closest_marker(NO_MARKER):
            return None
        funcargs = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
        self._ops = self._races = 0
        if getattr(getattr(pyfuncitem.obj, "hypothesis", None), "inner_test", None) is not None:
            return self._run_hypothesis_test(pyfuncitem, funcargs)
        plan = self.plan(pyfuncitem)
        for index, (policy, seed) in enumerate(plan):
            vd = self.open_device(policy, seed)
            try:
                with vd:
                    pyfuncitem.obj(**funcargs)
            except BaseException as exc:
                if isinstance(exc, (pytest.skip.Exception, KeyboardInterrupt)):
                    raise
                self._count(vd)
                token = _replay_argument(self.config, pyfuncitem, vd, self.settings.trace_dir)
                pyfuncitem.user_properties.append(("streamorder_failed_schedule", token))
                lines = [f"streamorder: failed on schedule {index + 1} (policy {policy}, seed "
                         f"{seed}); {len(vd.races)} race(s), {vd.ops_issued} device ops.",
                         f"replay: pytest --streamorder --streamorder-replay={token} "
                         f"'{pyfuncitem.nodeid}'"]
                if self.settings.trace_dir is not None:
                    lines.append(self._write_trace(pyfuncitem, vd, policy, seed))
                self._fail(pyfuncitem, exc, "\n".join(lines), index + 1)
                raise
            self._count(vd)
        self._record(pyfuncitem, len(plan))
        return True

    def _run_hypothesis_test(self, item, funcargs) -> bool:
        """A @given test: every example gets its own device, and (on the virtual device)
        its policy and every scheduling choice are drawn from the example's own data, so
        a failing schedule shrinks with the example and replays from Hypothesis' database.
        The deadline is lifted while it runs (the virtual device is slower than a GPU,
        and a timing-dependent deadline would make the test flaky)."""
        from hypothesis import HealthCheck, settings
        from hypothesis.control import current_build_context

        from .strategies import HypothesisChooser

        handle = item.obj.hypothesis
        inner = handle.inner_test
        ours = self.settings_for(item)
        policies, seed = self.policies(ours), ours.seed
        examples = []

        @functools.wraps(inner)  # Hypothesis prints the test's name in "Falsifying example"
        def run_example(*args, **kwargs):
            __tracebackhide__ = True
            data = current_build_context().data
            if getattr(data, "max_choices", None) == 0:
                # An explicit @example: its data has nothing to draw from; seeded schedule.
                chooser, policy = None, policies[0]
            else:
                chooser = HypothesisChooser(data)
                policy = policies[chooser.choose(len(policies))]
            device = self.open_device(policy, seed, chooser=chooser)
            device.hypothesis_example = True  # strategies.OverlapRunner may use it
            examples.append(device)
            try:
                with device:
                    inner(*args, **kwargs)
            finally:
                self._count(device)

        parent = getattr(item.obj, "_hypothesis_internal_use_settings", None) or settings.default
        health = set(parent.suppress_health_check) | {HealthCheck.too_slow,
                                                      HealthCheck.data_too_large}
        item.obj._hypothesis_internal_use_settings = settings(
            parent, deadline=None, suppress_health_check=sorted(health, key=lambda h: h.value))
        handle.inner_test = run_example
        try:
            item.obj(**funcargs)
        except BaseException as exc:
            if not isinstance(exc, (pytest.skip.Exception, KeyboardInterrupt)):
                last = examples[-1] if examples else None
                item.user_properties.append(("streamorder_failed_schedule", "hypothesis"))
                self._fail(item, exc, (
                    f"streamorder: failed in a Hypothesis example ({len(examples)} run, the "
                    f"last on policy {getattr(last, 'policy', '?')}); Hypothesis shrank it "
                    "with its schedule and replays it from its database: run the same "
                    f"command again, e.g. pytest --streamorder '{item.nodeid}'"), len(examples))
            raise
        finally:
            handle.inner_test = inner
            item.obj._hypothesis_internal_use_settings = parent
        self._record(item, len(examples))
        return True

    def _fail(self, item, exc: BaseException, text: str, schedules: int) -> None:
        """Say how a test failed, once: as a note on the exception, printed under the
        error itself (and in junitxml's message); where exceptions take no notes
        (Python 3.10), in the report section instead."""
        if hasattr(exc, "add_note"):
            exc.add_note(text)
            text = ""
        self._record(item, schedules, text)

    def _record(self, item, schedules: int, failure: str = "") -> None:
        """Per-test numbers, as user properties: junitxml shows them, and under xdist
        they travel with the report to the controller, which sums them up. And one
        report section: pytest prints it for a failure, and for a pass under -rP/-rA."""
        item.user_properties += [("streamorder_schedules", schedules),
                                 ("streamorder_device_ops", self._ops),
                                 ("streamorder_races", self._races)]
        counts = f"{schedules} schedule(s), {self._ops} device ops, {self._races} race(s)"
        item.add_report_section("call", "streamorder", f"{failure}\n{counts}" if failure else counts)

    def _write_trace(self, item, vd, policy: str, seed: int) -> str:
        """The failing schedule's trace files, from the timeline it recorded as it ran;
        if they cannot be written, say why (the replay line stays)."""
        directory = self.settings.trace_dir
        if not getattr(vd, "is_virtual", False):
            return "trace: none (the cuda backend records no timeline; replay on the virtual device)"
        try:
            from .timeline import write_trace_files

            paths = write_trace_files(vd, directory, f"{item.nodeid}-{policy}-{seed}")
        except Exception as exc:  # a failed trace must not hide the test's own failure
            return f"trace: not written to {directory}: {type(exc).__name__}: {exc}"
        return "trace: " + " and ".join(paths)

    def _count(self, vd) -> None:
        self._ops += vd.ops_issued
        self._races += len(vd.races)

    def pytest_runtest_logreport(self, report):
        if report.when != "call":
            return
        self.calls += 1
        props = dict(report.user_properties)
        if "streamorder_schedules" in props:
            self.tests += 1
            self.schedules_run += props["streamorder_schedules"]
            self.device_ops += props["streamorder_device_ops"]
            self.races += props["streamorder_races"]

    def pytest_terminal_summary(self, terminalreporter):
        if self.calls == 0:  # --collect-only, or stopped at collection: no summary of nothing
            return
        terminalreporter.write_sep("-", "streamorder")
        terminalreporter.write_line(
            f"{self.tests} tests checked, {self.schedules_run} schedules explored, "
            f"{self.device_ops} device ops simulated, {self.races} races found")


class StreamOrderHandle:
    """What the `streamorder` fixture gives a test: works with and without --streamorder
    (then `active` is False and the helpers do nothing but run the kernel)."""

    @property
    def device(self):
        """The active virtual device or real-GPU backend, or None."""
        return active_backend()

    @property
    def active(self) -> bool:
        return self.device is not None

    def name_stream(self, stream, name: str) -> None:
        """Use `name` for this stream in race reports and traces."""
        device = self.device
        if device is not None:
            device.name_stream(stream, name)

    def kernel(self, name: str, reads, writes, launch, cpu_impl=None) -> None:
        """Run a kernel torch cannot see into, declaring what it reads and writes.

        The declared accesses go to the race detector. On the virtual device
        `cpu_impl(*reads, *writes)` computes the kernel when its stream runs it; on a
        real GPU (and without --streamorder) `launch()` runs the real kernel."""
        from .model import Site

        device = self.device
        if device is None:
            launch()
        elif getattr(device, "is_virtual", False):
            if cpu_impl is None:
                raise NotModelledError(f"kernel {name!r} without cpu_impl=...",
                                       "pass cpu_impl to run it on the virtual device")
            device.custom_kernel(name, reads, writes, cpu_impl, Site.here(1))
        else:
            device.custom_kernel(name, reads, writes, site=Site.here(1))
            launch()

    @property
    def schedule(self):
        vd = self.device
        return vd.schedule if vd is not None else None

    @property
    def races(self) -> list:
        vd = self.device
        return list(vd.races) if vd is not None else []


@pytest.fixture
def streamorder():
    """Name streams for reports, declare custom kernels, read the schedule and races."""
    return StreamOrderHandle()


def _parse_token(token: str):
    """The Schedule a --streamorder-replay value names (scheduling.parse_replay)."""
    from .scheduling import ReplayTokenError, parse_replay

    try:
        return parse_replay(token)
    except ReplayTokenError as exc:
        raise pytest.UsageError(
            f"--streamorder-replay takes the token a failure printed (or @file): {exc}") from None


def _replay_argument(config, item, device, trace_dir) -> str:
    """The --streamorder-replay value for the schedule `device` just ran, shell-quoted: its
    token, or, when that is too long for a command line, '@path' of a file holding it in
    pytest's cache (.pytest_cache/d/streamorder/), else the trace dir, else the temp dir."""
    import shlex

    schedule = device.schedule
    write = getattr(schedule, "replay_argument", None)
    if write is None:  # the cuda backend's schedule: its seed is its token
        return shlex.quote(schedule.token)
    cache = getattr(config, "cache", None)
    if cache is not None:
        directory = cache.mkdir("streamorder")
    else:
        import tempfile

        directory = trace_dir or os.path.join(tempfile.gettempdir(), "pytest-streamorder")
    try:
        return shlex.quote(write(directory, stem=item.nodeid, note=f"test {item.nodeid}"))
    except OSError:  # nowhere to write it: print the long token rather than lose it
        return shlex.quote(schedule.token)
