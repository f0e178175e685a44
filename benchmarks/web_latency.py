"""Latency in the browser: each tower of web bundles in headless Chromium's WASM backend, beside native ONNX Runtime.

    .venv/bin/python -m mobileclip.benchmarks.web_latency      (no options)

Exports ``mobileclip-s0`` (random weights: latency does not depend on them) as web bundles in fp32, fp16 and int8
(dynamic, the recipe refused by default, so passed with ``accept_int8_loss``), plus ``make demo``'s distilled
student in fp32 where ``runs/demo`` has it. Each export runs the browser parity check (its result is recorded here).
Then, for 1 and 2 threads, each bundle's page is opened in headless Chromium (``?threads=N``) and times each tower at
batch 1 (``mobileclip.bench``: 5 warm-up and 30 timed runs, ``performance.now()``), and native ONNX Runtime times the
same ``.onnx`` files on inputs of the same shapes with the same thread count, in the same process, one after the other.
Writes ``benchmarks/results/web_latency.json`` and ``.md``. Needs Chromium (``make web-deps``).
"""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path

OUT = Path("benchmarks/results")
WORK = Path("runs/web_latency")
RUNS, THREADS = 30, (1, 2)
DEMO_STUDENT = Path("runs/demo/distilled/student")


def _bundles() -> list:
    from mobileclip.export import export

    jobs = [("mobileclip-s0", p, {"accept_int8_loss": True, "quant": "dynamic"} if p == "int8" else {})
            for p in ("fp32", "fp16", "int8")]
    if DEMO_STUDENT.is_dir():
        jobs.append((str(DEMO_STUDENT), "fp32", {}))
    out = []
    for model, precision, extra in jobs:
        name = f"{'demo-student' if model == str(DEMO_STUDENT) else model}-{precision}"
        dest = WORK / name
        t = time.time()
        m = export(model, dest, fmt="web", precision=precision, max_batch=4, overwrite=True, allow_mismatch=True,
                   **extra)
        browser = json.loads((dest / "parity.json").read_text())["browser"]
        print(f"{name}: exported in {time.time() - t:.0f} s; parity " + ("passed" if m["parity"]["passed"] else
                                                                         "; ".join(m["parity"]["misses"])))
        out.append({"bundle": name, "model": model, "precision": precision, "dir": dest,
                    "parity_passed": m["parity"]["passed"], "parity_misses": m["parity"]["misses"],
                    "browser_parity": {k: browser.get(k) for k in ("tokens_equal", "top1_agreement", "misses")}
                    | {f"{t}_min_cosine": browser[t]["min_cosine"] for t in ("image", "text") if t in browser},
                    "mb": sum(f.stat().st_size for f in dest.glob("*.onnx")) / 1e6})
    return out


def main() -> None:
    from mobileclip.backends.bundle import load_manifest
    from mobileclip.backends.web_browser import Browser, BundleServer
    from mobileclip.export.browser import native_latency

    rows = []
    bundles = _bundles()
    with Browser() as browser:
        chromium = browser.version
        for b in bundles:
            manifest = load_manifest(b["dir"])
            for threads in THREADS:
                with BundleServer(b["dir"]) as server:
                    assert browser.open(f"{server.url}?threads={threads}"), browser.call("mobileclip.messages()")
                    wasm = browser.call("mobileclip.bench({runs: args[0], warmup: 5})", RUNS)
                    ort_web = browser.call("mobileclip.info()")["onnxruntimeWeb"]
                native = native_latency(b["dir"], manifest, threads, RUNS)
                for tower in ("image", "text"):
                    w, n = wasm[tower]["p50_ms"], native[tower]["p50_ms"]
                    rows.append({"bundle": b["bundle"], "precision": b["precision"], "tower": tower,
                                 "threads": threads, "wasm_p50_ms": w, "native_p50_ms": n, "ratio": w / n})
                    print(f"{b['bundle']} {tower} {threads} thread(s): WASM {w:.2f} ms, native {n:.2f} ms, "
                          f"{w / n:.2f}x")
    machine = f"{platform.machine()}, {__import__('os').cpu_count()} cores, {platform.platform()}"
    result = {"command": "python -m mobileclip.benchmarks.web_latency", "machine": machine, "chromium": chromium,
              "onnxruntime_web": ort_web, "onnxruntime": __import__("onnxruntime").__version__, "runs": RUNS,
              "bundles": [{k: v for k, v in b.items() if k != "dir"} for b in bundles], "rows": rows}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "web_latency.json").write_text(json.dumps(result, indent=2) + "\n")
    md = ["# Web bundles: latency in Chromium (WASM) beside native ONNX Runtime", "",
          f"`{result['command']}` on {machine}: headless Chromium {chromium}, onnxruntime-web {ort_web} (WASM "
          f"backend, SIMD, threads through SharedArrayBuffer), native onnxruntime {result['onnxruntime']}. Batch 1, "
          f"p50 of {RUNS} timed runs after 5 warm-up runs, each side on the same `.onnx` file and input shapes with the same "
          "thread count, measured one after the other in one run. The goal (issue 24): WASM p50 within 2x of native.",
          "", "| bundle | tower | threads | WASM p50 | native p50 | WASM / native |", "|---|---|---:|---:|---:|---:|"]
    md += [f"| {r['bundle']} | {r['tower']} | {r['threads']} | {r['wasm_p50_ms']:.2f} ms | {r['native_p50_ms']:.2f} ms "
           f"| {r['ratio']:.2f}x |" for r in rows]
    md += ["", "Browser parity of each bundle (the export's check, against PyTorch):", "",
           "| bundle | size (towers) | token ids | image min cosine | text min cosine | top-1 agreement | parity |",
           "|---|---:|---|---:|---:|---:|---|"]
    for b in bundles:
        bp = b["browser_parity"]
        md.append(f"| {b['bundle']} | {b['mb']:.1f} MB | {'equal' if bp['tokens_equal'] else 'differ'} | "
                  f"{bp.get('image_min_cosine', float('nan')):.6f} | {bp.get('text_min_cosine', float('nan')):.6f} | "
                  f"{100 * bp['top1_agreement']:.1f}% | "
                  + ("passed" if b["parity_passed"] else "missed: " + "; ".join(b["parity_misses"])) + " |")
    (OUT / "web_latency.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
