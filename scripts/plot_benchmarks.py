#!/usr/bin/env python3
"""Draw the host-blocked comparison of resolve_seq_lens_cpu from pytest-benchmark JSON.

    python -m pytest tests/benchmarks --benchmark-only --benchmark-json=bench.json
    python scripts/plot_benchmarks.py bench.json [more.json ...] -o docs/host_blocked.png

Reads every benchmark whose extra_info has `variant` and `host_blocked_s` (written by
tests/benchmarks/test_host_blocked.py through the stream_benchmark fixture) and draws one
bar per (run, backend) for each variant: measured on a real GPU ("cuda") or predicted by
the virtual device's model ("virtual"), with the H100 measurement of issue 7 as a marker.
Several JSON files (say a GPU run and a CPU-only run) go into one plot. Prints the table
it plots. Needs matplotlib: pip install 'pytest-streamorder[bench]' (or matplotlib).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

VARIANT_LABELS = {
    "private_d2h": "reference:\nprivate D2H stream",
    "sync_schedule": "variant:\nsync the schedule stream",
}


def load_rows(paths: list[str]) -> list[dict]:
    rows = []
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        machine = data.get("machine_info", {})
        gpu = None
        for bench in data.get("benchmarks", []):
            info = bench.get("extra_info", {})
            if "variant" not in info or "host_blocked_s" not in info:
                continue
            gpu = gpu or info.get("gpu")
            rows.append({
                "file": os.path.basename(path),
                "node": machine.get("node", ""),
                "variant": info["variant"],
                "backend": info.get("backend", "?"),
                "gpu": info.get("gpu"),
                "blocked_ms": info["host_blocked_s"] * 1e3,
                "blocked_min_ms": info.get("host_blocked_s_min", info["host_blocked_s"]) * 1e3,
                "blocked_max_ms": info.get("host_blocked_s_max", info["host_blocked_s"]) * 1e3,
                "reference_ms": info.get("h100_reference_ms"),
                "wall_ms": bench["stats"]["median"] * 1e3,
            })
    return rows


def series_name(row: dict, several_files: bool) -> str:
    what = (f"measured ({row['gpu'] or 'GPU'})" if row["backend"] == "cuda"
            else "virtual device model")
    return f"{what}, {row['file']}" if several_files else what


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("json", nargs="+", help="pytest-benchmark --benchmark-json files")
    parser.add_argument("-o", "--output", default="host_blocked.png", help="PNG to write")
    parser.add_argument("--measured", action="append", default=[], metavar="LABEL=REF_MS,SYNC_MS",
                        help="also draw a measurement made elsewhere, as a line per variant "
                             "(private_d2h, sync_schedule), e.g. 'H100 run=0.20,2.00'")
    args = parser.parse_args(argv)
    extra_lines = []
    for spec in args.measured:
        label, _, values = spec.rpartition("=")
        try:
            ref_ms, sync_ms = (float(v) for v in values.split(","))
        except ValueError:
            parser.error(f"--measured takes LABEL=REF_MS,SYNC_MS, got {spec!r}")
        extra_lines.append((label, {"private_d2h": ref_ms, "sync_schedule": sync_ms}))

    rows = load_rows(args.json)
    if not rows:
        print("no host-blocked benchmarks in these files (run tests/benchmarks/"
              "test_host_blocked.py with --benchmark-json, without --benchmark-disable)",
              file=sys.stderr)
        return 2
    files_per_backend = {}
    for r in rows:
        files_per_backend.setdefault(r["backend"], set()).add(r["file"])
    several = any(len(f) > 1 for f in files_per_backend.values())
    print(f"{'variant':15} {'series':45} {'blocked ms':>10} {'min':>7} {'max':>7} {'wall ms':>8}")
    for r in rows:
        print(f"{r['variant']:15} {series_name(r, several):45} {r['blocked_ms']:10.3f} "
              f"{r['blocked_min_ms']:7.3f} {r['blocked_max_ms']:7.3f} {r['wall_ms']:8.3f}")

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot_benchmarks.py needs matplotlib to draw the PNG: "
              "pip install 'pytest-streamorder[bench]'  (or: pip install matplotlib)",
              file=sys.stderr)
        return 1

    variants = [v for v in VARIANT_LABELS if any(r["variant"] == v for r in rows)]
    variants += sorted({r["variant"] for r in rows} - set(variants))
    series = []
    for r in rows:
        name = series_name(r, several)
        if name not in series:
            series.append(name)
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for k, name in enumerate(series):
        xs, ys, lo, hi = [], [], [], []
        for i, v in enumerate(variants):
            for r in rows:
                if r["variant"] == v and series_name(r, several) == name:
                    xs.append(i - 0.4 + width * (k + 0.5))
                    ys.append(r["blocked_ms"])
                    lo.append(r["blocked_ms"] - r["blocked_min_ms"])
                    hi.append(r["blocked_max_ms"] - r["blocked_ms"])
        errs = [lo, hi] if any(lo) or any(hi) else None
        bars = ax.bar(xs, ys, width * 0.92, yerr=errs, capsize=3, label=name)
        ax.bar_label(bars, labels=[f"{y:.2f}" for y in ys], label_type="center", fontsize=8,
                     color="white")
    refs = {i: r["reference_ms"] for i, v in enumerate(variants) for r in rows
            if r["variant"] == v and r["reference_ms"] is not None}
    lines = [("H100, issue 7 (measured)", refs)]
    lines += [(label, {i: by_variant[v] for i, v in enumerate(variants) if v in by_variant})
              for label, by_variant in extra_lines]
    for (label, points), style in zip(lines, ["--", ":", "-.", (0, (5, 1))]):
        for n, (i, ms) in enumerate(sorted(points.items())):
            ax.hlines(ms, i - 0.45, i + 0.45, colors="black", linestyles=style, linewidth=1.2,
                      label=label if n == 0 else None, zorder=3)
            ax.annotate(f"{ms:.2f}", (i + 0.45, ms), xytext=(2, 2 if style == "--" else -9),
                        textcoords="offset points", fontsize=8)
    ax.set_xticks(range(len(variants)), [VARIANT_LABELS.get(v, v) for v in variants])
    ax.set_ylabel("host blocked per step (ms, median; bars: min-max)")
    ax.set_title("resolve_seq_lens_cpu: host blocked while forward n runs\n"
                 "(~0.3 ms before publish, ~1.8 ms after)", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    ax.margins(y=0.15)
    fig.tight_layout()
    fig.savefig(args.output, dpi=120)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
