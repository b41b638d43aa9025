"""The pytest plugin: `pytest --streamorder` runs each test on the virtual CUDA device
under several adversarial schedules, and fails it on a race report or a stale value.

Loading it stays cheap: nothing here imports torch until a test actually runs under
--streamorder. Settings go ini < environment variable < command line < marker.
"""

from __future__ import annotations

import functools
import os

import pytest

from .backend import active_backend
from .benchmarking import stream_benchmark  # noqa: F401  (a fixture: pytest-benchmark for stream code)

DEFAULT_SCHEDULES = 8
# Schedules cycle through these: each finds stale values that the others can miss
# (races are found on every schedule: detection does not depend on the schedule).
MIX = ("random", "delay", "pct", "lazy")
POLICY_CHOICES = ("eager", "lazy", "random", "pct", "delay", "mix")
CACHE_KEY = "streamorder/seed"

_SETTINGS = {
    # name: (type, default, environment variable, help)
    "schedules": (int, DEFAULT_SCHEDULES, "STREAMORDER_SCHEDULES",
                  "schedules explored per test"),
    "policy": (str, "mix", "STREAMORDER_POLICY",
               "scheduling policy: eager, lazy, random, pct, delay, or mix (cycles "
               "random, delay, pct, lazy)"),
    "seed": (str, "0", "STREAMORDER_SEED", "base seed (an int), or 'last' for the last run's"),
    "max_ops": (int, 1_000_000, "STREAMORDER_MAX_OPS",
                "device ops one schedule may issue before it is stopped with an error"),
    "backend": (str, "auto", "STREAMORDER_BACKEND",
                "sim (the virtual device), cuda (a real GPU with the detector and injected "
                "delays), or auto (cuda when a GPU is present, else sim)"),
}
BACKEND_CHOICES = ("auto", "sim", "cuda")


def pytest_addoption(parser):
    group = parser.getgroup("streamorder", "CUDA stream-ordering checks (pytest-streamorder)")
    group.addoption("--streamorder", action="store_true", default=None,
                    help="run tests on the virtual CUDA device and fail on stream-ordering races")
    parser.addini("streamorder", "turn --streamorder on", type="bool", default=False)
    for name, (typ, default, env, text) in _SETTINGS.items():
        flag = "--streamorder-" + name.replace("_", "-")
        kwargs = {"choices": POLICY_CHOICES} if name == "policy" else \
            {"choices": BACKEND_CHOICES} if name == "backend" else {}
        group.addoption(flag, dest="streamorder_" + name, default=None, metavar=name.upper(),
                        help=f"{text} (env {env}; ini streamorder_{name}; default {default})",
                        **kwargs)
        parser.addini("streamorder_" + name, text, default=None)
    group.addoption("--streamorder-replay", dest="streamorder_replay", default=None,
                    metavar="TOKEN", help="run exactly one schedule again: the token a failure printed")
    group.addoption("--streamorder-trace-dir", dest="streamorder_trace_dir", default=None,
                    metavar="DIR", help="write a Perfetto trace and an HTML timeline of each "
                    "failing schedule into DIR")


def _setting(config, name: str):
    """ini < environment variable < command line."""
    typ, default, env, _ = _SETTINGS[name]
    value = config.getini("streamorder_" + name) or default
    value = os.environ.get(env, value)
    cli = config.getoption("streamorder_" + name)
    value = cli if cli is not None else value
    try:
        return typ(value)
    except ValueError:
        raise pytest.UsageError(f"streamorder {name} must be {typ.__name__}, got {value!r}") from None


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "streamorder(schedules=None, policy=None, seed=None): tune the stream-order "
        "check for one test")
    config.addinivalue_line("markers", "no_streamorder: run this test plainly, without the "
                            "virtual device, under --streamorder")
    cli = config.getoption("streamorder")
    enabled = cli if cli is not None else config.getini("streamorder")
    if not enabled and config.getoption("streamorder_replay") is None:
        return
    run = StreamOrderRun(config)
    config.pluginmanager.register(run, "streamorder-run")


class StreamOrderRun:
    """State of one `pytest --streamorder` session."""

    def __init__(self, config):
        self.config = config
        self.schedules = _setting(config, "schedules")
        self.policy = _setting(config, "policy")
        if self.policy not in POLICY_CHOICES:
            raise pytest.UsageError(f"--streamorder-policy must be one of {POLICY_CHOICES}, got {self.policy!r}")
        if self.schedules < 1:
            raise pytest.UsageError("--streamorder-schedules must be >= 1")
        self.max_ops = _setting(config, "max_ops")
        self.backend_setting = _setting(config, "backend")
        if self.backend_setting not in BACKEND_CHOICES:
            raise pytest.UsageError(f"--streamorder-backend must be one of {BACKEND_CHOICES}, "
                                    f"got {self.backend_setting!r}")
        self.seed = self._base_seed(_setting(config, "seed"))
        self.replay = config.getoption("streamorder_replay")
        self.trace_dir = config.getoption("streamorder_trace_dir")
        # A bad token is a usage error now, not per test.
        self.replay_schedule = _parse_token(self.replay) if self.replay is not None else None
        self.backend = self._resolve_backend()
        self.tests = self.schedules_run = self.device_ops = self.races = 0  # all tests
        self._ops = self._races = 0  # the test running now

    def _base_seed(self, seed: str) -> int:
        cache = getattr(self.config, "cache", None)
        if seed == "last":
            if cache is None or cache.get(CACHE_KEY, None) is None:
                raise pytest.UsageError("--streamorder-seed=last: no earlier run's seed in pytest's cache")
            return int(cache.get(CACHE_KEY, 0))
        try:
            value = int(seed)
        except ValueError:
            raise pytest.UsageError(f"--streamorder-seed takes an int or 'last', got {seed!r}") from None
        if cache is not None:
            cache.set(CACHE_KEY, value)
        return value

    def pytest_report_header(self, config):
        what = f"replay {self.replay}" if self.replay else \
            f"seed={self.seed} policy={self.policy} schedules={self.schedules}"
        where = "virtual CUDA device" if self.backend == "sim" else "real GPU (cuda backend)"
        return f"streamorder: {where}, {what}"

    def _resolve_backend(self) -> str:
        """"sim" or "cuda"; "auto" picks cuda when torch sees a GPU."""
        choice = self.backend_setting
        if self.replay_schedule is not None:  # a token names its backend: "cuda:7" or "v1.delay..."
            choice = self.replay_schedule.backend
        if choice == "sim":
            return choice
        import torch

        gpu = torch.cuda.is_available()
        if choice == "cuda" and not gpu:
            raise pytest.UsageError("--streamorder-backend=cuda needs a CUDA GPU, and "
                                    "torch.cuda.is_available() is False here")
        return "cuda" if gpu else "sim"

    def open_device(self, policy: str, seed: int, **kwargs):
        """A fresh device context for one schedule, on the chosen backend."""
        if self.backend == "cuda":
            from .gpu import cuda_backend

            kwargs.pop("chooser", None)
            return cuda_backend(seed=seed, max_ops=self.max_ops, **kwargs)
        from .sim.device import virtual_device

        if self.replay_schedule is not None and kwargs.get("chooser") is None:
            kwargs["replay"] = self.replay_schedule  # its recorded choices, not only the seed
        return virtual_device(seed=seed, policy=policy, max_ops=self.max_ops, **kwargs)

    def plan(self, item) -> list[tuple[str, int]]:
        """(policy, seed) of every schedule to run for this test."""
        if self.replay_schedule is not None:
            return [(self.replay_schedule.policy, self.replay_schedule.seed)]
        marker = item.get_closest_marker("streamorder")
        opts = marker.kwargs if marker else {}
        schedules = opts.get("schedules") or self.schedules
        seed = opts.get("seed", self.seed)
        policies = self.policies(item)
        return [(policies[i % len(policies)], seed + i) for i in range(schedules)]

    def policies(self, item) -> tuple[str, ...]:
        """The policies this test's schedules cycle through."""
        if self.backend == "cuda":
            return ("cuda",)  # one kind of run: real streams, delays injected per seed
        marker = item.get_closest_marker("streamorder")
        policy = (marker.kwargs.get("policy") if marker else None) or self.policy
        return MIX if policy == "mix" else (policy,)

    @pytest.hookimpl(tryfirst=True)
    def pytest_pyfunc_call(self, pyfuncitem):
        if pyfuncitem.get_closest_marker("no_streamorder"):
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
                self._record(pyfuncitem, index + 1)
                pyfuncitem.user_properties.append(("streamorder_failed_schedule", f"{policy}:{seed}"))
                token = _replay_argument(self.config, pyfuncitem, vd, self.trace_dir)
                where = (f"streamorder: failed on schedule {index + 1} (policy {policy}, seed "
                         f"{seed}); {len(vd.races)} race(s), {vd.ops_issued} device ops.\n"
                         f"replay: pytest --streamorder --streamorder-replay={token} "
                         f"'{pyfuncitem.nodeid}'")
                if self.trace_dir and self.backend == "sim":
                    where += "\ntrace: " + self._write_trace(pyfuncitem, funcargs, policy, seed)
                pyfuncitem.add_report_section("call", "streamorder", where)
                if hasattr(exc, "add_note"):
                    exc.add_note(where)
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
        policies = self.policies(item)
        marker = item.get_closest_marker("streamorder")
        seed = (marker.kwargs.get("seed") if marker else None)
        seed = self.seed if seed is None else seed
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
                where = (f"streamorder: failed in a Hypothesis example ({len(examples)} run, the "
                         f"last on policy {getattr(last, 'policy', '?')}); Hypothesis shrank it "
                         "with its schedule and replays it from its database: run the same "
                         f"command again, e.g. pytest --streamorder '{item.nodeid}'")
                item.add_report_section("call", "streamorder", where)
                item.user_properties.append(("streamorder_failed_schedule", "hypothesis"))
                self._record(item, len(examples))
            raise
        finally:
            handle.inner_test = inner
            item.obj._hypothesis_internal_use_settings = parent
        self._record(item, len(examples))
        return True

    def _record(self, item, schedules: int) -> None:
        """Per-test numbers, as user properties: junitxml shows them, and under xdist
        they travel with the report to the controller, which sums them up."""
        item.user_properties += [("streamorder_schedules", schedules),
                                 ("streamorder_device_ops", self._ops),
                                 ("streamorder_races", self._races)]
        item.add_report_section("call", "streamorder",
                                f"{schedules} schedule(s), {self._ops} device ops, "
                                f"{self._races} race(s)")

    def _write_trace(self, item, funcargs, policy: str, seed: int) -> str:
        """Run the failing schedule again, recording a timeline and every race."""
        from .sim.device import virtual_device
        from .timeline import write_trace_files

        vd = virtual_device(seed=seed, policy=policy, max_ops=self.max_ops,
                            raise_on_race=False, record_timeline=True)
        try:
            with vd:
                item.obj(**funcargs)
        except Exception:  # the stale-value assert, most likely: the timeline shows why
            pass
        paths = write_trace_files(vd, self.trace_dir, f"{item.nodeid}-{policy}-{seed}")
        return " and ".join(paths)

    def _count(self, vd) -> None:
        self._ops += vd.ops_issued
        self._races += len(vd.races)

    def pytest_runtest_logreport(self, report):
        if report.when != "call":
            return
        props = dict(report.user_properties)
        if "streamorder_schedules" in props:
            self.tests += 1
            self.schedules_run += props["streamorder_schedules"]
            self.device_ops += props["streamorder_device_ops"]
            self.races += props["streamorder_races"]

    def pytest_terminal_summary(self, terminalreporter):
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
                raise NotImplementedError(
                    f"kernel {name!r} needs cpu_impl=... to run on the virtual device")
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
