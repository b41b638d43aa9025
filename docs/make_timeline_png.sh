#!/usr/bin/env bash
# Regenerate docs/timeline.png: run a broken variant under --streamorder with a trace dir,
# then screenshot its HTML timeline with headless Chromium (Debian package `chromium`).
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
cat > "$work/test_mut.py" <<'PY'
from reference_impl.mutants import MUTANTS

def test_d2h_not_gated():
    loop = MUTANTS["d2h_not_gated"].make_loop(16, device="cuda")
    for s in range(1, 8): loop.admit(s, 3)
    for _ in range(4):
        loop.step([1, 2, 3], [1, 1, 1], spec=True).check()
    for r in loop.synchronize(): r.check()
PY
python -m pytest --streamorder --streamorder-trace-dir="$work/traces" -q "$work/test_mut.py" >/dev/null || true
html=$(ls "$work"/traces/*.html | head -1)
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$work/chromium" --window-size=1150,700 --screenshot=docs/timeline.png "file://$html"
