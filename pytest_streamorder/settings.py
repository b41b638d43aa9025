"""Every `pytest --streamorder` setting, declared once in SETTINGS.

A setting is read from (lowest first) its ini key, its environment variable, its flag
and, for the few a test may tune, the `@pytest.mark.streamorder(...)` marker. Each value
is parsed and checked once, where it is read, and a bad one is a pytest.UsageError that
says where it came from (the ini key and file, the variable, the flag, or the marker and
the test's node id) and what is allowed.

To add a setting, add one `Setting(...)` to SETTINGS: its flag `--streamorder-<name>`,
ini key `streamorder_<name>`, variable `STREAMORDER_<NAME>` and (with marker=True) the
marker argument follow from the name, and the plugin reads it as `settings.<name>`.

This module is imported whenever pytest loads the plugin, so it imports nothing heavy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

import pytest

# Schedules cycle through these under policy "mix": each finds stale values that the
# others can miss (races are found on every schedule: detection does not depend on it).
MIX = ("random", "delay", "pct", "lazy")
POLICY_CHOICES = ("eager", "lazy", "random", "pct", "delay", "mix")
BACKEND_CHOICES = ("auto", "sim", "cuda")
# How a test's schedules are chosen: "observed" runs one adversarial schedule (FIRST, or
# the policy named) and more only to flip what the test observed of the schedule, then
# random ones, within the budget; "random" runs the whole budget from the policy mix.
EXPLORE_CHOICES = ("observed", "random")
FIRST = "lazy"
CAPABILITY_CHOICES = ("sm80", "sm90")

MARKER = "streamorder"
NO_MARKER = "no_streamorder"


# --- kinds of value --------------------------------------------------------------------

@dataclass(frozen=True)
class Kind:
    """The values a setting takes: `allowed` is said in every error about it. `from_text`
    parses a string (ini, environment, flag); `from_value` checks a marker's Python value.
    Both raise ValueError, optionally with a reason that the error appends."""

    allowed: str
    from_text: Callable[[str], Any]
    from_value: Callable[[Any], Any]


def integer(minimum: int) -> Kind:
    def check(value):
        # bool is an int in Python, but schedules=True is a mistake, not a 1.
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ValueError
        return value

    def parse(text: str) -> int:
        try:
            return check(int(text.strip()))
        except ValueError:
            raise ValueError from None

    return Kind(f"an integer >= {minimum}", parse, check)


def choice(options: tuple[str, ...]) -> Kind:
    def check(value):
        if value not in options:
            raise ValueError
        return value

    return Kind("one of " + ", ".join(options), lambda text: check(text.strip()), check)


def _parse_seed(text: str):
    text = text.strip()
    return "last" if text == "last" else integer(-(2 ** 63)).from_text(text)


def _check_marker_seed(value):
    if value == "last":  # the previous run's base seed is for a whole run
        raise ValueError("a marker pins one test's seed: 'last' is for a whole run")
    return integer(-(2 ** 63)).from_value(value)


SEED = Kind("an integer, or 'last' for the previous run's base seed", _parse_seed,
            _check_marker_seed)


def _parse_bool(text) -> bool:
    if isinstance(text, bool):  # a store_true flag
        return text
    words = {"1": True, "true": True, "yes": True, "on": True,
             "0": False, "false": False, "no": False, "off": False}
    try:
        return words[text.strip().lower()]
    except KeyError:
        raise ValueError from None


BOOL = Kind("true or false (also yes/no, on/off, 1/0)", _parse_bool, _parse_bool)


def _parse_directory(text: str) -> str:
    """A directory we can write into, or can create: checked without creating it, so
    that --collect-only leaves nothing behind. (Root passes os.access everywhere, but a
    path under a file is caught for everyone.)"""
    path = os.path.abspath(text.strip() or ".")
    probe = path
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ValueError(f"{probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"{probe} is not writable")
    return text.strip()


DIRECTORY = Kind("a writable directory, or one that can be created", _parse_directory,
                 lambda value: value)


def _not_empty(text: str) -> str:
    if not text.strip():
        raise ValueError
    return text.strip()


TOKEN = Kind("the replay token a failure printed", _not_empty, _not_empty)


# --- the settings ------------------------------------------------------------------------

@dataclass(frozen=True)
class Setting:
    name: str
    kind: Kind
    default: Any
    help: str
    env: bool = True      # read STREAMORDER_<NAME>
    ini: bool = True      # read ini key streamorder_<name>
    marker: bool = False  # a test may set it: @pytest.mark.streamorder(<name>=...)
    flag_name: str = ""   # default: --streamorder-<name>
    ini_name: str = ""    # default: streamorder_<name>

    @property
    def flag(self) -> str:
        return self.flag_name or "--streamorder-" + self.name.replace("_", "-")

    @property
    def ini_key(self) -> str:
        return self.ini_name or "streamorder_" + self.name

    @property
    def env_var(self) -> str:
        return "STREAMORDER_" + self.name.upper()

    @property
    def dest(self) -> str:
        return "streamorder_" + self.name


SETTINGS = (
    Setting("streamorder", BOOL, False, "run tests on the virtual CUDA device and fail on "
            "stream-ordering races", env=False, flag_name="--streamorder",
            ini_name="streamorder"),
    Setting("schedules", integer(1), 8, "schedules explored per test", marker=True),
    Setting("policy", choice(POLICY_CHOICES), "mix",
            "scheduling policy: eager, lazy, random, pct, delay, or mix (cycles "
            + ", ".join(MIX) + ")", marker=True),
    Setting("seed", SEED, 0, "base seed (an int), or 'last' for the last run's", marker=True),
    Setting("explore", choice(EXPLORE_CHOICES), "observed",
            "observed: one adversarial schedule (policy " + FIRST + " under mix), more only "
            "to flip what the test observed of the schedule (a query() result, an allocator "
            "reuse), then random ones, up to --streamorder-schedules; random: always "
            "--streamorder-schedules schedules of the policy (mix: cycled)"),
    Setting("max_ops", integer(1), 1_000_000,
            "device ops one schedule may issue before it is stopped with an error"),
    Setting("backend", choice(BACKEND_CHOICES), "auto",
            "sim (the virtual device), cuda (a real GPU with the detector and injected "
            "delays), or auto (cuda when a GPU is present, else sim)"),
    Setting("replay", TOKEN, None, "run exactly one schedule again: the token a failure "
            "printed", env=False, ini=False),
    Setting("capability", choice(CAPABILITY_CHOICES), "sm80",
            "the GPU the virtual device says it is: sm80 (an A100's identity) or sm90 (an "
            "H100's)"),
    Setting("trace_dir", DIRECTORY, None, "write a Perfetto trace and an HTML timeline of "
            "each failing schedule into this directory"),
)
BY_NAME = {s.name: s for s in SETTINGS}
MARKER_SETTINGS = tuple(s for s in SETTINGS if s.marker)


def add_options(parser) -> None:
    """Every setting's flag and ini key (pytest_addoption). No argparse `choices`: every
    value is checked in one place, with one kind of message."""
    group = parser.getgroup("streamorder", "CUDA stream-ordering checks (pytest-streamorder)")
    for s in SETTINGS:
        where = [f"env {s.env_var}"] * s.env + [f"ini {s.ini_key}"] * s.ini
        if s.default not in (None, False):
            where.append(f"default {s.default}")
        text = s.help + (f" ({'; '.join(where)})" if where else "")
        if s.kind is BOOL:
            group.addoption(s.flag, dest=s.dest, action="store_true", default=None, help=text)
        else:
            group.addoption(s.flag, dest=s.dest, default=None, metavar=s.name.upper(), help=text)
        if s.ini:
            parser.addini(s.ini_key, f"{s.help}; {s.kind.allowed}", default=None)


def marker_help() -> list[str]:
    """The two markers' lines for `pytest --markers`."""
    args = ", ".join(f"{s.name}=..." for s in MARKER_SETTINGS)
    return [f"{MARKER}({args}): tune the stream-order check for one test (keyword "
            "arguments only)",
            f"{NO_MARKER}: run this test plainly, without the virtual device, under "
            "--streamorder"]


# --- reading and checking ---------------------------------------------------------------

def _error(source: str, s: Setting, reason: str = "") -> pytest.UsageError:
    why = f" ({reason})" if reason else ""
    return pytest.UsageError(f"{source}: {s.name} must be {s.kind.allowed}{why}")


def _parse(s: Setting, raw, source: str, from_text: bool = True):
    try:
        return (s.kind.from_text if from_text else s.kind.from_value)(raw)
    except ValueError as exc:
        raise _error(source, s, str(exc)) from None


class Settings:
    """The session's checked values: `settings.schedules`, ...; `source(name)` says where
    each came from, for errors found later (e.g. `seed=last` with an empty cache)."""

    def __init__(self, values: dict[str, Any], sources: dict[str, str]):
        self._values = values
        self._sources = sources

    def __getattr__(self, name: str):
        try:
            return self.__dict__["_values"][name]
        except KeyError:
            raise AttributeError(name) from None

    def source(self, name: str) -> str:
        return self._sources[name]

    def for_test(self, overrides: dict[str, tuple[Any, str]]) -> "Settings":
        """These settings with a test's checked marker values (see check_markers)."""
        values, sources = dict(self._values), dict(self._sources)
        for name, (value, source) in overrides.items():
            values[name], sources[name] = value, source
        return Settings(values, sources)

    @classmethod
    def from_config(cls, config, names=None) -> "Settings":
        """ini < environment variable < flag, for `names` (default: every setting)."""
        values, sources = {}, {}
        for s in SETTINGS if names is None else [BY_NAME[n] for n in names]:
            values[s.name], sources[s.name] = read(config, s)
        return cls(values, sources)


def read(config, s: Setting) -> tuple[Any, str]:
    """(checked value, where it came from) of one setting."""
    flag = config.getoption(s.dest)
    if flag is not None:
        shown = "" if flag is True else f"={flag}"
        return _parse(s, flag, f"flag {s.flag}{shown}"), f"flag {s.flag}{shown}"
    # An empty variable counts as unset, as an empty ini value does in pytest.
    env = os.environ.get(s.env_var, "") if s.env else ""
    if env.strip():
        source = f"environment variable {s.env_var}={env}"
        return _parse(s, env, source), source
    ini = config.getini(s.ini_key) if s.ini else None
    if ini not in (None, "", []):
        source = _ini_source(config, s.ini_key, ini)
        return _parse(s, ini, source), source
    return s.default, f"default {s.name}={s.default}"


def _ini_source(config, key: str, value: str) -> str:
    overrides = config.getoption("override_ini", None) or []
    if any(o.split("=", 1)[0].strip() == key for o in overrides):
        return f"-o {key}={value}"
    where = f" in {config.inipath}" if getattr(config, "inipath", None) else ""
    return f"ini key {key} = {value}{where}"


def check_markers(item) -> dict[str, tuple[Any, str]]:
    """A test's marker values, checked: {name: (value, source)}. The marker takes
    keyword arguments only, each a setting that allows one; a nearer marker (the
    function's over its class's or module's) wins. A bad one raises UsageError naming
    the test."""
    markers = list(item.iter_markers(MARKER))
    plain = list(item.iter_markers(NO_MARKER))
    where = f"on {item.nodeid}"
    if markers and plain:
        raise pytest.UsageError(f"markers @pytest.mark.{MARKER} and @pytest.mark.{NO_MARKER} "
                                f"both {where}: a test is either checked or run plainly; "
                                "remove one")
    for mark in plain:
        if mark.args or mark.kwargs:
            raise pytest.UsageError(f"marker @pytest.mark.{NO_MARKER} {where} takes no arguments")
    allowed = ", ".join(f"{s.name}=" for s in MARKER_SETTINGS)
    out: dict[str, tuple[Any, str]] = {}
    for mark in reversed(markers):  # farthest first, so that the nearest wins
        if mark.args:
            shown = ", ".join(map(repr, mark.args))
            raise pytest.UsageError(f"marker @pytest.mark.{MARKER}({shown}) {where}: it takes "
                                    f"keyword arguments only ({allowed})")
        for name, raw in mark.kwargs.items():
            source = f"marker @pytest.mark.{MARKER}({name}={raw!r}) {where}"
            s = BY_NAME.get(name)
            if s is None or not s.marker:
                raise pytest.UsageError(f"{source}: unknown argument {name!r}; the marker "
                                        f"takes {allowed}")
            out[name] = (_parse(s, raw, source, from_text=False), source)
    return out
