"""Data pipeline costs that grow with the dataset: the sampler per step, and a caption file's index in
the main process and in each DataLoader worker.

    .venv/bin/python -m mobileclip.benchmarks.data_scale [--rows 1000000] [--sampler-samples 10000000]
        [--label after] [--out benchmarks/results]

* **Sampler**: :class:`mobileclip.distill.samples.StepBatches` over ``--sampler-samples`` samples, global batch
  256: the time of the first step of an epoch and the mean of the next 20.
* **Caption file**: a CSV of ``--rows`` rows (image paths in 1000 folders, captions of ~45 characters), read
  by :class:`mobileclip.distill.sources.CaptionPairs` as the trainer reads it: the time to build it, the main
  process's resident memory per row, and what a forked worker that reads every row once (``source.open(i)``,
  what a worker does per sample) adds to its private memory per row — with the interpreter's objects frozen
  before the fork (as the trainer starts its workers) and without. Linux only (``/proc``).
* **Pre-tokenized captions** (``--token-captions``, distinct captions of a text file): the time to tokenize them
  into a :class:`mobileclip.distill.tokens.TokenTable` and store it (``data.token_cache``), and the time a later run
  takes to read it back (digest of the captions, sha256 of the files, a few captions tokenized again).

Each run's numbers are stored under ``--label`` in ``data_scale.json`` (runs of other labels are kept, so the
code before and after a change can be measured by the same script) and ``data_scale.md`` shows them all.
"""
from __future__ import annotations

import argparse
import csv
import gc
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path



def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith(key))


def _private_dirty() -> int:
    with open("/proc/self/smaps_rollup") as f:
        return next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("Private_Dirty"))


def sampler_cost(n: int, batch: int = 256, steps: int = 20) -> dict:
    from mobileclip.distill.samples import StepBatches

    s = StepBatches(n, batch, steps + 1, seed=0)
    t = time.perf_counter()
    s.indices_for_step(0)
    first = time.perf_counter() - t
    t = time.perf_counter()
    for step in range(1, steps + 1):
        s.indices_for_step(step)
    return {"samples": n, "batch": batch, "first_step_ms": 1e3 * first,
            "next_steps_ms": 1e3 * (time.perf_counter() - t) / steps}


def write_captions(path: Path, rows: int) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "caption"])
        w.writerows((f"images/{i % 1000:04d}/{i:09d}.jpg", f"a photo of a small wooden boat, picture number {i}")
                    for i in range(rows))


def worker_growth(source, freeze: bool) -> int:
    """Private memory a forked process adds by reading every row once (``source.open(i)``)."""
    r, w = os.pipe()
    if freeze:
        gc.collect()
        gc.freeze()
    pid = os.fork()
    if pid == 0:
        try:
            before = _private_dirty()
            for i in range(len(source)):
                source.open(i)
            os.write(w, str(_private_dirty() - before).encode())
        finally:
            os._exit(0)
    if freeze:
        gc.unfreeze()
    os.close(w)
    os.waitpid(pid, 0)
    out = os.read(r, 64)
    os.close(r)
    return int(out)


def caption_cost(rows: int) -> dict:
    from mobileclip.distill.sources import CaptionPairs

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "captions.csv"
        write_captions(path, rows)
        gc.collect()
        rss0, hwm0 = _status("VmRSS"), _status("VmHWM")
        t = time.perf_counter()
        source = CaptionPairs(str(path))
        build = time.perf_counter() - t
        peak = _status("VmHWM") - max(hwm0, rss0)  # the high-water mark above what was resident before
        gc.collect()
        rss = _status("VmRSS") - rss0
        frozen, unfrozen = worker_growth(source, True), worker_growth(source, False)
        return {"rows": rows, "file_bytes": path.stat().st_size, "build_s": build, "main_bytes_per_row": rss / rows,
                "build_peak_bytes_per_row": max(0, peak) / rows,
                "worker_bytes_per_row_frozen": frozen / rows, "worker_bytes_per_row_unfrozen": unfrozen / rows}


def token_cost(n: int) -> dict:
    from mobileclip.factory import create_model
    from mobileclip.distill.sources import TextLines
    from mobileclip.distill.tokens import TokenTable

    tok = create_model("mobileclip-s0")[2]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "texts.txt"
        path.write_text("".join(f"a photo of a small wooden boat on a quiet lake, picture number {i}\n"
                                for i in range(n)))
        source = TextLines(str(path))
        t = time.perf_counter()
        built = TokenTable(source, tok, store=tmp + "/tokens")
        build = time.perf_counter() - t
        t = time.perf_counter()
        loaded = TokenTable(source, tok, store=tmp + "/tokens")
        load = time.perf_counter() - t
        assert loaded.loaded and not built.loaded
        return {"captions": n, "build_and_store_s": build, "load_s": load}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--sampler-samples", type=int, default=10_000_000)
    ap.add_argument("--token-captions", type=int, default=100_000)
    ap.add_argument("--label", default="after")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    if not os.path.exists("/proc/self/smaps_rollup"):
        raise SystemExit("data_scale needs Linux's /proc (private memory of a forked worker)")
    from mobileclip.benchmarks.common import environment

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                     ":!benchmarks/results"], capture_output=True, text=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = "unknown", False
    run = {"label": args.label, "commit": commit + ("+changes" if dirty else ""),
           "command": f"python -m mobileclip.benchmarks.data_scale --rows {args.rows} --sampler-samples "
                      f"{args.sampler_samples} --token-captions {args.token_captions} --label '{args.label}'",
           "environment": environment()}
    run["captions"] = caption_cost(args.rows)  # first: its peak memory is read from the process's high-water mark
    run["sampler"] = sampler_cost(args.sampler_samples)
    import inspect

    from mobileclip.distill.tokens import TokenTable

    if "store" in inspect.signature(TokenTable).parameters:  # code from before data.token_cache has none
        run["tokens"] = token_cost(args.token_captions)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jpath = out / "data_scale.json"
    runs = [r for r in (json.loads(jpath.read_text())["runs"] if jpath.exists() else []) if r["label"] != args.label]
    runs.append(run)
    jpath.write_text(json.dumps({"runs": runs}, indent=2) + "\n")
    lines = ["# Data pipeline costs that grow with the dataset", "",
             "`python -m mobileclip.benchmarks.data_scale` (see its docstring). One row per labelled run; each run "
             "names the code it measured (commit; `+changes`: with uncommitted changes).", "",
             "| run | code | machine | sampler: first step of an epoch (ms) | sampler: next steps (ms) | caption rows "
             "| build (s) | main process (B/row) | peak while building (B/row) "
             "| worker reading every row (B/row), gc frozen / not |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    token_lines = []
    for r in runs:
        s, c, e = r["sampler"], r["captions"], r["environment"]
        lines.append(f"| {r['label']} | {r['commit']} | {e['cpu']}, {e['cores']} cores, {e['date']} | "
                     f"{s['first_step_ms']:.0f} ({s['samples'] / 1e6:g} M samples) | {s['next_steps_ms']:.2f} | "
                     f"{c['rows']:,} | {c['build_s']:.1f} | {c['main_bytes_per_row']:.0f} | "
                     + (f"{c['build_peak_bytes_per_row']:.0f}" if "build_peak_bytes_per_row" in c else "—") + " | "
                     f"{c['worker_bytes_per_row_frozen']:.0f} / {c['worker_bytes_per_row_unfrozen']:.0f} |")
        if "tokens" in r:
            t = r["tokens"]
            token_lines.append(f"- {r['label']}: {t['captions']:,} distinct captions tokenized and stored in "
                               f"{t['build_and_store_s']:.1f} s; read back by the next run in {t['load_s']:.2f} s "
                               f"({t['build_and_store_s'] / t['load_s']:.0f}x).")
    if token_lines:
        lines += ["", "Pre-tokenized captions kept on disk (`data.token_cache`):", ""] + token_lines
    lines += ["", "Commands: " + "; ".join(f"`{r['command']}` ({r['label']})" for r in runs) + "."]
    (out / "data_scale.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
