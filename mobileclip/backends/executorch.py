"""The ExecuTorch backend: ``image.pte`` / ``text.pte`` with the XNNPACK delegate (torch-free at import).

Export
    Each tower is captured with ``torch.export`` and lowered with
    ``to_edge_transform_and_lower(..., partitioner=[XnnpackPartitioner()])``; what XNNPACK does
    not take runs on ExecuTorch's portable kernels. The entry records the delegation (delegated
    and non-delegated node counts, and which ops run outside XNNPACK).

Fixed batch
    The towers are exported with a *fixed* batch (``--fixed-batch``, default 1): the XNNPACK
    lowering narrows a dynamic batch to at most 15, and a program with dynamic dimensions accepts
    inputs of other sizes without complaint. The entry's input shape carries the batch, so the
    :class:`~mobileclip.backends.base.Runner` runs any batch in chunks of it (the last one padded).

int8 (PT2E with the XNNPACK quantizer, ``torchao.quantization.pt2e``)
    * image tower, ``--calib`` given (``--quant auto`` or ``static``): static int8, activation
      ranges calibrated on the calibration images, per-channel int8 weights; the quantized ops
      are the convolutions and linear layers (as the ONNX backend's Conv/MatMul/Gemm);
    * image tower without ``--calib`` (or ``--quant dynamic``), and the text tower always:
      dynamic int8 (per-channel int8 weights, activation scales computed per call);
    * kept in fp32 in static mode: the convolutions that read the image itself (the stem; on make demo's
      trained student its int8 version cost the most top-1 agreement, see backends/quantize.py);
    * kept in fp32 in every case: the last linear layer (the embedding projection; on
      ``mobileclip-tiny`` quantizing it alone takes the image cosine from 0.9985 to 0.948),
      and, in static mode, depthwise convolutions (measured on ``mobileclip-tiny``, static
      image tower min cosine: all ops 0.72, conv + linear without the projection 0.993,
      and without depthwise convs 0.996), and the token-embedding table (ExecuTorch's Python
      runtime has no quantized embedding kernel, so the int8 text tower is barely smaller);
    * batch norms are not folded into a convolution whose output has other users (torchao's
      ``prepare_pt2e`` would fold them anyway, normalizing those users' input too): in FastViT's
      attention stage (MobileCLIP-S0) that is the first block's ``norm`` after the positional-encoding
      conv, which also feeds the residual stream. Folded, it took the S0 image tower's cosine to 0.91
      with *nothing* quantized; the entry lists such batch norms under ``batch_norms_not_folded``.

Run
    :class:`ExecuTorchRunner` loads the program with ``executorch.runtime`` (which takes torch
    tensors: torch is needed at run time), checks the method's own input/output metadata
    against the manifest entry on activation, and checks every input's shape and dtype itself
    before executing (ExecuTorch's messages for a wrong input are error codes). ``threads``
    resizes ExecuTorch's process-wide XNNPACK threadpool
    (``portable_lib._unsafe_reset_threadpool``): it applies to every ExecuTorch program of the
    process.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Optional

import numpy as np

from mobileclip.errors import ConfigError, MobileCLIPError

from .base import Backend, BackendUnavailable, ExportOptions, Runner, int8_method, int8_refusal_reason
from .bundle import BundleError
from .base import installed_versions
from .onnx import check_options as check_int8_options

INSTALL_HINT = "pip install 'mobileclip-toolkit[executorch]'"
DELEGATE = "XnnpackBackend"
METHOD = "forward"
# ExecuTorch ScalarType codes (runtime/core/portable_type/scalar_type.h) -> numpy dtype names
SCALAR_TYPES = {0: "uint8", 1: "int8", 2: "int16", 3: "int32", 4: "int64", 5: "float16", 6: "float32",
                7: "float64", 11: "bool"}
# Graph nodes that are bookkeeping, not work: unpacking a delegate's outputs, reading a symbolic size.
_BOOKKEEPING = ("getitem", "sym_size")


class LoweringError(MobileCLIPError):
    """A tower could not be captured, quantized or lowered to an ExecuTorch program."""


# ------------------------------------------------------------------ export

def export_executorch(src, out_dir: Path, options: ExportOptions) -> dict:
    """Both towers as ExecuTorch programs (XNNPACK delegate) in ``out_dir``; returns their manifest entries."""
    import torch

    from .bundle import IMAGE_IN, IMAGE_OUT, TEXT_IN, TEXT_OUT
    from .towers import ImageTower, TextTower, example_inputs

    o = options
    b = o.fixed_batch or 1
    example = example_inputs(src, b, o.token_dtype, seed=None)
    towers = {"image": (ImageTower(src.model).eval(), example["image"], IMAGE_IN, IMAGE_OUT),
              "text": (TextTower(src.model).eval(), example["text"], TEXT_IN, TEXT_OUT)}
    versions = _versions(o.precision == "int8")
    info = {}
    for role, (tower, example, name_in, name_out) in towers.items():
        entry = {"file": f"{role}.pte", "backend": "executorch", "precision": o.precision, "delegate": DELEGATE,
                 "batch": {"fixed": b, "why": "XNNPACK lowering caps a dynamic batch at 15: the runner chunks "
                                              "and pads to the fixed batch"},
                 "tools": versions}
        program = tower
        if o.precision == "int8":
            program, entry["quantization"] = _quantize(role, tower, example, src, o)
        delegation = _lower(role, program, example, out_dir / entry["file"])
        entry["delegation"] = delegation
        entry.update(read_io(out_dir / entry["file"], name_in, name_out))
        info[role] = entry
    return info


def _versions(int8: bool) -> dict:
    return installed_versions("executorch", *(("torchao",) if int8 else ()))


def _capture(role: str, tower, example):
    import torch

    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.export.export(tower, (example,), strict=False)
    except Exception as e:  # torch.export raises many types (UserError, Unsupported, RuntimeError, ...)
        raise LoweringError(f"torch.export could not capture the {role} tower: {_failure(e)}") from e


def _lower(role: str, program, example, path: Path) -> dict:
    """Lower ``program`` (a module, or an ExportedProgram already captured) to an XNNPACK-delegated ExecuTorch
    program at ``path``; returns its delegation record."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    ep = program if hasattr(program, "graph_signature") else _capture(role, program, example)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            edge = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()])
            delegation = delegation_info(edge.exported_program().graph_module)
            et = edge.to_executorch()
    except Exception as e:  # exir raises its own types and plain RuntimeErrors
        raise LoweringError(f"ExecuTorch could not lower the {role} tower to XNNPACK: {_failure(e)}") from e
    with open(path, "wb") as f:
        et.write_to_file(f)
    return delegation


_OP = re.compile(r"target=(torch\.ops\.[\w.]+)|\b((?:torch\.ops\.)?aten\.\w+(?:\.\w+)?)")


def _failure(e: BaseException) -> str:
    """What failed: the op named in the exception text when there is one, else its first line."""
    text = str(e)
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    m = _OP.search(text)
    op = (m.group(1) or m.group(2)) if m else None
    if op:
        return f"op {op}: {first[:300]}"
    return f"{type(e).__name__}: {first[:300]}" if first else f"{type(e).__name__} (no message)"


def delegation_info(graph_module) -> dict:
    """What runs in XNNPACK and what does not, in a lowered graph.

    The counting of ``executorch.devtools.backend_debug.get_delegation_info`` (nodes inside the
    delegated subgraphs against ``call_function`` nodes outside them), with op names taken from
    the nodes' targets, and without the bookkeeping nodes (``getitem`` of a delegate's outputs,
    ``sym_size``).
    """
    delegated = subgraphs = 0
    outside: dict = {}
    for node in graph_module.graph.nodes:
        if node.op == "get_attr" and node.name.startswith("lowered_module_"):
            subgraphs += 1
            lowered = getattr(graph_module, node.name)
            delegated += sum(n.op == "call_function" for n in lowered.original_module.graph.nodes)
        elif node.op == "call_function":
            name = _op_name(node.target)
            if name == "executorch_call_delegate" or any(b in name for b in _BOOKKEEPING):
                continue
            outside[name] = outside.get(name, 0) + 1
    return {"delegate": DELEGATE, "delegated_subgraphs": subgraphs, "delegated_nodes": delegated,
            "non_delegated_nodes": sum(outside.values()), "non_delegated_ops": dict(sorted(outside.items()))}


def _op_name(target) -> str:
    """``aten.view_copy.default`` for an edge or aten op, the function's name otherwise (``getitem``)."""
    if hasattr(target, "_schema") and hasattr(target, "_op"):   # an EdgeOpOverload: its __name__ is the op
        return str(target.__name__)
    if hasattr(target, "overloadpacket"):                      # a torch OpOverload: str() is aten.x.default
        return str(target)
    return str(getattr(target, "__name__", target))


def _example_batches(samples, b: int):
    """``samples`` (numpy or torch, first axis = batch) in chunks of exactly ``b`` (the last one padded)."""
    import torch

    x = torch.as_tensor(np.asarray(samples))
    for i in range(0, len(x), b):
        chunk = x[i:i + b]
        if len(chunk) < b:
            chunk = torch.cat([chunk, chunk[-1:].expand(b - len(chunk), *chunk.shape[1:])])
        yield chunk


def _quantize(role: str, tower, example, src, o: ExportOptions):
    """The tower quantized with PT2E and the XNNPACK quantizer, as an ExportedProgram; its entry's
    ``quantization`` record."""
    import torch

    try:
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer, \
            get_symmetric_quantization_config
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError as e:
        raise BackendUnavailable(f"int8 ExecuTorch export needs torchao's PT2E quantization and the XNNPACK "
                                 f"quantizer ({e}): {INSTALL_HINT}") from e

    static = role == "image" and int8_method(o) == "static"
    b = example.shape[0]
    graph = _capture(role, tower, example).module()
    unfolded = _shield_shared_conv_batch_norms(graph)
    linears = [n for n in graph.graph.nodes if n.op == "call_function" and n.target == torch.ops.aten.linear.default]
    keep_fp32 = {n.name for n in linears[-1:]}   # the embedding projection
    depthwise = [n.name for n in graph.graph.nodes if _is_depthwise_conv(n)] if static else []
    # static: the stem (convolutions reading the image itself) too, as the ONNX recipe does (backends/quantize.py)
    stem = [n.name for n in graph.graph.nodes
            if _is_conv(n) and n.args and getattr(n.args[0], "op", None) == "placeholder"] if static else []
    keep_fp32.update(depthwise, stem)
    quantizer = XNNPACKQuantizer()
    config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=not static)
    if static:   # the weight ops only: int8 element-wise ops and pooling cost more accuracy than they save
        for op in (torch.ops.aten.conv2d.default, torch.ops.aten.linear.default):
            quantizer.set_operator_type(op, config)
    else:
        quantizer.set_global(config)
    quantizer.set_filter_function(lambda n: n.name not in keep_fp32)
    record = {"method": "static" if static else "dynamic", "framework": "PT2E (torchao) + XNNPACKQuantizer",
              "weights": "int8 per-channel symmetric",
              "activations": ("int8, ranges calibrated (histogram observer)" if static
                              else "int8, scale computed per call"),
              "op_types": ["conv", "linear"],
              "kept_fp32": {"final_projection": _module_path(linears[-1]) if linears else None,
                            "depthwise_convs": len(depthwise), "input_convs": len(stem)}}
    if unfolded:
        record["batch_norms_not_folded"] = {"modules": unfolded, "why": _UNFOLDED_WHY}
    if role == "text":
        record["kept_fp32"]["token_embedding"] = ("ExecuTorch's Python runtime has no quantized embedding "
                                                  "kernel; the table is most of a small text tower's bytes")
    if static:
        from .quantize import calibration_images

        samples, meta = calibration_images(o.calib, src.preprocess, o.calib_size, o.seed)
        record.update(meta, calibration_samples=int(len(samples)))
    else:
        samples = example
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prepared = prepare_pt2e(graph, quantizer)
            for chunk in _example_batches(samples, b):
                prepared(chunk)
            converted = convert_pt2e(prepared)
    except Exception as e:
        raise LoweringError(f"PT2E could not quantize the {role} tower: {_failure(e)}") from e
    return _capture(role, converted, example), record


_UNFOLDED_WHY = ("the convolution before it also feeds a residual add; prepare_pt2e would fold the batch norm "
                 "into the convolution's weights and so apply it to the residual too (on MobileCLIP-S0 the int8 "
                 "image cosine fell to 0.91 with nothing quantized): it runs as its own fp32 op")


def _shield_shared_conv_batch_norms(graph) -> list:
    """Keep PT2E from folding a batch norm into a convolution whose output has other users; returns the
    module paths of those batch norms.

    ``prepare_pt2e`` folds every ``conv -> batch_norm`` into the convolution's weights without checking
    that the batch norm is the convolution's only user (torchao 0.18, ``_fuse_conv_bn_``): the other users
    then get the normalized tensor. In FastViT's attention stage (``fastvit_mci0``, MobileCLIP-S0) the
    conditional positional encoding (a depthwise conv) feeds both the first block's ``norm`` and its
    residual add, so the whole residual stream was normalized. A ``clone`` between the two hides the
    pattern; XNNPACK drops the clone when lowering, and its own batch norm fusion checks the users.
    """
    import torch

    bns = (torch.ops.aten.batch_norm.default, torch.ops.aten._native_batch_norm_legit_no_training.default)
    shielded = []
    for node in list(graph.graph.nodes):
        if node.op != "call_function" or node.target not in bns:
            continue
        conv = node.args[0]
        if not _is_conv(conv) or len(conv.users) < 2:
            continue
        with graph.graph.inserting_after(conv):
            copy = graph.graph.call_function(torch.ops.aten.clone.default, (conv,))
        copy.meta = dict(conv.meta)
        node.replace_input_with(conv, copy)
        shielded.append(_module_path(node))
    if shielded:
        graph.recompile()
    return shielded


def _is_conv(node) -> bool:
    """A convolution or transposed convolution of any rank (``aten.conv2d``, ``aten.convolution``, ...)."""
    packet = getattr(getattr(node, "target", None), "overloadpacket", None)
    return getattr(node, "op", None) == "call_function" and packet is not None and \
        str(getattr(packet, "__name__", "")).startswith("conv")


def _module_path(node) -> str:
    """The module a graph node comes from (``model.visual.trunk.head.fc``), else the node's name."""
    stack = node.meta.get("nn_module_stack") or {}
    return str(list(stack.values())[-1][0]) if stack else node.name


def _is_depthwise_conv(node) -> bool:
    import torch

    if node.op != "call_function" or node.target != torch.ops.aten.conv2d.default:
        return False
    groups = node.args[6] if len(node.args) > 6 else node.kwargs.get("groups", 1)
    return isinstance(groups, int) and groups > 1


def check_options(o: ExportOptions) -> None:
    """The ONNX backend's int8 rules (``--quant`` / ``--calib`` with int8 only; static needs ``--calib``),
    and no options of other formats."""
    check_int8_options(o)
    if o.exporter != "dynamo":
        raise ConfigError(f"--exporter {o.exporter} applies to --format onnx only; ExecuTorch programs are "
                          "captured with torch.export")


def _prepare_export() -> None:
    from importlib import import_module

    try:
        for module in ("executorch.exir", "executorch.backends.xnnpack.partition.xnnpack_partitioner"):
            import_module(module)
    except ImportError as e:
        raise BackendUnavailable(f"ExecuTorch's exporter (executorch.exir, the XNNPACK partitioner) cannot be "
                                 f"imported ({e}): {INSTALL_HINT}") from e
    why = _unavailable()
    if why:   # parity runs the programs right after the export
        raise BackendUnavailable(why)


# ------------------------------------------------------------------ run

def _method_meta(path: Path):
    """The ``forward`` method's metadata of a ``.pte`` file (BundleError if it cannot be read)."""
    program = _load_program(path)
    if METHOD not in program.method_names:
        raise BundleError(f"{str(path)!r} has methods {sorted(program.method_names)}, not {METHOD!r}; re-export "
                          "the bundle")
    return program, program.metadata(METHOD)


def _load_program(path: Path):
    try:
        from executorch.runtime import Runtime
    except ImportError as e:
        raise BackendUnavailable(f"ExecuTorch bundles run with executorch.runtime ({e}): {INSTALL_HINT}") from e
    if not Path(path).is_file():
        raise BundleError(f"{str(path)!r} is missing; re-export the bundle")
    try:
        return Runtime.get().load_program(Path(path))
    except Exception as e:  # the pybindings raise RuntimeError with an error code
        raise BundleError(f"ExecuTorch cannot load {str(path)!r}: {e}; re-export the bundle") from e


def _tensor_spec(meta, name: str) -> dict:
    code = int(meta.dtype())
    return {"name": name, "shape": [int(d) for d in meta.sizes()], "dtype": SCALAR_TYPES.get(code, f"scalar{code}")}


def read_io(path: Path, input_name: str = "input", output_name: str = "output") -> dict:
    """The inputs and outputs of a ``.pte`` file's ``forward`` method, as manifest tensor specs (a program
    stores no tensor names: they are given)."""
    return _io(_method_meta(Path(path))[1], input_name, output_name)


def _io(meta, input_name: str = "input", output_name: str = "output") -> dict:
    ins = [_tensor_spec(meta.input_tensor_meta(i), input_name if i == 0 else f"{input_name}{i}")
           for i in range(meta.num_inputs())]
    outs = [_tensor_spec(meta.output_tensor_meta(i), output_name if i == 0 else f"{output_name}{i}")
            for i in range(meta.num_outputs())]
    return {"inputs": ins, "outputs": outs}


def set_threads(n: int) -> int:
    """Resize ExecuTorch's (process-wide) XNNPACK threadpool to ``n`` threads; returns the count now in use.

    Never while a program is executing on another thread: the pybindings call it *unsafe*.
    """
    from executorch.extension.pybindings import portable_lib

    if n > 0 and portable_lib._threadpool_get_thread_count() != n:
        portable_lib._unsafe_reset_threadpool(int(n))
    return int(portable_lib._threadpool_get_thread_count())


class ExecuTorchRunner(Runner):
    """An ExecuTorch program (CPU, XNNPACK); activation checks the method's metadata against the manifest,
    and each call checks its input, since ExecuTorch answers a wrong one with an error code."""

    def _activate(self) -> None:
        if self.device != "cpu":
            raise BackendUnavailable(f"ExecuTorch bundles run on the CPU (XNNPACK); not on {self.device!r}")
        entry = self.entry
        try:
            spec_in, spec_out = entry["inputs"][0], entry["outputs"][0]
            want_shape, want_dtype = list(spec_in["shape"]), spec_in["dtype"]
            want_dim = spec_out["shape"][-1]
        except (KeyError, IndexError, TypeError) as e:
            raise BundleError(f"the manifest entry of {str(self.path)!r} is incomplete ({e!r}); re-export the "
                              "bundle") from e
        if not self.fixed_batch or not all(isinstance(d, int) and not isinstance(d, bool) for d in want_shape):
            raise BundleError(f"the manifest gives {str(self.path)!r} the input shape {want_shape}; ExecuTorch "
                              "artifacts have fixed shapes; re-export the bundle")
        program, meta = _method_meta(self.path)
        real = _io(meta)
        real_in, real_out = real["inputs"], real["outputs"]
        differ = []
        if len(real_in) != 1 or len(real_out) != 1:
            differ.append(f"{len(real_in)} inputs and {len(real_out)} outputs, not 1 and 1")
        else:
            if real_in[0]["shape"] != want_shape:
                differ.append(f"input shape {real_in[0]['shape']}, the manifest says {want_shape}")
            if real_in[0]["dtype"] != want_dtype:
                differ.append(f"input dtype {real_in[0]['dtype']}, the manifest says {want_dtype}")
            if real_out[0]["shape"][-1:] != [want_dim]:
                differ.append(f"output shape {real_out[0]['shape']}, the manifest says {spec_out['shape']}")
            if real_out[0]["dtype"] != spec_out.get("dtype", "float32"):
                differ.append(f"output dtype {real_out[0]['dtype']}, the manifest says {spec_out.get('dtype')}")
        if differ:
            raise BundleError(f"{str(self.path)!r} does not match its manifest entry: {'; '.join(differ)}; "
                              "re-export the bundle")
        import torch

        self._torch = torch
        self.shape, self.dtype = tuple(want_shape), np.dtype(want_dtype)
        self.threads_in_use = set_threads(self.threads)
        self.program = program
        self.method = program.load_method(METHOD)
        self.output_dim = want_dim

    def _infer(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if x.shape[1:] != self.shape[1:] or x.dtype != self.dtype:
            raise ConfigError(f"{str(self.path)!r} takes {self.dtype.name} input of shape "
                              f"[batch, {', '.join(map(str, self.shape[1:]))}] (run in batches of {self.shape[0]}); "
                              f"got {x.dtype.name} of shape {list(x.shape)}")
        if x.shape != self.shape:   # Runner.infer pads every chunk to the fixed batch
            raise ConfigError(f"{str(self.path)!r} takes batches of exactly {self.shape[0]}, got {x.shape[0]}")
        out = self.method.execute([self._torch.from_numpy(np.ascontiguousarray(x))])[0]
        return out.detach().numpy().astype(np.float32, copy=True)

    def _deactivate(self) -> None:
        self.method = self.program = None


def _unavailable() -> Optional[str]:
    try:
        from executorch.runtime import Runtime
    except ImportError as e:
        return f"executorch is not installed ({e}): {INSTALL_HINT}"
    try:
        have = Runtime.get().backend_registry.registered_backend_names
    except Exception as e:  # a broken native extension
        return f"ExecuTorch's runtime cannot start ({e}): {INSTALL_HINT}"
    if DELEGATE not in have:
        return f"this ExecuTorch build has no {DELEGATE} (it has {have}): {INSTALL_HINT}"
    return None


BACKEND = Backend(
    label="ExecuTorch", name="executorch", precisions=("fp32", "int8"), runtime="executorch", extra="executorch",
    io="host numpy arrays in and out (as torch tensors through ExecuTorch's Python runtime)",
    summary="ExecuTorch .pte programs with the XNNPACK delegate (Android, iOS and embedded CPUs)",
    export=export_executorch, runner=ExecuTorchRunner, unavailable=_unavailable, check_options=check_options,
    prepare_export=_prepare_export,
    read_io=lambda directory, entry: read_io(Path(directory) / entry["file"], entry["inputs"][0]["name"],
                                             entry["outputs"][0]["name"]),
    int8_refused={"static": int8_refusal_reason(98.1, 97.9, 88.8),
                  "dynamic": int8_refusal_reason(98.1, 98.5, 90.5)})
