"""``mobileclip bench``: latency of models x runtimes x precisions x batch sizes, side by side.

    mobileclip bench bundles/s0-int8 bundles/s0-fp32 --model open_clip:ViT-B-32 --batch 1,8,32 --out bench/

(The command line is :mod:`mobileclip.app.bench`; this module is the run: :func:`run_bench` on a
:class:`BenchConfig`.)

What is timed
-------------
* Positional arguments are **bundle directories** (``mobileclip export``). Each tower runs on
  its backend's runtime: ``onnxruntime`` (CPU with ``--threads`` intra-op threads, or the CUDA
  execution provider with ``--device cuda`` when onnxruntime-gpu is installed; a session on
  which ONNX Runtime dropped the CUDA provider is a skipped row, never CPU timings labelled
  cuda), ``tensorrt``
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

import gc
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from mobileclip.errors import ConfigError

from .cases import (CONV_STATIC_INT8, EXPORT_PRECISIONS, ROW_KEYS, BenchConfig, export_bundles, export_failed_rows,
                    make_groups, run_group, Sources, model_label, source_accuracy, tower_facts)
from .report import DEFINITIONS, markdown, print_table, write_reports
from .runtimes import (BACKEND_RUNTIME, PROMPTS, RUNTIMES, TORCH_PRECISIONS, TOWERS, BundleRuntime, Runtime, Skip,
                       TorchRuntime)
from .stats import (MIN_ROUNDS, Case, MemoryProbe, gap, latency_stats, limit_ms, matmul_gflops, measure_peak,
                    percentile, throughput, time_cases)

# The names other code uses from here (the harness was one module before; these live in stats, runtimes, cases, report).
__all__ = [
    "DESCRIPTION", "BACKEND_RUNTIME", "RUNTIMES", "TOWERS", "TORCH_PRECISIONS", "EXPORT_PRECISIONS", "MIN_ROUNDS",
    "CONV_STATIC_INT8", "PROMPTS", "ROW_KEYS", "DEFINITIONS",
    "percentile", "latency_stats", "throughput", "matmul_gflops", "limit_ms", "gap", "MemoryProbe", "measure_peak",
    "Case", "time_cases", "tower_facts", "model_label", "source_accuracy", "Skip", "Runtime", "TorchRuntime",
    "BundleRuntime", "BenchConfig", "markdown", "write_reports", "print_table",
    "parse_int_list", "parse_choices", "parse_accuracy", "run_bench",
]

DESCRIPTION = ("Latency of bundles and PyTorch models across runtimes, precisions and batch sizes, timed side by "
               "side; writes bench.json, bench.md and PNG plots.")


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


# =========================================================================== the benchmark

def run_bench(cfg: BenchConfig) -> dict:
    """Run the benchmark and write ``bench.json``, ``bench.md`` and the plots to ``cfg.out``."""
    cfg.threads = cfg.threads or os.cpu_count() or 1
    cfg.check()
    import torch

    torch.set_num_threads(cfg.threads)
    probe = MemoryProbe()
    rss_start = probe.rss_mb()
    sources = Sources()
    tmp_export = None
    t_start = time.time()
    try:
        exported, export_failed = [], []
        if cfg.export:
            export_dir = Path(cfg.export_dir) if cfg.export_dir else Path(tempfile.mkdtemp(prefix="mobileclip-bench-"))
            tmp_export = None if cfg.export_dir else export_dir
            export_dir.mkdir(parents=True, exist_ok=True)
            exported = export_bundles(cfg, sources, export_dir, export_failed)
        groups = make_groups(cfg, exported)
        print(f"measuring the peak: fp32 matmul on {cfg.device}" + (f", {cfg.threads} threads" if cfg.device == "cpu"
                                                                  else ""))
        peak = {"fp32": measure_peak(cfg.device, cfg.threads, cfg.peak_seconds)}
        if cfg.device == "cuda":  # the limit of fp16/bf16 cases: tensor-core matmuls
            peak["bf16"] = measure_peak(cfg.device, cfg.threads, cfg.peak_seconds, dtype="bf16")
        print(f"peak {peak['fp32']['gflops']:.1f} GFLOP/s ({peak['fp32']['how']})")
        rows = export_failed_rows(cfg, export_failed)
        for g in groups:
            rows += run_group(g, cfg, sources, probe, peak)
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


def _versions() -> dict:
    out = {"numpy": np.__version__, "platform": platform.platform()}
    for mod in ("torch", "onnxruntime", "tensorrt", "coremltools"):
        m = sys.modules.get(mod)
        if m is not None and hasattr(m, "__version__"):
            out[mod] = m.__version__
    return out
