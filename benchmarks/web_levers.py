"""Levers for the browser's latency gap (issue 24): can a web page run a tower within 2x of native ONNX Runtime?

    .venv/bin/python -m mobileclip.benchmarks.web_levers      (no options)

``web_latency`` measures what a web bundle runs today, onnxruntime-web's WASM backend, against native ONNX Runtime.
This benchmark measures the levers beside it, in one run on one machine, for ``mobileclip-s0`` (random weights:
latency does not depend on them) in fp32 and dynamic int8, batch 1, at 1 and 2 threads:

* **onnxruntime-web, WASM** - the web bundle's page (``mobileclip.bench``), as in ``web_latency``;
* **LiteRT.js, WASM** - Google's ``@litertjs/core`` (XNNPACK compiled to WASM SIMD, threads through
  SharedArrayBuffer), on the ``.tflite`` towers of ``mobileclip export --format litert``, in the same Chromium;
* **native ONNX Runtime** on the bundle's ``.onnx`` (the goal's reference) and **native LiteRT** (``ai_edge_litert``,
  XNNPACK compiled for this CPU) on the same ``.tflite``: the last pair shows what WASM costs one kernel library.
* **WebNN** - whether Chromium offers ``navigator.ml`` on this platform with the feature switched on (its CPU
  backend runs natively, outside WASM); its answer is recorded.

Every side times the same inputs (the page's bench inputs: a fixed pseudo-random image, all-zero tokens), 5 warm-up
and 30 timed runs, p50. LiteRT.js's image embedding is compared with native LiteRT's (cosine), so a row cannot come
from a model that did not run. LiteRT.js is installed once with npm (pinned below) into
``~/.cache/mobileclip/litertjs-<version>``. Writes ``benchmarks/results/web_levers.json`` and ``.md``.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np

OUT = Path("benchmarks/results")
WORK = Path("runs/web_levers")
RUNS, WARMUP, THREADS = 30, 5, (1, 2)
LITERTJS = {"@litertjs/core": "2.5.3", "@litertjs/wasm-utils": "2.5.3"}
WEBNN_FLAG = "--enable-features=WebMachineLearningNeuralNetwork"

PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>LiteRT.js timing</title>
<script type="importmap">{"imports": {"@litertjs/wasm-utils": "./node_modules/@litertjs/wasm-utils/dist/index.js"}}
</script></head><body><script type="module">
import {loadLiteRt, loadAndCompile, Tensor} from "./node_modules/@litertjs/core/dist/index.js";
const threads = Number(new URLSearchParams(location.search).get("threads") || "1");
const ready = loadLiteRt("./node_modules/@litertjs/core/wasm/", {threads: true}).then(() => true);
// The web app's bench inputs (mobileclip.export.browser.bench_image makes the same ones in numpy).
function input(shape, dtype) {
  const n = shape.reduce((a, b) => a * b, 1);
  if (dtype === "int32") return new Int32Array(n);
  return Float32Array.from({length: n}, (_, i) => ((i * 2654435761) % 1000) / 1000 - 0.5);
}
window.litert = {
  ready,
  webnn: async () => {
    if (!navigator.ml) return "navigator.ml is undefined";
    try { await navigator.ml.createContext({deviceType: "cpu"}); return "available"; }
    catch (e) { return String(e && e.message || e); }
  },
  bench: async (file, shape, dtype, runs, warmup) => {
    await ready;
    const model = await loadAndCompile(file, {accelerator: "wasm", cpuOptions: {numThreads: threads}});
    const data = input(shape, dtype), times = [];
    let out = null;
    for (let i = 0; i < warmup + runs; i++) {
      const x = new Tensor(data, shape);
      const t0 = performance.now();
      const res = await model.run(x);
      const y = res[0].toTypedArray();
      const t1 = performance.now();
      if (i >= warmup) times.push(t1 - t0);
      out = Array.from(y);
      x.delete(); res.forEach((t) => t.delete());
    }
    model.delete();
    times.sort((a, b) => a - b);
    return {p50_ms: times[Math.floor(times.length / 2)], out, threads, isolated: crossOriginIsolated};
  },
};
</script></body></html>
"""


def litertjs_modules() -> Path:
    """``node_modules`` holding the pinned LiteRT.js packages (``npm install`` once into the user cache)."""
    root = Path.home() / ".cache" / "mobileclip" / f"litertjs-{LITERTJS['@litertjs/core']}"
    modules = root / "node_modules"
    if all((modules / name / "package.json").is_file() and
           json.loads((modules / name / "package.json").read_text())["version"] == version
           for name, version in LITERTJS.items()):
        return modules
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("web_levers needs npm to install LiteRT.js (install Node.js)")
    root.mkdir(parents=True, exist_ok=True)
    (root / "package.json").write_text(json.dumps({"private": True, "dependencies": LITERTJS}, indent=2))
    print(f"installing {', '.join(f'{k}@{v}' for k, v in LITERTJS.items())} into {root}", flush=True)
    run = subprocess.run([npm, "install", "--ignore-scripts", "--no-audit", "--no-fund", "--save-exact"], cwd=root,
                         capture_output=True, text=True, timeout=600)
    if run.returncode != 0:
        raise SystemExit(f"npm install in {root} failed: {' '.join((run.stderr or run.stdout).split()[-30:])}")
    return modules


def exports() -> dict:
    """``{precision: {"web": dir, "litert": dir}}`` - mobileclip-s0 exported both ways (dynamic int8 for int8)."""
    from mobileclip.export import export

    out = {}
    for precision in ("fp32", "int8"):
        extra = {"accept_int8_loss": True, "quant": "dynamic"} if precision == "int8" else {}
        out[precision] = {}
        for fmt in ("web", "litert"):
            dest = WORK / f"s0-{fmt}-{precision}"
            t = time.time()
            m = export("mobileclip-s0", dest, fmt=fmt, precision=precision, max_batch=4, overwrite=True,
                       allow_mismatch=True, **extra)
            print(f"{fmt} {precision}: exported in {time.time() - t:.0f} s, parity "
                  + ("passed" if m["parity"]["passed"] else "; ".join(m["parity"]["misses"])), flush=True)
            out[precision][fmt] = dest
    return out


def main() -> None:
    from mobileclip.backends import runner_for
    from mobileclip.backends.bundle import load_manifest
    from mobileclip.backends.web_browser import Browser, BundleServer
    from mobileclip.export.browser import bench_image, native_latency
    from mobileclip.export.parity import compare

    modules = litertjs_modules()
    bundles = exports()
    site = WORK / "litertjs-site"
    shutil.rmtree(site, ignore_errors=True)
    site.mkdir(parents=True)
    (site / "index.html").write_text(PAGE)
    shutil.copytree(modules, site / "node_modules")
    for precision, dirs in bundles.items():
        for role in ("image", "text"):
            shutil.copy(dirs["litert"] / f"{role}.tflite", site / f"{precision}-{role}.tflite")
    rows, checks = [], []
    with Browser(extra_flags=(WEBNN_FLAG,)) as browser:
        chromium = browser.version
        with BundleServer(site, bundle=False) as server:
            browser.driver.get(f"{server.url}index.html?threads=1")
            assert browser.call("window.litert.ready")
            webnn = browser.call("window.litert.webnn()")
        print(f"WebNN (Chromium {chromium}, {WEBNN_FLAG}): {webnn}", flush=True)
        for threads in THREADS:
            for precision, dirs in bundles.items():
                with BundleServer(dirs["web"]) as server:
                    assert browser.open(f"{server.url}?threads={threads}"), browser.call("mobileclip.messages()")
                    ort_web = browser.call("mobileclip.bench({runs: args[0], warmup: args[1]})", RUNS, WARMUP)
                    ort_web_version = browser.call("mobileclip.info()")["onnxruntimeWeb"]
                lrt = {}
                with BundleServer(site, bundle=False) as server:
                    browser.driver.get(f"{server.url}index.html?threads={threads}")
                    m = load_manifest(dirs["litert"])
                    for role in ("image", "text"):
                        shape = m["artifacts"][role]["inputs"][0]["shape"]
                        dtype = "int32" if role == "text" else "float32"
                        lrt[role] = browser.call("window.litert.bench(args[0], args[1], args[2], args[3], args[4])",
                                                 f"{precision}-{role}.tflite", shape, dtype, RUNS, WARMUP)
                        assert lrt[role]["isolated"] and lrt[role]["threads"] == threads
                native_ort = native_latency(dirs["web"], load_manifest(dirs["web"]), threads, RUNS)
                native_lrt = native_latency(dirs["litert"], m, threads, RUNS)
                if threads == THREADS[0]:   # LiteRT.js ran the model: its image embedding is native LiteRT's
                    runner = runner_for(dirs["litert"], m["artifacts"]["image"], threads=1)
                    with runner:
                        ref = runner.infer(bench_image(m["image_size"]))
                    got = np.asarray(lrt["image"]["out"], np.float32).reshape(ref.shape)
                    checks.append({"precision": precision,
                                   "image_cosine_litertjs_vs_native_litert": compare(ref, got)["min_cosine"]})
                    assert checks[-1]["image_cosine_litertjs_vs_native_litert"] > 0.999, checks[-1]
                for role in ("image", "text"):
                    row = {"precision": precision, "tower": role, "threads": threads,
                           "onnxruntime_web_wasm_ms": ort_web[role]["p50_ms"], "litertjs_wasm_ms": lrt[role]["p50_ms"],
                           "native_onnxruntime_ms": native_ort[role]["p50_ms"],
                           "native_litert_ms": native_lrt[role]["p50_ms"]}
                    rows.append(row)
                    print(" ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                          flush=True)
    from importlib.metadata import version
    result = {"command": "python -m mobileclip.benchmarks.web_levers", "date": time.strftime("%Y-%m-%d"),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
              "cpu": cpu_name(), "chromium": chromium, "onnxruntime_web": ort_web_version,
              "litertjs": LITERTJS, "onnxruntime": __import__("onnxruntime").__version__,
              "ai_edge_litert": version("ai-edge-litert"), "runs": RUNS, "warmup": WARMUP, "webnn": webnn,
              "checks": checks, "rows": rows}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "web_levers.json").write_text(json.dumps(result, indent=2) + "\n")
    (OUT / "web_levers.md").write_text(markdown(result))
    print(markdown(result))


def cpu_name() -> str:
    with open("/proc/cpuinfo") as f:
        return next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), platform.machine())


def markdown(r: dict) -> str:
    """The results table: each browser runtime's p50 and its ratio to native ONNX Runtime (the goal: <= 2x)."""
    md = ["# Web levers: what a page can run within 2x of native ONNX Runtime", "",
          f"`{r['command']}` on {r['cpu']} ({r['machine']}), {r['date']}: headless Chromium {r['chromium']}; "
          f"onnxruntime-web {r['onnxruntime_web']} (WASM, SIMD, threads); LiteRT.js "
          f"{r['litertjs']['@litertjs/core']} (XNNPACK in WASM, SIMD, threads); native onnxruntime {r['onnxruntime']} "
          f"and ai-edge-litert {r['ai_edge_litert']} (XNNPACK). mobileclip-s0, random weights, batch 1; p50 of "
          f"{r['runs']} timed runs after {r['warmup']} warm-up runs; every side on the same inputs and thread count, "
          "one after the other in one run. int8 is the dynamic recipe on both formats.", "",
          "| precision | tower | threads | onnxruntime-web WASM | LiteRT.js WASM | native ONNX Runtime | native LiteRT "
          "| ORT-web / native ORT | LiteRT.js / native ORT | LiteRT.js / native LiteRT |",
          "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for x in r["rows"]:
        o, lj, no, nl = (x[k] for k in ("onnxruntime_web_wasm_ms", "litertjs_wasm_ms", "native_onnxruntime_ms",
                                         "native_litert_ms"))
        md.append(f"| {x['precision']} | {x['tower']} | {x['threads']} | {o:.1f} ms | {lj:.1f} ms | {no:.1f} ms | "
                  f"{nl:.1f} ms | {o / no:.2f}x | {lj / no:.2f}x | {lj / nl:.2f}x |")
    md += ["", f"WebNN: Chromium {r['chromium']} with `{WEBNN_FLAG}` answers `navigator.ml.createContext({{deviceType: "
           f"'cpu'}})` with: {r['webnn']}", "",
           "LiteRT.js ran the models: its image embedding against native LiteRT's on the same input, cosine "
           + ", ".join(f"{c['image_cosine_litertjs_vs_native_litert']:.6f} ({c['precision']})" for c in r["checks"])
           + "."]
    return "\n".join(md) + "\n"


if __name__ == "__main__":
    main()
