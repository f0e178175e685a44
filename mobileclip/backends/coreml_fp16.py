"""Core ML fp16, checked before conversion: every weight, buffer and traced constant of a tower scanned for values
beyond fp16's range (infinite there) or below its smallest normal (zero there), and the MIL program's constants
scanned after it."""
from __future__ import annotations

import contextlib
import copy
import math
import warnings
from typing import Optional

import numpy as np
import torch
from torch import nn


FP16_MAX = 65504.0  # the largest finite float16; anything beyond becomes +-inf in half


@contextlib.contextmanager
def frozen(module: nn.Module):
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


def trace(module: nn.Module, inputs: tuple):
    with frozen(module):
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
        traced = trace(tower, inputs)
    except Exception as e:  # noqa: BLE001 - a trace failure is reported; the other checks still run
        return fp16_check(tower, inputs, None, f"{type(e).__name__}: {e}")
    return fp16_check(tower, inputs, traced)


def fp16_check(tower: nn.Module, inputs: tuple, traced, trace_error: Optional[str] = None) -> dict:
    masks: list = []
    overflow: list = []
    report: dict = {"device": "cpu", "dtype": "float16"}
    if traced is None:
        report["graph_scan_error"] = trace_error
        _scan_module(tower, masks, overflow)  # every tensor: the graph is unknown
    else:
        _scan_module(tower, masks, overflow, used=_used_attributes(traced))
        _scan_traced_graph(traced, masks, overflow)
    with frozen(tower), torch.no_grad():
        ref = (traced if traced is not None else tower)(*inputs).float()
        try:
            half = copy.deepcopy(tower).half()
            got = half(*(x.half() if x.is_floating_point() else x for x in inputs)).float()
        except RuntimeError as e:  # also a float16 kernel the CPU lacks (that error subclasses RuntimeError)
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
