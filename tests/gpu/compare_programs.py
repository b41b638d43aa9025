"""Run every program of tests/cuda_programs.py on a real GPU and on the virtual device,
and print what each observed.

On a machine with CUDA:
    python tests/gpu/compare_programs.py --gpu-out gpu.json [--runs 5] [--delay CYCLES]
runs each program once to warm up, then --runs times as written and --runs times with
`torch.cuda._sleep(CYCLES)` at its delay sites, and writes the values to gpu.json (and
prints the table too, if the virtual device also runs there).

Anywhere (the virtual device needs no GPU):
    python tests/gpu/compare_programs.py --gpu-json gpu.json
prints the table: GPU values against the virtual device under `eager` (ops run at
launch, like an idle GPU), and whether the values the GPU showed with sleeps are among
the stale values `lazy` / `delay` produce.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from tests import cuda_programs as programs  # noqa: E402

DEFAULT_DELAY = 50_000_000  # cycles: about 25 ms at 1.98 GHz
VIRTUAL_SEEDS = range(10)


def all_programs():
    for name, fn in programs.BUGS.items():
        yield name, "bug", fn
    for name, fn in programs.TWINS.items():
        yield name, "twin", fn


# --- the GPU ------------------------------------------------------------------------------

def run_gpu(runs: int, delay: int) -> dict:
    out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
           "runs": runs, "delay_cycles": delay, "programs": {}}
    for name, kind, fn in all_programs():
        programs.set_delay(0)
        first, expected = fn()  # warm-up: first use of kernels and streams
        plain = [fn()[0] for _ in range(runs)]
        programs.set_delay(delay)
        try:
            slept = [fn()[0] for _ in range(runs)]
        finally:
            programs.set_delay(0)
        out["programs"][name] = {"kind": kind, "expected": expected, "first": first,
                                 "plain": plain, "sleep": slept}
        print(f"gpu: {name}: plain {sum(v == expected for v in plain)}/{runs} ok, "
              f"sleep {sum(v == expected for v in slept)}/{runs} ok", flush=True)
    return out


# --- the virtual device ---------------------------------------------------------------------

def run_virtual() -> dict:
    import pytest_streamorder as so

    out = {}
    for name, kind, fn in all_programs():
        res = {}
        for policy, seeds in (("eager", [0]), ("lazy", [0]), ("delay", VIRTUAL_SEEDS),
                              ("random", VIRTUAL_SEEDS)):
            values, races = [], 0
            for seed in seeds:
                with so.virtual_device(seed=seed, policy=policy, raise_on_race=False) as vd:
                    observed, expected = fn()
                values.append(observed)
                races += len(vd.races)
            res[policy] = {"values": values, "races": races}
        res["expected"] = expected
        out[name] = res
    return out


# --- the table ------------------------------------------------------------------------------

def _key(v) -> str:
    return json.dumps(v, separators=(",", ""))


def _summary(values: list, expected) -> str:
    ok = sum(v == expected for v in values)
    text = f"{ok}/{len(values)} ok"
    stale = Counter(_key(v) for v in values if v != expected)
    if stale:
        text += " STALE"
    return text


def table(gpu: dict | None, virtual: dict) -> str:
    rows = [("program", "kind", "GPU", "GPU+sleep", "virt eager", "races", "eager=GPU?",
             "lazy/delay stale", "GPU+sleep stale seen by lazy/delay?")]
    notes = []
    for name, kind, _fn in all_programs():
        v = virtual[name]
        expected = v["expected"]
        eager = v["eager"]["values"][0]
        races = "yes" if v["eager"]["races"] else "no"
        adversarial = v["lazy"]["values"] + v["delay"]["values"]
        virt_stale = {_key(x) for x in adversarial if x != expected}
        g = gpu["programs"].get(name) if gpu else None
        if g is None:
            rows.append((name, kind, "-", "-", "ok" if eager == expected else "STALE", races, "-",
                         f"{len(virt_stale)} distinct" if virt_stale else "never", "-"))
            continue
        assert g["expected"] == expected, name
        plain = [g["first"]] + g["plain"]
        agree = all(x == eager for x in plain)
        gpu_stale = {_key(x) for x in g["sleep"] if x != expected}
        if gpu_stale:
            seen = "yes" if gpu_stale <= virt_stale else (
                "partly" if gpu_stale & virt_stale else "no")
        else:
            seen = "- (GPU not stale)"
        rows.append((name, kind, _summary(plain, expected), _summary(g["sleep"], expected),
                     "ok" if eager == expected else "STALE", races, "yes" if agree else "NO",
                     f"{len(virt_stale)} distinct" if virt_stale else "never", seen))
        for label, values in (("GPU", plain), ("GPU+sleep", g["sleep"])):
            for val, n in Counter(_key(x) for x in values if x != expected).items():
                mark = "also lazy/delay" if val in virt_stale else "NOT seen by lazy/delay"
                notes.append(f"  {name} {label} x{n}: {val}  ({mark}; expected {_key(expected)})")
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = [" | ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    if gpu:
        head = (f"GPU: {gpu['device']}, torch {gpu['torch']}; 1 warm-up + {gpu['runs']} runs "
                f"plain, {gpu['runs']} runs with torch.cuda._sleep({gpu['delay_cycles']}) at "
                f"each delay site. Virtual: eager/lazy seed 0, delay/random seeds "
                f"{VIRTUAL_SEEDS.start}..{VIRTUAL_SEEDS.stop - 1}.")
        lines.insert(0, head)
    if notes:
        lines += ["", "stale values:"] + notes
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpu-out", help="run on the GPU and write its values here")
    p.add_argument("--gpu-json", help="GPU values written earlier by --gpu-out")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--delay", type=int, default=DEFAULT_DELAY)
    p.add_argument("--no-virtual", action="store_true", help="skip the virtual device")
    args = p.parse_args(argv)

    gpu = None
    if args.gpu_json:
        with open(args.gpu_json) as f:
            gpu = json.load(f)
    elif torch.cuda.is_available():
        gpu = run_gpu(args.runs, args.delay)
        if args.gpu_out:
            with open(args.gpu_out, "w") as f:
                json.dump(gpu, f)
    if args.no_virtual:
        return 0
    try:
        virtual = run_virtual()
    except Exception as exc:  # e.g. a torch the virtual device does not support
        print(f"virtual device did not run here: {type(exc).__name__}: {exc}")
        return 0 if gpu else 1
    print(table(gpu, virtual))
    return 0


if __name__ == "__main__":
    sys.exit(main())
