"""int8 ONNX: dynamic quantization and static QDQ quantization calibrated on real inputs.

Two ONNX Runtime recipes, chosen per tower:

* **dynamic** (``quantize_dynamic``): int8 weights, activation scales computed at run
  time. Good for MatMul-heavy towers (transformers). It quantizes ``MatMul``/``Gemm`` (and
  ``Gather``: the token-embedding table, most of a small text tower's bytes) only
  by default: on convolutions ONNX Runtime falls back to ``ConvInteger`` kernels, which
  are several times *slower* than fp32 on CPU (MobileCLIP2-S0's image tower: 23.6 ms fp32
  against 208.8 ms dynamic int8, DESIGN.md), so convolutions stay fp32.
* **static** (``quantize_static``, QDQ format): activation ranges calibrated on real
  inputs (images of a dataset, ``--calib``), per-channel int8 weights. The QDQ form runs
  fast on ONNX Runtime's CPU kernels and is what TensorRT consumes for int8; the two want
  different graphs (:data:`TARGETS`).

Both run on a copy prepared by :func:`prepare`: the exporter's ``value_info`` is
dropped (``quantize_dynamic`` fails on dynamo-exported graphs with "Inferred shape and
existing shape differ" otherwise), then ONNX Runtime's own pre-processing
(``quant_pre_process``) runs without its symbolic shape inference, which cannot follow the
dynamo exporter's ``Expand`` nodes: ONNX Runtime's basic graph optimizations and ONNX shape
inference. That is the pre-processing the quantizer asks for (it no longer warns "Please
consider to run pre-processing"); on MobileCLIP-S0 it leaves the quantized graph's ops and
outputs exactly as they were without it.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

from mobileclip.errors import ConfigError

METHODS = ("dynamic", "static")
DYNAMIC_OPS = ("MatMul", "Gemm", "Gather")  # Gather: the token-embedding table
CALIBRATIONS = ("minmax", "percentile", "entropy")


def prepare(src: Path, dst: Path) -> None:
    """Drop the exporter's ``value_info``, then ONNX Runtime's quantization pre-processing without its
    symbolic shape inference (basic graph optimizations, ONNX shape inference)."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model = onnx.load(str(src))
    del model.graph.value_info[:]
    stripped = Path(dst).with_name(Path(dst).stem + ".stripped.onnx")
    onnx.save(model, str(stripped))
    quant_pre_process(str(stripped), str(dst), skip_symbolic_shape=True)
    stripped.unlink()


def quantize_dynamic_onnx(src: Path, dst: Path, op_types: Sequence[str] = DYNAMIC_OPS) -> dict:
    """int8 weights for ``op_types`` (MatMul/Gemm by default), activations quantized at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(dir=Path(dst).parent) as tmp:
        pre = Path(tmp) / "pre.onnx"
        prepare(Path(src), pre)
        quantize_dynamic(str(pre), str(dst), op_types_to_quantize=list(op_types), weight_type=QuantType.QInt8,
                         per_channel=False)
    return {"quantization": {"method": "dynamic", "op_types": list(op_types), "weights": "int8 per-tensor",
                             "activations": "uint8, scale computed per call"}}


class _Reader:
    """ONNX Runtime calibration reader over a list of input arrays, a few rows at a time."""

    def __init__(self, name: str, samples: np.ndarray, batch: int = 8) -> None:
        self.name, self.samples, self.batch, self.i = name, samples, batch, 0

    def get_next(self) -> Optional[dict]:
        if self.i >= len(self.samples):
            return None
        x = self.samples[self.i:self.i + self.batch]
        self.i += self.batch
        return {self.name: x}

    def rewind(self) -> None:
        self.i = 0


STATIC_OPS = ("Conv", "MatMul", "Gemm")

# Static QDQ recipes per consumer of the graph (``target``). Weights are int8, symmetric (zero point 0),
# per output channel in both.
#
# * ``onnxruntime``: uint8 activations (ORT's CPU kernels are fastest with them); depthwise convolutions
#   stay fp32, because ORT's int8 depthwise kernels are slower than its fp32 ones (measured on
#   MobileCLIP-S0's image tower, 2-core AVX-512 VNNI CPU: all convs int8 1.14x fp32 latency, depthwise kept
#   fp32 0.67x; benchmarks/results/export_latency.md); biases int32 (ORT folds them into QLinearConv).
# * ``tensorrt``: TensorRT's explicit quantization (strongly typed networks) runs in int8 exactly the ops
#   whose inputs *and* weights pass through Q/DQ; any other op runs in the graph's float type. So every
#   Conv (depthwise too: FastViT/MobileOne stages are mostly depthwise), MatMul and Gemm is quantized.
#   Activations are int8 with zero point 0 (TensorRT is symmetric only: its ONNX parser refuses a non-zero
#   zero point and reads uint8 as int8); biases stay float, because TensorRT's DequantizeLinear takes
#   int8/fp8/int4 inputs only (onnx-tensorrt's operator table), not ORT's int32 biases.
#
# ``onnxruntime`` also keeps the convolutions that read the graph's input (the stem) in fp32: quantizing them
# quantizes the image itself to uint8, the recipe's largest loss. Measured on make demo's trained student, 720
# held-out images, image tower alone against fp32: zero-shot top-1 agreement 96.7 % with the stem in int8, 98.5 %
# with it in fp32 (keeping the last Gemm instead: 96.9 %; percentile or entropy calibration: 96.5 / 96.7 %); the S0
# image tower's int8 latency does not change measurably (benchmarks/results/precision/).
#
# ``onnxruntime`` also runs GELU in int8 where it sits between two quantized ops (``int8_gelu``,
# :func:`gelu_in_int8`): ONNX Runtime has no int8 GELU kernel, so GELU would run in float between a
# DequantizeLinear and a QuantizeLinear, about a fifth of the S0 image tower's int8 time
# (benchmarks/results/int8_levers.md).
TARGETS = {
    "onnxruntime": {"activations": "uint8", "quantize_grouped_convs": False, "quantize_bias": True,
                    "quantize_input_convs": False, "int8_gelu": True},
    "tensorrt": {"activations": "int8", "quantize_grouped_convs": True, "quantize_bias": False,
                 "quantize_input_convs": True, "int8_gelu": False},
}
# GELU(x) ~= x * sigmoid(1.702 x): the sigmoid approximation of Hendrycks & Gimpel's GELU paper (OpenAI CLIP's
# QuickGELU); the largest difference from the exact GELU is 0.021, at |x| ~= 2.4.
QUICK_GELU = 1.702


def grouped_convs(path: Path) -> list:
    """Names of the grouped (depthwise) convolutions of an ONNX graph."""
    import onnx

    return [n.name for n in onnx.load(str(path), load_external_data=False).graph.node
            if n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute)]


def input_convs(path: Path) -> list:
    """Names of the convolutions that read one of the graph's inputs directly (the stem)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    inputs = {i.name for i in graph.input}
    return [n.name for n in graph.node if n.op_type == "Conv" and n.input and n.input[0] in inputs]


def quantize_static_onnx(src: Path, dst: Path, input_name: str, samples: np.ndarray,
                         calibration: str = "minmax", op_types: Sequence[str] = STATIC_OPS,
                         target: str = "onnxruntime", keep_fp32: Optional[Sequence[str]] = None,
                         int8_gelu: Optional[bool] = None) -> dict:
    """QDQ int8 with activation ranges calibrated on ``samples`` (real inputs, first axis = batch).

    Only ``op_types`` (Conv/MatMul/Gemm) are quantized: Q/DQ pairs around element-wise ops
    cost more than they save. ``target`` picks the recipe of :data:`TARGETS`: ``onnxruntime``
    (uint8 activations, depthwise convolutions and the stem kept fp32) or ``tensorrt`` (int8 symmetric
    activations, every convolution quantized including depthwise ones, float biases).
    ``keep_fp32`` names the nodes left in float instead of the recipe's choice (measurements of other
    choices: ``benchmarks/int8_levers.py``). ``int8_gelu`` (default: the recipe's) runs the GELUs between
    quantized ops in int8 as ``x * sigmoid(1.702 x)`` (:func:`gelu_in_int8`); ``False`` keeps the exact GELU in
    float.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if target not in TARGETS:
        raise ConfigError(f"quantization target {target!r} is not known; choose from {list(TARGETS)}")
    if calibration not in CALIBRATIONS:
        raise ConfigError(f"calibration {calibration!r} is not known; choose from {list(CALIBRATIONS)}")
    if samples is None or len(samples) == 0:
        raise ConfigError("static int8 needs calibration inputs: pass --calib with a folder of real images")
    recipe = TARGETS[target]
    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
              "entropy": CalibrationMethod.Entropy}[calibration]
    symmetric = recipe["activations"] == "int8"
    act = QuantType.QInt8 if symmetric else QuantType.QUInt8
    extra = {"ActivationSymmetric": symmetric, "WeightSymmetric": True, "QuantizeBias": recipe["quantize_bias"]}
    if calibration == "percentile":
        extra["CalibPercentile"] = 99.99
    with tempfile.TemporaryDirectory(dir=Path(dst).parent) as tmp:
        pre = Path(tmp) / "pre.onnx"
        prepare(Path(src), pre)
        grouped, stem = grouped_convs(pre), input_convs(pre)
        excluded = (list(keep_fp32) if keep_fp32 is not None else
                    ([] if recipe["quantize_grouped_convs"] else grouped)
                    + ([] if recipe["quantize_input_convs"] else [n for n in stem if n not in grouped]))
        quantize_static(str(pre), str(dst), _Reader(input_name, samples), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=list(op_types), nodes_to_exclude=excluded, per_channel=True,
                        activation_type=act, weight_type=QuantType.QInt8, calibrate_method=method,
                        extra_options=extra)
    gelu = (gelu_in_int8(Path(dst)) if (recipe["int8_gelu"] if int8_gelu is None else int8_gelu) else
            {"gelu": "float", "gelus_in_int8": 0, "gelus": op_counts(Path(dst)).get("Gelu", 0)})
    return {"quantization": {"method": "static", "format": "QDQ", "target": target, "calibration": calibration,
                             "calibration_samples": int(len(samples)), "op_types": list(op_types),
                             "kept_fp32_grouped_convs": len(set(grouped) & set(excluded)),
                             "kept_fp32_input_convs": len(set(stem) & set(excluded)),
                             "kept_fp32_nodes": len(excluded), "weights": "int8 symmetric per-channel",
                             "activations": "int8 symmetric" if symmetric else "uint8",
                             "biases": "int32" if recipe["quantize_bias"] else "float", **gelu}}


def quantized_gelus(graph) -> list:
    """``(dequantize, gelu, quantize)`` for each ``DequantizeLinear -> Gelu -> QuantizeLinear`` of an ONNX graph
    whose two scales are per-tensor with uint8 zero points (the GELU is the quantize's only input), in graph
    order: the GELUs a static int8 graph computes in float between two quantized ops."""
    import onnx

    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    users: dict = {}
    for n in graph.node:
        for i in n.input:
            users.setdefault(i, []).append(n)

    def per_tensor_u8(node) -> bool:
        scale, zero = (inits.get(node.input[k]) if len(node.input) > k else None for k in (1, 2))
        return (scale is not None and zero is not None and len(scale.dims) == 0
                and zero.data_type == onnx.TensorProto.UINT8)

    sites = []
    for n in graph.node:
        dq, after = (producer.get(n.input[0]), users.get(n.output[0], [])) if n.op_type == "Gelu" else (None, [])
        if (dq is not None and dq.op_type == "DequantizeLinear" and len(after) == 1
                and after[0].op_type == "QuantizeLinear" and per_tensor_u8(dq) and per_tensor_u8(after[0])):
            sites.append((dq, n, after[0]))
    return sites


def gelu_in_int8(path: Path) -> dict:
    """Rewrite, in place, every ``DequantizeLinear -> Gelu -> QuantizeLinear`` of ``path`` whose scales are
    per-tensor with uint8 zero points as ``x * sigmoid(1.702 x)`` in QDQ form, standard ONNX ops only::

        x_q -> DequantizeLinear(scale * 1.702) -> Sigmoid -> QuantizeLinear(1/255, 0) -> DequantizeLinear --+
        x_q -> DequantizeLinear(scale) -------------------------------------------------------------------> Mul -> QuantizeLinear

    ONNX Runtime fuses the two halves into its int8 kernels ``QLinearSigmoid`` (a 256-entry table) and
    ``QLinearMul``; a runtime without those fusions computes the same function in float. This is an
    approximation of GELU (:data:`QUICK_GELU`), not GELU: parity against the float source judges it, as it
    judges every int8 recipe. Returns what was done, for the manifest."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    gelus = sum(n.op_type == "Gelu" for n in g.node)
    replace: dict = {}
    for dq, n, _ in quantized_gelus(g):
        k = f"int8_gelu_{len(replace)}"
        scale = numpy_helper.to_array(inits[dq.input[1]])
        g.initializer.extend([numpy_helper.from_array(np.asarray(scale * QUICK_GELU, np.float32), k + "_scale"),
                              numpy_helper.from_array(np.asarray(1 / 255, np.float32), k + "_sig_scale"),
                              numpy_helper.from_array(np.asarray(0, np.uint8), k + "_sig_zero")])
        x_q, zero, sig = dq.input[0], dq.input[2], [k + "_sig_scale", k + "_sig_zero"]
        replace[n.output[0]] = [   # keyed by output name: protobuf's node wrappers are not stable objects
            helper.make_node("DequantizeLinear", [x_q, k + "_scale", zero], [k + "_x_scaled"], name=k + "_dq_scaled"),
            helper.make_node("Sigmoid", [k + "_x_scaled"], [k + "_sig_f"], name=k + "_sigmoid"),
            helper.make_node("QuantizeLinear", [k + "_sig_f", *sig], [k + "_sig_q"], name=k + "_q_sig"),
            helper.make_node("DequantizeLinear", [k + "_sig_q", *sig], [k + "_sig"], name=k + "_dq_sig"),
            helper.make_node("Mul", [n.input[0], k + "_sig"], [n.output[0]], name=k + "_mul")]
    nodes = [m for n in g.node for m in replace.get(n.output[0], [n])]
    del g.node[:]
    g.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return {"gelu": f"int8, as x * sigmoid({QUICK_GELU} x)" if replace else "float",
            "gelus_in_int8": len(replace), "gelus": gelus}


def calibration_images(folder: str, preprocess, n: int = 64, seed: int = 0) -> tuple[np.ndarray, dict]:
    """Up to ``n`` preprocessed images from an image folder (spread over its classes).

    Unreadable images are skipped and counted; no readable image at all is an error.
    """
    from mobileclip.data import ImageFolderDataset
    from mobileclip.errors import DatasetError
    from mobileclip.transforms import load_image

    if not Path(folder).is_dir():
        raise ConfigError(f"calibration folder {folder!r} does not exist; pass --calib with a folder of images "
                          "(one sub-folder per class, or images directly)")
    ds = ImageFolderDataset(folder)
    order = np.random.default_rng(seed).permutation(len(ds.samples))
    arrays, skipped = [], 0
    for i in order:
        if len(arrays) >= n:
            break
        try:
            arrays.append(np.asarray(preprocess(load_image(ds.samples[i][0]))))
        except (OSError, ValueError, DatasetError):
            skipped += 1
    if not arrays:
        raise ConfigError(f"no readable image in calibration folder {folder!r} ({skipped} unreadable)")
    return np.stack(arrays).astype(np.float32), {"calibration_images": len(arrays), "skipped_unreadable": skipped,
                                                  "calibration_folder": str(Path(folder).resolve())}


def calibration_tokens(tokenizer, texts: Iterable[str], dtype=np.int32) -> np.ndarray:
    return np.asarray(tokenizer(list(texts))).astype(dtype)


def op_counts(path: Path) -> dict:
    """Node counts by op type (to check what a quantizer did)."""
    import onnx

    counts: dict = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts
