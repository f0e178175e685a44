"""The LiteRT backend: ``image.tflite`` / ``text.tflite`` run by the LiteRT interpreter (torch-free at import).

Export: each tower is converted once, in fp32, by ``litert_torch.convert`` with named I/O (the
signature ``serving_default`` takes ``image`` / ``tokens`` and gives ``image_embedding`` /
``text_embedding``). fp16 (fp16 weights, fp32 compute) and dynamic int8 (int8 weights, fp32
activations) are ai-edge-quantizer post-processes of that fp32 file. Static int8 (``--quant static``,
or ``--calib`` with ``--quant auto``) quantizes the image tower with PT2E, calibrated on the
``--calib`` images: its input becomes int8 (the runner quantizes), and on x86 CPUs it runs slower
than fp32; the text tower stays dynamic int8.

LiteRT graphs have a fixed batch (litert-torch cannot export a dynamic one): ``--fixed-batch N``
exports batch N, and the default (0, dynamic) exports batch 1. The manifest records that batch as
the first input dimension, so :class:`~mobileclip.backends.base.Runner` splits larger batches and
pads the last chunk. Tokens are int32 (LiteRT has no int64 arg_max).

The runner is an ``ai_edge_litert`` interpreter (XNNPACK on CPU) whose real input dtype and shape
and output size are checked against the manifest entry when it is activated.
"""
from __future__ import annotations

import os
import platform
import re
import sys
import tempfile
from contextlib import contextmanager, suppress
from importlib import import_module
from pathlib import Path
from typing import Optional

import numpy as np

from mobileclip.errors import ConfigError, MobileCLIPError

from .base import Backend, BackendUnavailable, ExportOptions, Runner, int8_method, int8_refusal_reason
from .bundle import TENSOR_NAMES, BundleError
from .base import installed_versions
from .onnx import check_options as check_int8_options

INSTALL = "pip install 'mobileclip-toolkit[litert]'"
SIGNATURE = "serving_default"
NAMES = TENSOR_NAMES   # the bundle contract's, as every backend's towers
EXPORT_PLATFORMS = (("Linux", "x86_64"), ("Darwin", "arm64"))
FIXED_BATCH_REASON = ("LiteRT graphs have a fixed batch (litert-torch cannot export a dynamic one): a dynamic "
                      "batch was asked for, batch 1 was exported; runners split larger batches")


class LiteRTExportError(MobileCLIPError):
    """litert-torch (or ai-edge-quantizer) could not convert a tower; the message names the tower and the op."""


# ------------------------------------------------------------------ stderr of the C++ side

# Lines the converter, the quantizer and the interpreter print on every run (C++ logging straight to fd 2;
# ai-edge-quantizer 0.10 shows a progress bar whatever enable_progress_bar says).
_NOISE = re.compile(r"Created TensorFlow Lite XNNPACK delegate|All log messages before absl::InitializeLog|"
                    r"flatbuffer_export\.cc.*Estimated count of arithmetic ops|"
                    r"KernelPreference'> is an Enum subclass|"
                    r"(Applying Transformations to tensors|Generating Quantization Parameters)::|"   # tqdm
                    r"quantizer's output has another quantizer .* intentional\?")                      # PT2E


@contextmanager
def _captured_stderr():
    """Route file descriptor 2 (C++ logging included) to a temporary file for the block.

    Yields a list that receives the captured text. Afterwards the lines that are not known noise
    (:data:`_NOISE`) are written back to ``sys.stderr``; nothing is lost but the noise.
    """
    out: list = []
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):   # no fd 2 (an embedding host): nothing to route
        yield out
        return
    with tempfile.TemporaryFile() as f:
        os.dup2(f.fileno(), 2)
        try:
            yield out
        finally:
            with suppress(OSError, ValueError):   # a closed sys.stderr: nothing left to flush
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            f.seek(0)
            text = f.read().decode("utf-8", "replace")
            out.append(text)
            rest = "".join(line for line in text.splitlines(True) if line.strip() and not _NOISE.search(line))
            if rest:
                sys.stderr.write(rest)
                sys.stderr.flush()


# ------------------------------------------------------------------ availability

def _unavailable() -> Optional[str]:
    try:
        import_module("ai_edge_litert.interpreter")
    except Exception as e:   # ImportError, or a binary that does not load here
        return f"ai-edge-litert is not installed ({e}): {INSTALL}"
    return None


def _converter_platform_note() -> str:
    here = (platform.system(), platform.machine())
    supported = here in EXPORT_PLATFORMS or (here[0] == "Linux" and here[1].lower() == "amd64")
    note = "litert-torch's converter (litert-converter) has wheels only for Linux x86_64 and macOS arm64"
    if supported:
        return note
    return (f"{note}, and this machine is {here[0]} {here[1]}: export there, and run the bundle here with "
            "ai-edge-litert")


def prepare_export() -> None:
    """:class:`BackendUnavailable` naming what to install (and where it installs) when export cannot run."""
    missing = []
    for mod in ("litert_torch", "ai_edge_quantizer", "ai_edge_litert.interpreter"):
        try:
            with _captured_stderr():
                import_module(mod)
        except Exception as e:   # ImportError, or a broken binary dependency
            missing.append(f"{mod} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
    if missing:
        raise BackendUnavailable(f"LiteRT export needs litert-torch and ai-edge-quantizer: {INSTALL}; missing "
                                 f"{', '.join(missing)}. Note: {_converter_platform_note()}")
    import litert_torch

    litert_torch.config.show_progress = False


def check_options(o: ExportOptions) -> None:
    """The ONNX backend's int8 rules, and int32 tokens only."""
    check_int8_options(o)
    if o.token_dtype != "int32":
        raise ConfigError(f"LiteRT takes int32 tokens (it has no int64 arg_max); --token-dtype {o.token_dtype} "
                          "is not available for --format litert")


# ------------------------------------------------------------------ export

_OP_PATTERNS = (   # (pattern, what it says of the op), tried in this order
    (re.compile(r"Lowering not found: (\S+)"), "has no litert-torch lowering"),          # an aten op
    (re.compile(r"failed to legalize operation '([\w.]+)'"), "does not legalize to LiteRT"),   # a TFLite op
    (re.compile(r"'(tfl\.\w+)' op"), "is refused by the LiteRT converter"),
    (re.compile(r"target=torch\.ops\.([\w.]+)"), "is where the conversion failed"),   # a lowering that crashed
)


def _failing(exc: BaseException, extra: str = "") -> tuple:
    """(op, what went wrong with it) for a litert-torch error (its message, causes and contexts, and ``extra``:
    the captured log), or (None, None)."""
    texts, e, seen = [], exc, set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        texts.append(str(e))
        e = e.__cause__ or e.__context__
    text = "\n".join(texts + [extra])
    for pattern, says in _OP_PATTERNS:
        m = pattern.search(text)
        if m:
            return m.group(1).rstrip(".,:;"), says
    return None, None


def failing_op(exc: BaseException, extra: str = "") -> Optional[str]:
    """The op a litert-torch conversion error is about, or None."""
    return _failing(exc, extra)[0]


def conversion_error(tower: str, exc: BaseException, step: str = "convert", extra: str = "") -> LiteRTExportError:
    """A :class:`LiteRTExportError` naming ``tower`` and the op ``exc`` is about (else its first line)."""
    op, says = _failing(exc, extra)
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    first = f"{type(exc).__name__}: {lines[0] if lines else ''}"[:400]
    if op:
        return LiteRTExportError(f"LiteRT cannot {step} the {tower} tower: op {op} {says} ({first}). Rewrite that "
                                 "op in the model, or export another --format")
    return LiteRTExportError(f"LiteRT cannot {step} the {tower} tower: {first}")


def _towers(model):
    """The two towers with named dict outputs; the text tower passes int32 tokens through (no ``.long()``:
    an int64 ``tfl.arg_max`` does not legalize)."""
    from torch import nn

    class ImageTower(nn.Module):
        def __init__(self, m) -> None:
            super().__init__()
            self.model = m

        def forward(self, image):
            return {NAMES["image"][1]: self.model.encode_image(image, normalize=True)}

    class TextTower(nn.Module):
        def __init__(self, m) -> None:
            super().__init__()
            self.model = m

        def forward(self, tokens):
            return {NAMES["text"][1]: self.model.encode_text(tokens, normalize=True)}

    return ImageTower(model).eval(), TextTower(model).eval()


def convert_tower(tower, example, path: Path, role: str) -> None:
    """One tower, fp32, to ``path`` (``example``: the fixed-batch input). :class:`LiteRTExportError` on failure."""
    import torch

    import litert_torch

    litert_torch.config.show_progress = False
    with _captured_stderr() as err:
        try:
            with torch.no_grad():
                edge = litert_torch.convert(tower, sample_kwargs={NAMES[role][0]: example})
            edge.export(str(path))
        except Exception as e:
            failure = e
        else:
            failure = None
    if failure is not None:
        raise conversion_error(role, failure, extra="".join(err)) from failure


def _fp16_recipe():
    """fp16 weights (with DEQUANTIZE ops), fp32 compute: what litert-torch's ``full_fp16_recipe`` applies."""
    from ai_edge_quantizer import qtyping, recipe_manager
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    rm = recipe_manager.RecipeManager()
    rm.add_quantization_config(
        regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
        op_config=qtyping.OpQuantizationConfig(
            weight_tensor_config=qtyping.TensorQuantizationConfig(
                num_bits=16, symmetric=True, granularity=qtyping.QuantGranularity.TENSORWISE,
                dtype=qtyping.TensorDataType.FLOAT),
            compute_precision=qtyping.ComputePrecision.FLOAT, explicit_dequantize=True),
        algorithm_key=AlgorithmName.FLOAT_CASTING)
    return rm.get_quantization_recipe()


# Ops that only move or reshape data: a convolution behind them still reads the graph's input.
_LAYOUT_OPS = {"TRANSPOSE", "PAD", "PADV2", "RESHAPE", "CAST"}


def input_convs(path: Path) -> list:
    """The op scopes (output tensor names) of the convolutions that read the graph's input, through layout ops
    only: the stem."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as tfl

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    model = tfl.read_model(Path(path))
    graph = model.subgraphs[0]
    reads_input, out = set(graph.inputs), []
    for op in graph.operators:
        code = model.operatorCodes[op.opcodeIndex]
        name = names.get(max(code.builtinCode, code.deprecatedBuiltinCode))
        if not any(t in reads_input for t in op.inputs):
            continue
        if name in _LAYOUT_OPS:
            reads_input.update(op.outputs)
        elif name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            out.append(tfl.get_op_scope(op, graph.tensors))
    return out


def _dynamic_recipe(path: Path, role: str) -> tuple[list, list]:
    """ai-edge-quantizer's dynamic-range recipe, with the image tower's stem left in fp32: its int8 version
    quantizes the image itself per call, which cost the most top-1 agreement on make demo's trained student
    (image tower alone against fp32, 720 held-out images: 97.2 % with the stem in int8; see docs/export.md)."""
    import re

    from ai_edge_quantizer import qtyping, recipe, recipe_manager
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    stem = input_convs(path) if role == "image" else []
    rm = recipe_manager.RecipeManager()
    rm.load_quantization_recipe(recipe.dynamic_wi8_afp32())
    for scope in stem:
        rm.add_quantization_config(regex=re.escape(scope), operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
                                   algorithm_key=AlgorithmName.NO_QUANTIZE)
    return rm.get_quantization_recipe(), stem


def post_process(path: Path, role: str, kind: str) -> dict:
    """Rewrite the fp32 ``path`` in place as ``kind`` ("fp16" or "dynamic" int8) with ai-edge-quantizer."""
    from ai_edge_quantizer import quantizer

    stem: list = []
    if kind == "fp16":
        rec = _fp16_recipe()
    else:
        rec, stem = _dynamic_recipe(path, role)
    tmp = path.with_name(path.stem + f".{kind}.tflite")
    with _captured_stderr() as err:
        try:
            q = quantizer.Quantizer(str(path), rec)
            q.quantize(enable_progress_bar=False, enable_progress_report=False).export_model(str(tmp), overwrite=True)
        except Exception as e:
            failure = e
        else:
            failure = None
    if failure is not None:
        tmp.unlink(missing_ok=True)
        raise conversion_error(role, failure, step=f"quantize ({kind})", extra="".join(err)) from failure
    os.replace(tmp, path)
    if kind == "fp16":
        return {"weights": "fp16 (ai-edge-quantizer FLOAT_CASTING)", "compute": "fp32 (weights dequantized)"}
    return {"quantization": {"method": "dynamic", "tool": "ai-edge-quantizer dynamic_wi8_afp32",
                             "weights": "int8 per-channel symmetric",
                             "activations": "fp32, quantized per call where the kernel runs int8",
                             "kept_fp32": {"input_convs": len(stem)}}}


def _static_image(src, tower, example, path: Path, o: ExportOptions, batch: int) -> dict:
    """The image tower in full-integer int8 by PT2E, calibrated on ``--calib`` images."""
    import torch

    import litert_torch
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from .quantize import calibration_images

    samples, meta = calibration_images(o.calib, src.preprocess, o.calib_size, o.seed)
    qz = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))
    with _captured_stderr() as err:
        try:
            with torch.no_grad():
                gm = prepare_pt2e(torch.export.export(tower, (), {NAMES["image"][0]: example}).module(), qz)
                for i in range(0, len(samples), batch):
                    chunk = samples[i:i + batch]
                    if len(chunk) < batch:   # the graph's batch is fixed: repeat the last image
                        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(chunk), axis=0)])
                    gm(image=torch.from_numpy(np.ascontiguousarray(chunk)))
                gm = move_exported_model_to_eval(convert_pt2e(gm, fold_quantize=False))
                for m in gm.modules():   # traced from the eval-mode tower: only the flag is left to set
                    m.training = False
                edge = litert_torch.convert(gm, sample_kwargs={NAMES["image"][0]: example},
                                            quant_config=QuantConfig(pt2e_quantizer=qz))
            edge.export(str(path))
        except Exception as e:
            failure = e
        else:
            failure = None
    if failure is not None:
        raise conversion_error("image", failure, step="quantize (static int8, PT2E)", extra="".join(err)) \
            from failure
    return {"quantization": dict({
        "method": "static", "tool": "PT2E (torchao) + litert-torch", "calibration": "histogram",
        "calibration_samples": int(len(samples)), "weights": "int8 per-channel symmetric",
        "activations": "int8 per-tensor affine", "io": "int8 input (scale and zero point in inputs[0]); the "
        "runner quantizes float images", "note": "full-integer graphs can run slower than fp32 on x86 CPUs"}, **meta)}


def tflite_io(path: Path) -> dict:
    """The ``inputs`` / ``outputs`` of a .tflite file's signature, as manifest tensor specs."""
    from ai_edge_litert.interpreter import Interpreter

    with _captured_stderr():
        it = Interpreter(model_path=str(path))
        ins, outs = _signature_details(it)

    def specs(details: dict) -> list:
        out = []
        for name, d in details.items():
            s = {"name": name, "shape": [int(v) for v in d["shape"]], "dtype": np.dtype(d["dtype"]).name}
            scale, zero = d["quantization"]
            if scale:
                s["quantization"] = {"scale": float(scale), "zero_point": int(zero)}
            out.append(s)
        return out

    return {"inputs": specs(ins), "outputs": specs(outs)}


def export_litert(src, out_dir: Path, options: ExportOptions) -> dict:
    """Both towers as .tflite files in ``out_dir``; returns their manifest entries."""
    import torch

    from .towers import example_inputs

    prepare_export()
    o = options
    b = o.fixed_batch or 1
    image_tower, text_tower = _towers(src.model)
    example = example_inputs(src, b, "int32", seed=o.seed)
    x, tok = example["image"], example["text"]
    static = o.precision == "int8" and int8_method(o) == "static"
    tools = installed_versions("litert-torch", "ai-edge-litert", "ai-edge-quantizer")
    info = {}
    for role, tower, example in (("image", image_tower, x), ("text", text_tower, tok)):
        path = out_dir / f"{role}.tflite"
        entry = info[role] = {"file": path.name, "backend": "litert", "precision": o.precision,
                              "converter": dict(tools), "fixed_batch": b}
        if not o.fixed_batch:
            entry["fixed_batch_reason"] = FIXED_BATCH_REASON
        if role == "image" and static:
            entry.update(_static_image(src, tower, example, path, o, b))
        else:
            convert_tower(tower, example, path, role)
            if o.precision == "fp16":
                entry.update(post_process(path, role, "fp16"))
            elif o.precision == "int8":
                entry.update(post_process(path, role, "dynamic"))
        entry.update(tflite_io(path))
    return info


# ------------------------------------------------------------------ run

def interpreter(path: Path, threads: int = 0):
    """A LiteRT interpreter (XNNPACK on CPU) for one bundle artifact, tensors allocated."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as e:
        raise BackendUnavailable(f"LiteRT bundles run with ai-edge-litert: {INSTALL}") from e
    with _captured_stderr() as err:
        try:
            it = Interpreter(model_path=str(path), num_threads=int(threads) or None)
            it.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            failure = e
        else:
            failure = None
    if failure is not None:
        said = "".join(err).strip()
        raise BundleError(f"LiteRT cannot load {str(path)!r}: {failure}{f' ({said})' if said else ''}; re-export "
                          "the bundle") from failure
    return it


def _signature_details(it) -> tuple:
    """(inputs, outputs): the graph's tensor details keyed by their ``serving_default`` signature names (the
    graph's own tensor names where it has no such signature)."""
    ins = {d["name"]: d for d in it.get_input_details()}
    outs = {d["name"]: d for d in it.get_output_details()}
    if SIGNATURE not in it.get_signature_list():
        return ins, outs
    sig = it.get_signature_runner(SIGNATURE)   # dropped on return: it holds the interpreter (invoke refuses)
    by_tensor = lambda graph, named: {k: graph.get(d["name"], d) for k, d in named.items()}  # noqa: E731
    return by_tensor(ins, sig.get_input_details()), by_tensor(outs, sig.get_output_details())


class LiteRTRunner(Runner):
    """A LiteRT interpreter over one fixed-batch .tflite; activation checks it against the manifest.

    Inputs are cast to the graph's dtype; an int8 (static) graph's float input is quantized with its
    scale and zero point and an int8 output dequantized. Never resized: fixed-batch graphs break
    (``infer`` chunks and pads to the batch instead). Not thread-safe: one runner per thread.
    """

    def _activate(self) -> None:
        if self.device != "cpu":
            raise BackendUnavailable(f"LiteRT bundles run on the CPU here (XNNPACK); --device {self.device} is not "
                                     "available for them")
        try:
            spec_in, spec_out = self.entry["inputs"][0], self.entry["outputs"][0]
            want_name, want_dtype = spec_in["name"], spec_in["dtype"]
            want_shape, want_out = list(spec_in["shape"]), list(spec_out["shape"])
        except (KeyError, IndexError, TypeError) as e:
            raise BundleError(f"the manifest entry of {str(self.path)!r} is incomplete ({e!r}); re-export the "
                              "bundle") from e
        it = interpreter(self.path, self.threads)
        ins, outs = _signature_details(it)
        where = f"{str(self.path)!r}"
        if len(ins) != 1 or len(outs) != 1:
            raise BundleError(f"{where} has inputs {list(ins)} and outputs {list(outs)}; a tower takes one input "
                              "and gives one output; re-export the bundle")
        name, d_in = next(iter(ins.items()))
        d_out = next(iter(outs.values()))
        if want_name not in (name, d_in["name"]):
            raise BundleError(f"{where} has input {name!r}, the manifest says {want_name!r}; re-export the bundle")
        real_dtype = np.dtype(d_in["dtype"]).name
        if real_dtype != want_dtype:
            raise BundleError(f"{where} takes {real_dtype} input, the manifest says {want_dtype}; re-export the "
                              "bundle")
        real_shape = [int(v) for v in d_in["shape"]]
        if real_shape != want_shape:
            raise BundleError(f"{where} takes input of shape {real_shape} (a fixed batch), the manifest says "
                              f"{want_shape}; re-export the bundle")
        real_out = [int(v) for v in d_out["shape"]]
        if real_out[-1:] != want_out[-1:]:
            raise BundleError(f"{where} gives output of shape {real_out}, the manifest says {want_out}; re-export "
                              "the bundle")
        self.output_dim = real_out[-1]
        self.interpreter, self._in, self._out = it, d_in, d_out

    def _infer(self, x: np.ndarray) -> np.ndarray:
        d = self._in
        dtype = np.dtype(d["dtype"])
        scale, zero = d["quantization"]
        if scale and np.issubdtype(dtype, np.integer) and np.issubdtype(np.asarray(x).dtype, np.floating):
            info = np.iinfo(dtype)
            x = np.clip(np.round(x / scale) + zero, info.min, info.max)
        self.interpreter.set_tensor(d["index"], np.ascontiguousarray(x, dtype=dtype))
        self.interpreter.invoke()
        y = self.interpreter.get_tensor(self._out["index"])   # a copy
        scale, zero = self._out["quantization"]
        if scale and np.issubdtype(y.dtype, np.integer):
            y = (y.astype(np.float32) - zero) * scale
        return y

    def _deactivate(self) -> None:
        self.interpreter = self._in = self._out = None


BACKEND = Backend(
    label="LiteRT", name="litert", precisions=("fp32", "fp16", "int8"), runtime="litert", extra="litert",
    io="host numpy arrays in and out",
    summary="LiteRT (TensorFlow Lite) .tflite files run by the LiteRT interpreter (Android, iOS, Linux/macOS CPU; "
            "a fixed batch)",
    export=export_litert, runner=LiteRTRunner, unavailable=_unavailable, check_options=check_options,
    prepare_export=prepare_export, read_io=lambda directory, entry: tflite_io(Path(directory) / entry["file"]),
    int8_refused={"static": int8_refusal_reason(96.0, 62.7, 81.3),
                  "dynamic": int8_refusal_reason(98.2, 98.3, 91.7)})
