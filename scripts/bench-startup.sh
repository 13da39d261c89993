#!/usr/bin/env bash
# Measures how long `mala --help` (and `mala --version`) take to start and
# exit, over many runs of the release binary. Prints mean, median and p95.
# Usage: scripts/bench-startup.sh [runs]   (default 300)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-300}"
cargo build --release -p mala --quiet
BIN="$PWD/target/release/mala"
python3 - "$BIN" "$RUNS" <<'PY'
import statistics, subprocess, sys, time
binary, runs = sys.argv[1], int(sys.argv[2])
for args in (["--help"], ["--version"]):
    for _ in range(10):  # warm the page cache
        subprocess.run([binary, *args], stdout=subprocess.DEVNULL, check=True)
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([binary, *args], stdout=subprocess.DEVNULL, check=True)
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    p95 = samples[int(len(samples) * 0.95) - 1]
    print(f"mala {' '.join(args):<10} runs={runs} mean={statistics.mean(samples):.2f} ms "
          f"median={statistics.median(samples):.2f} ms p95={p95:.2f} ms max={samples[-1]:.2f} ms")
PY
