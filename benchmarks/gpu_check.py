"""The GPU check: every GPU path of the toolkit measured on one CUDA GPU, in one call that always brings
something back (run by ``benchmarks/gpu_check.sh``; plain Python, standard library only, so that it reports
even where the project or torch fails to import).

    bash benchmarks/gpu_check.sh OUT          # or: python benchmarks/gpu_check.py OUT

1. **Wheels** in ``.whl/`` (``make gpu-wheels``; the device tool carries them) are installed one at a time
   into ``/tmp/site``, each recorded: one bad wheel costs only itself. The project is installed (editable, no
   dependencies: the machine's torch stays) only when it does not import; a refusal is recorded, not fatal.
2. **Preflight** (at most 60 s): versions, the GPU and its MIG mode, ``/dev/shm``, a C compiler (for
   ``torch.compile``), each import the steps need, one nvJPEG decode, and whether an ONNX Runtime session
   really runs on ``CUDAExecutionProvider``. A step whose prerequisite is missing is skipped with the reason.
   Without a CUDA GPU it says so and measures nothing (exit 0).
3. **Steps**, most important first, each with its own limit and all under one global deadline
   (``DEADLINE_S``, 7 minutes from the start, set-up included): the ``gpu``/``tensorrt``-marked tests
   (``-v -rA`` on named files); S0 bf16 training throughput, eager and compiled in one process (one compile,
   which also checks the compiled step against the eager one); a teacher cache in bf16 and 200 distillation
   steps from it; nvJPEG decoding; ``mobileclip bench`` on PyTorch CUDA; then ONNX Runtime CUDA fp32 and fp16,
   each its own step (an export may fail alone); TensorRT when it imports.

After every step ``summary.md`` is rewritten and that step's JSON is written into OUT, so a run cut short
still returns what it measured. OUT holds at most 8 files (the device tool brings back 8): ``summary.md``,
``gpu_check.log``, ``preflight.json``, ``pytest.xml``, ``distill_throughput.json``, ``distill_200_steps.json``,
``data_throughput_gpu.json`` and ``bench.json``. A step that outlives its limit is killed with its whole
process group (DataLoader workers, compile workers). Exit status: 0 when every step that ran passed, 1 otherwise.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEADLINE_S = 420        # the whole run, set-up included: a device call allows 10 min and the session 15
PREFLIGHT_S = 60
RESERVE_S = 5           # kept back from the deadline to write the summary
SITE = "/tmp/site"
# Limits per step (seconds); the global deadline cuts each further.
LIMITS = {"pytest": 120, "distill_throughput": 150, "cache-teacher": 60, "distill": 120, "loss": 20,
          "data_throughput": 60, "bench torch": 60, "bench onnxruntime fp32": 75, "bench onnxruntime fp16": 75,
          "export tensorrt fp16": 120, "bench tensorrt fp16": 45}
GPU_TESTS = ["tests/test_distill.py", "tests/test_models.py", "tests/test_data_pipeline.py", "tests/test_export.py",
             "tests/test_export_tensorrt.py"]
# step 2 makes the one compile (and checks compiled against eager at batch 256): the test's own compile is left out
DESELECT = ["tests/test_distill.py::test_compiled_bf16_step_matches_eager_on_gpu"]
IMPORTS = ("torch", "torchvision", "open_clip", "timm", "ftfy", "regex", "webdataset", "simplejpeg", "safetensors",
           "onnx", "onnxscript", "onnxruntime", "tensorrt", "pytest", "mobileclip", "mobileclip.distill",
           "mobileclip.benchmarks")


def _now() -> float:
    return time.monotonic()


class GpuCheck:
    """Runs steps under one deadline and keeps ``summary.md`` current; see the module's docstring."""

    def __init__(self, out, python: str = sys.executable, deadline_s: float = DEADLINE_S, work=None) -> None:
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.python = python
        self.t0 = _now()
        self.deadline = self.t0 + deadline_s
        self.work = Path(work or tempfile.mkdtemp(prefix="gpu_check."))
        self.log_path = self.out / "gpu_check.log"
        self.log_path.write_text("")
        self.rows: list = []          # (step, result, seconds)
        self.notes: list = []         # lines for the summary
        self.sections: list = []      # (title, markdown) from finished steps
        self.preflight: dict = {}
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.failed = False

    # ------------------------------------------------------------------ bookkeeping
    def log(self, msg: str) -> None:
        print(f"gpu_check: {msg}", flush=True)
        with open(self.log_path, "a") as f:
            f.write(f"gpu_check: {msg}\n")

    def remaining(self) -> float:
        return self.deadline - _now() - RESERVE_S

    def record(self, name: str, result: str, seconds: float) -> None:
        self.rows.append((name, result, seconds))
        self.write_summary()

    def skip(self, name: str, reason: str) -> None:
        self.log(f"--- {name}: skipped: {reason}")
        self.record(name, f"skipped: {reason}", 0.0)

    def write_summary(self) -> None:
        pf = self.preflight
        lines = ["# GPU check", "",
                 f"`bash benchmarks/gpu_check.sh` on {pf.get('gpu') or 'an unknown device'}, "
                 f"{time.strftime('%Y-%m-%d', time.gmtime())}, {_now() - self.t0:.0f} s so far "
                 f"(deadline {self.deadline - self.t0:.0f} s). torch {pf.get('torch')}, CUDA {pf.get('cuda')}, "
                 f"Python {pf.get('python')}.", ""]
        lines += self.notes + ([""] if self.notes else [])
        lines += ["| step | result | time |", "|---|---|---:|"]
        lines += [f"| {n} | {r} | {s:.0f} s |" for n, r, s in self.rows]
        for title, body in self.sections:
            lines += ["", f"## {title}", "", body.rstrip()]
        tmp = self.out / ".summary.md.tmp"
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, self.out / "summary.md")

    def write_json(self, name: str, data) -> None:
        tmp = self.out / f".{name}.tmp"
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
        os.replace(tmp, self.out / name)

    # ------------------------------------------------------------------ running
    def run(self, name: str, cmd: list, limit: float, needs: dict | None = None, quiet_ok: bool = False) -> bool:
        """Run ``cmd`` (its output to the log) within ``min(limit, time left)``; record ok / failed / timed out.
        ``needs`` maps a prerequisite's description to whether it holds: any false one skips the step."""
        for what, ok in (needs or {}).items():
            if not ok:
                self.skip(name, f"{what} is missing (see preflight.json)")
                return False
        left = self.remaining()
        if left < 5:
            self.skip(name, f"the global deadline ({self.deadline - self.t0:.0f} s) was reached")
            return False
        budget = min(limit, left)
        self.log(f"--- {name} (limit {budget:.0f} s): {' '.join(map(str, cmd))}")
        t = _now()
        with open(self.log_path, "a") as logf:
            proc = subprocess.Popen([str(c) for c in cmd], stdout=logf, stderr=subprocess.STDOUT, env=self.env,
                                    start_new_session=True)   # its own process group: a timeout kills it all
            try:
                rc = proc.wait(timeout=budget)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                rc = None
        dt = _now() - t
        if rc == 0:
            result = "ok"
        elif rc is None:
            result = f"timed out after {budget:.0f} s" + (" (the global deadline)" if budget < limit else "")
        else:
            result = f"failed (exit {rc}; see gpu_check.log)"
        self.failed |= rc != 0
        self.log(f"--- {name}: {result} after {dt:.0f} s")
        self.record(name, result, dt)
        return rc == 0


def _kill_group(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(timeout=5)
            if sig == signal.SIGTERM:   # the leader is gone; its group may not be
                os.killpg(proc.pid, signal.SIGKILL)
            return
        except subprocess.TimeoutExpired:
            continue
        except (ProcessLookupError, PermissionError):
            return


# ---------------------------------------------------------------------- set-up

def install_wheels(check: GpuCheck, wheel_dir: Path = Path(".whl"), site: str = SITE) -> dict:
    """Each wheel on its own (``pip install --no-index --no-deps --target``): ``{file: "ok" or the reason}``."""
    results = {}
    wheels = sorted(Path(wheel_dir).glob("*.whl"))
    if not wheels:
        check.notes.append(f"No wheels in {wheel_dir}/ (`make gpu-wheels` fetches them): the machine's own "
                           "packages only.")
        return results
    here = _python_tag(check.python)
    for w in wheels:
        if check.remaining() < 30:
            results[w.name] = "not installed: the global deadline is near"
            continue
        tags = w.name[:-4].split("-")
        built_for = tags[-3] if len(tags) >= 5 else "py3"
        if built_for.startswith("cp") and here and built_for != here and "abi3" not in tags[-2]:
            results[w.name] = f"skipped: built for {built_for}, this Python is {here}"
            continue
        p = subprocess.run([check.python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                            "--no-cache-dir", "--upgrade", "--target", site, str(w)],
                           capture_output=True, text=True, timeout=max(5.0, min(60.0, check.remaining())))
        last = (p.stderr or p.stdout).strip().splitlines()
        results[w.name] = "ok" if p.returncode == 0 else f"failed: {last[-1] if last else 'exit ' + str(p.returncode)}"
        check.log(f"wheel {w.name}: {results[w.name]}")
    skipped = [k for k, v in results.items() if v.startswith("skipped")]
    for k in skipped:
        del results[k]
    if any(v == "ok" for v in results.values()):
        path = check.env.get("PYTHONPATH")
        check.env["PYTHONPATH"] = site + (os.pathsep + path if path else "")
    bad = {k: v for k, v in results.items() if v != "ok"}
    check.notes.append(f"Wheels: {len(results) - len(bad)} of {len(results)} installed"
                       + ("; " + "; ".join(f"{k} {v}" for k, v in bad.items()) if bad else "") + ".")
    return results


def _python_tag(python: str):
    """``cp312`` for the interpreter ``python`` (None when it cannot be asked)."""
    try:
        p = subprocess.run([python, "-c", "import sys; print(f'cp{sys.version_info[0]}{sys.version_info[1]}')"],
                           capture_output=True, text=True, timeout=30)
        return p.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


def ensure_project(check: GpuCheck) -> bool:
    """Whether ``mobileclip.distill`` and ``mobileclip.benchmarks`` import, installing the project (editable, no
    dependencies) when they do not. A refusal is recorded in the summary; the steps that need it are skipped."""
    probe = [check.python, "-c", "import mobileclip.distill, mobileclip.benchmarks"]
    if subprocess.run(probe, env=check.env, capture_output=True).returncode == 0:
        return True
    p = subprocess.run([check.python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                        "--no-cache-dir", "-e", "."], env=check.env, capture_output=True, text=True,
                       timeout=max(5.0, min(120.0, check.remaining())))
    with open(check.log_path, "a") as f:
        f.write(p.stdout + p.stderr)
    r = subprocess.run(probe, env=check.env, capture_output=True, text=True)
    if r.returncode == 0:
        return True
    why = (r.stderr.strip().splitlines() or ["?"])[-1]
    check.notes.append(f"**The project does not import** ({why}; the editable install exited {p.returncode}): "
                       "the steps that need it are skipped.")
    return False


PREFLIGHT = r'''
import importlib, json, os, platform, shutil, subprocess, sys, tempfile
out = {"python": platform.python_version(), "imports": {}}
for mod in json.loads(sys.argv[1]):
    try:
        m = importlib.import_module(mod)
        out["imports"][mod] = getattr(m, "__version__", "ok")
    except Exception as e:
        out["imports"][mod] = None
        out.setdefault("import_errors", {})[mod] = f"{type(e).__name__}: {e}"[:300]
try:
    import torch
    out.update(torch=torch.__version__, cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name()
        out["mig"] = " MIG " in f" {out['gpu']} "
except Exception as e:
    out.update(torch=None, cuda_available=False, torch_error=f"{type(e).__name__}: {e}")
try:
    q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,mig.mode.current",
                        "--format=csv,noheader"], capture_output=True, text=True, timeout=15)
    out["nvidia_smi"] = (q.stdout or q.stderr).strip()
except Exception as e:
    out["nvidia_smi"] = f"not run: {e}"
try:
    du = shutil.disk_usage("/dev/shm")
    out["dev_shm_mb"] = {"total": round(du.total / 2**20), "free": round(du.free / 2**20)}
except OSError as e:
    out["dev_shm_mb"] = None
out["cc"] = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
out["cpus"] = os.cpu_count()
out["nvjpeg"] = None
if out.get("cuda_available"):
    try:
        import torch, torchvision.io as tio
        img = (torch.arange(3 * 64 * 48) % 251).to(torch.uint8).reshape(3, 64, 48)
        data = tio.encode_jpeg(img, quality=90)
        dec = tio.decode_jpeg(data, device="cuda")
        torch.cuda.synchronize()
        out["nvjpeg"] = list(dec.shape) == [3, 64, 48] and dec.is_cuda
    except Exception as e:
        out["nvjpeg"] = False
        out["nvjpeg_error"] = f"{type(e).__name__}: {e}"[:300]
out["ort_cuda"] = False
try:
    import numpy as np, onnx, onnx.helper as h, onnxruntime as ort
    out["ort_providers"] = ort.get_available_providers()
    if out.get("cuda_available") and "CUDAExecutionProvider" in out["ort_providers"]:
        x = h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 8])
        y = h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 8])
        g = h.make_graph([h.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
        m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
        m.ir_version = 8
        s = ort.InferenceSession(m.SerializeToString(), providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
        r = s.run(None, {"x": np.ones((2, 8), np.float32)})[0]
        out["ort_session_providers"] = s.get_providers()
        out["ort_cuda"] = "CUDAExecutionProvider" in s.get_providers() and float(r.sum()) == 16.0
except Exception as e:
    out["ort_error"] = f"{type(e).__name__}: {e}"[:300]
print("PREFLIGHT " + json.dumps(out))
'''


def preflight(check: GpuCheck) -> dict:
    t = _now()
    try:
        p = subprocess.run([check.python, "-c", PREFLIGHT, json.dumps(IMPORTS)], env=check.env, capture_output=True,
                           text=True, timeout=min(PREFLIGHT_S, max(5.0, check.remaining())))
        line = next((ln for ln in p.stdout.splitlines() if ln.startswith("PREFLIGHT ")), None)
        info = json.loads(line[len("PREFLIGHT "):]) if line else {"error": (p.stderr or "no output")[-2000:]}
        with open(check.log_path, "a") as f:
            f.write(p.stderr)
    except subprocess.TimeoutExpired:
        info = {"error": f"the preflight took over {PREFLIGHT_S} s"}
    info["seconds"] = round(_now() - t, 1)
    check.preflight = info
    check.write_json("preflight.json", info)
    check.log("preflight: " + json.dumps({k: v for k, v in info.items() if k != "imports"}))
    check.record("preflight", "ok" if "error" not in info else f"failed: {info['error'][-200:]}", info["seconds"])
    return info


# ---------------------------------------------------------------------- the steps

def _has(info: dict, mod: str) -> bool:
    return bool((info.get("imports") or {}).get(mod))


def _json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _md(path: Path) -> str:
    """A step's Markdown report under the summary's own heading: its title line dropped, its headings demoted."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return ""
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    return "\n".join("##" + ln if ln.startswith("#") else ln for ln in lines).strip()


# What the steps run at: on the GPU, and in a CPU rehearsal (GPU_CHECK_REHEARSAL=1: the same commands on the CPU,
# at toy sizes, with a small student and teacher and no compile, so that a flag a script no longer takes is found
# here, not in a rare GPU session).
FULL = {"device": "cuda", "student": "mobileclip-s0", "teacher": "open_clip:ViT-B-32", "batch": 256, "steps": 20,
        "workers": 8, "cache_size": 4096,
        "cache_image": 64, "distill_steps": 200, "distill_workers": 12, "log_every": 5, "eval_size": 256, "bench_batch": "1,8,64",
        "min_seconds": 0.3, "data": ["--images", "256", "--samples", "512", "--batch", "128"], "precision": "bf16"}
REHEARSAL = {"device": "cpu", "student": "mobileclip-tiny", "teacher": "clip-vit-tiny", "batch": 8, "steps": 1,
             "workers": 0, "cache_size": 32,
             "cache_image": 32, "distill_steps": 10, "distill_workers": 0, "log_every": 1, "eval_size": 16, "bench_batch": "1",
             "min_seconds": 0.0, "data": ["--images", "8", "--samples", "16", "--batch", "8"], "precision": "fp32"}


def run_steps(check: GpuCheck, project_ok: bool, z: dict = FULL) -> None:
    info, py, w = check.preflight, check.python, check.work
    base = {"the project (mobileclip)": project_ok, "open_clip": _has(info, "open_clip")}
    dev, student = z["device"], z["student"]

    # 1. the gpu- and tensorrt-marked tests, by name
    check.run("pytest gpu/tensorrt", [py, "-m", "pytest", "-v", "-rA", "-p", "no:cacheprovider", "-o", "addopts=",
                                      "-m", "gpu or tensorrt", "--junitxml", check.out / "pytest.xml",
                                      *[a for d in DESELECT for a in ("--deselect", d)], *GPU_TESTS],
              LIMITS["pytest"], {**base, "pytest": _has(info, "pytest")})

    # 2. S0 bf16 training throughput, eager and compiled in one process (one compile; MFU over step and student)
    compile_ok = bool(info.get("cc")) and dev == "cuda"
    cmd = [py, "-m", "mobileclip.benchmarks.distill_throughput", "--student", student, "--batch", z["batch"],
           "--precision", z["precision"], "--steps", z["steps"], "--workers", z["workers"], "--teachers",
           "--out", w / "dt"]
    if compile_ok:
        cmd[-2:-2] = ["--compile", "--eager-too"]
    elif dev == "cuda":
        check.notes.append("No C compiler (cc) here: torch.compile cannot build its kernels, so only eager is timed.")
    peak = os.environ.get("GPU_CHECK_PEAK_TFLOPS")
    if peak:
        cmd += ["--peak-tflops", peak]
    check.run(f"distill_throughput {student} {z['precision']}" + (" eager + compiled" if compile_ok else " eager"),
              cmd,
              LIMITS["distill_throughput"],
              {**base, "GPU_CHECK_PEAK_TFLOPS (a MIG slice's peak dense bf16 TFLOP/s, for the MFU)":
               bool(peak) or not info.get("mig")})
    dt = _json(w / "dt" / "distill_throughput.json")
    if dt:
        check.write_json("distill_throughput.json", dt)
        check.sections.append(("Training throughput", _md(w / "dt" / "distill_throughput.md")))
        check.write_summary()

    # 3. a bf16 teacher cache, then 200 distillation steps from it (loss falls? share of time waiting for data)
    ok = check.run(f"cache-teacher ({z['teacher']}, {z['precision']})",
                   [py, "-m", "mobileclip", "cache-teacher", "--teacher", z["teacher"], "--data", "synthetic",
                    "--size", z["cache_size"], "--image-size", z["cache_image"], "--augs", "2", "--batch-size",
                    z["batch"], "--workers", z["workers"], "--device", dev, "--precision", z["precision"],
                    "--out", w / "cache"], LIMITS["cache-teacher"], base)
    n = z["distill_steps"]
    ok = ok and check.run(f"distill {n} steps", [py, "-m", "mobileclip", "distill", f"student={student}",
                                                 f"data.cache={w / 'cache'}", f"steps={n}", f"batch_size={z['batch']}",
                                                 f"data.workers={z['distill_workers']}", "losses.kd=1.0",
                                                 "losses.clip=1.0", f"log_every={z['log_every']}", "ckpt_every=1000",
                                                 f"eval.size={z['eval_size']}", "progress=false",
                                                 f"out={w / 'distill'}"], LIMITS["distill"], base)
    if ok:
        check.run(f"loss falls over {n} steps", [py, Path(__file__).resolve(), "--loss-report", w / "distill",
                                                 z["batch"], check.out / "distill_200_steps.json"], LIMITS["loss"])
        rep = _json(check.out / "distill_200_steps.json")
        if rep:
            check.sections.append((f"{n}-step distillation", "```\n" + json.dumps(
                {k: v for k, v in rep.items() if k != "summary"}, indent=1) + "\n```"))
            check.write_summary()

    # 4. JPEG decoding on the GPU (nvJPEG) against the CPU's, per sample
    check.run("data_throughput, nvJPEG", [py, "-m", "mobileclip.benchmarks.data_throughput", "--student", student,
                                          *z["data"], "--rounds", "1", "--workers", "0", "2",
                                          "--levers", "9", "7", "10", "--sources", "captions", "--draft-size", "0", "0", "--pretokenize-captions",
                                          "10000", "--device", dev, "--out", w / "data"],
              LIMITS["data_throughput"],
              {**base, "nvJPEG (torchvision.io.decode_jpeg on CUDA)": info.get("nvjpeg") or dev == "cpu"})
    data = _json(w / "data" / "data_throughput.json")
    if data:
        check.write_json("data_throughput_gpu.json", data)
        check.sections.append(("Data pipeline with nvJPEG", _md(w / "data" / "data_throughput.md")))
        check.write_summary()

    # 5. mobileclip bench: PyTorch CUDA first, then each ONNX Runtime precision alone, then TensorRT
    benches: list = []

    def bench(name: str, args: list, limit: float, needs: dict) -> None:
        d = w / name.replace(" ", "_")
        check.run(name, [py, "-m", "mobileclip", "bench", *args, "--device", dev, "--batch", z["bench_batch"],
                         "--min-seconds", z["min_seconds"], "--out", d], limit, {**base, **needs})
        res = _json(d / "bench.json")
        if res:
            benches.append({"step": name, **res})
            check.write_json("bench.json", {"runs": benches})
            check.sections.append((f"`{name}`", _md(d / "bench.md").split("\nDefinitions:")[0]))
            check.write_summary()

    bench("bench torch", ["--model", student, "--runtime", "torch", "--torch-precision", "fp32,bf16"],
          LIMITS["bench torch"], {})
    for precision in ("fp32", "fp16"):
        bench(f"bench onnxruntime {precision}", ["--model", student, "--runtime", "onnxruntime", "--export",
                                                 precision, "--export-dir", w / "exports"],
              LIMITS[f"bench onnxruntime {precision}"],
              {"an ONNX Runtime CUDA session": info.get("ort_cuda") or dev == "cpu",
               "onnxscript": _has(info, "onnxscript")})
    trt = {"tensorrt": _has(info, "tensorrt"), "onnxscript": _has(info, "onnxscript")}
    if check.run("export tensorrt fp16", [py, "-m", "mobileclip", "export", student, "--format", "tensorrt",
                                          "--precision", "fp16", "--max-batch", "64", "--out", w / "trt-fp16"],
                 LIMITS["export tensorrt fp16"], {**base, **trt}):
        bench("bench tensorrt fp16", [str(w / "trt-fp16")], LIMITS["bench tensorrt fp16"], {})


def loss_report(run_dir: str, batch: int, dest: str) -> int:
    """The 200-step run's loss (first 5 vs last 5 logged steps), speed and the share of time spent waiting for
    data (from the metrics' per-interval data_wait_s and samples/s); exit 1 unless the loss fell and no step was
    bad."""
    rows = [json.loads(x) for x in open(Path(run_dir) / "metrics.jsonl") if x.strip()]
    first = sum(r["loss"] for r in rows[:5]) / len(rows[:5])
    last = sum(r["loss"] for r in rows[-5:]) / len(rows[-5:])
    sps = sorted(r["samples_per_s"] for r in rows[2:]) or [float("nan")]
    wait = wall = 0.0
    prev = 0
    for r in rows[1:]:   # the first interval holds the loader's start and the first steps' warm-up
        prev_step = prev or rows[0]["step"]
        wall += (r["step"] - prev_step) * batch / r["samples_per_s"]
        wait += r["data_wait_s"]
        prev = r["step"]
    summary = json.loads((Path(run_dir) / "summary.json").read_text())
    out = {"steps": rows[-1]["step"], "batch": batch, "loss_first5": first, "loss_last5": last,
           "bad_steps": rows[-1]["bad_steps"], "samples_per_s_median": sps[len(sps) // 2],
           "data_wait_s_after_first_interval": wait, "data_wait_share": wait / wall if wall else None,
           "summary": summary}
    Path(dest).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k != "summary"}))
    return 0 if last < first and rows[-1]["bad_steps"] == 0 else 1


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--loss-report"]:
        return loss_report(argv[1], int(argv[2]), argv[3])
    out = argv[0] if argv else "gpu_check_out"
    deadline = min(float(os.environ.get("GPU_CHECK_DEADLINE_S", DEADLINE_S)), DEADLINE_S)
    check = GpuCheck(out, python=os.environ.get("PYTHON") or sys.executable, deadline_s=deadline)
    try:
        install_wheels(check)
        project_ok = ensure_project(check)
        info = preflight(check)
        if os.environ.get("GPU_CHECK_REHEARSAL") == "1":
            check.notes.insert(0, "**A CPU rehearsal** (GPU_CHECK_REHEARSAL=1): the GPU run's commands on the CPU at "
                                  "toy sizes, to prove they run; its numbers mean nothing.")
            run_steps(check, project_ok, REHEARSAL)
            return 1 if check.failed else 0
        if not info.get("cuda_available"):
            why = info.get("torch_error") or "torch.cuda.is_available() is False"
            check.notes.insert(0, f"**No CUDA GPU** ({why}): nothing was measured.")
            check.write_summary()
            return 0
        shm = (info.get("dev_shm_mb") or {}).get("free")
        if shm is not None and shm < 2048:
            check.notes.append(f"/dev/shm has {shm} MB free: the loaders lower their prefetch to fit (the trainer "
                               "refuses a batch too large for one per worker); run with --shm-size=8g for full speed.")
        run_steps(check, project_ok)
    finally:
        check.log(f"done after {_now() - check.t0:.0f} s")
        check.write_summary()
        shutil.rmtree(check.work, ignore_errors=True)
    return 1 if check.failed else 0


if __name__ == "__main__":
    sys.exit(main())
