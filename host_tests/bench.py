"""Benchmarks on the virtual module: python -m host_tests.bench (make bench).

Each benchmark is a function bench_<name>(m) taking a synced Module and returning a line of
results; add more below.
"""

from __future__ import annotations

import statistics
import sys
import time

from host_tests.module import Module


def bench_at_round_trip(m: Module, n: int = 200) -> str:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        m.cmd("AT")
        times.append(time.perf_counter() - t)
    times.sort()
    return (
        f"AT round trip: median {statistics.median(times) * 1e3:.2f} ms, "
        f"p95 {times[int(n * 0.95)] * 1e3:.2f} ms over {n}"
    )


def main() -> int:
    benches = [v for k, v in sorted(globals().items()) if k.startswith("bench_")]
    with Module() as m:
        m.sync()
        for bench in benches:
            print(bench(m), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
