"""``mobileclip bench``: latency of models x runtimes x precisions x batch sizes, side by side.

    mobileclip bench bundles/s0-int8 bundles/s0-fp32 --model open_clip:ViT-B-32 --batch 1,8,32 --out bench/
    python -m mobileclip.benchmarks.harness ...      # the same, without the top-level CLI

What is timed
-------------
* Positional arguments are **bundle directories** (``mobileclip export``). Each tower runs on
  its backend's runtime: ``onnxruntime`` (CPU with ``--threads`` intra-op threads, or the CUDA
  execution provider with ``--device cuda`` when onnxruntime-gpu is installed), ``tensorrt``
  (``TRTRunner``, CUDA only, when TensorRT is installed) or ``coreml`` (macOS only). A case
  that cannot run here is a row with ``status: "skipped"`` and the reason.
* ``--model NAME`` (repeatable) names a PyTorch model as ``mobileclip export`` takes it:
  a registry name (random weights, seed 0), a checkpoint directory, ``open_clip:<arch>`` or
  ``hf:<dir>``. It runs on the ``torch`` runtime (eager; ``--compile`` adds a
  ``torch.compile`` case whose failure is recorded as skipped with the reason), in each
  ``--torch-precision`` (fp32; bf16/fp16 through ``torch.autocast``).
* ``--export fp32,int8`` also exports every ``--model`` to ONNX bundles (kept in
  ``--export-dir``, reused when already there; a temporary directory otherwise) and times
  them like positional bundles. int8 image towers whose FLOPs are mostly convolutions get
  static QDQ quantization calibrated on synthetic images; the others (ViTs) dynamic
  quantization (``--int8-quant`` overrides), as DESIGN.md's measurements advise.

Inputs are random 8-bit pixels normalized with the model's mean/std, and real prompts
tokenized by the model's tokenizer (the bundle's token dtype). Every case is warmed up
(``--warmup`` calls), then timed until it has at least ``--min-runs`` calls **and** at least
``--min-seconds`` of timed calls. The cases of one model (all its runtimes, precisions,
towers, batch sizes) are timed in interleaved rounds (>= 5 slots per case), so drift on a
shared machine hits all of them alike; models are timed one after the other, and each
model's objects are released before the next model is loaded. GPU cases synchronise after
every call (``torch.cuda.synchronize``; ``TRTRunner`` and onnxruntime return host arrays,
so their calls are synchronous and include the host/device copies, see ``io``).

What is reported (one row per case; JSON keys)
----------------------------------------------
``p50_ms``/``p90_ms``/``p99_ms`` (linear-interpolated percentiles of per-call latency),
``mean_ms``, ``throughput_sps`` = batch / mean latency (samples per second), memory (see
:class:`MemoryProbe`), ``artifact_mb`` (the tower's file, or the sum of the files of a Core
ML package), ``bundle_mb`` (all files of the bundle), ``params`` (parameters the tower's
forward pass touches in the PyTorch source, after reparameterization), ``gflops_per_sample``
(:class:`torch.utils.flop_counter.FlopCounterMode` on the PyTorch source at batch 1, fp32:
matmul, convolution and attention-matmul FLOPs, 2 per multiply-add; elementwise ops, norms
and softmax are not counted), and the **physical limit**: a large fp32 matmul is timed in
the same run with the same thread count (``peak.fp32.gflops`` in the JSON, best of its
repeats), and ``limit_ms`` = FLOPs x batch / peak is the latency that peak would allow;
``gap`` = ``p50_ms`` / ``limit_ms``. The limit uses the fp32 peak for every precision (on
CUDA, fp16/bf16 cases use a bf16 matmul's), so an int8 case can beat it (gap < 1).
Outputs: ``bench.json`` (command, environment, peak, rows), ``bench.md`` and
``latency_vs_batch.png``; ``accuracy_vs_latency.png`` when an accuracy is known
(``--accuracy LABEL=VALUE``, where LABEL is a row's ``model`` or ``model/precision``; or, for
a checkpoint directory, ``eval.zeroshot_top1`` of the ``summary.json`` beside it, which
``mobileclip distill`` writes).
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import re
import resource
import shlex
import shutil
import sys
import tempfile
import time
from abc import ABC, abstractmethod
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np

from mobileclip import backends
from mobileclip.errors import ConfigError, MobileCLIPError

DESCRIPTION = ("Latency of bundles and PyTorch models across runtimes, precisions and batch sizes, timed side by "
               "side; writes bench.json, bench.md and PNG plots.")
BACKEND_RUNTIME = {name: backends.runtime_name(name) for name in backends.names()}
RUNTIMES = ("torch", *BACKEND_RUNTIME.values())
TOWERS = ("image", "text")
TORCH_PRECISIONS = ("fp32", "bf16", "fp16")
EXPORT_PRECISIONS = ("fp32", "fp16", "int8")
MIN_ROUNDS = 5                 # interleaved slots per case, at least
CONV_STATIC_INT8 = 0.5         # image towers with more conv FLOPs than this get static QDQ int8
PROMPTS = ("a photo of a dog", "a red car parked at night", "two cats sleeping on a blue sofa",
           "a diagram of a neural network", "a bowl of ramen with an egg", "snow on a mountain ridge at dawn",
           "a person riding a bicycle in the rain", "an empty train station")

ROW_KEYS = ("model", "runtime", "precision", "quant", "compile", "device", "tower", "batch", "status", "reason",
            "bundle", "io", "threads", "n_runs", "timed_s", "mean_ms", "min_ms", "p50_ms", "p90_ms", "p99_ms",
            "throughput_sps", "peak_rss_mb", "run_rss_mb", "load_rss_mb", "peak_cuda_mb", "artifact_mb",
            "bundle_mb", "params", "gflops_per_sample", "limit_ms", "gap", "accuracy", "accuracy_source")


# =========================================================================== statistics (pure)

def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation between closest ranks.

    The same definition as ``numpy.percentile``'s default: position ``(n - 1) * q / 100`` in
    the sorted samples. ``percentile([1, 2, ..., 10], 90) == 9.1``.
    """
    if not len(samples):
        raise ConfigError("percentile of no samples")
    if not 0 <= q <= 100:
        raise ConfigError(f"percentile q must be in [0, 100], got {q}")
    xs = sorted(float(v) for v in samples)
    pos = (len(xs) - 1) * q / 100.0
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def latency_stats(samples_ms: Sequence[float]) -> dict:
    """p50/p90/p99, mean, min (ms), the number of calls and their total time (s)."""
    return {"n_runs": len(samples_ms), "timed_s": float(sum(samples_ms)) / 1000.0,
            "mean_ms": float(sum(samples_ms)) / len(samples_ms), "min_ms": float(min(samples_ms)),
            "p50_ms": percentile(samples_ms, 50), "p90_ms": percentile(samples_ms, 90),
            "p99_ms": percentile(samples_ms, 99)}


def throughput(batch: int, mean_ms: float) -> float:
    """Samples per second: ``batch`` samples per call over the mean call latency."""
    return batch * 1000.0 / mean_ms


def matmul_gflops(n: int, seconds: float) -> float:
    """GFLOP/s of one ``n x n`` by ``n x n`` matmul taking ``seconds`` (2 n^3 FLOPs)."""
    return 2.0 * n ** 3 / seconds / 1e9


def limit_ms(gflops_per_sample: float, batch: int, peak_gflops: float) -> float:
    """The latency (ms) a machine running at ``peak_gflops`` would need for ``batch`` samples."""
    return gflops_per_sample * batch / peak_gflops * 1000.0


def gap(measured_ms: float, limit: float) -> float:
    """How many times slower than the physical limit a measured latency is."""
    return measured_ms / limit


# =========================================================================== argument parsing (pure)

def parse_int_list(text: str, what: str = "--batch") -> list[int]:
    """``"1,8,32"`` -> ``[1, 8, 32]`` (sorted, unique, each >= 1)."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if not parts:
        raise ConfigError(f"{what} needs a comma-separated list of whole numbers >= 1, e.g. 1,8,32; got {text!r}")
    out = []
    for p in parts:
        if not re.fullmatch(r"\d+", p) or int(p) < 1:
            raise ConfigError(f"{what}: {p!r} is not a whole number >= 1 (in {text!r}); write e.g. 1,8,32")
        out.append(int(p))
    return sorted(set(out))


def parse_choices(text: str, choices: Sequence[str], what: str) -> list[str]:
    """``"image,text"`` -> ``["image", "text"]``; every item must be one of ``choices``."""
    items = [p.strip() for p in str(text).split(",") if p.strip()]
    if not items:
        raise ConfigError(f"{what} is empty; choose from {list(choices)}")
    bad = [p for p in items if p not in choices]
    if bad:
        raise ConfigError(f"{what}: {', '.join(map(repr, bad))} not known; choose from {list(choices)}")
    return list(dict.fromkeys(items))


def parse_accuracy(items: Sequence[str]) -> dict:
    """``["mobileclip-s0=0.61", "mobileclip-s0/int8=0.60"]`` -> ``{label: value}`` (top-1 in [0, 1])."""
    out = {}
    for item in items or ():
        label, sep, value = str(item).rpartition("=")
        try:
            v = float(value)
        except ValueError:
            v = float("nan")
        if not sep or not label or not 0.0 <= v <= 1.0:
            raise ConfigError(f"--accuracy {item!r}: write LABEL=VALUE with a top-1 accuracy between 0 and 1, "
                              "where LABEL is a row's model (e.g. mobileclip-s0) or model/precision "
                              "(e.g. mobileclip-s0/int8)")
        out[label] = v
    return out


# =========================================================================== memory

def _status_kb(key: str) -> Optional[int]:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    m = re.search(rf"^{key}:\s+(\d+)\s+kB", text, re.M)
    return int(m.group(1)) if m else None


class MemoryProbe:
    """Resident memory of this process, in MB.

    Where Linux lets a process reset its own RSS high-water mark (writing ``5`` to
    ``/proc/self/clear_refs``), :meth:`reset` does so before each step of a case, so the
    peak read afterwards belongs to that step (``mode == "per-case"``). Otherwise the peak is
    the process's high-water mark so far (``getrusage``; ``mode == "process"``), which only
    grows. Either way RSS counts everything the process holds (all models loaded so far),
    so rows also carry the increase over the RSS just before the step.
    """

    def __init__(self) -> None:
        self.mode = "per-case" if self._try_reset() else "process"

    @staticmethod
    def _try_reset() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return _status_kb("VmHWM") is not None
        except OSError:
            return False

    def reset(self) -> None:
        if self.mode == "per-case":
            self._try_reset()

    @staticmethod
    def rss_mb() -> float:
        kb = _status_kb("VmRSS")
        if kb is not None:
            return kb / 1024.0
        return MemoryProbe.peak_mb()  # no /proc (macOS): the high-water mark is the best we have

    @staticmethod
    def peak_mb() -> float:
        kb = _status_kb("VmHWM")
        if kb is not None:
            return kb / 1024.0
        ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return ru / (1024.0 * 1024.0) if sys.platform == "darwin" else ru / 1024.0  # bytes on macOS, KiB on Linux

    def describe(self) -> str:
        if self.mode == "per-case":
            return ("peak_rss_mb: the process's RSS high-water mark while the case ran (VmHWM, reset through "
                    "/proc/self/clear_refs before each of its warm-up and timed slots); it includes everything "
                    "the process holds. run_rss_mb: that peak minus the RSS just before the slot (what one call "
                    "adds: activations, scratch, first-call allocations in warm-up). load_rss_mb: RSS added by "
                    "loading the row's model (torch: the whole model, both towers) or creating its session.")
        return ("peak_rss_mb: the process's RSS high-water mark so far (getrusage; this kernel does not let it be "
                "reset, so it only grows across cases). run_rss_mb: that mark minus the RSS before the case's slot "
                "(a lower bound of what a call adds). load_rss_mb: RSS added by loading the row's model or session.")


# =========================================================================== environment, peak

def _versions() -> dict:
    out = {"numpy": np.__version__, "platform": platform.platform()}
    for mod in ("torch", "onnxruntime", "tensorrt", "coremltools"):
        m = sys.modules.get(mod)
        if m is not None and hasattr(m, "__version__"):
            out[mod] = m.__version__
    return out


def measure_peak(device: str, threads: int, seconds: float = 1.0, n: Optional[int] = None,
                 dtype: str = "fp32") -> dict:
    """The machine's measured peak: a large square matmul timed repeatedly, best GFLOP/s.

    CPU: ``torch.mm`` on ``n = 2048`` fp32 with ``threads`` torch threads (the same count the
    cases use). CUDA: ``n = 8192`` (TF32 off for fp32), synchronised after every call.
    """
    import torch

    dev = torch.device(device)
    n = n or (8192 if dev.type == "cuda" else 2048)
    tdtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    if dev.type == "cpu":
        torch.set_num_threads(threads)
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g).to(dev, tdtype)
    b = torch.randn(n, n, generator=g).to(dev, tdtype)
    allow_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    times = []
    try:
        with torch.inference_mode():
            for _ in range(2):
                torch.mm(a, b)
            sync()
            t_end = time.perf_counter() + seconds
            while len(times) < 3 or time.perf_counter() < t_end:
                t0 = time.perf_counter()
                torch.mm(a, b)
                sync()
                times.append(time.perf_counter() - t0)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    return {"gflops": matmul_gflops(n, min(times)), "median_gflops": matmul_gflops(n, percentile(times, 50)),
            "n": n, "dtype": dtype, "repeats": len(times), "how": f"torch.mm {n}x{n} {dtype} on {device}"
            + (f", {threads} threads" if dev.type == "cpu" else "") + ", best repeat"}


# =========================================================================== model facts

class _ParamsSeen:
    """Records the parameters passed to any torch function while active (a TorchFunctionMode)."""

    def __init__(self, params: dict) -> None:
        import torch
        from torch.overrides import TorchFunctionMode
        from torch.utils._pytree import tree_flatten

        seen = self.seen = {}

        class Mode(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                for leaf in tree_flatten((args, kwargs))[0]:
                    if isinstance(leaf, torch.nn.Parameter) and id(leaf) in params:
                        seen[id(leaf)] = leaf.numel()
                return func(*args, **kwargs)

        self.mode = Mode()

    @property
    def count(self) -> int:
        return int(sum(self.seen.values()))


def tower_facts(model, image_size: int, tokenizer) -> dict:
    """Per tower: ``params`` its forward touches, ``gflops`` per sample at batch 1, ``conv_fraction``.

    Counted in fp32 eager on the CPU with the math attention kernel and nn.MultiheadAttention's
    fused fast path off, so attention matmuls are visible to the FLOP counter.
    """
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    params = {id(p): p for p in model.parameters()}
    inputs = {"image": torch.zeros(1, 3, image_size, image_size), "text": tokenizer([PROMPTS[0]])}
    fastpath = torch.backends.mha.get_fastpath_enabled()
    out = {}
    try:
        torch.backends.mha.set_fastpath_enabled(False)
        for tower in TOWERS:
            seen = _ParamsSeen(params)
            counter = FlopCounterMode(display=False)
            with torch.inference_mode(), sdpa_kernel([SDPBackend.MATH]), counter, seen.mode:
                getattr(model, f"encode_{tower}")(inputs[tower])
            counts = counter.get_flop_counts().get("Global", {})
            total = float(sum(counts.values()))
            conv = float(sum(v for k, v in counts.items() if "convolution" in str(k)))
            out[tower] = {"params": seen.count, "gflops": total / 1e9, "conv_fraction": conv / total if total else 0.0}
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return out


def _size_mb(path: Path) -> float:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6
    return path.stat().st_size / 1e6


def model_label(model: str) -> str:
    """A short, stable name for a model spec: checkpoint paths relative to the working directory."""
    prefix, rest = ("hf:", model[3:]) if model.startswith("hf:") else ("", model)
    if os.path.isabs(rest):
        try:
            rel = os.path.relpath(rest)
        except ValueError:  # another drive (Windows): keep the absolute path
            rel = ".."
        if not rel.startswith(".."):
            rest = rel
    return prefix + rest


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-") or "model"


def source_accuracy(model: str) -> Optional[tuple[float, str]]:
    """Zero-shot top-1 of a checkpoint directory from the ``summary.json`` beside it, if any."""
    path = model[3:] if model.startswith("hf:") else model
    summary = Path(path).expanduser().parent / "summary.json"
    if not Path(path).expanduser().is_dir() or not summary.is_file():
        return None
    try:
        value = json.loads(summary.read_text()).get("eval", {}).get("zeroshot_top1")
    except json.JSONDecodeError as e:
        raise ConfigError(f"{summary} is not valid JSON ({e}); fix or remove it") from e
    return (float(value), model_label(str(summary.resolve()))) if isinstance(value, (int, float)) else None


# =========================================================================== runtimes

class Skip(MobileCLIPError):
    """A case that cannot run on this machine or configuration; the message is the reason."""


class Runtime(ABC):
    """One way of running a model's towers: ``prepare(tower, batch)`` returns a zero-argument
    callable that runs one batch; ``sync()`` waits for the device after a call; ``close()``
    releases what the runtime holds. ``prepare`` raises :class:`Skip` with the reason when the
    case cannot run here."""

    name = "runtime"
    io = "host"

    def __init__(self, device: str) -> None:
        self.device = device
        self.load_rss: dict = {}        # tower -> RSS MB added by loading it

    @abstractmethod
    def precision(self, tower: str) -> str:
        """The precision the ``tower`` runs in (``fp32``, ``fp16``, ``bf16``, ``int8``)."""

    @abstractmethod
    def prepare(self, tower: str, batch: int) -> Callable[[], object]:
        """Inputs for ``batch`` samples and a callable running one call on them."""

    def sync(self) -> None:
        return None

    def close(self) -> None:
        return None


def _image_batch(batch: int, size: int, mean, std, seed: int = 0) -> np.ndarray:
    """Random 8-bit pixels, normalized as the model's preprocessing does (float32 NCHW)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(batch, 3, size, size)).astype(np.float32) / 255.0
    m = np.asarray(mean, np.float32).reshape(1, 3, 1, 1)
    s = np.asarray(std, np.float32).reshape(1, 3, 1, 1)
    return np.ascontiguousarray((pixels - m) / s)


def _prompts(batch: int) -> list[str]:
    return [PROMPTS[i % len(PROMPTS)] for i in range(batch)]


class TorchRuntime(Runtime):
    """PyTorch eager (or ``torch.compile``) on ``cpu`` or ``cuda``; fp32, or bf16/fp16 autocast."""

    name = "torch"
    io = "device tensors (inputs already on the device; outputs left there)"

    def __init__(self, src, device: str, precision: str = "fp32", compile: bool = False) -> None:
        import torch

        super().__init__(device)
        self.src, self._precision, self.compile = src, precision, compile
        self.name = "torch.compile" if compile else "torch"
        self.dev = torch.device(device)
        self._fns: dict = {}

    def precision(self, tower: str) -> str:
        return self._precision

    def _fn(self, tower: str):
        import torch

        if tower not in self._fns:
            fn = getattr(self.src.model, f"encode_{tower}")
            if self.compile:
                if not hasattr(torch, "compile"):
                    raise Skip(f"torch {torch.__version__} has no torch.compile")
                fn = torch.compile(fn)
            self._fns[tower] = fn
        return self._fns[tower]

    def prepare(self, tower: str, batch: int) -> Callable[[], object]:
        import torch

        if tower == "image":
            s = self.src.image_size
            x = torch.from_numpy(_image_batch(batch, s, self.src.mean, self.src.std)).to(self.dev)
        else:
            x = self.src.tokenizer(_prompts(batch)).to(self.dev)
        fn = self._fn(tower)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self._precision)
        dev_type = self.dev.type

        def run():
            with ExitStack() as stack:
                stack.enter_context(torch.inference_mode())
                if dtype is not None:
                    stack.enter_context(torch.autocast(dev_type, dtype=dtype))
                return fn(x)

        return run

    def sync(self) -> None:
        if self.dev.type == "cuda":
            import torch

            torch.cuda.synchronize(self.dev)


def _token_dtype(manifest: dict):
    return np.int64 if manifest.get("tokenizer", {}).get("token_dtype") == "int64" else np.int32


class BundleRuntime(Runtime):
    """A bundle's towers through their backend's runners (``mobileclip.backends``): the runtime the
    backend names (onnxruntime with ``--threads`` intra-op threads and one inter-op thread, TensorRT,
    Core ML, ...). A runner that cannot run here is a :class:`Skip` with its reason."""

    def __init__(self, directory: Path, manifest: dict, device: str, threads: int, tokenizer=None) -> None:
        super().__init__(device)
        self.dir, self.manifest, self._tokenizer, self.threads = directory, manifest, tokenizer, threads
        backend = backends.get(manifest["artifacts"]["image"]["backend"])
        self.name, self.io = backend.runtime, backend.io
        self._runners: dict = {}

    def entry(self, tower: str) -> dict:
        return self.manifest["artifacts"][tower]

    def precision(self, tower: str) -> str:
        return self.entry(tower)["precision"]

    def runner(self, tower: str):
        if tower not in self._runners:
            r = backends.runner_for(self.dir, self.entry(tower), self.device, self.threads)
            if hasattr(r, "inter_threads"):
                r.inter_threads = 1
            self._runners[tower] = r
        return self._runners[tower]

    def inputs(self, tower: str, batch: int) -> np.ndarray:
        fixed = self.runner(tower).fixed_batch
        if fixed and fixed != batch:
            raise Skip(f"the {tower} artifact has a fixed batch of {fixed}; re-export with a dynamic batch to time "
                       f"batch {batch}")
        m = self.manifest
        if tower == "image":
            return _image_batch(batch, int(m["image_size"]), m["mean"], m["std"])
        if self._tokenizer is None:
            raise Skip("the bundle's tokenizer could not be loaded (see the bundle row's reason)")
        return np.ascontiguousarray(np.asarray(self._tokenizer(_prompts(batch))).astype(_token_dtype(m)))

    def prepare(self, tower: str, batch: int) -> Callable[[], object]:
        x = self.inputs(tower, batch)
        r = self.runner(tower)
        if not r.active:
            rss0 = MemoryProbe.rss_mb()
            try:
                r.activate()
            except backends.BackendUnavailable as e:
                raise Skip(str(e)) from e
            self.load_rss[tower] = MemoryProbe.rss_mb() - rss0
        if r.max_batch and batch > r.max_batch:
            raise Skip(f"batch {batch} is beyond the artifact's largest batch ({r.max_batch}); re-export with "
                       f"--max-batch {batch}")
        return lambda: r.infer(x)

    def close(self) -> None:
        for r in self._runners.values():
            r.deactivate()
        self._runners.clear()


# =========================================================================== cases and timing

@dataclass
class Case:
    row: dict
    runtime: Runtime
    fn: Optional[Callable[[], object]] = None
    samples: list = field(default_factory=list)
    peak_rss: float = 0.0
    run_rss: float = 0.0
    peak_cuda: float = 0.0
    per_slot: int = 1


@contextmanager
def _measure(case: Case, probe: MemoryProbe, cuda: bool) -> Iterator[None]:
    """Memory around one slot of a case (its warm-up or a run of timed calls)."""
    if cuda:
        import torch

        torch.cuda.reset_peak_memory_stats()
    probe.reset()
    rss0 = probe.rss_mb()
    yield
    peak = probe.peak_mb()
    case.peak_rss = max(case.peak_rss, peak)
    case.run_rss = max(case.run_rss, peak - rss0)
    if cuda:
        import torch

        case.peak_cuda = max(case.peak_cuda, torch.cuda.max_memory_allocated() / 1e6)


def _reason(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:300] if lines else ''}".rstrip(": ")


def _per_slot(call_s: float, min_runs: int, min_seconds: float) -> int:
    """Calls per interleaved slot, so that a case meets both minimums in about MIN_ROUNDS slots."""
    need = max(min_runs, math.ceil(min_seconds / max(call_s, 1e-6)))
    return max(1, math.ceil(need / MIN_ROUNDS))


def time_cases(cases: list, warmup: int, min_runs: int, min_seconds: float, probe: MemoryProbe,
               cuda: bool = False) -> None:
    """Warm up every case (at least one call), then time them in interleaved rounds until each has >= ``min_runs``
    calls and >= ``min_seconds`` of timed calls. A case whose warm-up raises is marked failed
    (or skipped, for ``torch.compile``) with the reason and left out of the rounds."""
    live = []
    for c in cases:
        try:
            with _measure(c, probe, cuda):
                t0 = time.perf_counter()
                for _ in range(max(1, warmup)):
                    c.fn()
                    c.runtime.sync()
                est = (time.perf_counter() - t0) / max(1, warmup)
        except Exception as e:  # recorded in the row, with the reason: a benchmark reports, it does not hide
            if c.row["compile"]:
                c.row.update(status="skipped", reason=f"torch.compile failed: {_reason(e)}")
            else:
                c.row.update(status="failed", reason=_reason(e))
            c.fn = None
            continue
        c.per_slot = _per_slot(est, min_runs, min_seconds)
        live.append(c)

    def done(c: Case) -> bool:
        return len(c.samples) >= min_runs and sum(c.samples) >= 1000.0 * min_seconds

    while True:
        pending = [c for c in live if not done(c)]
        if not pending:
            break
        for c in pending:
            try:
                with _measure(c, probe, cuda):
                    for _ in range(c.per_slot):
                        t0 = time.perf_counter()
                        c.fn()
                        c.runtime.sync()
                        c.samples.append(1000.0 * (time.perf_counter() - t0))
            except Exception as e:  # as in warm-up: the row says what went wrong, the others still run
                c.row.update(status="failed", reason=f"after {len(c.samples)} timed calls: {_reason(e)}")
                c.samples.clear()
                live.remove(c)
                continue
            # re-size the slots from what was measured (warm-up includes first-call costs such as compilation)
            c.per_slot = _per_slot(percentile(c.samples, 50) / 1000.0, min_runs, min_seconds)


# =========================================================================== the benchmark

@dataclass
class BenchConfig:
    bundles: list = field(default_factory=list)
    models: list = field(default_factory=list)
    batches: list = field(default_factory=lambda: [1, 8])
    runtimes: list = field(default_factory=lambda: list(RUNTIMES))
    towers: list = field(default_factory=lambda: list(TOWERS))
    threads: int = 0
    device: str = "cpu"
    warmup: int = 3
    min_runs: int = 20
    min_seconds: float = 1.0
    compile: bool = False
    torch_precisions: list = field(default_factory=lambda: ["fp32"])
    export: list = field(default_factory=list)
    export_dir: Optional[str] = None
    int8_quant: str = "auto"
    accuracy: dict = field(default_factory=dict)
    peak_seconds: float = 1.0
    out: str = "bench"
    command: str = ""

    def check(self) -> None:
        if not self.bundles and not self.models:
            raise ConfigError("nothing to benchmark: give bundle directories and/or --model NAME")
        for b in self.bundles:
            if not Path(b).is_dir():
                raise ConfigError(f"bundle directory {str(b)!r} does not exist; create it with `mobileclip export`")
        for name, values, choices in (("--runtime", self.runtimes, RUNTIMES), ("--towers", self.towers, TOWERS),
                                      ("--torch-precision", self.torch_precisions, TORCH_PRECISIONS),
                                      ("--export", self.export, EXPORT_PRECISIONS)):
            bad = [v for v in values if v not in choices]
            if bad:
                raise ConfigError(f"{name}: {', '.join(map(repr, bad))} not known; choose from {list(choices)}")
        if not self.runtimes or not self.towers or not self.batches or not self.torch_precisions:
            raise ConfigError("--runtime, --towers, --batch and --torch-precision must not be empty")
        if any(not isinstance(b, int) or b < 1 for b in self.batches):
            raise ConfigError(f"--batch sizes must be whole numbers >= 1, got {self.batches}")
        if self.device not in ("cpu", "cuda"):
            raise ConfigError(f"--device {self.device!r}: choose cpu or cuda")
        if self.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise ConfigError("--device cuda: no CUDA GPU is visible (torch.cuda.is_available() is False); "
                                  "use --device cpu")
        if self.threads < 0 or self.warmup < 0 or self.min_runs < 1 or self.min_seconds < 0 \
                or self.peak_seconds <= 0:
            raise ConfigError("--threads >= 0, --warmup >= 0, --min-runs >= 1, --min-seconds >= 0 and "
                              "--peak-seconds > 0 please")
        for m in self.models:
            _check_model_name(m)
        if self.export and not self.models:
            raise ConfigError("--export exports the --model names to bundles: give at least one --model")
        if self.export and "onnxruntime" not in self.runtimes:
            raise ConfigError("--export writes ONNX bundles, which --runtime leaves out: add onnxruntime")
        if self.int8_quant not in ("auto", "static", "dynamic"):
            raise ConfigError(f"--int8-quant {self.int8_quant!r}: choose auto, static or dynamic")


def _check_model_name(name: str) -> None:
    """Fail before any work on a --model that is neither registered, a teacher spec nor a directory."""
    if name.startswith("open_clip:"):
        import open_clip

        arch = name.split(":")[1]
        if arch not in open_clip.list_models():
            raise ConfigError(f"--model {name}: open_clip has no architecture {arch!r}; `mobileclip models` lists "
                              "the known ones")
    elif name.startswith("hf:") or Path(name).expanduser().is_dir():
        return
    else:
        from mobileclip.zoo import get_entry

        get_entry(name)  # UnknownModelError listing the registered names


@dataclass
class _Group:
    label: str
    spec: Optional[dict] = None            # the PyTorch source to load (for --model, or a bundle's source)
    torch: bool = False                     # time it on the torch runtime
    bundles: list = field(default_factory=list)   # (path, manifest, exported)


class _Sources:
    """PyTorch sources, loaded once, with their facts; released group by group."""

    def __init__(self) -> None:
        self.facts: dict = {}          # model spec -> tower facts, or an error string
        self.load_rss: dict = {}

    def load(self, spec: dict):
        from mobileclip.export.source import load_source

        rss0 = MemoryProbe.rss_mb()
        src = load_source(spec)
        self.load_rss[spec["model"]] = MemoryProbe.rss_mb() - rss0
        if spec["model"] not in self.facts:
            self.facts[spec["model"]] = tower_facts(src.model, src.image_size, src.tokenizer)
        return src

    def facts_for(self, spec: dict):
        """Facts of ``spec``'s model, loading it (and letting it go) when not yet known."""
        if spec["model"] not in self.facts:
            try:
                self.load(spec)
            except (MobileCLIPError, OSError, KeyError, ValueError, RuntimeError) as e:
                self.facts[spec["model"]] = f"PyTorch source {spec['model']!r} could not be loaded: {_reason(e)}"
            gc.collect()
        return self.facts[spec["model"]]


def _bundle_tokenizer(directory: Path, manifest: dict):
    """A tokenizer for the bundle's text inputs, from the files the bundle ships."""
    info = manifest.get("tokenizer", {})
    if info.get("name") == "clip-bpe":
        from open_clip.tokenizer import SimpleTokenizer

        return SimpleTokenizer(bpe_path=str(directory / info["vocab_file"]), context_length=int(info["context_length"]))
    from transformers import AutoTokenizer  # a transformers CLIP bundle ships its tokenizer files

    tok = AutoTokenizer.from_pretrained(str(directory))
    ctx = int(info["context_length"])
    return lambda texts: tok(list(texts), padding="max_length", max_length=ctx, truncation=True,
                             return_tensors="np")["input_ids"]


def _export_bundles(cfg: BenchConfig, sources: _Sources, export_dir: Path) -> list:
    """Export every --model in every --export precision (reusing matching bundles); returns (path, model)."""
    from mobileclip.export import export, load_manifest
    from mobileclip.export.bundle import BundleError
    from mobileclip.export.source import resolve_spec

    out, calib = [], None
    for name in cfg.models:
        spec = resolve_spec(name, 0)
        for precision in cfg.export:
            d = export_dir / f"{_slug(model_label(spec['model']))}-{precision}"
            if d.exists():
                try:
                    m = load_manifest(d)
                except BundleError as e:
                    raise ConfigError(f"{d} exists but is not a usable bundle ({e}); remove it to re-export") from e
                if m["source"]["model"] != spec["model"] or m["artifacts"]["image"]["precision"] != precision:
                    raise ConfigError(f"{d} holds a bundle of {m['source']['model']} "
                                      f"{m['artifacts']['image']['precision']}, not {spec['model']} {precision}; "
                                      "use another --export-dir or remove it")
                print(f"reusing {d}")
                out.append((d, name))
                continue
            kw = {}
            if precision == "int8":
                method = cfg.int8_quant
                if method == "auto":
                    facts = sources.facts_for(spec)
                    conv = facts["image"]["conv_fraction"] if isinstance(facts, dict) else 0.0
                    method = "static" if conv > CONV_STATIC_INT8 else "dynamic"
                if method == "static":
                    if calib is None:
                        from mobileclip.data import write_synthetic

                        calib = export_dir / "calib-synthetic"
                        if not calib.is_dir():
                            write_synthetic(calib, 64, split="train", image_size=256)
                    kw = {"calib": str(calib), "quant": "static"}
                else:
                    kw = {"quant": "dynamic"}
            print(f"exporting {name} ({precision}{', ' + kw['quant'] if kw else ''}) to {d}")
            export(name, d, precision=precision, max_batch=max(cfg.batches), allow_mismatch=True, **kw)
            out.append((d, name))
    return out


def _groups(cfg: BenchConfig, exported: list) -> list:
    from mobileclip.export import load_manifest
    from mobileclip.export.source import resolve_spec

    groups: dict = {}

    def group(spec: dict) -> _Group:
        label = model_label(spec["model"])
        if label not in groups:
            groups[label] = _Group(label, spec)
        return groups[label]

    for b in cfg.bundles:
        m = load_manifest(b)
        group(m["source"]).bundles.append((Path(b), m, False))
    for name in cfg.models:
        group(resolve_spec(name, 0)).torch = "torch" in cfg.runtimes
    for d, name in exported:
        group(resolve_spec(name, 0)).bundles.append((d, load_manifest(d), True))
    return list(groups.values())


def _accuracy(cfg: BenchConfig, label: str, precision: str, spec: Optional[dict]):
    for key in (f"{label}/{precision}", label):
        if key in cfg.accuracy:
            return cfg.accuracy[key], "--accuracy"
    found = source_accuracy(spec["model"]) if spec else None
    return found if found else (None, None)


def _new_row(cfg: BenchConfig, group: _Group, runtime: str, precision: str, tower: str, batch: int, **kw) -> dict:
    row = dict.fromkeys(ROW_KEYS)
    row.update(model=group.label, runtime=runtime, precision=precision, tower=tower, batch=batch, status="ok",
               device=cfg.device, threads=cfg.threads, compile=runtime == "torch.compile", **kw)
    return row


def _fill(row: dict, case: Optional[Case], facts, peak: dict, cfg: BenchConfig, spec: Optional[dict]) -> dict:
    if case is not None and case.samples:
        row.update(latency_stats(case.samples))
        row["throughput_sps"] = throughput(row["batch"], row["mean_ms"])
        row["peak_rss_mb"], row["run_rss_mb"] = case.peak_rss, case.run_rss
        if row["runtime"].startswith("torch") and cfg.device == "cuda":
            row["peak_cuda_mb"] = case.peak_cuda
    if isinstance(facts, dict):
        f = facts[row["tower"]]
        row["params"], row["gflops_per_sample"] = f["params"], f["gflops"]
        p = peak.get("bf16" if cfg.device == "cuda" and row["precision"] in ("bf16", "fp16") else "fp32")
        if p and row["p50_ms"] is not None and f["gflops"] > 0:
            row["limit_ms"] = limit_ms(f["gflops"], row["batch"], p["gflops"])
            row["gap"] = gap(row["p50_ms"], row["limit_ms"])
    elif isinstance(facts, str) and row["status"] == "ok":
        row["reason"] = facts  # timed, but params/FLOPs unknown: say why
    row["accuracy"], row["accuracy_source"] = _accuracy(cfg, row["model"], row["precision"], spec)
    return row


def _bundle_runtime(path: Path, manifest: dict, cfg: BenchConfig, tokenizer) -> Runtime:
    return BundleRuntime(path, manifest, cfg.device, cfg.threads, tokenizer)


def _run_group(g: _Group, cfg: BenchConfig, sources: _Sources, probe: MemoryProbe, peak: dict) -> list:
    """Prepare, time (interleaved) and report every case of one model."""
    rows, cases, runtimes = [], [], []
    src = None
    if g.torch:
        src = sources.load(g.spec)
        if cfg.device == "cuda":
            src.model.to(cfg.device)
    facts = sources.facts_for(g.spec) if g.spec else None
    spec = g.spec

    def add(rt: Runtime, row: dict) -> None:
        try:
            fn = rt.prepare(row["tower"], row["batch"])
        except Skip as e:
            row.update(status="skipped", reason=str(e))
            rows.append((row, None, rt))
            return
        except Exception as e:  # a failed case is a row with its reason; the exit code says something failed
            row.update(status="failed", reason=_reason(e))
            rows.append((row, None, rt))
            return
        case = Case(row, rt, fn)
        cases.append(case)
        rows.append((row, case, rt))

    if src is not None:
        variants = [(p, False) for p in cfg.torch_precisions] + ([(p, True) for p in cfg.torch_precisions]
                                                                 if cfg.compile else [])
        for precision, comp in variants:
            rt = TorchRuntime(src, cfg.device, precision, comp)
            runtimes.append(rt)
            for tower in cfg.towers:
                for batch in cfg.batches:
                    add(rt, _new_row(cfg, g, rt.name, precision, tower, batch, io=rt.io,
                                     load_rss_mb=sources.load_rss.get(spec["model"])))
    for path, manifest, exported in g.bundles:
        runtime_name = BACKEND_RUNTIME.get(manifest["artifacts"]["image"]["backend"], "?")
        if runtime_name not in cfg.runtimes:
            continue
        try:
            tokenizer = _bundle_tokenizer(path, manifest) if "text" in cfg.towers else None
            tok_error = None
        except (MobileCLIPError, OSError, KeyError, ValueError) as e:
            tokenizer, tok_error = None, f"the bundle's tokenizer could not be loaded: {_reason(e)}"
        rt = _bundle_runtime(path, manifest, cfg, tokenizer)
        runtimes.append(rt)
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6
        for tower in cfg.towers:
            entry = manifest["artifacts"][tower]
            for batch in cfg.batches:
                row = _new_row(cfg, g, rt.name, entry["precision"], tower, batch, io=rt.io,
                               bundle=str(path) + (" (exported by this run)" if exported else ""),
                               quant=entry.get("quantization", {}).get("method"),
                               artifact_mb=_size_mb(path / entry["file"]), bundle_mb=size)
                if tower == "text" and tok_error:
                    row.update(status="failed", reason=tok_error)
                    rows.append((row, None, rt))
                    continue
                add(rt, row)
    for row, _, rt in rows:  # bundles: memory added by creating the tower's session (known once it exists)
        if row["load_rss_mb"] is None and row["tower"] in rt.load_rss:
            row["load_rss_mb"] = rt.load_rss[row["tower"]]

    print(f"{g.label}: timing {len(cases)} cases interleaved (>= {cfg.min_runs} runs and >= {cfg.min_seconds} s "
          f"each, {cfg.warmup} warm-up calls)" + (f"; {len(rows) - len(cases)} not runnable" if len(rows) > len(cases)
                                                 else ""))
    time_cases(cases, cfg.warmup, cfg.min_runs, cfg.min_seconds, probe, cuda=cfg.device == "cuda")
    out = [_fill(row, case, facts, peak, cfg, spec) for row, case, _ in rows]
    for rt in runtimes:
        rt.close()
    return out


def run_bench(cfg: BenchConfig) -> dict:
    """Run the benchmark and write ``bench.json``, ``bench.md`` and the plots to ``cfg.out``."""
    cfg.threads = cfg.threads or os.cpu_count() or 1
    cfg.check()
    import torch

    torch.set_num_threads(cfg.threads)
    probe = MemoryProbe()
    rss_start = probe.rss_mb()
    sources = _Sources()
    tmp_export = None
    t_start = time.time()
    try:
        exported = []
        if cfg.export:
            export_dir = Path(cfg.export_dir) if cfg.export_dir else Path(tempfile.mkdtemp(prefix="mobileclip-bench-"))
            tmp_export = None if cfg.export_dir else export_dir
            export_dir.mkdir(parents=True, exist_ok=True)
            exported = _export_bundles(cfg, sources, export_dir)
        groups = _groups(cfg, exported)
        print(f"measuring the peak: fp32 matmul on {cfg.device}" + (f", {cfg.threads} threads" if cfg.device == "cpu"
                                                                  else ""))
        peak = {"fp32": measure_peak(cfg.device, cfg.threads, cfg.peak_seconds)}
        if cfg.device == "cuda":  # the limit of fp16/bf16 cases: tensor-core matmuls
            peak["bf16"] = measure_peak(cfg.device, cfg.threads, cfg.peak_seconds, dtype="bf16")
        print(f"peak {peak['fp32']['gflops']:.1f} GFLOP/s ({peak['fp32']['how']})")
        rows = []
        for g in groups:
            rows += _run_group(g, cfg, sources, probe, peak)
            gc.collect()
            if cfg.device == "cuda":
                torch.cuda.empty_cache()
    finally:
        if tmp_export is not None:
            shutil.rmtree(tmp_export, ignore_errors=True)
    env = _environment(cfg, probe, rss_start)
    result = {"command": cfg.command, "environment": env, "peak": peak, "seconds": round(time.time() - t_start, 1),
              "definitions": DEFINITIONS | {"memory": probe.describe()}, "rows": rows}
    write_reports(result, Path(cfg.out))
    return result


DEFINITIONS = {
    "latency": "wall-clock time of one call (one batch), ms; p50/p90/p99 interpolate linearly between ranks",
    "throughput_sps": "samples per second = batch / mean latency",
    "params": "parameters the tower's forward pass touches in the PyTorch source (after reparameterization)",
    "gflops_per_sample": "FLOPs of one sample (batch 1) counted by torch.utils.flop_counter.FlopCounterMode on the "
                         "PyTorch source in fp32: matmul, convolution and attention matmuls, 2 per multiply-add",
    "limit_ms": "gflops_per_sample x batch / the measured matmul peak (fp32; on CUDA, bf16 for fp16/bf16 cases): "
                "the latency that peak would allow",
    "gap": "p50_ms / limit_ms (int8 kernels can beat the fp32 peak, so a gap below 1 is possible)",
    "artifact_mb": "size of the tower's exported file (sum of files for a directory such as a .mlpackage)",
}


def _environment(cfg: BenchConfig, probe: MemoryProbe, rss_start: float) -> dict:
    from .common import environment

    import torch

    extra = _versions()
    extra.update(threads=cfg.threads, device=cfg.device, memory_mode=probe.mode, rss_start_mb=round(rss_start, 1))
    if cfg.device == "cuda":
        extra["gpu"] = torch.cuda.get_device_name()
    try:
        import onnxruntime as ort

        extra["onnxruntime"] = ort.__version__
        extra["ort_providers"] = ort.get_available_providers()
    except ImportError:
        extra["onnxruntime"] = None
    return environment(**extra)


# =========================================================================== reports

def _f(v, fmt: str = ".2f") -> str:
    return "—" if v is None else format(v, fmt)


def markdown(result: dict) -> str:
    env, rows = result["environment"], result["rows"]
    p = result["peak"]["fp32"]
    machine = (f"{env['cpu']}, {env['cores']} cores, {env['threads']} threads" + (f", GPU {env['gpu']}"
                                                                                   if env.get("gpu") else ""))
    lines = ["# Latency: models x runtimes x precisions x batch sizes", "",
             f"Command: `{result['command']}`", "",
             f"Machine: {machine}; device {env['device']}; torch {env.get('torch')}, onnxruntime "
             f"{env.get('onnxruntime')}; {env['date']}. Measured peak: {p['gflops']:.1f} GFLOP/s ({p['how']}).", "",
             "| model | runtime | precision | tower | batch | p50 ms | p90 ms | p99 ms | samples/s | peak RSS MB "
             "| size MB | params M | GFLOP/sample | limit ms | gap |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r["status"] != "ok":
            continue
        prec = r["precision"] + (f" ({r['quant']})" if r["quant"] else "")
        lines.append(f"| {r['model']} | {r['runtime']} | {prec} | {r['tower']} | {r['batch']} | {_f(r['p50_ms'])} | "
                     f"{_f(r['p90_ms'])} | {_f(r['p99_ms'])} | {_f(r['throughput_sps'], '.1f')} | "
                     f"{_f(r['peak_rss_mb'], '.0f')} | {_f(r['artifact_mb'], '.1f')} | "
                     f"{_f(r['params'] / 1e6 if r['params'] else None)} | {_f(r['gflops_per_sample'], '.3f')} | "
                     f"{_f(r['limit_ms'], '.3f')} | {_f(r['gap'], '.1f')} |")
    other = [r for r in rows if r["status"] != "ok"]
    if other:
        lines += ["", "Not timed:", ""]
        lines += [f"- {r['model']} {r['runtime']} {r['precision']} {r['tower']} batch {r['batch']}: "
                  f"**{r['status']}**: {r['reason']}" for r in other]
    acc = {(r["model"], r["precision"]): r for r in rows if r["accuracy"] is not None}
    if acc:
        lines += ["", "| model | precision | zero-shot top-1 | source |", "|---|---|---:|---|"]
        lines += [f"| {m} | {pr} | {100 * r['accuracy']:.1f}% | {r['accuracy_source']} |" for (m, pr), r in acc.items()]
    lines += ["", "Definitions:", ""] + [f"- `{k}`: {v}" for k, v in result["definitions"].items()]
    return "\n".join(lines) + "\n"


def write_reports(result: dict, out: Path) -> dict:
    """``bench.json``, ``bench.md`` and the PNG plots; returns ``{kind: path or reason}``."""
    from mobileclip.checkpoint import atomic_write, atomic_write_json

    out.mkdir(parents=True, exist_ok=True)
    written = {}
    try:
        from .plots import plot_accuracy, plot_latency

        written["latency_plot"] = str(plot_latency(result, out / "latency_vs_batch.png"))
        acc = plot_accuracy(result, out / "accuracy_vs_latency.png")
        written["accuracy_plot"] = str(acc) if acc else "no accuracy known (pass --accuracy LABEL=VALUE)"
    except ImportError as e:
        written["latency_plot"] = f"not drawn: matplotlib is missing (pip install 'mobileclip-toolkit[bench]'): {e}"
    result["plots"] = written
    atomic_write_json(out / "bench.json", result)
    with atomic_write(out / "bench.md", "w") as f:
        f.write(markdown(result))
    print(f"wrote {out / 'bench.json'}, {out / 'bench.md'}" + "".join(
        f", {v}" for v in written.values() if v.endswith(".png")))
    return written


def print_table(result: dict) -> None:
    print(f"{'model':28} {'runtime':13} {'prec':9} {'tower':5} {'batch':>5} {'p50 ms':>9} {'p90 ms':>9} "
          f"{'samples/s':>10} {'gap':>6}  status")
    for r in result["rows"]:
        prec = r["precision"] + ("/" + r["quant"][0] if r["quant"] else "")
        print(f"{r['model'][:28]:28} {r['runtime']:13} {prec:9} {r['tower']:5} {r['batch']:5} {_f(r['p50_ms']):>9} "
              f"{_f(r['p90_ms']):>9} {_f(r['throughput_sps'], '.1f'):>10} {_f(r['gap'], '.1f'):>6}  "
              + (r["status"] if r["status"] == "ok" else f"{r['status']}: {r['reason']}"))


# =========================================================================== CLI

def add_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("bundles", nargs="*", metavar="BUNDLE", help="bundle directories written by `mobileclip export`")
    s.add_argument("--model", action="append", default=[], metavar="NAME",
                   help="PyTorch model (repeatable): registry name (random weights), checkpoint dir, "
                        "open_clip:<arch>, hf:<dir>")
    s.add_argument("--batch", default="1,8", help="comma-separated batch sizes (default 1,8)")
    s.add_argument("--runtime", default=",".join(RUNTIMES),
                   help=f"comma-separated runtimes to run (default all: {','.join(RUNTIMES)})")
    s.add_argument("--towers", default="image,text", help="image,text (default both)")
    s.add_argument("--threads", type=int, default=0,
                   help="CPU threads: ORT intra_op_num_threads and torch.set_num_threads (default: all cores)")
    s.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="cpu, or cuda (torch on the GPU, ORT's CUDA provider, TensorRT)")
    s.add_argument("--warmup", type=int, default=3, help="warm-up calls per case (default 3; at least 1 is made)")
    s.add_argument("--min-runs", type=int, default=20, help="timed calls per case, at least (default 20)")
    s.add_argument("--min-seconds", type=float, default=1.0,
                   help="timed seconds per case, at least (default 1.0; both minimums must be met)")
    s.add_argument("--compile", action="store_true", help="also time torch.compile of each --model")
    s.add_argument("--torch-precision", default="fp32",
                   help="precisions of the torch runtime: fp32, bf16, fp16 (autocast), comma-separated")
    s.add_argument("--export", default="", metavar="PRECISIONS",
                   help="also export each --model to ONNX bundles in these precisions (fp32,fp16,int8) and time them")
    s.add_argument("--export-dir", default=None,
                   help="where --export writes (and reuses) bundles; default: a temporary directory, removed after")
    s.add_argument("--int8-quant", default="auto", choices=["auto", "static", "dynamic"],
                   help="int8 image towers for --export: auto = static QDQ (synthetic calibration) when the tower's "
                        "FLOPs are mostly convolutions, else dynamic")
    s.add_argument("--accuracy", action="append", default=[], metavar="LABEL=VALUE",
                   help="zero-shot top-1 (0..1) of a model (row label) or model/precision, for the accuracy plot")
    s.add_argument("--peak-seconds", type=float, default=1.0, help="how long to time the peak matmul (default 1)")
    s.add_argument("--out", default="bench", help="output directory (default bench/)")


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    return BenchConfig(
        bundles=list(args.bundles), models=list(args.model), batches=parse_int_list(args.batch, "--batch"),
        runtimes=parse_choices(args.runtime, RUNTIMES, "--runtime"),
        towers=parse_choices(args.towers, TOWERS, "--towers"), threads=args.threads, device=args.device,
        warmup=args.warmup, min_runs=args.min_runs, min_seconds=args.min_seconds, compile=args.compile,
        torch_precisions=parse_choices(args.torch_precision, TORCH_PRECISIONS, "--torch-precision"),
        export=parse_choices(args.export, EXPORT_PRECISIONS, "--export") if args.export else [],
        export_dir=args.export_dir, int8_quant=args.int8_quant, accuracy=parse_accuracy(args.accuracy),
        peak_seconds=args.peak_seconds, out=args.out, command=command_line(args))


def command_line(args: argparse.Namespace) -> str:
    """The command, spelled out with every option that differs from its default."""
    parts = ["mobileclip", "bench", *args.bundles]
    for m in args.model:
        parts += ["--model", m]
    for a in args.accuracy:
        parts += ["--accuracy", a]
    defaults = {"batch": "1,8", "runtime": ",".join(RUNTIMES), "towers": "image,text", "threads": 0, "device": "cpu",
                "warmup": 3, "min_runs": 20, "min_seconds": 1.0, "torch_precision": "fp32", "export": "",
                "export_dir": None, "int8_quant": "auto", "peak_seconds": 1.0, "out": "bench"}
    for k, d in defaults.items():
        v = getattr(args, k)
        if v != d:
            parts += [f"--{k.replace('_', '-')}", str(v)]
    if args.compile:
        parts.append("--compile")
    return " ".join(shlex.quote(p) for p in parts)


def cmd_bench(args: argparse.Namespace) -> int:
    """The ``bench`` handler: 0 when every case ran or was skipped for a stated reason, 1 when one failed."""
    result = run_bench(config_from_args(args))
    print_table(result)
    failed = [r for r in result["rows"] if r["status"] == "failed"]
    return 1 if failed else 0


def add_commands(sub) -> None:
    """Add ``bench`` to an argparse sub-parsers object (``mobileclip bench ...``)."""
    s = sub.add_parser("bench", help="latency of bundles and PyTorch models across runtimes, precisions and "
                                     "batch sizes (JSON, Markdown, PNG plots)",
                       description=DESCRIPTION)
    add_arguments(s)
    s.set_defaults(func=cmd_bench)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mobileclip.benchmarks.harness",
                                description=DESCRIPTION)
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        return cmd_bench(args)
    except MobileCLIPError as e:
        print(f"mobileclip bench: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
