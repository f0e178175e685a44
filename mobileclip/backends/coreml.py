"""Core ML export of the two towers: one ``.mlpackage`` each (ML program, iOS 17 / macOS 14).

Image model
    The input is an ``ImageType`` (RGB, ``S x S``) scaled by ``1/255``. ``ImageType`` has
    one global scale, so the per-channel part of the model's normalization is folded into
    the graph: :class:`NormalizedImageInput` computes ``(pixels - mean[c]) / std[c]`` with
    the same float32 operations as :func:`mobileclip.transforms.preprocess_array` (bit-exact
    in PyTorch; Core ML applies the ``1/255`` as a multiply, within one ulp of the division),
    then runs the tower. A Core ML image feature is one pixel buffer, so the image model takes
    one image per prediction (a fixed ``[1, 3, S, S]`` graph, which also keeps it static
    for the Neural Engine); batches go through Core ML's batch API
    (``MLModel.predictions(fromBatch:)``, coremltools ``predict([...])``). coremltools
    accepts ``RangeDim`` on an ``ImageType``'s batch but records only the height/width
    range in the model description, so a flexible image batch cannot be declared.

Text model
    ``int32 [batch, context_length]`` tokens with a flexible batch
    (``RangeDim(1, max_batch)``); the output is ``float32 [batch, embed_dim]``.

Precision
    ``fp16`` (default) computes in half, except the ops in :data:`FP32_MIL_OPS`
    (normalizations, softmax, reductions, pow/sqrt, division: the MIL names of the ONNX
    backend's ``FP32_OPS``) that overflow or lose too much in half. Ops kept in fp32 run on
    the CPU or GPU, not on the Neural Engine. Outputs are float32 in both precisions.

Compression
    ``palettize4/6/8`` (a per-tensor LUT: k-means with scikit-learn installed, else uniform)
    and ``int8`` (per-channel symmetric), with ``coremltools.optimize.coreml``. Each
    compressed weight is decompressed and compared with the original; one that compression
    breaks (coremltools 9.0 zeroes fp16 weights below ~7.6e-6) is kept uncompressed and
    listed in the entry's ``compression_config``.

Predictions
    :func:`coreml_predictor` takes what the PyTorch towers take: normalized float32 images
    are mapped back to the exact 8-bit RGB images they were made from (an error for arrays
    that are not 8-bit pixels), so Core ML sees the very pixels PyTorch saw.

On Linux coremltools converts but cannot run a model. There the export is checked by
:func:`check_spec` (names, shapes, types, flexible batch, compression, precision) and
:func:`fp16_overflow_check` (the same graph run in PyTorch in float16, and a scan for
``-inf`` / ``finfo.min`` masks in the module, its traced graph and the converted ML
program). :func:`coreml_predictor` runs real predictions on macOS only.
"""
from __future__ import annotations

import contextlib
import copy
import math
import sys
import warnings
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from mobileclip.errors import ConfigError, MobileCLIPError

from .base import Backend, BackendUnavailable, Runner

IMAGE_IN, TEXT_IN = "image", "tokens"
IMAGE_OUT, TEXT_OUT = "image_embedding", "text_embedding"
COMPRESSIONS = ("none", "palettize4", "palettize6", "palettize8", "int8")
PRECISIONS = ("fp16", "fp32")
DEPLOYMENT_TARGET = "iOS17"
SPECIFICATION_VERSION = 8  # Core ML's model specification version for iOS 17 / macOS 14
FILES = {"image": "image.mlpackage", "text": "text.mlpackage"}
INPUT_SCALE = 1.0 / 255.0
FP16_MAX = 65504.0  # the largest finite float16; anything beyond becomes +-inf in half

# ONNX op (the ONNX backend's FP32_OPS) -> the MIL ops coremltools lowers it to.
# GELU is one fused ``gelu`` op in MIL (ONNX spells it with Erf); it stays in fp16 because
# its output is bounded by its input, and keeping it in fp32 would split every block of the
# convolutional towers off the Neural Engine.
ONNX_TO_MIL_FP32 = {
    "LayerNormalization": ("layer_norm",),
    "Softmax": ("softmax",),
    "ReduceMean": ("reduce_mean",),
    "ReduceSum": ("reduce_sum",),
    "ReduceL2": ("reduce_l2_norm",),
    "ReduceMax": ("reduce_max",),
    "Pow": ("pow",),
    "Sqrt": ("sqrt", "rsqrt"),
    "Div": ("real_div",),
    "Erf": ("erf",),
}
FP32_MIL_OPS = tuple(sorted({op for ops in ONNX_TO_MIL_FP32.values() for op in ops}))

# The op a compression leaves in the ML program (iOS 17 opset).
COMPRESSED_OPS = {"palettize": "constexpr_lut_to_dense", "int8": "constexpr_affine_dequantize"}
WEIGHT_THRESHOLD = 2048  # weights with fewer elements stay uncompressed (coremltools' default)
# Relative L2 error above which a compressed weight is broken rather than just quantized:
# healthy int8 stays below ~1% (~3% with a few tiny channels), 8/6/4-bit LUTs below ~2/5/30%.
MAX_WEIGHT_ERROR = {"int8": 0.05, "palettize8": 0.05, "palettize6": 0.1, "palettize4": 0.35}
COMPUTE_UNITS = ("all", "cpu_only", "cpu_and_gpu", "cpu_and_ne")


class CoreMLExportError(MobileCLIPError):
    """A Core ML export failed a check (fp16 overflow, or the saved spec does not match)."""

    def __init__(self, message: str, report: Optional[dict] = None) -> None:
        super().__init__(message)
        self.report = report or {}


def require_coremltools():
    """Import coremltools, or raise a :class:`ConfigError` that says how to install it."""
    try:
        import coremltools as ct
    except ImportError as e:
        raise ConfigError(f"Core ML export needs coremltools ({e}); install it with: "
                          f"pip install 'mobileclip-toolkit[coreml]'") from e
    ct_major = int(ct.__version__.split(".")[0])
    np_version = tuple(int(p) for p in np.__version__.split(".")[:2])
    if ct_major <= 9 and np_version >= (2, 4):
        raise ConfigError(f"coremltools {ct.__version__} cannot convert with numpy {np.__version__} "
                          f"(every traced conversion fails); install numpy<2.4: pip install 'numpy<2.4'")
    return ct


class NormalizedImageInput(nn.Module):
    """Pixels in 0..1 (Core ML's ``ImageType`` applies ``scale=1/255``) → per-channel
    ``(x - mean[c]) / std[c]`` → the tower. The same float32 operations as the preprocessing,
    so on ``pixels / 255`` the fold is bit-exact."""

    def __init__(self, tower: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        mean, std = _check_normalization(mean, std)
        self.tower = tower
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels - self.mean) / self.std

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.tower(self.normalize(pixels))


def _check_normalization(mean, std) -> tuple[list, list]:
    mean, std = [float(v) for v in mean], [float(v) for v in std]
    if len(mean) != 3 or len(std) != 3:
        raise ConfigError(f"mean and std need one value per RGB channel; got mean={mean}, std={std}")
    if not all(math.isfinite(v) for v in mean + std) or min(std) <= 0:
        raise ConfigError(f"mean must be finite and std finite and > 0; got mean={mean}, std={std}")
    return mean, std


@contextlib.contextmanager
def _frozen(module: nn.Module):
    """Eval mode and ``requires_grad=False`` for tracing with grad enabled, restored after.

    Tracing under ``torch.no_grad`` lets PyTorch pick the fused
    ``_native_multi_head_attention`` kernel, which coremltools cannot convert.
    """
    training = {m: m.training for m in module.modules()}
    grads = {p: p.requires_grad for p in module.parameters()}
    module.eval()
    for p in grads:
        p.requires_grad_(False)
    try:
        with torch.enable_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield module
    finally:
        for p, g in grads.items():
            p.requires_grad_(g)
        for m, t in training.items():
            m.training = t


def _as_tuple(example_inputs) -> tuple:
    return tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)


def _scan_tensor(name: str, t: torch.Tensor, masks: list, overflow: list) -> None:
    if not (t.is_floating_point() and t.numel()):
        return
    t = t.detach().float()
    if bool((t <= -FP16_MAX).any()):  # -inf and finfo(float32).min included
        masks.append(name)
    elif bool((~torch.isfinite(t)).any() | (t.abs() > FP16_MAX).any()):
        overflow.append(name)


def _scan_module(tower: nn.Module, masks: list, overflow: list, used: Optional[set] = None) -> None:
    """Parameters, buffers and plain tensor attributes; only those in ``used`` when given
    (a tower that wraps a whole CLIP model must not be blamed for the other tower's mask)."""
    named = list(tower.named_parameters()) + list(tower.named_buffers())
    for mod_name, mod in tower.named_modules():
        named += [(f"{mod_name}.{attr}" if mod_name else attr, value) for attr, value in vars(mod).items()
                  if isinstance(value, torch.Tensor) and not attr.startswith("_")]
    for name, t in named:
        if used is None or name in used:
            _scan_tensor(name, t, masks, overflow)


def _graph_nodes(block):
    for node in block.nodes():
        yield node
        for inner in node.blocks():
            yield from _graph_nodes(inner)


def _used_attributes(traced) -> set:
    """Dotted names of the module attributes the traced graph reads (``prim::GetAttr`` chains)."""
    graph = traced.inlined_graph
    names = {next(graph.inputs()).unique(): ""}  # the first input is the module itself
    for node in _graph_nodes(graph):
        if node.kind() == "prim::GetAttr":
            parent = names.get(node.input().unique())
            if parent is not None:
                names[node.output().unique()] = f"{parent}.{node.s('name')}" if parent else node.s("name")
    return set(names.values())


def _scan_traced_graph(traced, masks: list, overflow: list) -> None:
    """Constants created in ``forward`` (``masked_fill(-inf)``, ``torch.full(finfo.min)``)."""
    for node in _graph_nodes(traced.inlined_graph):
        if node.kind() != "prim::Constant" or len(list(node.outputs())) != 1 \
                or node.output().type().kind() not in ("FloatType", "TensorType"):
            continue
        value = node.output().toIValue()
        where = f"graph constant {node.output().debugName()} ({node.sourceRange().strip().splitlines()[0][:80]})" \
            if node.sourceRange().strip() else f"graph constant {node.output().debugName()}"
        if isinstance(value, float):
            if value <= -FP16_MAX:
                masks.append(where)
            elif not math.isfinite(value) or abs(value) > FP16_MAX:
                overflow.append(where)
        elif isinstance(value, torch.Tensor):
            _scan_tensor(where, value, masks, overflow)


def _trace(module: nn.Module, inputs: tuple):
    with _frozen(module):
        return torch.jit.trace(module, inputs, check_trace=False)


def fp16_overflow_check(tower: nn.Module, example_inputs) -> dict:
    """Run ``tower`` in PyTorch in float16 against float32, and scan it for fp16 hazards.

    Floating inputs are cast to half, integer inputs (tokens) are kept. ``masks`` names the
    tensors and graph constants holding ``-inf`` or values ``<= -65504`` (``finfo.min``
    masks, which become ``-inf`` in half and then NaN); ``overflow_constants`` names those
    with other values beyond float16's range. When CPU half kernels are missing, ``supported``
    is False and ``error`` says why; the scans still run. ``passed`` is True when nothing
    was flagged and the half run (if it ran) is finite.
    """
    inputs = _as_tuple(example_inputs)
    try:
        traced = _trace(tower, inputs)
    except Exception as e:  # noqa: BLE001 - a trace failure is reported; the other checks still run
        return _fp16_check(tower, inputs, None, f"{type(e).__name__}: {e}")
    return _fp16_check(tower, inputs, traced)


def _fp16_check(tower: nn.Module, inputs: tuple, traced, trace_error: Optional[str] = None) -> dict:
    masks: list = []
    overflow: list = []
    report: dict = {"device": "cpu", "dtype": "float16"}
    if traced is None:
        report["graph_scan_error"] = trace_error
        _scan_module(tower, masks, overflow)  # every tensor: the graph is unknown
    else:
        _scan_module(tower, masks, overflow, used=_used_attributes(traced))
        _scan_traced_graph(traced, masks, overflow)
    with _frozen(tower), torch.no_grad():
        ref = (traced if traced is not None else tower)(*inputs).float()
        try:
            half = copy.deepcopy(tower).half()
            got = half(*(x.half() if x.is_floating_point() else x for x in inputs)).float()
        except RuntimeError as e:  # also missing kernels (NotImplementedError is a RuntimeError)
            report.update(supported=False, finite=None, min_cosine=None, max_abs_diff=None,
                          error=f"float16 is not supported on the CPU for this tower: {e}")
        else:
            finite = bool(torch.isfinite(got).all())
            cos = nn.functional.cosine_similarity(ref.double().flatten(1), got.double().flatten(1), dim=1)
            report.update(supported=True, finite=finite,
                          min_cosine=float(cos.min()) if finite else None,
                          max_abs_diff=float((ref - got).abs().max()) if finite else None)
    report["masks"] = sorted(set(masks))
    report["overflow_constants"] = sorted(set(overflow))
    report["passed"] = bool(report["finite"] is not False and not report["masks"]
                            and not report["overflow_constants"])
    return report


def mil_constant_scan(mlmodel) -> dict:
    """``-inf`` / ``<= -65504`` constants (``masks``) and other out-of-fp16-range constants
    in the converted ML program: the graph that ships, after coremltools' constant folding."""
    prog = getattr(mlmodel, "_mil_program", None)
    if prog is None:
        return {"scanned": False, "reason": "the converted model carries no MIL program"}
    masks, overflow = [], []
    for fname, func in prog.functions.items():
        for op in func.find_ops(op_type="const"):
            val = op.outputs[0].val
            arr = np.asarray(val) if isinstance(val, (np.ndarray, float, np.floating)) else None
            if arr is None or arr.dtype.kind != "f" or arr.size == 0:
                continue
            arr = arr.astype(np.float64)
            if (arr <= -FP16_MAX).any():
                masks.append(f"{fname}/{op.name}")
            elif (~np.isfinite(arr)).any() or (np.abs(arr) > FP16_MAX).any():
                overflow.append(f"{fname}/{op.name}")
    return {"scanned": True, "masks": sorted(masks), "overflow_constants": sorted(overflow)}


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


def _compress(mlmodel, compress: str) -> tuple[object, dict]:
    """Compress the weights, then measure each weight's error and keep the broken ones in fp16.

    coremltools 9.0 quantizes an fp16 model's weights with fp16 scales: a channel whose
    largest weight is below ~7.6e-6 gets scale 0 (numpy warns of 0/0 and x/0) and comes back
    as zeros. Such weights (e.g. folded 1e-5 layer scales) are left uncompressed.
    """
    import coremltools.optimize.coreml as cto

    fn, op_config, record = _compression_config(compress)
    original = {n: m.val for n, m in cto.get_weights_metadata(mlmodel, weight_threshold=WEIGHT_THRESHOLD).items()}
    with np.errstate(all="ignore"):  # the 0-scale divisions above; their damage is measured below
        compressed = fn(mlmodel, cto.OptimizationConfig(global_config=op_config))
    errors = _weight_errors(cto, compressed, original)
    limit = MAX_WEIGHT_ERROR[compress]
    broken = sorted(n for n, e in errors.items() if e > limit)
    if broken:
        with np.errstate(all="ignore"):
            compressed = fn(mlmodel, cto.OptimizationConfig(global_config=op_config,
                                                            op_name_configs={n: None for n in broken}))
        record["kept_uncompressed"] = {n: round(errors[n], 4) for n in broken}
    kept = [e for n, e in errors.items() if n not in broken]
    record["weights_compressed"] = len(kept)
    record["max_weight_error"] = round(max(kept), 6) if kept else None
    record["weight_error_limit"] = limit
    return compressed, record


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


def _convert(ct, traced, inputs: list, output: str, precision: str):
    if precision == "fp16":
        compute = ct.transform.FP16ComputePrecision(op_selector=lambda op: op.op_type not in FP32_MIL_OPS)
    else:
        compute = ct.precision.FLOAT32
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ct.convert(traced, inputs=inputs, outputs=[ct.TensorType(name=output, dtype=np.float32)],
                          convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17,
                          compute_precision=compute, skip_model_load=True)


def export_coreml(image_tower: nn.Module, text_tower: nn.Module, out_dir: Path, *, image_size: int, mean, std,
                  context_length: int, precision: str = "fp16", compress: str = "none", max_batch: int = 32) -> dict:
    """Write ``out_dir/image.mlpackage`` and ``out_dir/text.mlpackage``; return their artifact entries.

    ``image_tower`` takes normalized float images ``[B, 3, S, S]`` and ``text_tower`` int tokens
    ``[B, L]`` (both return L2-normalized embeddings), e.g. :class:`mobileclip.backends.onnx_graph.ImageTower`
    on a reparameterized model. Raises :class:`ConfigError` on a bad argument (before any work)
    and :class:`CoreMLExportError` when an fp16 export would overflow or a saved package does not
    match its entry.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"Core ML precision {precision!r} is not available; choose from {list(PRECISIONS)}")
    if compress not in COMPRESSIONS:
        raise ConfigError(f"Core ML compression {compress!r} is not available; choose from {list(COMPRESSIONS)}")
    for key, value in (("image_size", image_size), ("context_length", context_length), ("max_batch", max_batch)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key} must be a positive integer; got {value!r}")
    mean, std = _check_normalization(mean, std)
    ct = require_coremltools()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    image_module = NormalizedImageInput(image_tower, mean, std)
    s, n = image_size, context_length
    g = torch.Generator().manual_seed(0)
    image_example = torch.rand(1, 3, s, s, generator=g)
    # Two rows so the batch dimension is traced symbolically; ids stay below any vocabulary size.
    text_example = (torch.arange(n, dtype=torch.int32) + 1).repeat(2, 1)
    text_example[1, n // 2:] = 0

    image_inputs = [ct.ImageType(name=IMAGE_IN, shape=(1, 3, s, s), scale=INPUT_SCALE, bias=[0.0, 0.0, 0.0],
                                 color_layout=ct.colorlayout.RGB)]
    text_inputs = [ct.TensorType(name=TEXT_IN, shape=(ct.RangeDim(1, max_batch, default=1), n), dtype=np.int32)]
    jobs = {
        "image": (image_module, image_example, image_inputs, IMAGE_OUT),
        "text": (text_tower, text_example, text_inputs, TEXT_OUT),
    }
    entries = {}
    for kind, (module, example, inputs, output) in jobs.items():
        traced = _trace(module, (example,))
        if precision == "fp16":
            fp16 = _fp16_check(module, (example,), traced)
            if not fp16["passed"]:
                raise CoreMLExportError(_overflow_message(kind, fp16), fp16)
        else:
            fp16 = {"ran": False, "reason": "fp32 export"}
        with _frozen(module):  # coremltools reads the weights as numpy: no grad-tracking tensors
            with torch.no_grad():
                embed_dim = int(traced(example).shape[-1])
            mlmodel = _convert(ct, traced, inputs, output, precision)
        fp16["coreml_graph"] = mil_constant_scan(mlmodel)
        if precision == "fp16" and fp16["coreml_graph"].get("masks"):
            raise CoreMLExportError(_overflow_message(kind, fp16["coreml_graph"]), fp16)
        entry = _entry(kind, ct, precision, compress, image_size, mean, std, context_length, max_batch, embed_dim)
        entry["fp16_check"] = fp16
        if compress != "none":
            mlmodel, entry["compression_config"] = _compress(mlmodel, compress)
        _describe(mlmodel, kind, entry)
        path = out_dir / FILES[kind]
        mlmodel.save(str(path))
        misses = check_spec(path, entry)
        if misses:
            raise CoreMLExportError(f"{path}: the saved Core ML package does not match its entry: "
                                    + "; ".join(misses), {"misses": misses})
        entries[kind] = entry
    return entries


def _overflow_message(kind: str, report: dict) -> str:
    found = []
    if report.get("masks"):
        found.append(f"-inf / finfo.min masks in {report['masks'][:5]}")
    if report.get("overflow_constants"):
        found.append(f"constants beyond float16's range in {report['overflow_constants'][:5]}")
    if report.get("finite") is False:
        found.append("non-finite outputs when run in float16")
    return (f"the {kind} tower is not safe in fp16: " + "; ".join(found)
            + ". Export with precision='fp32', or replace the masks with finite ones (e.g. -1e4)"
              " or with is_causal attention.")


def _entry(kind, ct, precision, compress, image_size, mean, std, context_length, max_batch, embed_dim) -> dict:
    entry = {
        "file": FILES[kind], "backend": "coreml", "format": "mlprogram", "precision": precision,
        "compression": compress, "minimum_deployment_target": DEPLOYMENT_TARGET,
        "specification_version": SPECIFICATION_VERSION,
    }
    if kind == "image":
        entry.update(
            inputs=[{"name": IMAGE_IN, "type": "image", "color_layout": "RGB", "dtype": "uint8",
                     "shape": [1, 3, image_size, image_size]}],
            outputs=[{"name": IMAGE_OUT, "type": "tensor", "dtype": "float32", "shape": [1, embed_dim]}],
            batching="one image per prediction; batch with Core ML batch predictions "
                     "(MLModel.predictions(fromBatch:), coremltools MLModel.predict([...]))",
            input_scale=INPUT_SCALE, input_bias=[0.0, 0.0, 0.0],
            normalization={"mean": mean, "std": std,
                           "applied": "inside the model: (pixel * input_scale - mean[c]) / std[c]"},
        )
    else:
        entry.update(
            inputs=[{"name": TEXT_IN, "type": "tensor", "dtype": "int32", "shape": ["batch", context_length],
                     "batch_range": [1, max_batch]}],
            outputs=[{"name": TEXT_OUT, "type": "tensor", "dtype": "float32", "shape": ["batch", embed_dim]}],
            batching=f"flexible batch 1..{max_batch} in one prediction",
        )
    if precision == "fp16":
        entry["fp32_ops"] = list(FP32_MIL_OPS)
    entry["tools"] = {"coremltools": ct.__version__, "torch": torch.__version__}
    return entry


def _describe(mlmodel, kind: str, entry: dict) -> None:
    """Descriptions for Xcode, and the metadata :func:`coreml_predictor` and :func:`check_spec` read."""
    meta = mlmodel.user_defined_metadata
    meta["mobileclip.kind"] = kind
    meta["mobileclip.precision"] = entry["precision"]
    meta["mobileclip.compression"] = entry["compression"]
    out = entry["outputs"][0]
    mlmodel.output_description[out["name"]] = f"L2-normalized {kind} embedding, float32 {out['shape']}"
    if kind == "image":
        norm = entry["normalization"]
        meta["mobileclip.input_scale"] = repr(entry["input_scale"])
        meta["mobileclip.mean"] = ",".join(repr(v) for v in norm["mean"])
        meta["mobileclip.std"] = ",".join(repr(v) for v in norm["std"])
        size = entry["inputs"][0]["shape"][-1]
        mlmodel.short_description = "mobileclip image tower"
        mlmodel.input_description[IMAGE_IN] = (f"RGB image {size}x{size}, already resized and center-cropped; "
                                               f"scaled by 1/255 and normalized with mean/std inside the model")
    else:
        inp = entry["inputs"][0]
        meta["mobileclip.context_length"] = str(inp["shape"][-1])
        meta["mobileclip.max_batch"] = str(inp["batch_range"][1])
        mlmodel.short_description = "mobileclip text tower"
        mlmodel.input_description[TEXT_IN] = (f"int32 token ids [batch, {inp['shape'][-1]}], batch "
                                              f"{inp['batch_range'][0]}..{inp['batch_range'][1]}")


def _main_ops(spec) -> list:
    func = spec.mlProgram.functions["main"]
    block = func.block_specializations[func.opset]
    ops = []

    def walk(b):
        for op in b.operations:
            ops.append(op)
            for inner in op.blocks:
                walk(inner)

    walk(block)
    return ops


def _tensor_dims(value_type) -> Optional[list]:
    """MIL tensor dims: ints, or None for an unknown (flexible) dim."""
    if value_type.WhichOneof("type") != "tensorType":
        return None
    return [d.constant.size if d.WhichOneof("dimension") == "constant" else None
            for d in value_type.tensorType.dimensions]


def _dims_match(got: list, want: list) -> bool:
    return len(got) == len(want) and all((g is None) if isinstance(w, str) else (g == w) for g, w in zip(got, want))


def check_spec(path: Path, expected: dict) -> list:
    """Mismatches between the ``.mlpackage`` at ``path`` and its artifact entry; ``[]`` = ok.

    Reads the spec only (works on Linux): model type and specification version, input and
    output names, the image input (RGB, size), token inputs (dtype, context length, batch
    range), output dtype and shape ``[B, D]`` in the ML program, the compression ops, the
    compute precision, and the normalization recorded in the metadata.
    """
    ct = require_coremltools()
    from coremltools.proto import FeatureTypes_pb2

    path = Path(path)
    if not (path / "Manifest.json").is_file():
        return [f"{path} is not an .mlpackage (no Manifest.json)"]
    try:
        spec = ct.utils.load_spec(str(path))
    except Exception as e:  # noqa: BLE001 - an unreadable package is reported as a mismatch
        return [f"{path}: cannot read the Core ML spec: {type(e).__name__}: {e}"]
    misses = []
    if spec.WhichOneof("Type") != "mlProgram":
        return [f"model type is {spec.WhichOneof('Type')!r}, expected 'mlProgram'"]
    want_version = expected.get("specification_version", SPECIFICATION_VERSION)
    if spec.specificationVersion != want_version:
        misses.append(f"specification version {spec.specificationVersion} != {want_version} "
                      f"({expected.get('minimum_deployment_target', DEPLOYMENT_TARGET)})")
    func = spec.mlProgram.functions["main"]
    mil_inputs = {i.name: _tensor_dims(i.type) for i in func.inputs}
    ops = _main_ops(spec)
    mil_outputs = {o.name: o.type for op in ops for o in op.outputs}

    got_in = [i.name for i in spec.description.input]
    want_in = [i["name"] for i in expected["inputs"]]
    if got_in != want_in:
        misses.append(f"inputs {got_in} != {want_in}")
    features = {i.name: i for i in spec.description.input}
    for want in expected["inputs"]:
        feat = features.get(want["name"])
        if feat is None:
            continue
        name, shape = want["name"], want["shape"]
        kind = feat.type.WhichOneof("Type")
        if want.get("type") == "image":
            if kind != "imageType":
                misses.append(f"input {name!r} is {kind}, expected an image")
                continue
            img = feat.type.imageType
            space = FeatureTypes_pb2.ImageFeatureType.ColorSpace.Name(img.colorSpace)
            if space != want.get("color_layout", "RGB"):
                misses.append(f"input {name!r} color space {space} != {want.get('color_layout', 'RGB')}")
            if (img.height, img.width) != (shape[-2], shape[-1]):
                misses.append(f"input {name!r} size {img.height}x{img.width} != {shape[-2]}x{shape[-1]}")
        else:
            if kind != "multiArrayType":
                misses.append(f"input {name!r} is {kind}, expected a multi-array")
                continue
            arr = feat.type.multiArrayType
            dtype = FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(arr.dataType)
            if dtype != want["dtype"].upper():
                misses.append(f"input {name!r} dtype {dtype} != {want['dtype'].upper()}")
            ranges = [(r.lowerBound, r.upperBound) for r in arr.shapeRange.sizeRanges]
            for axis, dim in enumerate(shape):
                if isinstance(dim, int):
                    got_dim = ranges[axis] if ranges else (arr.shape[axis],) * 2 if axis < len(arr.shape) else None
                    if got_dim != (dim, dim):
                        misses.append(f"input {name!r} axis {axis} is {got_dim}, expected fixed {dim}")
            if "batch_range" in want:
                want_range = tuple(want["batch_range"])
                if not ranges or ranges[0] != want_range:
                    misses.append(f"input {name!r} batch range {ranges[0] if ranges else 'fixed'} != {want_range}")
        got_dims = mil_inputs.get(name)
        want_dims = [None if isinstance(d, str) else d for d in shape]
        if got_dims is not None and got_dims != want_dims:
            misses.append(f"input {name!r} program shape {got_dims} != {want_dims}")

    got_out = [o.name for o in spec.description.output]
    want_out = [o["name"] for o in expected["outputs"]]
    if got_out != want_out:
        misses.append(f"outputs {got_out} != {want_out}")
    for want in expected["outputs"]:
        feat = next((o for o in spec.description.output if o.name == want["name"]), None)
        if feat is None:
            continue
        dtype = FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(feat.type.multiArrayType.dataType)
        if dtype != want["dtype"].upper():
            misses.append(f"output {want['name']!r} dtype {dtype} != {want['dtype'].upper()}")
        value_type = mil_outputs.get(want["name"])
        dims = _tensor_dims(value_type) if value_type is not None else None
        if dims is None or not _dims_match(dims, want["shape"]):
            misses.append(f"output {want['name']!r} program shape {dims} != {want['shape']}")

    op_types = {op.type for op in ops}
    compress = expected.get("compression", "none")
    constexpr = sorted(t for t in op_types if t.startswith("constexpr_"))
    if compress == "none" and constexpr:
        misses.append(f"uncompressed model holds compressed weights ({constexpr})")
    elif compress != "none":
        want_op = COMPRESSED_OPS["int8" if compress == "int8" else "palettize"]
        if want_op not in op_types:
            misses.append(f"compression {compress!r}: no {want_op} op in the program (found {constexpr or 'none'})")
    fp16_ops = any(o.type.WhichOneof("type") == "tensorType" and o.type.tensorType.dataType == _mil_fp16()
                   for op in ops for o in op.outputs if op.type != "const")
    precision = expected.get("precision")
    if precision == "fp16" and not fp16_ops:
        misses.append("precision fp16, but no op computes in float16")
    if precision == "fp32" and fp16_ops:
        misses.append("precision fp32, but some ops compute in float16")

    meta = dict(spec.description.metadata.userDefined)
    if "normalization" in expected:
        norm = expected["normalization"]
        got = {k: meta.get(f"mobileclip.{k}") for k in ("mean", "std", "input_scale")}
        want = {"mean": ",".join(repr(float(v)) for v in norm["mean"]),
                "std": ",".join(repr(float(v)) for v in norm["std"]),
                "input_scale": repr(float(expected.get("input_scale", INPUT_SCALE)))}
        if got != want:
            misses.append(f"normalization metadata {got} != {want}")
    return misses + weight_misses(path, spec)


_BLOB_READERS = {"FLOAT16": "read_fp16_data", "FLOAT32": "read_float_data", "INT8": "read_int8_data",
                 "UINT8": "read_uint8_data", "INT16": "read_int16_data", "UINT16": "read_uint16_data",
                 "INT32": "read_int32_data", "UINT32": "read_uint32_data", "INT4": "read_int4_data",
                 "UINT4": "read_uint4_data", "UINT2": "read_uint2_data", "UINT1": "read_uint1_data",
                 "UINT3": "read_uint3_data", "UINT6": "read_uint6_data"}


def _values(block):
    for op in block.operations:
        yield from op.attributes.values()
        for inner in op.blocks:
            yield from _values(inner)


def weight_misses(path: Path, spec) -> list:
    """Every weight blob the ML program refers to, read from its weight file by coremltools' own blob reader (no
    macOS needed): a file cut short, a blob at an offset past its end or holding fewer values than the tensor's
    shape is a miss. Checksums say the bundle's files are those listed; this says the package can be loaded."""
    from coremltools.libmilstoragepython import _BlobStorageReader
    from coremltools.proto import MIL_pb2

    names = {v: k for k, v in MIL_pb2.DataType.items()}
    readers, count = {}, 0
    for func in spec.mlProgram.functions.values():
        for block in func.block_specializations.values():
            for v in _values(block):
                if v.WhichOneof("value") != "blobFileValue":
                    continue
                blob, dtype = v.blobFileValue, names.get(v.type.tensorType.dataType, "?")
                rel = blob.fileName.replace("@model_path/", "", 1)
                file = path / "Data" / "com.apple.CoreML" / rel
                where = f"the weight at offset {blob.offset} of {rel}"
                if not file.is_file():
                    return [f"{where}: the file is missing"]
                try:
                    reader = readers.setdefault(rel, _BlobStorageReader(str(file)))
                    data = getattr(reader, _BLOB_READERS[dtype])(blob.offset)
                except KeyError:
                    return [f"{where} has data type {dtype}, which this check does not know"]
                except Exception as e:   # noqa: BLE001 - the reader raises ValueError/RuntimeError on a bad file
                    return [f"{where} cannot be read ({type(e).__name__}: {e}): the package is damaged"]
                dims = [d.constant.size for d in v.type.tensorType.dimensions]
                if dtype in ("FLOAT16", "FLOAT32", "INT8", "UINT8", "INT16", "UINT16", "INT32", "UINT32") and \
                        all(d.WhichOneof("dimension") == "constant" for d in v.type.tensorType.dimensions) and \
                        len(data) != int(np.prod(dims)):
                    return [f"{where} holds {len(data)} values, its tensor {dims} needs {int(np.prod(dims))}"]
                count += 1
    return []


def _mil_fp16() -> int:
    from coremltools.proto import MIL_pb2

    return MIL_pb2.DataType.Value("FLOAT16")


def normalized_to_pixels(x: np.ndarray, mean: Sequence[float], std: Sequence[float], tol: float = 1e-2) -> np.ndarray:
    """Undo ``(pixel / 255 - mean) / std`` on a float ``[B, 3, S, S]`` array → ``uint8 [B, S, S, 3]``.

    Exact for arrays made from 8-bit images (as :func:`mobileclip.transforms.preprocess_array`
    makes them): the float32 round trip is off by ~1e-4 of a pixel level, far below the
    rounding step. Raises :class:`MobileCLIPError` when a value is more than ``tol`` of a level
    away from an integer in 0..255, because the Core ML image input could not see that input.
    """
    mean, std = _check_normalization(mean, std)
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 4 or x.shape[1] != 3:
        raise MobileCLIPError(f"expected normalized images [batch, 3, H, W]; got shape {list(x.shape)}")
    levels = (x * np.asarray(std).reshape(1, 3, 1, 1) + np.asarray(mean).reshape(1, 3, 1, 1)) / INPUT_SCALE
    rounded = np.rint(levels)
    err = float(np.abs(levels - rounded).max()) if levels.size else 0.0
    if err > tol or rounded.min(initial=0) < 0 or rounded.max(initial=0) > 255:
        raise MobileCLIPError(
            f"the Core ML image model takes 8-bit RGB images, but these arrays are not 8-bit pixels after undoing "
            f"mean/std (off by up to {err:.4f} of a level, range {rounded.min():.0f}..{rounded.max():.0f}); pass "
            f"PIL images, or arrays preprocessed from 8-bit images with the model's own mean/std")
    return np.ascontiguousarray(rounded.astype(np.uint8).transpose(0, 2, 3, 1))


def coreml_predictor(path: Path, kind: Optional[str] = None, *, compute_units: str = "all") -> Callable:
    """numpy in, numpy out for an exported ``.mlpackage`` (``MLModel.predict``; macOS only).

    * image: a float32 normalized ``[B, 3, S, S]`` array (what the PyTorch tower takes), or a list
      of PIL images. Arrays are turned back into the 8-bit RGB images they came from
      (:func:`normalized_to_pixels`, exact for arrays preprocessed from 8-bit images, an error
      otherwise), so Core ML sees the very pixels PyTorch saw; each image is one prediction,
      run as one Core ML batch.
    * text: int ``[B, L]`` tokens, sent as int32 in chunks of the model's maximum batch.

    Returns float32 ``[B, D]``. ``kind`` is read from the package's metadata when omitted.
    Raises :class:`MobileCLIPError` off macOS, where Core ML cannot run a model.
    """
    if compute_units not in COMPUTE_UNITS:
        raise ConfigError(f"compute units {compute_units!r} are not available; choose from {list(COMPUTE_UNITS)}")
    if kind is not None and kind not in FILES:
        raise ConfigError(f"kind {kind!r} is not available; choose from {list(FILES)}")
    if sys.platform != "darwin":
        raise MobileCLIPError(f"Core ML predictions need macOS (MLModel.predict is macOS-only; this is "
                              f"{sys.platform}). Here, check the package with check_spec() and "
                              f"fp16_overflow_check().")
    ct = require_coremltools()
    model = ct.models.MLModel(str(path), compute_units=getattr(ct.ComputeUnit, compute_units.upper()))
    meta = dict(model.user_defined_metadata)
    kind = kind or meta.get("mobileclip.kind")
    if kind not in FILES:
        raise MobileCLIPError(f"{path}: cannot tell whether this is the image or the text model; pass kind=")

    if kind == "image":
        try:
            mean = [float(v) for v in meta["mobileclip.mean"].split(",")]
            std = [float(v) for v in meta["mobileclip.std"].split(",")]
        except KeyError as e:
            raise MobileCLIPError(f"{path}: metadata {e} is missing; re-export it with export_coreml()") from e

        def predict_image(images) -> np.ndarray:
            from PIL import Image

            if isinstance(images, np.ndarray):
                images = [Image.fromarray(p) for p in normalized_to_pixels(images, mean, std)]
            outs = model.predict([{IMAGE_IN: im} for im in images])
            return np.concatenate([np.asarray(o[IMAGE_OUT], dtype=np.float32).reshape(1, -1) for o in outs])

        return predict_image

    max_batch = int(meta.get("mobileclip.max_batch", "1"))

    def predict_text(tokens) -> np.ndarray:
        tokens = np.asarray(tokens).astype(np.int32)
        outs = [model.predict({TEXT_IN: tokens[i:i + max_batch]})[TEXT_OUT] for i in range(0, len(tokens), max_batch)]
        return np.concatenate([np.asarray(o, dtype=np.float32).reshape(-1, o.shape[-1]) for o in outs])

    return predict_text


# ------------------------------------------------------------------ the backend

def export_backend(src, out_dir: Path, options) -> dict:
    """Both towers as ``.mlpackage`` ML programs (int8 = int8 weight compression unless --compress says)."""
    from .onnx_graph import ImageTower, TextTower

    require_coremltools()
    compress = options.compress
    if options.precision == "int8" and compress == "none":
        compress = "int8"
    return export_coreml(ImageTower(src.model), TextTower(src.model), out_dir, image_size=src.image_size,
                         mean=src.mean, std=src.std, context_length=src.context_length,
                         precision="fp32" if options.precision == "fp32" else "fp16", compress=compress,
                         max_batch=options.fixed_batch or options.max_batch)


def _check_options(options) -> None:
    if options.token_dtype != "int32":
        raise ConfigError("Core ML takes int32 tokens only")
    if options.compress not in COMPRESSIONS:
        raise ConfigError(f"--compress {options.compress!r} is not known; choose from {list(COMPRESSIONS)}")


class PredictorRunner(Runner):
    """``MLModel.predict`` through :func:`coreml_predictor` (macOS; the predictor batches itself)."""

    def __init__(self, directory, entry: dict, device: str = "cpu", threads: int = 0) -> None:
        super().__init__(directory, entry, device, threads)
        self.fixed_batch = 0   # one picture per image input: a batch is a Core ML batch prediction
        self.role = "image" if entry["inputs"][0].get("type") == "image" else "text"

    def _activate(self) -> None:
        if sys.platform != "darwin":
            raise BackendUnavailable(f"Core ML predictions need macOS (this is {sys.platform})")
        self.predict = coreml_predictor(self.path, self.role)

    def _infer(self, x: np.ndarray) -> np.ndarray:
        return self.predict(x)


def _unavailable():
    return None if sys.platform == "darwin" else f"Core ML predictions need macOS (this is {sys.platform})"


BACKEND = Backend(
    label="Core ML", name="coreml", precisions=("fp32", "fp16", "int8"), runtime="coreml", extra="coreml",
    io="host arrays in and out (Core ML picks CPU/GPU/Neural Engine)",
    summary="Core ML ML programs (.mlpackage) for iOS/macOS; exported anywhere, predicted on macOS",
    export=export_backend, runner=PredictorRunner, unavailable=_unavailable, check_options=_check_options,
    prepare_export=lambda: require_coremltools(), static_parity=lambda *a: static_parity(*a))


def static_parity(directory: Path, manifest: dict, model, images, tokens, fp16_min_cosine: float) -> dict:
    """Off macOS Core ML cannot predict: check each package's spec against its manifest entry, and run
    the towers' graphs in fp16 in PyTorch on ``images`` (preprocessed) and ``tokens``."""
    from .onnx_graph import ImageTower, TextTower

    arts = manifest["artifacts"]
    misses = []
    for t in ("image", "text"):
        misses += [f"{t}: {m}" for m in check_spec(directory / arts[t]["file"], arts[t])]
    fp16 = {}
    for t, tower, inp in (("image", ImageTower(model), images), ("text", TextTower(model), tokens)):
        r = fp16[t] = fp16_overflow_check(tower, inp)
        close = r.get("min_cosine") is None or r["min_cosine"] >= fp16_min_cosine
        if arts[t]["precision"] != "fp32" and not (r.get("passed", False) and close):
            misses.append(f"{t}: the graph run in fp16 in PyTorch fails (finite={r.get('finite')}, min cosine "
                          f"{r.get('min_cosine')}, masks {r.get('masks', [])[:3]}); export with --precision fp32")
    return {"mode": "spec+fp16-check (Core ML predictions need macOS)", "image": [], "text": [],
            "fp16_check": fp16, "misses": misses, "top1_agreement": None}
