"""Core ML weight compression (palettization, int8) through coremltools.optimize, with the error each compressed
weight has against its original."""
from __future__ import annotations

import warnings
from typing import Callable

import numpy as np


WEIGHT_THRESHOLD = 2048  # weights with fewer elements stay uncompressed (coremltools' default)
# Relative L2 error above which a compressed weight is broken rather than just quantized:
# healthy int8 stays below ~1% (~3% with a few tiny channels), 8/6/4-bit LUTs below ~2/5/30%.
MAX_WEIGHT_ERROR = {"int8": 0.05, "palettize8": 0.05, "palettize6": 0.1, "palettize4": 0.35}


def _compression_config(compress: str) -> tuple[Callable, object, dict]:
    import coremltools.optimize.coreml as cto

    if compress == "int8":
        record = {"method": "linear_quantize", "mode": "linear_symmetric", "dtype": "int8",
                  "granularity": "per_channel"}
        op = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel",
                                         weight_threshold=WEIGHT_THRESHOLD)
        return cto.linear_quantize_weights, op, record
    nbits = int(compress[len("palettize"):])
    # k-means palettization needs scikit-learn (or kmeans1d); without them the LUT is uniform.
    mode = "kmeans" if _has_kmeans() else "uniform"
    record = {"method": "palettize", "mode": mode, "nbits": nbits, "granularity": "per_tensor"}
    if mode == "uniform":
        record["note"] = "scikit-learn is not installed: uniform LUT instead of k-means (pip install scikit-learn)"
        warnings.warn(f"{compress}: {record['note']}", stacklevel=4)
    op = cto.OpPalettizerConfig(mode=mode, nbits=nbits, granularity="per_tensor", weight_threshold=WEIGHT_THRESHOLD)
    return cto.palettize_weights, op, record


def compress_weights(mlmodel, compress: str) -> tuple[object, dict]:
    """Compress the weights, then measure each weight's error and keep the broken ones in fp16.

    coremltools 9.0 quantizes an fp16 model's weights with fp16 scales: a channel whose
    largest weight is below ~7.6e-6 gets scale 0 (numpy warns of 0/0 and x/0) and comes back
    as zeros. Such weights (e.g. folded 1e-5 layer scales) are left uncompressed.
    """
    import coremltools.optimize.coreml as cto

    fn, op_config, record = _compression_config(compress)
    original = {n: m.val for n, m in cto.get_weights_metadata(mlmodel, weight_threshold=WEIGHT_THRESHOLD).items()}
    with np.errstate(all="ignore"), _one_thread(record):  # 0-scale divisions: their damage is measured below
        compressed = fn(mlmodel, cto.OptimizationConfig(global_config=op_config))
    errors = _weight_errors(cto, compressed, original)
    limit = MAX_WEIGHT_ERROR[compress]
    broken = sorted(n for n, e in errors.items() if e > limit)
    if broken:
        with np.errstate(all="ignore"), _one_thread(record):
            compressed = fn(mlmodel, cto.OptimizationConfig(global_config=op_config,
                                                            op_name_configs={n: None for n in broken}))
        record["kept_uncompressed"] = {n: round(errors[n], 4) for n in broken}
    kept = [e for n, e in errors.items() if n not in broken]
    record["weights_compressed"] = len(kept)
    record["max_weight_error"] = round(max(kept), 6) if kept else None
    record["weight_error_limit"] = limit
    return compressed, record


def _one_thread(record: dict):
    """Reproducible look-up tables: coremltools clusters weights of 10,000 elements or more with its own
    exact 1-D k-means (deterministic), smaller ones with scikit-learn's ``KMeans(random_state=0)``, whose
    OpenMP reductions give different tables at different thread counts (measured: 3,136-element depthwise
    kernels, 1 thread against 2). Its OpenMP pool is held to one thread while compressing, so the same
    export writes the same bytes on any machine. Only the small weights are clustered by scikit-learn, so
    this costs little."""
    import contextlib

    if record.get("mode") != "kmeans":
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits   # a dependency of scikit-learn

    record["kmeans_threads"] = 1
    return threadpool_limits(limits=1, user_api="openmp")


def _weight_errors(cto, compressed, original: dict) -> dict:
    """Relative L2 error ``|w - decompressed(w)| / |w|`` of every compressed weight."""
    import re

    restored = cto.get_weights_metadata(cto.decompress_weights(compressed), weight_threshold=WEIGHT_THRESHOLD)
    errors = {}
    for name, meta in restored.items():
        base = re.sub(r"_(quantized|palettized)$", "", name)
        if base == name or base not in original:
            continue
        w = np.asarray(original[base], dtype=np.float64)
        norm = np.linalg.norm(w)
        diff = np.linalg.norm(w - np.asarray(meta.val, dtype=np.float64))
        errors[base] = float(diff / norm) if norm > 0 else float(diff > 0)
    return errors


def _has_kmeans() -> bool:
    import importlib.util

    return any(importlib.util.find_spec(m) is not None for m in ("sklearn", "kmeans1d"))
