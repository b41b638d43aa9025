"""The pytest plugin: `pytest --streamorder` runs each test on the virtual CUDA device
under several adversarial schedules, and fails it on a race report or a stale value.

The virtual CUDA runtime is on for the whole session, from the first conftest.py on
(early.py). Each schedule runs the test's whole protocol (setup, call, teardown), so
function-scoped fixtures and setUp/tearDown run once per schedule; broader fixtures
(and setUpClass) run once, their device and pinned memory restored before each later
schedule. unittest.TestCase methods are run the same way.

Settings (ini < environment variable < flag < marker) are declared and checked in
settings.py; this module reads the checked `Settings`, never the environment.

Loading it stays cheap: nothing here imports torch without --streamorder, or under
--collect-only. With --streamorder, torch is imported once when the session starts
(to pick the backend), with torch's one NumPy warning filtered out so that `-W error`
does not turn it into an INTERNALERROR.
"""

from __future__ import annotations

import functools
import os

import pytest
from _pytest.runner import CallInfo, runtestprotocol

from .backend import active_backend
from .early import load_initial_conftests, quiet_import as _import, session_runtime
from .errors import NotModelledError, StreamRaceError
from .benchmarking import stream_benchmark  # noqa: F401  (a fixture: pytest-benchmark for stream code)
from .settings import FIRST, MIX, NO_MARKER, Settings, add_options, check_markers, marker_help

CACHE_KEY = "streamorder/seed"
NO_OBSERVATION = "1 schedule: no timing-dependent observation"
# A test's checked marker values, from collection to its run.
_MARKER_VALUES = pytest.StashKey[dict]()


def pytest_addoption(parser):
    add_options(parser)


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config, parser, args):
    """Conftest files are imported right after this: the virtual GPU must exist first."""
    load_initial_conftests(early_config)


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
        self.session = None  # the virtual CUDA runtime (sim/session.py), on the sim backend
        # Picking the backend imports torch: not for a run that only collects.
        self.backend = None if self.collect_only else self._resolve_backend()
        self.tests = self.schedules_run = self.device_ops = self.races = 0  # all tests
        self.decided_by_one = 0  # tests that observed nothing timing-dependent: 1 schedule
        self._decided = ""  # the test running now: why it stopped after one schedule
        self.calls = 0  # tests that ran, checked or not
        self._ops = self._races = 0  # the test running now
        self._state = None  # the schedule running now (_Schedule)
        self._examples = None  # the runs of a Hypothesis test's examples
        self._snapshot = None  # device memory at the test's start, for later schedules

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
        self.session = session_runtime(self.config)
        if self.session is not None:
            return "sim"  # installed before the conftests (early.py): auto found no GPU
        if choice == "sim":  # not installed early (a bad replay token, say): install now
            load_initial_conftests(self.config)
            self.session = session_runtime(self.config)
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
        lines = [f"streamorder: {where}, {what}"]
        if self.session is not None:
            gpu = self.session.gpu
            lines.append(f"streamorder: virtual GPU {gpu.name} (sm{gpu.major}{gpu.minor}), "
                         f"torch.version.cuda {_import('torch').version.cuda}, for the whole "
                         "session")
        return lines

    def new_run(self, policy: str, seed: int, chooser=None, flips: tuple = ()):
        """One schedule: a Run on the session's virtual device, or a cuda_backend()."""
        if self.backend == "cuda":
            return _import("pytest_streamorder.gpu.backend").cuda_backend(
                seed=seed, max_ops=self.settings.max_ops)
        # The timeline, for a trace file, is recorded as the schedule runs: the trace is
        # of the failing run itself.
        kwargs = {}
        if self.replay is not None and chooser is None:
            kwargs["replay"] = self.replay  # its recorded choices, not only the seed
        return _import("pytest_streamorder.sim.device").Run(
            seed=seed, policy=policy, max_ops=self.settings.max_ops, chooser=chooser,
            record_timeline=self.settings.trace_dir is not None, flips=flips, **kwargs)

    def settings_for(self, item) -> Settings:
        """The session's settings with this test's marker values."""
        marked = item.stash.get(_MARKER_VALUES, None)
        if marked is None:  # an item made after collection: check its markers now
            marked = item.stash[_MARKER_VALUES] = check_markers(item)
        return self.settings.for_test(marked)

    def plan(self, item) -> list[tuple[str, int]]:
        """(policy, seed) of every schedule to run for this test: at least one. Exploring
        what a run observed (the default on the virtual device), the first schedule is
        adversarial: FIRST under the policy mix, never eager unless asked for."""
        if self.replay is not None:
            return [(self.replay.policy, self.replay.seed)]
        s = self.settings_for(item)
        policies = self.policies(s)
        if self._explores_observed(item) and s.policy == "mix":
            policies = (FIRST,) + tuple(p for p in policies if p != FIRST)
        return [(policies[i % len(policies)], s.seed + i) for i in range(s.schedules)]

    def policies(self, settings: Settings) -> tuple[str, ...]:
        """The policies a test's schedules cycle through."""
        if self.backend == "cuda":
            return ("cuda",)  # one kind of run: real streams, delays injected per seed
        return MIX if settings.policy == "mix" else (settings.policy,)

    # --- one test: its schedules, each a whole setup/call/teardown -------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item, nextitem):
        if self.backend is None:
            return None
        ihook = item.ihook
        ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
        if item.get_closest_marker(NO_MARKER):
            reports = self._run_unchecked(item, nextitem)
        else:
            reports = self._run_schedules(item, nextitem)
        for report in reports:
            ihook.pytest_runtest_logreport(report=report)
        ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
        return True

    def _run_unchecked(self, item, nextitem) -> list:
        """@pytest.mark.no_streamorder: the test runs as without the plugin. On the
        virtual device the session's runtime is suspended meanwhile (torch.cuda is the
        CPU build's again, and the test may open its own `virtual_device()`)."""
        session = self.session
        if session is None:
            return runtestprotocol(item, log=False, nextitem=nextitem)
        session.suspend()
        try:
            return runtestprotocol(item, log=False, nextitem=nextitem)
        finally:
            session.resume()

    def _run_schedules(self, item, nextitem) -> list:
        plan = self.plan(item)
        hypothesis = _is_hypothesis_test(item)
        if hypothesis:
            plan = plan[:1]  # one protocol run; each example is a schedule (pytest_pyfunc_call)
        budget = len(plan)
        observed = self._explores_observed(item) and not hypothesis
        if observed:  # one schedule first; the rest follow from what it observed
            plan = plan[:1]
        device = self.session.device if self.session is not None else None
        self._ops = self._races = 0
        self._examples = None
        self._decided = ""
        if device is not None:
            # Work queued outside this test (import time, an earlier test's broader
            # fixtures) runs now, and the host learns nothing from it (no edge).
            device.drain_quietly()
        self._replace_snapshot(self._snapshot_memory() if budget > 1 else None)
        index = 0
        while index < len(plan):
            policy, seed, flips = (plan[index] + ((),))[:3]
            # (exploring what the first observed, the plan grows after it)
            last = index == budget - 1 or (index == len(plan) - 1 and (index or not observed))
            state = _Schedule(index, policy, seed, self.new_run(policy, seed, flips=flips))
            if index:
                self._restore_memory()
            if device is not None:
                device.start_run(state.run)
            elif not hypothesis:  # (the cuda backend: one per example)
                state.run.__enter__()
            self._state = state
            try:
                reports = runtestprotocol(item, log=False,
                                          nextitem=nextitem if last else _NextItem(item, nextitem, state))
            finally:
                self._state = None
                if device is not None:
                    device.end_of_test()
                    device.start_run(self.session.idle_run())
                elif not hypothesis and state.run.active:  # teardown did not end it
                    state.run.__exit__(None, None, None)
            if self._examples is None:
                self._count(state.run)
            failed = any(not r.passed for r in reports)
            if observed and index == 0 and not failed and not last:
                plan += self._followups(state.run, policy, seed, budget - 1, item)
                if len(plan) == 1:  # decided: nothing it observed could come out otherwise
                    self._decided = NO_OBSERVATION
                    last = True
                    reports += self._teardown_rest(item, nextitem)
            stop = last or failed
            if stop and not last and not state.stop:
                reports += self._teardown_rest(item, nextitem)  # teardown failed mid-plan
            if stop:
                break
            index += 1
        schedules = len(self._examples) if self._examples is not None else index + 1
        self._replace_snapshot(None)
        self._finish(item, reports, state, schedules)
        return reports

    def _snapshot_memory(self):
        """Device and pinned memory now, for later schedules of this test to start from
        (queued work runs first, adding no happens-before edge)."""
        if self.session is not None:
            device = self.session.device
            device.drain_quietly()
            return device.snapshot()
        if self.backend == "cuda":
            return _import("pytest_streamorder.gpu.snapshot").take()
        return None

    def _replace_snapshot(self, snap) -> None:
        """The GPU's snapshot holds C++ weak references: released here, not by a finalizer."""
        old, self._snapshot = self._snapshot, snap
        release = getattr(old, "release", None)
        if release is not None:
            release()

    def _restore_memory(self) -> None:
        snap = self._snapshot
        if snap is None:
            return
        if self.session is not None:
            self.session.device.restore(snap)
        else:
            snap.restore()

    def _explores_observed(self, item) -> bool:
        """Whether this test's schedules follow what its first one observed (the virtual
        device, --streamorder-explore=observed, not a replay)."""
        return (self.replay is None and self.session is not None
                and self.settings_for(item).explore == "observed")

    def _followups(self, run, policy: str, seed: int, budget: int, item) -> list:
        """The schedules after the first, at most `budget`: each flips one observation of
        the first (same policy and seed, so the run is the same up to it), the first of
        each kind and outcome first; then random ones. None when it observed nothing."""
        scheduler = run.scheduler
        if not scheduler.observed:
            return []
        observations = scheduler.observations
        steerable = [i for i, o in enumerate(observations) if o.steerable]
        firsts, seen = [], set()
        for i in steerable:
            key = (observations[i].kind, observations[i].outcome)
            if key not in seen:
                seen.add(key)
                firsts.append(i)
        chosen = set(firsts)
        order = firsts + [i for i in steerable if i not in chosen]
        plan = [(policy, seed, (i,)) for i in order[:budget]]
        policies = self.policies(self.settings_for(item))
        for j in range(budget - len(plan)):
            plan.append((policies[j % len(policies)], seed + 1 + j, ()))
        return plan

    def _teardown_rest(self, item, nextitem) -> list:
        """Tear down what the plan kept for later schedules, when it stops early."""
        call = CallInfo.from_call(lambda: item.session._setupstate.teardown_exact(nextitem),
                                  when="teardown")
        return [item.ihook.pytest_runtest_makereport(item=item, call=call)] if call.excinfo else []

    def _finish(self, item, reports, state, schedules: int) -> None:
        """Say how the test ran, once, on the report that decides it: the first failing
        one (its exception gets a note with the replay line), else the call's."""
        failed = next((r for r in reports if r.failed), None)
        text = ""
        if failed is not None:
            call = state.failed_calls.get(failed.when)
            text = self._failure_text(item, state, failed.when)
            if call is not None and call.excinfo is not None and hasattr(call.excinfo.value, "add_note"):
                call.excinfo.value.add_note(text)
                failed.longrepr = item.repr_failure(call.excinfo) if failed.when == "call" else \
                    item._repr_failure_py(call.excinfo, style=item.config.getoption("tbstyle", "auto"))
                text = ""
        target = failed or next((r for r in reports if r.when == "call"), reports[-1])
        props = [("streamorder_schedules", schedules), ("streamorder_device_ops", self._ops),
                 ("streamorder_races", self._races)]
        if failed is not None:
            props.insert(0, ("streamorder_failed_schedule", state.token or "hypothesis"))
        if self._decided:
            props.append(("streamorder_decided", self._decided))
        item.user_properties += props
        target.user_properties = list(target.user_properties) + props
        counts = f"{schedules} schedule(s), {self._ops} device ops, {self._races} race(s)"
        if self._decided:
            counts += f"\n{self._decided}"
        target.sections.append((f"Captured streamorder {target.when}",
                                f"{text}\n{counts}" if text else counts))

    def _failure_text(self, item, state, when: str) -> str:
        if self._examples is not None:
            last = self._examples[-1] if self._examples else None
            return (f"streamorder: failed in a Hypothesis example ({len(self._examples)} run, the "
                    f"last on policy {getattr(last, 'policy', '?')}); Hypothesis shrank it "
                    "with its schedule and replays it from its database: run the same "
                    f"command again, e.g. pytest --streamorder '{item.nodeid}'")
        run = state.run
        state.token = _replay_argument(self.config, item, run, self.settings.trace_dir)
        phase = "" if when == "call" else f" in {when}"
        lines = [f"streamorder: failed on schedule {state.index + 1} (policy {state.policy}, seed "
                 f"{state.seed}){phase}; {len(run.races)} race(s), {run.ops_issued} device ops.",
                 f"replay: pytest --streamorder --streamorder-replay={state.token} "
                 f"'{item.nodeid}'"]
        if state.trace:
            lines.append(state.trace)
        return "\n".join(lines)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item, call):
        report = yield
        state = self._state
        if state is None:
            return report
        # (after yield: unittest's own hook puts a TestCase's failure into call.excinfo)
        if call.excinfo is not None and call.when not in state.failed_calls:
            if not state.failed_calls and self.settings.trace_dir is not None \
                    and self._examples is None:  # the trace shows the run as it stopped
                state.trace = self._write_trace(item, state.run, state.policy, state.seed)
            state.failed_calls[call.when] = call
        if call.when != "teardown" and not report.passed:
            state.stop = True  # this schedule decides the test: tear everything down
        return report

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(self, fixturedef, request):
        result = yield
        state = self._state
        if state is not None and state.index == 0 and fixturedef.scope != "function" \
                and self._snapshot is not None:
            # A broader fixture outlives this schedule: later ones start from its memory
            # as it is now (its queued work run, without any happens-before edge).
            self._replace_snapshot(self._snapshot_memory())
        return result

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(self, item, nextitem):
        """The schedule's queued work runs after the last finalizer, in the schedule."""
        try:
            return (yield)
        finally:
            state = self._state
            if state is not None and self.session is not None:
                if state.failed_calls:  # it failed: say which race the failure came from
                    self._note_races(state, self.session.device.races_after_failure())
                else:
                    device = self.session.device
                    device.drain_quietly()
                    # A race found as the drain resolved a pending access (an indexed op,
                    # a Triton launch) fails teardown here, with its report, not the
                    # session later.
                    device.hb.flush()
                self._check_replay(state)
            elif state is not None and getattr(state.run, "active", False):
                self._end_cuda_run(state)

    def _end_cuda_run(self, state) -> None:
        """The real-GPU run ends inside the teardown phase: its final sync resolves the
        index values still staged, and a race found then fails the teardown (or, after a
        failure, is named on it) instead of escaping the test as an internal error."""
        run = state.run
        if not state.failed_calls:
            run.__exit__(None, None, None)
            return
        before = len(run.races)
        run.raise_on_race = False
        run.__exit__(None, None, None)
        self._note_races(state, run.races[before:])

    def _note_races(self, state, found: list) -> None:
        """A failure that is not a race report (a stale value in the test's own assert)
        may come from a race the model finds only once the late work runs (its index
        values were not known): name those races on the failure, so a person sees the
        missing edge, not only the wrong value."""
        first = next(iter(state.failed_calls.values()))
        error = first.excinfo.value
        if not found or isinstance(error, StreamRaceError) or not hasattr(error, "add_note"):
            return
        shown = found[:3]
        more = f" ({len(found) - len(shown)} more)" if len(found) > len(shown) else ""
        error.add_note(f"streamorder: this schedule's queued work, run after the failure, "
                       f"shows {len(found)} race(s) behind it{more}:")
        for race in shown:
            error.add_note(f"StreamRaceError: {race}")

    def _check_replay(self, state) -> None:
        """A replay that ends with recorded choices unused diverged: say so on the
        failure, or fail the teardown with it."""
        from .sim.device import _check_replay_finished

        first = next(iter(state.failed_calls.values()), None)
        _check_replay_finished(state.run.chooser, first.excinfo.value if first else None)

    @pytest.hookimpl(tryfirst=True)
    def pytest_pyfunc_call(self, pyfuncitem):
        if self._state is None or not _is_hypothesis_test(pyfuncitem):
            return None
        funcargs = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
        return self._run_hypothesis_test(pyfuncitem, funcargs)

    def _run_hypothesis_test(self, item, funcargs) -> bool:
        """A @given test: every example is a schedule of its own, and (on the virtual
        device) its policy and every scheduling choice are drawn from the example's own
        data, so a failing schedule shrinks with the example and replays from Hypothesis'
        database. The deadline is lifted while it runs (the virtual device is slower than
        a GPU, and a timing-dependent deadline would make the test flaky)."""
        from hypothesis import HealthCheck, settings
        from hypothesis.control import current_build_context

        from .strategies import HypothesisChooser

        handle = item.obj.hypothesis
        inner = handle.inner_test
        ours = self.settings_for(item)
        policies, seed = self.policies(ours), ours.seed
        examples = self._examples = []
        session = self.session

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
            run = self.new_run(policy, seed, chooser=chooser)
            examples.append(run)
            if session is None:  # the cuda backend: a backend per example
                try:
                    with run:
                        inner(*args, **kwargs)
                finally:
                    self._count(run)
                return
            device = session.device
            device.drain_quietly()  # the last example's or setup's work: no edge
            run.hypothesis_example = True  # strategies.OverlapRunner runs on it
            outer = device.start_run(run)
            try:
                inner(*args, **kwargs)
                device.drain_quietly()
            finally:
                if chooser is not None:
                    chooser.freeze()  # the example is over: leftover work draws nothing
                device.end_of_test()
                device.start_run(outer)
                self._count(run)

        parent = getattr(item.obj, "_hypothesis_internal_use_settings", None) or settings.default
        health = set(parent.suppress_health_check) | {HealthCheck.too_slow,
                                                      HealthCheck.data_too_large}
        item.obj._hypothesis_internal_use_settings = settings(
            parent, deadline=None, suppress_health_check=sorted(health, key=lambda h: h.value))
        handle.inner_test = run_example
        try:
            item.obj(**funcargs)
        finally:
            handle.inner_test = inner
            item.obj._hypothesis_internal_use_settings = parent
        return True

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
        if report.when == "call":
            self.calls += 1
        props = dict(report.user_properties)
        if "streamorder_schedules" in props:
            self.tests += 1
            self.schedules_run += props["streamorder_schedules"]
            self.device_ops += props["streamorder_device_ops"]
            self.races += props["streamorder_races"]
            self.decided_by_one += "streamorder_decided" in props

    def pytest_terminal_summary(self, terminalreporter):
        if self.calls == 0:  # --collect-only, or stopped at collection: no summary of nothing
            return
        terminalreporter.write_sep("-", "streamorder")
        terminalreporter.write_line(
            f"{self.tests} tests checked, {self.schedules_run} schedules explored, "
            f"{self.device_ops} device ops simulated, {self.races} races found")
        if self.decided_by_one:
            terminalreporter.write_line(
                f"{self.decided_by_one} of them decided by 1 schedule (no timing-dependent "
                "observation: every schedule would give the same result)")


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


class _Schedule:
    """The schedule running now: its run, and what the hooks learned about it."""

    def __init__(self, index: int, policy: str, seed: int, run):
        self.index, self.policy, self.seed, self.run = index, policy, seed, run
        self.failed_calls: dict = {}  # phase -> CallInfo of its exception
        self.stop = False  # setup or call did not pass: no later schedule
        self.token = None  # the replay argument, once a failure printed it
        self.trace = ""  # the trace line of the failure, written as it happened


class _NextItem:
    """What a schedule's teardown is told comes next. teardown_exact keeps every node
    that nextitem descends from: here the test's parents, so that broader fixtures stay
    for the next schedule, unless this schedule is the last to run (it failed or
    skipped), when the real next item decides."""

    def __init__(self, item, nextitem, state: _Schedule):
        self.item, self.nextitem, self.state = item, nextitem, state
        self.nodeid = item.nodeid

    def listchain(self):
        if self.state.stop:
            return self.nextitem.listchain() if self.nextitem is not None else []
        return self.item.listchain()[:-1] + [self]


def _is_hypothesis_test(item) -> bool:
    obj = getattr(item, "obj", None)
    return getattr(getattr(obj, "hypothesis", None), "inner_test", None) is not None


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
