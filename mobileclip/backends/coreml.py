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
from .coreml_checks import check_spec
from .coreml_compress import compress_weights
from .bundle import IMAGE_IN, IMAGE_OUT, TEXT_IN, TEXT_OUT
from .coreml_format import (COMPRESSIONS, COMPUTE_UNITS, DEPLOYMENT_TARGET, FILES, INPUT_SCALE, PRECISIONS,
                            SPECIFICATION_VERSION, require_coremltools)
from .coreml_fp16 import fp16_check, fp16_overflow_check, frozen, mil_constant_scan, trace



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



class CoreMLExportError(MobileCLIPError):
    """A Core ML export failed a check (fp16 overflow, or the saved spec does not match)."""

    def __init__(self, message: str, report: Optional[dict] = None) -> None:
        super().__init__(message)
        self.report = report or {}


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
    ``[B, L]`` (both return L2-normalized embeddings), e.g. :class:`mobileclip.backends.towers.ImageTower`
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
        traced = trace(module, (example,))
        if precision == "fp16":
            fp16 = fp16_check(module, (example,), traced)
            if not fp16["passed"]:
                raise CoreMLExportError(_overflow_message(kind, fp16), fp16)
        else:
            fp16 = {"ran": False, "reason": "fp32 export"}
        with frozen(module):  # coremltools reads the weights as numpy: no grad-tracking tensors
            with torch.no_grad():
                embed_dim = int(traced(example).shape[-1])
            mlmodel = _convert(ct, traced, inputs, output, precision)
        fp16["coreml_graph"] = mil_constant_scan(mlmodel)
        if precision == "fp16" and fp16["coreml_graph"].get("masks"):
            raise CoreMLExportError(_overflow_message(kind, fp16["coreml_graph"]), fp16)
        entry = _entry(kind, ct, precision, compress, image_size, mean, std, context_length, max_batch, embed_dim)
        entry["fp16_check"] = fp16
        if compress != "none":
            mlmodel, entry["compression_config"] = compress_weights(mlmodel, compress)
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


def export_backend(src, out_dir: Path, options) -> dict:
    """Both towers as ``.mlpackage`` ML programs (int8 = int8 weight compression unless --compress says)."""
    from .towers import ImageTower, TextTower

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
    from .towers import ImageTower, TextTower

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
