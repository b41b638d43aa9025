"""Measurements of the CUDA backend, for docs/GPU_BACKEND.md. On a machine with CUDA:

    PYTHONPATH=. python tests/gpu/test_cuda_backend_measure.py --out DIR [--runs 20]

writes DIR/measure.json and DIR/measure.md with
  1. detection: every bug class and twin of tests/cuda_programs.py under the backend
     (races found, values right), and under CSAN (TORCH_CUDA_SANITIZER=1, a separate
     process): reported or not;
  2. overhead: a small-op two-stream workload (all properly synchronized) run plain,
     under the backend (no delays), and under CSAN (separate process), at a shallow and
     a pytest-like (40 frames deeper) stack: added microseconds per device op;
  3. manifestation: in how many of N runs (seeds 0..N-1) delay injection makes each bug
     return a stale value, against N plain runs; and that the twins stay right and
     silent with delays.
`--diag` also logs which GPU trace callbacks fire for each kind of call.
Under pytest this file only runs a smoke test of itself (skipped without CUDA).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
from tests import cuda_programs as programs  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a real CUDA device"),
]

DEEP = 40  # extra stack frames, like a test under pytest


def all_programs():
    for name, fn in programs.BUGS.items():
        yield name, "bug", fn
    for name, fn in programs.TWINS.items():
        yield name, "twin", fn


# --- the workload for overhead ------------------------------------------------------------

def workload(iters: int) -> None:
    """Per iteration: 2 ops on the default stream, a wait, 4 ops on a side stream (one a
    non_blocking D2H into pinned memory), an event, the host syncs it and reads pinned."""
    x = torch.arange(8, device="cuda")
    pinned = torch.zeros(8, dtype=torch.int64, pin_memory=True)
    side = torch.cuda.Stream()
    done = torch.cuda.Event()
    torch.cuda.synchronize()
    total = 0
    for _ in range(iters):
        y = x + 1
        z = y * 2
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            w = z.sum()
            u = z[2:6].clone()
            u.add_(w)
            pinned.copy_(u.repeat(2), non_blocking=True)
            done.record()
        done.synchronize()
        total += pinned[1].item()
    torch.cuda.synchronize()
    return total


def _deep(n, fn, *args):
    if n == 0:
        return fn(*args)
    return _deep(n - 1, fn, *args)


def time_workload(iters: int, depth: int, repeats: int = 3) -> float:
    """Best wall time of `repeats` runs, seconds."""
    workload(20)  # warm
    best = None
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        _deep(depth, workload, iters)
        dt = time.perf_counter() - t0
        best = dt if best is None else min(best, dt)
    return best


def overhead(iters: int) -> dict:
    from pytest_streamorder.gpu import cuda_backend

    with cuda_backend(seed=0, delay_probability=0) as be:
        workload(iters)
    ops = be.ops_issued
    res = {"iters": iters, "device_ops": ops, "races": len(be.races)}
    for label, depth in (("shallow", 0), ("deep", DEEP)):
        plain = time_workload(iters, depth)
        best = None
        for _ in range(3):
            with cuda_backend(seed=0, delay_probability=0) as be:
                t0 = time.perf_counter()
                _deep(depth, workload, iters)
                dt = time.perf_counter() - t0
            best = dt if best is None else min(best, dt)
        res[label] = {"plain_s": plain, "backend_s": best,
                      "plain_us_per_op": plain / ops * 1e6,
                      "backend_added_us_per_op": (best - plain) / ops * 1e6}
    return res


# --- CSAN (its own process: TORCH_CUDA_SANITIZER is read when torch is imported) -------------

def csan_child(iters: int) -> dict:
    from torch.cuda._sanitizer import CUDASanitizerErrors

    out = {"enabled": torch.cuda._sanitizer.cuda_sanitizer.enabled, "programs": {}}
    for label, depth in (("shallow", 0), ("deep", DEEP)):
        out[label] = {"csan_s": time_workload(iters, depth)}
    for name, kind, fn in all_programs():
        try:
            observed, expected = fn()
            res = {"reported": False, "ok": observed == expected}
        except CUDASanitizerErrors as exc:
            res = {"reported": True, "errors": len(exc.errors),
                   "first": str(exc.errors[0]).splitlines()[0][:200]}
        except Exception as exc:  # noqa: BLE001
            res = {"reported": False, "error": f"{type(exc).__name__}: {exc}"[:200]}
        torch.cuda.synchronize()
        out["programs"][name] = res
    return out


def run_csan(iters: int, log_dir: str | None) -> dict:
    env = dict(os.environ, TORCH_CUDA_SANITIZER="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, os.path.abspath(__file__), "--csan-child", "--iters", str(iters)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=500)
    if log_dir:
        with open(os.path.join(log_dir, "csan_stderr.txt"), "w") as f:
            f.write(proc.stderr[-200_000:])
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("CSAN_JSON ")]
    if not line:
        return {"error": proc.stdout[-2000:] + proc.stderr[-4000:]}
    return json.loads(line[-1][len("CSAN_JSON "):])


# --- detection and manifestation --------------------------------------------------------

def detection() -> dict:
    from pytest_streamorder.gpu import cuda_backend

    out = {}
    for name, kind, fn in all_programs():
        with cuda_backend(seed=0, raise_on_race=False, delay_probability=0) as be:
            observed, expected = fn()
        out[name] = {"kind": kind, "races": len(be.races), "ok": observed == expected,
                     "ops": be.ops_issued,
                     "first": be.races[0].explain() if be.races else "",
                     "report": str(be.races[0]) if be.races else ""}
    return out


def manifestation(runs: int, configs: dict) -> dict:
    from pytest_streamorder.gpu import cuda_backend

    out = {}
    for name, kind, fn in all_programs():
        fn()  # warm kernels
        res = {"kind": kind}
        stale = 0
        for _ in range(runs):
            observed, expected = fn()
            stale += observed != expected
        res["plain_stale"] = stale
        for label, cfg in configs.items():
            stale = detected = 0
            fired = 0
            t0 = time.perf_counter()
            n = runs if kind == "bug" else max(3, runs // 4)
            for seed in range(n):
                with cuda_backend(seed=seed, raise_on_race=False, **cfg) as be:
                    observed, expected = fn()
                stale += observed != expected
                detected += bool(be.races)
                fired += len(be.delays_fired)
            res[label] = {"runs": n, "stale": stale, "detected": detected,
                          "delays_fired": fired, "s_per_run": (time.perf_counter() - t0) / n}
        out[name] = res
    return out


# --- diagnostics: what the GPU trace reports -----------------------------------------------

def diagnostics() -> list[str]:
    import torch.cuda._gpu_trace as gpu_trace
    from torch.utils._python_dispatch import TorchDispatchMode

    log: list[str] = []
    names = [n for n in dir(gpu_trace) if n.endswith("Callbacks")]
    cbs = []
    torch._C._activate_gpu_trace()
    for n in names:
        reg = getattr(gpu_trace, n)
        cb = (lambda n: lambda *a: log.append(f"    cb {n.replace('Callbacks', '')}"))(n)
        reg.callback_list.append(cb)
        cbs.append((reg, cb))

    class Ops(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            log.append(f"    op {func}")
            return func(*args, **(kwargs or {}))

    x = torch.arange(8, device="cuda")
    pinned = torch.zeros(8, dtype=torch.int64, pin_memory=True)
    s = torch.cuda.Stream()
    torch.cuda.synchronize()
    cases = {
        "torch.tensor(device=cuda)": lambda: torch.tensor([1, 2], device="cuda"),
        "torch.zeros(device=cuda)": lambda: torch.zeros(4, device="cuda"),
        "torch.full(device=cuda)": lambda: torch.full((4,), 5, device="cuda"),
        "item": lambda: x.sum().item(),
        "cpu()": lambda: x.cpu(),
        "tolist": lambda: x.tolist(),
        "nonzero": lambda: x.nonzero(),
        "bool mask index": lambda: x[x > 3],
        "int index": lambda: x[torch.tensor([1, 2], device="cuda")],
        "bool()": lambda: bool(x[1]),
        "D2H pinned non_blocking": lambda: pinned.copy_(x, non_blocking=True),
        "H2D pinned non_blocking": lambda: x.copy_(pinned, non_blocking=True),
        "to(cpu, non_blocking)": lambda: x.to("cpu", non_blocking=True).is_pinned(),
        "event record": lambda: torch.cuda.Event().record(),
        "wait_stream": lambda: s.wait_stream(torch.cuda.current_stream()),
        "wait on never-recorded event": lambda: s.wait_event(torch.cuda.Event()),
        "event query": lambda: (lambda e: (e.record(), e.query()))(torch.cuda.Event()),
        "stream synchronize": lambda: s.synchronize(),
        "device synchronize": lambda: torch.cuda.synchronize(),
        "del tensor": lambda: torch.zeros(4, device="cuda").add_(1),
        "record_stream": lambda: torch.zeros(4, device="cuda").record_stream(s),
        "empty_cache": lambda: torch.cuda.empty_cache(),
    }
    try:
        for label, fn in cases.items():
            log.append(f"{label}:")
            with Ops():
                try:
                    r = fn()
                    log.append(f"    -> {type(r).__name__}")
                except Exception as exc:  # noqa: BLE001
                    log.append(f"    !! {type(exc).__name__}: {exc}")
            torch.cuda.synchronize()
    finally:
        for reg, cb in cbs:
            reg.callback_list.remove(cb)
    return log


# --- crash bisection: each configuration in its own process ------------------------------

BISECT_CONFIGS = ["", "flocals", "weakevents,evdelete", "nofunction", "nofree",
                  "nofree,nofunction,nocallbacks", "TORCHONLY"]


def bisect_child(torch_only: bool, rounds: int = 3) -> None:
    import gc

    if torch_only:  # a do-nothing dispatch mode and do-nothing trace callbacks
        import torch.cuda._gpu_trace as gpu_trace
        from torch.utils._python_dispatch import TorchDispatchMode

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                return func(*args, **(kwargs or {}))

        torch._C._activate_gpu_trace()
        for n in dir(gpu_trace):
            if n.endswith("Callbacks"):
                getattr(gpu_trace, n).callback_list.append(lambda *a: None)
        for r in range(rounds):
            for name, kind, fn in all_programs():
                with Mode():
                    fn()
                gc.collect()
    else:
        from pytest_streamorder.gpu import cuda_backend

        for r in range(rounds):
            for name, kind, fn in all_programs():
                with cuda_backend(seed=r, raise_on_race=False):
                    fn()
                gc.collect()
        with cuda_backend(seed=0, delay_probability=0):
            workload(200)
        gc.collect()
    print("BISECT_OK", flush=True)


def bisect(out_dir: str) -> str:
    results = {}
    for cfg in BISECT_CONFIGS:
        env = dict(os.environ, STREAMORDER_CUDA_DEBUG="" if cfg == "TORCHONLY" else cfg)
        cmd = [sys.executable, os.path.abspath(__file__), "--bisect-child"]
        if cfg == "TORCHONLY":
            cmd.append("--torch-only")
        t0 = time.perf_counter()
        try:
            p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=150)
            results[cfg] = {"rc": p.returncode, "ok": "BISECT_OK" in p.stdout,
                            "s": time.perf_counter() - t0, "tail": (p.stdout + p.stderr)[-1500:]}
        except subprocess.TimeoutExpired:
            results[cfg] = {"rc": None, "ok": False, "tail": "timeout"}
        print(f"bisect {cfg or 'default'!r}: rc={results[cfg]['rc']} ok={results[cfg]['ok']}",
              flush=True)
    with open(os.path.join(out_dir, "bisect.json"), "w") as f:
        json.dump(results, f, indent=1)
    for cfg in ["", "weakevents,evdelete", "flocals", "nofunction", "nofree",
                "nofree,nofunction,nocallbacks"]:
        if results[cfg]["ok"]:
            return cfg
    return ""


# --- the report ---------------------------------------------------------------------------

def markdown(res: dict) -> str:
    lines = [f"GPU: {res['device']}, torch {res['torch']}", ""]
    det, csan = res["detection"], res.get("csan", {}).get("programs", {})
    lines += ["| program | kind | backend races | values ok | CSAN reported |",
              "| --- | --- | --- | --- | --- |"]
    for name, d in det.items():
        c = csan.get(name, {})
        cs = "yes" if c.get("reported") else ("no" if c else "-")
        if c.get("error"):
            cs += f" ({c['error'][:60]})"
        lines.append(f"| {name} | {d['kind']} | {d['races']} | {'yes' if d['ok'] else 'STALE'} | {cs} |")
    ov = res.get("overhead")
    if ov:
        lines += ["", f"overhead: workload of {ov['iters']} iterations, {ov['device_ops']} device ops "
                  f"(races found: {ov['races']})", "",
                  "| stack | plain us/op | backend added us/op | CSAN added us/op | backend/CSAN |",
                  "| --- | --- | --- | --- | --- |"]
        for label in ("shallow", "deep"):
            o = ov[label]
            c = res.get("csan", {}).get(label, {})
            if "csan_s" in c:
                added = (c["csan_s"] - o["plain_s"]) / ov["device_ops"] * 1e6
                ratio = o["backend_added_us_per_op"] / added if added > 0 else float("nan")
                cs, rs = f"{added:.1f}", f"{ratio:.2f}"
            else:
                cs = rs = "-"
            lines.append(f"| {label} | {o['plain_us_per_op']:.1f} | {o['backend_added_us_per_op']:.1f} "
                         f"| {cs} | {rs} |")
    man = res.get("manifestation")
    if man:
        labels = [k for k in next(iter(man.values())) if k not in ("kind", "plain_stale")]
        lines += ["", "manifestation: stale / runs (races detected / runs)", "",
                  "| program | kind | plain stale | " + " | ".join(labels) + " |",
                  "| --- | --- | --- | " + " | ".join("---" for _ in labels) + " |"]
        for name, m in man.items():
            cells = [f"{m[l]['stale']}/{m[l]['runs']} ({m[l]['detected']}/{m[l]['runs']}), "
                     f"{m[l]['s_per_run'] * 1e3:.0f} ms/run" for l in labels]
            lines.append(f"| {name} | {m['kind']} | {m['plain_stale']}/{res['runs']} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines)


CONFIGS = {
    "default (site 0.5, fire 0.5, 0.25-2 ms)": {},
    "every site (site 1, fire 0.5, 0.25-2 ms)": {"delay_probability": 1.0},
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=".")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--iters", type=int, default=1000)
    p.add_argument("--diag", action="store_true")
    p.add_argument("--csan-child", action="store_true")
    p.add_argument("--bisect", action="store_true", help="find a configuration that does not "
                   "crash, write it to OUT/config.txt, and stop")
    p.add_argument("--bisect-child", action="store_true")
    p.add_argument("--torch-only", action="store_true")
    p.add_argument("--skip", default="", help="comma list: detection,overhead,csan,manifestation")
    args = p.parse_args(argv)
    import faulthandler
    faulthandler.enable()
    if args.bisect_child:
        bisect_child(args.torch_only)
        return 0
    if args.bisect:
        os.makedirs(args.out, exist_ok=True)
        cfg = bisect(args.out)
        with open(os.path.join(args.out, "config.txt"), "w") as f:
            f.write(cfg)
        return 0
    if args.csan_child:
        print("CSAN_JSON " + json.dumps(csan_child(args.iters)), flush=True)
        return 0
    os.makedirs(args.out, exist_ok=True)
    skip = set(filter(None, args.skip.split(",")))
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "runs": args.runs}
    if args.diag:
        log = diagnostics()
        with open(os.path.join(args.out, "diag.txt"), "w") as f:
            f.write("\n".join(log))
        print("\n".join(log), flush=True)
    from pytest_streamorder.gpu import cycles_per_ms
    res["cycles_per_ms"] = cycles_per_ms()
    steps = [("detection", lambda: detection()),
             ("overhead", lambda: overhead(args.iters)),
             ("csan", lambda: run_csan(args.iters, args.out)),
             ("manifestation", lambda: manifestation(args.runs, CONFIGS))]
    for key, fn in steps:
        if key in skip:
            continue
        t0 = time.perf_counter()
        try:
            res[key] = fn()
        except Exception as exc:  # noqa: BLE001 - keep the other measurements
            import traceback
            res[key + "_error"] = traceback.format_exc()
            print(res[key + "_error"], flush=True)
        print(f"[{key}: {time.perf_counter() - t0:.1f} s]", flush=True)
        with open(os.path.join(args.out, "measure.json"), "w") as f:
            json.dump(res, f, indent=1, default=str)
    text = markdown(res)
    with open(os.path.join(args.out, "measure.md"), "w") as f:
        f.write(text + "\n")
    print(text, flush=True)
    return 0


def test_measurement_smoke(tmp_path):
    assert main(["--out", str(tmp_path), "--runs", "2", "--iters", "20",
                 "--skip", "csan,overhead"]) == 0
    assert (tmp_path / "measure.md").exists()


if __name__ == "__main__":
    sys.exit(main())
