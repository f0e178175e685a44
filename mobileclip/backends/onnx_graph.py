"""ONNX export of the two towers (fp32), with ``torch.onnx.export``.

The torch.export-based exporter (``dynamo=True``) is the default; ``exporter="legacy"``
uses the TorchScript-based one. Each tower is one self-contained file with a dynamic
batch axis (or a fixed batch on request); tokens are int32 by default (int64 optional)
and outputs are L2-normalized embeddings named ``image_embedding`` / ``text_embedding``.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

# Opset 20 has a native Gelu op. At opset 18 the dynamo exporter spells GELU as Div/Erf/Mul/Add
# in an order ONNX Runtime does not re-fuse: MobileCLIP-S0's image tower ran 15% slower.
OPSET = 20


def export_tower(tower: nn.Module, example: torch.Tensor, path: Path, input_name: str, output_name: str,
                 dynamic_batch: bool = True, exporter: str = "dynamo") -> None:
    if exporter not in ("dynamo", "legacy"):
        raise ValueError(f"unknown exporter {exporter!r}; choose 'dynamo' or 'legacy'")
    tower.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            dyn = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
            torch.onnx.export(tower, (example,), str(path), dynamo=True, input_names=[input_name],
                              output_names=[output_name], dynamic_shapes=dyn, opset_version=OPSET,
                              external_data=False)
        else:
            axes = {input_name: {0: "batch"}, output_name: {0: "batch"}} if dynamic_batch else None
            torch.onnx.export(tower, (example,), str(path), dynamo=False, input_names=[input_name],
                              output_names=[output_name], dynamic_axes=axes, opset_version=OPSET)


# Kept in fp32 in fp16 graphs: normalizations, softmax and reductions overflow or lose
# too much precision in half (LayerNorm variance, softmax sums, the L2 norm of the output).
FP32_OPS = ["LayerNormalization", "Softmax", "ReduceMean", "ReduceSum", "ReduceL2", "ReduceMax", "Pow", "Sqrt",
            "Div", "Erf"]


def to_fp16(path: Path) -> dict:
    """Convert an fp32 ONNX file to fp16 in place, keeping fp32 inputs/outputs and :data:`FP32_OPS`."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(path))
    half = convert_float_to_float16(model, keep_io_types=True, op_block_list=FP32_OPS)
    onnx.save(half, str(path))
    return {"kept_fp32_ops": FP32_OPS}


def io_spec(path: Path) -> dict:
    """Input/output names, shapes (symbolic dims as strings) and dtypes of an ONNX file."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)

    def one(v):
        t = v.type.tensor_type
        dims = [d.dim_param or d.dim_value for d in t.shape.dim]
        return {"name": v.name, "shape": dims, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name}

    return {"inputs": [one(v) for v in m.graph.input], "outputs": [one(v) for v in m.graph.output],
            "opset": max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))}


def optimize_offline(path: Path) -> dict:
    """Apply ONNX Runtime's *basic* graph optimizations offline, in place.

    Basic rewrites (constant folding, redundant-node elimination, Conv+BN/Add/Mul fusion
    into standard ops) keep the graph in standard ONNX ops, so the file still runs on any
    ONNX runtime and on TensorRT. Extended fusions (com.microsoft contrib ops) and layout
    transforms (NCHWc) are specific to ONNX Runtime and the CPU it runs on: those are left
    to session creation on the target device.
    """
    import os

    import onnxruntime as ort

    tmp = path.with_name(path.name + ".opt")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = str(tmp)
    opts.log_severity_level = 3
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    os.replace(tmp, path)
    return {"offline_optimization": "onnxruntime basic (portable)"}
