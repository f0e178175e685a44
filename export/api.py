"""``mobileclip export`` / ``mobileclip validate``: build a bundle and prove it matches PyTorch."""
from __future__ import annotations

import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from mobileclip.checkpoint import replace_dir, temp_dir_for
from mobileclip.errors import ConfigError, MobileCLIPError

from .bundle import FORMAT_VERSION, load_manifest, write_manifest
from .source import ExportSource, load_source, resolve_spec
from .parity import THRESHOLDS, ParityError, check, run_parity

FORMATS = {"onnx": ("fp32", "fp16", "int8"), "coreml": ("fp32", "fp16", "int8"),
           "tensorrt": ("fp32", "fp16", "int8")}
QUANT_METHODS = ("auto", "dynamic", "static")


# ------------------------------------------------------------------ runners (numpy in, numpy out)

def _fixed_batch(entry: dict) -> int:
    if entry["backend"] == "coreml":  # one picture per image input; its predictor batches itself
        return 0
    dim = entry["inputs"][0]["shape"][0]
    return dim if isinstance(dim, int) and dim > 0 else 0


def _tower_runner(directory: Path, entry: dict):
    from mobileclip.runtime.core import ort_session, run_in_batches

    backend, name, fixed = entry["backend"], entry["inputs"][0]["name"], _fixed_batch(entry)
    if backend == "onnx":
        session = ort_session(directory / entry["file"], entry["precision"])
        return lambda x: run_in_batches(lambda c: session.run(None, {name: c})[0], x, fixed)
    if backend == "tensorrt":
        from .tensorrt import TRTRunner

        runner = TRTRunner(directory / entry["file"])
        return lambda x: run_in_batches(runner, x, fixed)
    if backend == "coreml":
        from .coreml import coreml_predictor

        return coreml_predictor(directory / entry["file"])
    raise ConfigError(f"unknown backend {backend!r} in the bundle manifest")


# ------------------------------------------------------------------ inputs

def _images(data: Optional[str], n: int):
    if not data:
        return None
    from mobileclip.data import ImageFolderDataset
    from mobileclip.transforms import IMAGE_READ_ERRORS, load_image

    ds = ImageFolderDataset(data)
    out = []
    for p, _ in ds.samples:
        if len(out) >= n:
            break
        try:
            out.append(load_image(p))
        except IMAGE_READ_ERRORS:  # unreadable image: skipped
            continue
    return out or None


def _batches(fixed: int, max_batch: int) -> tuple:
    return (fixed,) if fixed else (1, max(2, max_batch // 4), max_batch)


# ------------------------------------------------------------------ export

def _check_args(fmt: str, precision: str, quant: str, calib: Optional[str], token_dtype: str, out: Path,
                overwrite: bool, compress: str, max_batch: int, fixed_batch: int) -> None:
    if fmt not in FORMATS:
        raise ConfigError(f"format {fmt!r} is not known; choose from {sorted(FORMATS)}")
    if precision not in FORMATS[fmt]:
        raise ConfigError(f"precision {precision!r} is not available for {fmt}; choose from {list(FORMATS[fmt])}")
    if quant not in QUANT_METHODS:
        raise ConfigError(f"quantization {quant!r} is not known; choose from {list(QUANT_METHODS)}")
    if quant != "auto" and precision != "int8":
        raise ConfigError(f"--quant {quant} applies to --precision int8 only")
    if precision == "int8" and quant == "static" and not calib:
        raise ConfigError("static int8 quantization needs calibration images: pass --calib <image folder> "
                          "(real images, one sub-folder per class), or use --quant dynamic")
    if fmt == "tensorrt" and precision == "int8" and not calib:
        raise ConfigError("TensorRT int8 is built from a QDQ ONNX calibrated on real images: pass --calib "
                          "<image folder>")
    if calib and precision != "int8":
        raise ConfigError("--calib applies to --precision int8 only")
    if token_dtype not in ("int32", "int64"):
        raise ConfigError(f"token dtype {token_dtype!r}: choose int32 or int64")
    if fmt == "coreml" and token_dtype != "int32":
        raise ConfigError("Core ML takes int32 tokens only")
    if compress != "none" and fmt != "coreml":
        raise ConfigError("--compress (weight palettization / int8) applies to --format coreml only")
    if max_batch < 1 or fixed_batch < 0:
        raise ConfigError("--max-batch must be >= 1 and --fixed-batch >= 0")
    if out.exists() and not overwrite:
        raise ConfigError(f"output directory {str(out)!r} already exists; pass --overwrite to replace it")
    if out.exists() and not (out.is_dir() and ((out / "manifest.json").is_file() or not any(out.iterdir()))):
        raise ConfigError(f"--overwrite replaces a bundle only, and {str(out)!r} is "
                          + ("a file" if not out.is_dir() else "a directory that is not a bundle (no manifest.json)")
                          + "; choose another --out")


def export(model: str, out: Union[str, Path], fmt: str = "onnx", precision: str = "fp32", fixed_batch: int = 0,
           exporter: str = "dynamo", token_dtype: str = "int32", max_batch: int = 32, data: Optional[str] = None,
           calib: Optional[str] = None, calib_size: int = 64, quant: str = "auto", compress: str = "none",
           overwrite: bool = False, allow_mismatch: bool = False, seed: int = 0,
           workspace_gb: float = 4.0, timing_cache: Optional[str] = None,
           pretrained: Optional[str] = None) -> dict:
    """Export ``model`` to a bundle in ``out`` and check it against PyTorch.

    ``model``: a registry name (random weights at ``seed``, or ``pretrained=`` weights: one of our
    checkpoints, Apple's ``mobileclip_*.pt`` or an open_clip MobileCLIP/MobileCLIP2 file), a
    checkpoint directory, ``open_clip:<arch>[:<tag or file>]`` or ``hf:<CLIPModel directory>``.
    """
    out = Path(out)
    _check_args(fmt, precision, quant, calib, token_dtype, out, overwrite, compress, max_batch, fixed_batch)
    if fmt == "tensorrt":
        from .tensorrt import require_tensorrt

        require_tensorrt()  # before any work: a clear error where TensorRT or a GPU is missing
    elif fmt == "coreml":
        from .coreml import require_coremltools

        require_coremltools()
    src = load_source(resolve_spec(model, seed, pretrained))
    from mobileclip.reparam import unfolded_branches

    if unfolded_branches(src.model):
        raise RuntimeError(f"train-time branches left after reparameterization: {unfolded_branches(src.model)[:5]}")
    tmp = temp_dir_for(out)
    try:
        t0 = time.time()
        if fmt == "coreml":
            arts = _export_coreml(src, tmp, precision, compress, fixed_batch or max_batch)
        else:
            arts = _export_onnx(src, tmp, fmt, precision, fixed_batch, exporter, token_dtype, calib, calib_size,
                                quant, seed)
            if fmt == "tensorrt":
                arts = _build_tensorrt(tmp, arts, fixed_batch or max_batch, workspace_gb, timing_cache)
        for f in src.tokenizer_files:
            shutil.copy(f, tmp / Path(f).name)
        manifest = _manifest(src, arts, token_dtype, time.time() - t0)
        report = _parity(tmp, manifest, src, _batches(fixed_batch, max_batch), _images(data, max_batch))
        (tmp / "parity.json").write_text(json.dumps(report, indent=2) + "\n")
        manifest["parity"] = _parity_summary(report)
        write_manifest(tmp, manifest)
        replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not report["passed"] and not allow_mismatch:
        raise ParityError(f"{out}: parity check failed: " + "; ".join(report["misses"]), report)
    return manifest


def _export_onnx(src: ExportSource, tmp: Path, fmt: str, precision: str, fixed_batch: int, exporter: str,
                 token_dtype: str, calib: Optional[str], calib_size: int, quant: str, seed: int) -> dict:
    from .onnx import IMAGE_IN, IMAGE_OUT, TEXT_IN, TEXT_OUT, ImageTower, TextTower, export_tower, io_spec, \
        optimize_offline, to_fp16

    b = fixed_batch or 2
    s = src.image_size
    export_tower(ImageTower(src.model), torch.rand(b, 3, s, s), tmp / "image.onnx", IMAGE_IN, IMAGE_OUT,
                 dynamic_batch=not fixed_batch, exporter=exporter)
    tok = src.tokenizer(["a photo of a dog", "a cat"] * b)[:b].to(getattr(torch, token_dtype))
    export_tower(TextTower(src.model), tok, tmp / "text.onnx", TEXT_IN, TEXT_OUT, dynamic_batch=not fixed_batch,
                 exporter=exporter)
    info = {t: {"file": f"{t}.onnx", "backend": "onnx", "precision": precision, "exporter": exporter}
            for t in ("image", "text")}
    for t in ("image", "text"):
        info[t].update(optimize_offline(tmp / f"{t}.onnx"))
    if precision == "fp16":
        for t in ("image", "text"):
            info[t].update(to_fp16(tmp / f"{t}.onnx"))
    elif precision == "int8":
        _quantize(src, tmp, info, fmt, calib, calib_size, quant, seed)
    for t in ("image", "text"):
        info[t].update(io_spec(tmp / info[t]["file"]))
    return info


def _quantize(src: ExportSource, tmp: Path, info: dict, fmt: str, calib: Optional[str], calib_size: int,
              quant: str, seed: int) -> None:
    """int8 towers: the image tower static QDQ when calibration images are given, else dynamic.

    The text tower is quantized dynamically for ONNX Runtime (its MatMuls are where the time
    goes, and per-call activation scales suit variable-length prompts). For TensorRT, which
    runs QDQ graphs only, the image tower is QDQ with symmetric activations and the text
    tower is fp16.
    """
    from .onnx import IMAGE_IN, to_fp16
    from .quantize import calibration_images, quantize_dynamic_onnx, quantize_static_onnx

    method = "static" if quant == "static" or (quant == "auto" and calib) else "dynamic"
    fp32 = tmp / "image.fp32.onnx"
    shutil.move(tmp / "image.onnx", fp32)
    if method == "static":
        samples, meta = calibration_images(calib, src.preprocess, calib_size, seed)
        q = quantize_static_onnx(fp32, tmp / "image.onnx", IMAGE_IN, samples,
                                 symmetric_activations=fmt == "tensorrt")
        q["quantization"].update(meta)
    else:
        q = quantize_dynamic_onnx(fp32, tmp / "image.onnx")
    fp32.unlink()
    info["image"].update(q)
    if fmt == "tensorrt":
        info["text"].update(to_fp16(tmp / "text.onnx"), precision="fp16")
        return
    fp32 = tmp / "text.fp32.onnx"
    shutil.move(tmp / "text.onnx", fp32)
    info["text"].update(quantize_dynamic_onnx(fp32, tmp / "text.onnx"))
    fp32.unlink()


def _build_tensorrt(tmp: Path, arts: dict, max_batch: int, workspace_gb: float, timing_cache: Optional[str]) -> dict:
    from .tensorrt import build_engine

    out = {}
    for t, entry in arts.items():
        eng = build_engine(tmp / entry["file"], tmp / f"{t}.engine", max_batch=max_batch, workspace_gb=workspace_gb,
                           timing_cache=Path(timing_cache) if timing_cache else None)
        out[t] = {**entry, **eng, "onnx": entry["file"], "file": f"{t}.engine", "backend": "tensorrt"}
    return out


def _export_coreml(src: ExportSource, tmp: Path, precision: str, compress: str, max_batch: int) -> dict:
    from .coreml import export_coreml
    from .onnx import ImageTower, TextTower

    if precision == "int8" and compress == "none":
        compress = "int8"
    return export_coreml(ImageTower(src.model), TextTower(src.model), tmp, image_size=src.image_size,
                         mean=src.mean, std=src.std, context_length=src.context_length,
                         precision="fp32" if precision == "fp32" else "fp16", compress=compress,
                         max_batch=max_batch)


def _manifest(src: ExportSource, arts: dict, token_dtype: str, seconds: float) -> dict:
    from mobileclip import __version__

    tools = {"mobileclip": __version__, "torch": torch.__version__}
    for mod in ("onnx", "onnxruntime", "coremltools", "tensorrt"):
        m = sys.modules.get(mod)
        if m is not None and hasattr(m, "__version__"):
            tools[mod] = m.__version__
    return {
        "format_version": FORMAT_VERSION, "model": src.name, "source": src.spec, "source_kind": src.kind,
        "embed_dim": src.embed_dim, "image_size": src.image_size, "mean": list(src.mean), "std": list(src.std),
        "resize": src.resize, "preprocess_from": src.preprocess_from,
        "tokenizer": dict(src.tokenizer_info, token_dtype=token_dtype),
        "logit_scale": src.logit_scale, "artifacts": arts, "tools": tools, "export_seconds": round(seconds, 2),
    }


# ------------------------------------------------------------------ parity

def _parity_summary(report: dict) -> dict:
    return {k: report[k] for k in ("passed", "misses", "top1_agreement", "mode") if k in report}


def _bundle_inputs(directory: Path, manifest: dict) -> tuple:
    """The preprocessing and tokenizer the runtime builds from this manifest (None: it has none or they
    cannot be built), and the misses that explain a None."""
    from mobileclip.runtime.core import Preprocessor
    from mobileclip.runtime.tokenizer import tokenizer_from_manifest

    pre = tok = None
    misses = []
    try:
        pre = Preprocessor.from_manifest(manifest)
    except (MobileCLIPError, TypeError, ValueError) as e:
        misses.append(f"the bundle's preprocessing cannot be built from its manifest: {e}")
    info = manifest.get("tokenizer") or {}
    if info.get("name") != "hf":   # the runtime has no HF tokenizer: the text side then gets the source's ids
        try:
            tok = tokenizer_from_manifest(directory, info)
        except (MobileCLIPError, OSError, TypeError, ValueError) as e:
            misses.append(f"the bundle's tokenizer cannot be built from its manifest: {e}")
    return pre, tok, misses


def _manifest_checks(directory: Path, manifest: dict, src: ExportSource) -> list:
    """The manifest's own numbers against the source and the artifacts: embed dim, image size, logit
    scale, context length, token dtype, and each artifact's inputs and outputs (read back from an ONNX
    file itself). A runtime takes all of these from the manifest, so a wrong one must fail parity."""
    misses = []
    tok = manifest["tokenizer"]
    want = {"embed_dim": src.embed_dim, "image_size": src.image_size, "context_length": src.context_length}
    have = {"embed_dim": manifest["embed_dim"], "image_size": manifest["image_size"],
            "context_length": tok["context_length"]}
    misses += [f"the manifest's {k} is {have[k]}, the source's {want[k]}" for k in want
               if want[k] is not None and have[k] != want[k]]
    if not math.isclose(manifest["logit_scale"], src.logit_scale, rel_tol=1e-5):
        misses.append(f"the manifest's logit_scale is {manifest['logit_scale']}, the source's {src.logit_scale}")
    token_dtype = tok.get("token_dtype", "int32")
    for role in ("image", "text"):
        entry = manifest["artifacts"][role]
        spec_in, spec_out = entry["inputs"][0], entry["outputs"][0]
        if entry["backend"] == "onnx":   # the file's own signature against what the manifest says of it
            from .onnx import io_spec

            real = io_spec(directory / entry["file"])
            for key in ("inputs", "outputs"):
                said = [{k: s.get(k) for k in ("name", "shape", "dtype")} for s in entry[key]]
                if said != [{k: s[k] for k in ("name", "shape", "dtype")} for s in real[key]]:
                    misses.append(f"{role}: the manifest's {key} {said} are not those of {entry['file']} "
                                  f"{real[key]}")
        shape_in, shape_out = spec_in["shape"], spec_out["shape"]
        if role == "image" and shape_in[-2:] != [manifest["image_size"]] * 2:
            misses.append(f"image: the artifact takes {shape_in[-2:]} images, the manifest's image_size is "
                          f"{manifest['image_size']}")
        if role == "text":
            if shape_in[-1] != tok["context_length"]:
                misses.append(f"text: the artifact takes {shape_in[-1]} tokens, the manifest's context_length is "
                              f"{tok['context_length']}")
            if spec_in["dtype"] != token_dtype:
                misses.append(f"text: the artifact takes {spec_in['dtype']} tokens, the manifest's token_dtype is "
                              f"{token_dtype}")
        if shape_out[-1] != manifest["embed_dim"]:
            misses.append(f"{role}: the artifact gives {shape_out[-1]}-d embeddings, the manifest's embed_dim is "
                          f"{manifest['embed_dim']}")
    return misses


def _parity(directory: Path, manifest: dict, src: ExportSource, batches, images) -> dict:
    """The parity report of the bundle in ``directory`` (written nowhere: the caller decides where)."""
    from .parity import check_inputs, parity_prompts, synthetic_images

    arts = manifest["artifacts"]
    precision = {t: arts[t]["precision"] for t in ("image", "text")}
    bundle_pre, bundle_tok, build_misses = _bundle_inputs(directory, manifest)
    pil = (images or [])[:6] + synthetic_images(6)   # the synthetic ones include non-square pictures
    inputs = check_inputs(pil, parity_prompts(src.tokenizer, 8), src.preprocess, src.tokenizer, bundle_pre,
                          bundle_tok)
    inputs["misses"] = build_misses + _manifest_checks(directory, manifest, src) + inputs["misses"]
    if arts["image"]["backend"] == "coreml" and sys.platform != "darwin":
        report = _coreml_static_checks(directory, manifest, src, batches)
    else:
        dtype = np.int32 if manifest["tokenizer"].get("token_dtype", "int32") == "int32" else np.int64
        # With the manifest's inputs already wrong, the towers are still compared, on the reference inputs
        # (a wrong context length would not even fit the graph): the report then says what else is off.
        ok = not inputs["misses"]
        report = run_parity(src.model, src.preprocess, src.tokenizer, _tower_runner(directory, arts["image"]),
                            _tower_runner(directory, arts["text"]), batches=batches, images=images,
                            token_dtype=dtype, bundle_preprocess=bundle_pre if ok else None,
                            bundle_tokenizer=bundle_tok if ok else None)
        report["mode"] = "predictions"
        report["misses"] = check(report, precision)
    report["inputs"] = {k: v for k, v in inputs.items() if k != "misses"}
    report["inputs"]["reference"] = "the source's own preprocessing and tokenizer"
    report["inputs"]["bundle"] = (
        "none: the manifest's inputs differ from the source's (see misses); towers compared on the reference inputs"
        if inputs["misses"] else
        "the manifest's preprocessing and tokenizer (as the runtime builds them)" if bundle_tok is not None else
        "the manifest's preprocessing; the source's token ids (the runtime has no HF tokenizer)")
    report["misses"] = inputs["misses"] + report["misses"]
    report["passed"] = not report["misses"]
    report["precision"] = precision
    return report


def _coreml_static_checks(directory: Path, manifest: dict, src: ExportSource, batches) -> dict:
    """Off macOS Core ML cannot predict: check the spec, and run the graph in PyTorch fp16."""
    from .coreml import check_spec, fp16_overflow_check
    from .onnx import ImageTower, TextTower
    from .parity import parity_prompts, synthetic_images

    arts = manifest["artifacts"]
    misses = []
    for t in ("image", "text"):
        misses += [f"{t}: {m}" for m in check_spec(directory / arts[t]["file"], arts[t])]
    n = max(batches)
    x = torch.stack([src.preprocess(im) for im in synthetic_images(n, src.image_size)])
    tokens = src.tokenizer(parity_prompts(src.tokenizer, n))
    fp16 = {}
    for t, tower, inp in (("image", ImageTower(src.model), x), ("text", TextTower(src.model), tokens)):
        fp16[t] = fp16_overflow_check(tower, inp)
        r = fp16[t]
        close = r.get("min_cosine") is None or r["min_cosine"] >= THRESHOLDS["fp16"]["min_cosine"]
        if arts[t]["precision"] != "fp32" and not (r.get("passed", False) and close):
            r = fp16[t]
            misses.append(f"{t}: the graph run in fp16 in PyTorch fails (finite={r.get('finite')}, min cosine "
                          f"{r.get('min_cosine')}, masks {r.get('masks', [])[:3]}); export with --precision fp32")
    return {"mode": "spec+fp16-check (Core ML predictions need macOS)", "image": [], "text": [],
            "fp16_check": fp16, "misses": misses, "top1_agreement": None}


def report_path(bundle: Union[str, Path]) -> Path:
    """Where ``validate`` writes its report by default: beside the bundle, never inside it."""
    bundle = Path(bundle)
    return bundle.parent / f"{bundle.name}.validate.json"


def validate(bundle: Union[str, Path], data: Optional[str] = None, allow_mismatch: bool = False,
             max_batch: int = 32, report: Union[str, Path, None] = None) -> dict:
    """Re-run parity for an existing bundle against its PyTorch source.

    The bundle is only read: the report goes to ``report`` (default :func:`report_path`, beside the
    bundle), written atomically, and is returned. A report path inside the bundle is refused.
    """
    from mobileclip.checkpoint import atomic_write_json

    bundle = Path(bundle)
    out = Path(report) if report else report_path(bundle)
    if out.resolve().is_relative_to(bundle.resolve()):
        raise ConfigError(f"the validation report {str(out)!r} would be written inside the bundle, which validate "
                          "never modifies; give a path outside it")
    manifest = load_manifest(bundle)
    src = load_source(manifest["source"])
    fixed = _fixed_batch(manifest["artifacts"]["image"])
    result = _parity(bundle, manifest, src, _batches(fixed, max_batch), _images(data, max_batch))
    result["bundle"] = str(bundle)
    atomic_write_json(out, result)
    result["report_path"] = str(out)
    if not result["passed"] and not allow_mismatch:
        hint = ""
        if src.kind == "mobileclip" and "architecture" not in manifest["source"] and not Path(
                manifest["source"]["model"]).is_dir():
            hint = (" (this bundle was exported before bundles recorded their network: if the registered "
                    f"{manifest['source']['model']!r} has changed since — mobileclip-s0 and mobileclip-b became "
                    "Apple's exact networks — its reference is another model; re-export the bundle)")
        raise ParityError(f"{bundle}: parity check failed: " + "; ".join(result["misses"]) + hint
                          + f" (report: {out})", result)
    return result
