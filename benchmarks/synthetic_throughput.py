"""How fast the synthetic generator makes captioned images, on one core.

    .venv/bin/python -m mobileclip.benchmarks.synthetic_throughput [--seconds 3] [--out benchmarks/results]

Prints a table and writes ``synthetic_throughput.json`` and ``.md`` with the machine,
versions and p50/p90/p99 per-image times.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from mobileclip.benchmarks.common import environment
from mobileclip.data.synthetic import SyntheticGenerator


def measure(image_size: int, seconds: float, two_object_prob: float) -> dict:
    gen = SyntheticGenerator("train", image_size, seed=0, two_object_prob=two_object_prob)
    for i in range(50):  # warm-up (grid caches, allocator)
        gen[i]
    times = []
    start = time.perf_counter()
    i = 50
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        gen[i]
        times.append(time.perf_counter() - t)
        i += 1
    wall = time.perf_counter() - start
    ms = np.array(times) * 1e3
    return {"image_size": image_size, "two_object_prob": two_object_prob, "images": len(times),
            "images_per_s": len(times) / wall, "p50_ms": float(np.percentile(ms, 50)),
            "p90_ms": float(np.percentile(ms, 90)), "p99_ms": float(np.percentile(ms, 99))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    rows = [measure(s, args.seconds, 0.35) for s in (64, 128, 256)]
    env = environment(numpy=np.__version__, processes=1)
    result = {"benchmark": "synthetic_throughput", "command": "python -m mobileclip.benchmarks.synthetic_throughput",
              "environment": env, "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "synthetic_throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# Synthetic data generator throughput (one process, one core)", "",
             f"`{result['command']}` on {env['cpu']} ({env['cores']} cores), Python {env['python']}, "
             f"numpy {env['numpy']}, {env['date']}.", "",
             "| image size | images/s | p50 ms | p90 ms | p99 ms |", "|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['image_size']} | {r['images_per_s']:.0f} | {r['p50_ms']:.3f} | {r['p90_ms']:.3f} | "
              f"{r['p99_ms']:.3f} |" for r in rows]
    (out / "synthetic_throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
