"""Run the downstream-style suites (tests/downstream/) and compare each test's outcome with
its manifest: the instrument that measures issues 12 and 13.

    python scripts/downstream_report.py                 # both suites, under --streamorder
    python scripts/downstream_report.py --suite sglang_style --check
    python scripts/downstream_report.py --plain         # the same suites without the plugin
    python scripts/downstream_report.py -- --streamorder-schedules=3   # extra pytest args

Each test file runs in its own `python -m pytest` subprocess (STREAMORDER_DOWNSTREAM=1, so
tests/downstream/conftest.py lets pytest collect it) with a JUnit XML file. A file whose
process dies without writing the XML is run again test by test, so that an abort is pinned
on the test that caused it. Outcomes:

  pass                 the test passed
  race                 it failed with a StreamRaceError report
  refused: NAME        it failed with the plugin's "NAME is not modelled" error
  skip: WHY            it was skipped
  raw error: LINE      it failed any other way (a CPU-build error, a stale value, ...)
  crash: WHY           its pytest process died (an abort) or timed out

The exit code is 0 (this is a report) unless --check is given and an outcome differs from
the manifest.
"""

from __future__ import annotations

import argparse
import os
import re
import runpy
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOWNSTREAM = ROOT / "tests" / "downstream"
SUITES = ("pytorch_style", "sglang_style")
TIMEOUT_S = 900  # for one file's process; a hang is reported as a crash

_REFUSAL = re.compile(r"([^\s'\"]+(?:\([^)]*\))?)\s+is not modelled")
# Our named error gives the whole API phrase (it may hold spaces) after its class name.
_NAMED_REFUSAL = re.compile(r"NotModelledError: (.+?) is not modelled")


def load_manifest(suite: str) -> dict[str, str]:
    return runpy.run_path(str(DOWNSTREAM / suite / "manifest.py"))["EXPECTED"]


def pytest_command(targets: list[str], junit: Path, plain: bool, extra: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "pytest", "-p", "no:randomly", "-p", "no:cacheprovider",
           "-rA", "-q", f"--junitxml={junit}"]
    if not plain:
        cmd.append("--streamorder")
    return cmd + extra + targets


def run_pytest(targets, junit: Path, plain: bool, extra) -> tuple[int | None, str]:
    """Run pytest on `targets`; returns (exit code or None on timeout, output tail)."""
    env = dict(os.environ, STREAMORDER_DOWNSTREAM="1", PYTHONUNBUFFERED="1")
    try:
        proc = subprocess.run(pytest_command(targets, junit, plain, extra), cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout or ""
        return None, out if isinstance(out, str) else out.decode(errors="replace")
    return proc.returncode, proc.stdout + proc.stderr


def test_key(suite: str, classname: str, name: str) -> str:
    """The manifest's id ('test_x.py::Class::test_y') of a JUnit testcase."""
    prefix = f"tests.downstream.{suite}."
    parts = classname[len(prefix):].split(".") if classname.startswith(prefix) else [classname]
    return "::".join([parts[0] + ".py", *parts[1:], name])


def first_line(text: str) -> str:
    for line in text.strip().splitlines():
        line = line.strip()
        if line:
            return line[:160]
    return "(no message)"


def classify(failure_texts: list[tuple[str, str]]) -> str:
    """One outcome from a testcase's <failure>/<error> elements: (message, body) pairs."""
    everything = "\n".join(m + "\n" + b for m, b in failure_texts)
    if "StreamRaceError" in everything:
        return "race"
    refusal = _NAMED_REFUSAL.search(everything) or _REFUSAL.search(everything)
    if refusal:
        return f"refused: {refusal.group(1)}"
    message, body = failure_texts[0]
    return "raw error: " + first_line(message or body)


def parse_junit(suite: str, junit: Path) -> tuple[dict[str, str], list[str]]:
    """Outcome per test id, and the collection errors (testcases without a test name)."""
    outcomes, collection_errors = {}, []
    for case in ET.parse(junit).getroot().iter("testcase"):
        name, classname = case.get("name", ""), case.get("classname", "")
        bad = [(el.get("message", ""), el.text or "") for el in case
               if el.tag in ("failure", "error")]
        skipped = case.find("skipped")
        if not classname or not name:  # pytest reports a module that failed to import so
            collection_errors.append(classify(bad) if bad else "collection error")
            continue
        key = test_key(suite, classname, name)
        if bad:
            outcomes[key] = classify(bad)
        elif skipped is not None:
            outcomes[key] = "skip: " + first_line(skipped.get("message", ""))
        else:
            outcomes[key] = "pass"
    return outcomes, collection_errors


def crash_reason(code: int | None, output: str) -> str:
    if code is None:
        return f"crash: timed out after {TIMEOUT_S} s"
    hint = next((ln.strip() for ln in reversed(output.splitlines())
                 if "terminate called" in ln or "Abort" in ln or "Segmentation" in ln), "")
    return f"crash: exit {code}" + (f" ({hint[:120]})" if hint else "")


def run_suite(suite: str, plain: bool, extra: list[str], workdir: Path) -> tuple[dict, int]:
    """Outcome per manifest id for one suite, and how many pytest processes aborted."""
    expected = load_manifest(suite)
    outcomes: dict[str, str] = {}
    aborts = 0
    for path in sorted((DOWNSTREAM / suite).glob("test_*.py")):
        rel = path.relative_to(ROOT).as_posix()
        junit = workdir / f"{suite}-{path.stem}.xml"
        code, output = run_pytest([rel], junit, plain, extra)
        if junit.exists() and code is not None:
            found, collection_errors = parse_junit(suite, junit)
            outcomes.update(found)
            for key in expected:  # tests a failed import kept from running
                if key.startswith(path.name + "::") and key not in found:
                    outcomes[key] = collection_errors[0] if collection_errors else \
                        "raw error: not collected"
            continue
        # The process died without its report: run each of the file's tests alone.
        aborts += 1
        for key in [k for k in expected if k.startswith(path.name + "::")]:
            one = workdir / f"{suite}-{path.stem}-one.xml"
            one.unlink(missing_ok=True)
            node = f"{rel}::{key.split('::', 1)[1]}"
            code, output = run_pytest([node], one, plain, extra)
            if one.exists() and code is not None:
                outcomes.update(parse_junit(suite, one)[0])
            else:
                outcomes[key] = crash_reason(code, output)
    return outcomes, aborts


def matches(expected: str, actual: str) -> bool:
    if expected.startswith("refused:"):
        if not actual.startswith("refused:"):
            return False
        names = expected.split(":", 1)[1].strip().split("|")
        return any(n.strip().lower() in actual.lower() for n in names)
    return expected == actual


def report(suite: str, outcomes: dict, aborts: int, plain: bool) -> tuple[int, int, int]:
    expected = load_manifest(suite)
    keys = list(expected) + sorted(k for k in outcomes if k not in expected)
    print(f"\n### {suite} ({'plain pytest' if plain else 'pytest --streamorder'})\n")
    print("| test | expected | actual | ok |")
    print("| --- | --- | --- | --- |")
    as_expected = raw = 0
    for key in keys:
        want = expected.get(key, "(not in manifest)")
        got = outcomes.get(key, "raw error: did not run")
        ok = matches(want, got)
        as_expected += ok
        raw += got.startswith("raw error")
        print(f"| {key} | {want} | {got.replace('|', '/')} | {'yes' if ok else 'NO'} |")
    kinds: dict[str, int] = {}
    for key in keys:
        kind = outcomes.get(key, "raw error").split(":")[0]
        kinds[kind] = kinds.get(kind, 0) + 1
    print(f"\n{suite}: {as_expected} of {len(keys)} as expected; {raw} raw errors; "
          f"{aborts} aborts  (" + ", ".join(f"{v} {k}" for k, v in sorted(kinds.items())) + ")")
    return as_expected, len(keys), raw


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", choices=SUITES + ("all",), default="all")
    parser.add_argument("--plain", action="store_true",
                        help="run without --streamorder (what the suites do without the plugin)")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when any outcome differs from the manifest")
    parser.add_argument("--junit-dir", type=Path, default=None,
                        help="keep the JUnit XML files here (default: a temporary folder)")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments, after --")
    args = parser.parse_args(argv)
    suites = SUITES if args.suite == "all" else (args.suite,)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.junit_dir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        total_ok = total = total_raw = total_aborts = 0
        for suite in suites:
            outcomes, aborts = run_suite(suite, args.plain, args.pytest_args, workdir)
            ok, n, raw = report(suite, outcomes, aborts, args.plain)
            total_ok, total, total_raw = total_ok + ok, total + n, total_raw + raw
            total_aborts += aborts
    print(f"\nall suites: {total_ok} of {total} as expected; {total_raw} raw errors; "
          f"{total_aborts} aborts")
    return 1 if args.check and total_ok != total else 0


if __name__ == "__main__":
    sys.exit(main())
