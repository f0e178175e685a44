"""``mobileclip export`` / ``mobileclip validate``: build a bundle and prove it matches PyTorch."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from mobileclip.errors import ConfigError

from mobileclip.checkpoint import replace_dir, temp_dir_for

from .bundle import FORMAT_VERSION, load_manifest, write_manifest
from .validate import ParityError, check, run_parity

FORMATS = {"onnx": ("fp32", "fp16")}  # format -> precisions available today


def load_source(source: dict):
    """The PyTorch reference of a bundle: its checkpoint, or the registry model at its seed."""
    from mobileclip.factory import create_model
    from mobileclip.reparam import reparameterize

    torch.manual_seed(int(source.get("seed", 0)))
    model, preprocess, tokenizer = create_model(source["model"])
    return reparameterize(model, inplace=True), preprocess, tokenizer


def _ort_session(path: Path, precision: str = "fp32"):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    # ORT 1.31 can crash creating an fp16 session with the NCHWc layout transformer (DESIGN.md).
    disabled = ["NchwcTransformer"] if precision == "fp16" else None
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"], disabled_optimizers=disabled)


def _runner(session, name: str, fixed: int = 0):
    """numpy in, numpy out; a fixed-batch artifact is run in chunks, the last one padded."""
    def run(x):
        if not fixed:
            return session.run(None, {name: x})[0]
        outs = []
        for i in range(0, len(x), fixed):
            chunk = x[i:i + fixed]
            pad = fixed - len(chunk)
            if pad:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
            outs.append(session.run(None, {name: chunk})[0][: fixed - pad])
        return np.concatenate(outs)

    return run


def _images(data: Optional[str], n: int):
    if not data:
        return None
    from mobileclip.data import ImageFolderDataset
    from mobileclip.transforms import load_image

    ds = ImageFolderDataset(data)
    return [load_image(p) for p, _ in ds.samples[:n]]


def export(model: str, out: Union[str, Path], fmt: str = "onnx", precision: str = "fp32", fixed_batch: int = 0,
           exporter: str = "dynamo", token_dtype: str = "int32", max_batch: int = 32, data: Optional[str] = None,
           allow_mismatch: bool = False, seed: int = 0) -> dict:
    """Export ``model`` (a registry name, seeded, or a checkpoint directory) to a bundle in ``out``."""
    from mobileclip import __version__
    from mobileclip.reparam import unfolded_branches

    from .onnx import IMAGE_IN, IMAGE_OUT, TEXT_IN, TEXT_OUT, ImageTower, TextTower, export_tower, io_spec, to_fp16

    if fmt not in FORMATS:
        raise ConfigError(f"format {fmt!r} is not available; choose from {sorted(FORMATS)}")
    if precision not in FORMATS[fmt]:
        raise ConfigError(f"precision {precision!r} is not available for {fmt} yet; available: {FORMATS[fmt]}")
    if token_dtype not in ("int32", "int64"):
        raise ConfigError("token dtype must be int32 or int64")
    source = {"model": str(Path(model).resolve()) if Path(model).is_dir() else model, "seed": seed}
    ref, preprocess, tokenizer = load_source(source)
    if unfolded_branches(ref):
        raise RuntimeError(f"train-time branches left after reparameterization: {unfolded_branches(ref)[:5]}")
    cfg = ref.cfg
    out = Path(out)
    tmp = temp_dir_for(out)
    t0 = time.time()
    b = fixed_batch or 2
    s = cfg.image.image_size
    export_tower(ImageTower(ref), torch.rand(b, 3, s, s), tmp / "image.onnx", IMAGE_IN, IMAGE_OUT,
                 dynamic_batch=not fixed_batch, exporter=exporter)
    tok_example = tokenizer(["a photo of a dog", "a cat"] * b)[:b].to(getattr(torch, token_dtype))
    export_tower(TextTower(ref), tok_example, tmp / "text.onnx", TEXT_IN, TEXT_OUT,
                 dynamic_batch=not fixed_batch, exporter=exporter)
    extra = {}
    if precision == "fp16":
        extra = to_fp16(tmp / "image.onnx")
        to_fp16(tmp / "text.onnx")
    shutil.copy(tokenizer.vocab_path, tmp / tokenizer.vocab_path.name)
    import onnx
    import onnxruntime

    manifest = {
        "format_version": FORMAT_VERSION, "model": cfg.name, "source": source, "embed_dim": cfg.embed_dim,
        "image_size": s, "mean": list(cfg.preprocess.mean), "std": list(cfg.preprocess.std),
        "resize": {"mode": cfg.preprocess.resize_mode, "interpolation": cfg.preprocess.interpolation,
                   "crop": "center"},
        "tokenizer": {"name": cfg.tokenizer.name, "vocab_file": tokenizer.vocab_path.name,
                      "context_length": cfg.text.context_length, "token_dtype": token_dtype},
        "logit_scale": float(ref.logit_scale.detach().exp()),
        "artifacts": {
            "image": {"file": "image.onnx", "backend": "onnx", "precision": precision, "exporter": exporter,
                      **io_spec(tmp / "image.onnx"), **extra},
            "text": {"file": "text.onnx", "backend": "onnx", "precision": precision, "exporter": exporter,
                     **io_spec(tmp / "text.onnx"), **extra},
        },
        "tools": {"mobileclip": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
                  "onnxruntime": onnxruntime.__version__},
        "export_seconds": round(time.time() - t0, 2),
    }
    batches = (fixed_batch,) if fixed_batch else (1, max(2, max_batch // 4), max_batch)
    report = _parity(tmp, manifest, ref, preprocess, tokenizer, batches, _images(data, max(batches)))
    manifest["parity"] = {k: report[k] for k in ("passed", "misses", "top1_agreement")}
    write_manifest(tmp, manifest)
    replace_dir(tmp, out)
    if not report["passed"] and not allow_mismatch:
        raise ParityError(f"{out}: parity check failed: " + "; ".join(report["misses"]), report)
    return manifest


def _parity(directory: Path, manifest: dict, ref, preprocess, tokenizer, batches, images) -> dict:
    arts = manifest["artifacts"]
    img = _ort_session(directory / arts["image"]["file"], arts["image"]["precision"])
    txt = _ort_session(directory / arts["text"]["file"], arts["text"]["precision"])
    dtype = np.int32 if manifest["tokenizer"]["token_dtype"] == "int32" else np.int64
    fixed = [d for d in arts["image"]["inputs"][0]["shape"][:1] if isinstance(d, int)]
    fixed = fixed[0] if fixed else 0
    report = run_parity(ref, preprocess, tokenizer, _runner(img, arts["image"]["inputs"][0]["name"], fixed),
                        _runner(txt, arts["text"]["inputs"][0]["name"], fixed), batches=batches, images=images,
                        token_dtype=dtype)
    report["misses"] = check(report, arts["image"]["precision"])
    report["passed"] = not report["misses"]
    report["precision"] = arts["image"]["precision"]
    (directory / "parity.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def validate(bundle: Union[str, Path], data: Optional[str] = None, allow_mismatch: bool = False,
             max_batch: int = 32) -> dict:
    """Re-run parity for an existing bundle against its PyTorch source; rewrites parity.json."""
    bundle = Path(bundle)
    manifest = load_manifest(bundle)
    ref, preprocess, tokenizer = load_source(manifest["source"])
    fixed = [d for d in manifest["artifacts"]["image"]["inputs"][0]["shape"][:1] if isinstance(d, int)]
    batches = (fixed[0],) if fixed else (1, max(2, max_batch // 4), max_batch)
    report = _parity(bundle, manifest, ref, preprocess, tokenizer, batches, _images(data, max(batches)))
    manifest["parity"] = {k: report[k] for k in ("passed", "misses", "top1_agreement")}
    write_manifest(bundle, manifest)
    if not report["passed"] and not allow_mismatch:
        raise ParityError(f"{bundle}: parity check failed: " + "; ".join(report["misses"]), report)
    return report
