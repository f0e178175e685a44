"""``mobileclip export`` / ``mobileclip validate``: build a bundle and prove it matches PyTorch."""
from __future__ import annotations

import json
import math
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from mobileclip import backends
from mobileclip.backends import BackendUnavailable, ExportOptions
from mobileclip.backends.bundle import FORMAT_VERSION, BundleError, load_manifest, signature_misses, write_manifest
from mobileclip.errors import ConfigError, MobileCLIPError
from mobileclip.files import replace_dir, temp_dir_for

from .source import ExportSource, load_source, resolve_spec, token_rows
from .parity import ParityError, check, run_parity


# ------------------------------------------------------------------ inputs

# --data images read for top-1 agreement at most (its steps are then 1 / the number read).
AGREEMENT_IMAGES = 1000


def _images(data: Optional[str], limit: int = AGREEMENT_IMAGES) -> Optional[dict]:
    """The readable images of ``data`` (an image folder), at most ``limit``, with the folder's class names."""
    if not data:
        return None
    from mobileclip.data import ImageFolderDataset
    from mobileclip.transforms import IMAGE_READ_ERRORS, load_image

    ds = ImageFolderDataset(data)
    out = []
    for p, _ in ds.samples:
        if len(out) >= limit:
            break
        try:
            out.append(load_image(p))
        except IMAGE_READ_ERRORS:  # unreadable image: skipped
            continue
    return {"images": out, "classnames": list(ds.classnames)} if out else None


def _batches(fixed: int, max_batch: int) -> tuple:
    return (fixed,) if fixed else (1, max(2, max_batch // 4), max_batch)


# ------------------------------------------------------------------ export

def _check_args(fmt: str, o: ExportOptions, out: Path, overwrite: bool) -> None:
    backend = backends.get(fmt)   # an unknown format names the known ones
    if o.precision not in backend.precisions:
        raise ConfigError(f"precision {o.precision!r} is not available for {fmt}; choose from {list(backend.precisions)}")
    if o.token_dtype not in ("int32", "int64"):
        raise ConfigError(f"token dtype {o.token_dtype!r}: choose int32 or int64")
    if o.max_batch < 1 or o.fixed_batch < 0:
        raise ConfigError("--max-batch must be >= 1 and --fixed-batch >= 0")
    backend.check_options(o)   # a wrong option first: it is wrong whatever the policy
    if o.exact_gelu and not (fmt in ("onnx", "ort", "web") and o.precision == "int8"
                             and backend.int8_method(o) == "static"):
        raise ConfigError("--exact-gelu applies to static int8 for ONNX Runtime only (--format onnx, ort or web with "
                          "--precision int8 --calib DIR): the other recipes have no int8 GELU to keep in float")
    why = backend.int8_refusal(o)
    if why:
        method = backend.int8_method(o)
        other = [m for m in backend.int8_methods if m != method and m not in backend.int8_refused]
        instead = (f"--quant {other[0]}" + (" (without --calib)" if other[0] == "dynamic" else " --calib DIR")
                   if other else "--precision fp16")
        raise ConfigError(f"{backend.label or fmt} {method} int8 is refused by default: {why}; pass "
                          "--accept-int8-loss to export it anyway (then measure it on your data: `mobileclip bench "
                          f"BUNDLE --model SOURCE --eval DIR`), or use {instead}")
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
           pretrained: Optional[str] = None, accept_int8_loss: bool = False, exact_gelu: bool = False) -> dict:
    """Export ``model`` to a bundle in ``out`` and check it against PyTorch.

    ``model``: a registry name (random weights at ``seed``, or ``pretrained=`` weights: one of our
    checkpoints, Apple's ``mobileclip_*.pt`` or an open_clip MobileCLIP/MobileCLIP2 file), a
    checkpoint directory, ``open_clip:<arch>[:<tag or file>]`` or ``hf:<CLIPModel directory>``.
    """
    out = Path(out)
    options = ExportOptions(precision=precision, fixed_batch=fixed_batch, max_batch=max_batch, exporter=exporter,
                            token_dtype=token_dtype, calib=calib, calib_size=calib_size, quant=quant,
                            compress=compress, seed=seed, workspace_gb=workspace_gb, timing_cache=timing_cache,
                            accept_int8_loss=accept_int8_loss, exact_gelu=exact_gelu)
    _check_args(fmt, options, out, overwrite)
    backend = backends.get(fmt)
    backend.prepare_export()   # a clear error where the format's tools (or a GPU) are missing, before any work
    src = load_source(resolve_spec(model, seed, pretrained))
    from mobileclip.reparam import unfolded_branches

    if unfolded_branches(src.model):
        raise RuntimeError(f"train-time branches left after reparameterization: {unfolded_branches(src.model)[:5]}")
    tmp = temp_dir_for(out)
    try:
        t0 = time.time()
        arts = backend.export(src, tmp, options)
        for f in src.tokenizer_files:
            shutil.copy(f, tmp / Path(f).name)
        manifest = _manifest(src, arts, token_dtype, time.time() - t0)
        if accept_int8_loss and (why := backend.int8_refusal(replace(options, accept_int8_loss=False))):
            manifest["int8_loss_accepted"] = why   # exported past the default refusal: the bundle says so
        _portable_tokenizer(tmp, manifest["tokenizer"])
        if fmt == "web":   # the page reads the manifest's sha256s: sign the bundle before the browser opens it
            write_manifest(tmp, manifest)
        report = _parity(tmp, manifest, src, _batches(fixed_batch, max_batch), _images(data))
        (tmp / "parity.json").write_text(json.dumps(report, indent=2) + "\n")
        manifest["parity"] = _parity_summary(report)
        write_manifest(tmp, manifest)
        replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not report["passed"] and not allow_mismatch:
        raise ParityError(f"{out}: parity check failed: " + "; ".join(report["misses"]), report)
    return manifest


def _portable_tokenizer(directory: Path, info: dict) -> None:
    """A CLIP BPE bundle also carries ``tokenizer.json`` (Hugging Face ``tokenizers`` format) for apps
    in Swift, Kotlin or JS; the vocabulary file stays for the pure-Python tokenizer."""
    from mobileclip.runtime.hf_tokenizer import MANIFEST_KEY, TOKENIZER_JSON
    from mobileclip.runtime.tokenizer_json import write_tokenizer_json

    if info.get("name") != "clip-bpe":
        return
    write_tokenizer_json(directory / info["vocab_file"], info["context_length"], directory / TOKENIZER_JSON,
                         pad_id=info.get("pad_id", 0), lowercase=info.get("lowercase", True))
    info[MANIFEST_KEY] = TOKENIZER_JSON


def _manifest(src: ExportSource, arts: dict, token_dtype: str, seconds: float) -> dict:
    from mobileclip.version import __version__

    tools = {"mobileclip": __version__, "torch": torch.__version__}
    for mod in ("onnx", "onnxruntime", "coremltools", "tensorrt", "litert_torch", "ai_edge_litert", "executorch"):
        m = sys.modules.get(mod)
        if m is not None and hasattr(m, "__version__"):
            tools[mod] = m.__version__
    return {
        "format_version": FORMAT_VERSION, "model": src.name, "source": src.spec, "source_kind": src.kind,
        "embed_dim": src.embed_dim, "image_size": src.image_size, "mean": list(src.mean), "std": list(src.std),
        "resize": src.resize, "preprocess_from": src.preprocess_from,
        "tokenizer": dict(src.tokenizer_info, token_dtype=token_dtype,
                          **({"vocab_size": rows} if (rows := token_rows(src.model)) else {})),
        "logit_scale": src.logit_scale, "artifacts": arts, "tools": tools, "export_seconds": round(seconds, 2),
    }


# ------------------------------------------------------------------ parity

def _parity_summary(report: dict) -> dict:
    out = {k: report[k] for k in ("passed", "misses", "top1_agreement", "mode") if k in report}
    if "browser" in report:
        b = report["browser"]
        out["browser"] = {"skipped": b["skipped"]} if "skipped" in b else {
            k: b[k] for k in ("chromium", "onnxruntime_web", "tokens_equal", "top1_agreement") if k in b}
        for t in ("image", "text"):
            if t in b:
                out["browser"][f"{t}_min_cosine"] = b[t]["min_cosine"]
    return out


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
    rows = token_rows(src.model)
    if "vocab_size" in tok and tok["vocab_size"] != rows:   # absent in bundles exported before it was recorded
        misses.append(f"the manifest's tokenizer.vocab_size is {tok['vocab_size']}, the source's text tower "
                      f"has {rows} token embeddings")
    if not math.isclose(manifest["logit_scale"], src.logit_scale, rel_tol=1e-5):
        misses.append(f"the manifest's logit_scale is {manifest['logit_scale']}, the source's {src.logit_scale}")
    for role in ("image", "text"):
        entry = manifest["artifacts"][role]
        read_io = backends.get(entry["backend"]).read_io
        if read_io is not None:   # the file's own signature against what the manifest says of it
            try:
                real = read_io(directory, entry)
            except (BackendUnavailable, MobileCLIPError):
                raise
            except Exception as e:   # the engine's own parser on a damaged file (flatbuffer, protobuf, ...)
                first = (str(e).strip().splitlines() or [""])[0][:200]
                raise BundleError(f"{role}: {entry['backend']} cannot read {entry['file']!r} of {str(directory)!r} "
                                  f"({type(e).__name__}: {first}); the file is damaged - re-export the bundle") from e
            for key in ("inputs", "outputs"):
                said = [{k: s.get(k) for k in ("name", "shape", "dtype")} for s in entry[key]]
                if said != [{k: s[k] for k in ("name", "shape", "dtype")} for s in real[key]]:
                    misses.append(f"{role}: the manifest's {key} {said} are not those of {entry['file']} "
                                  f"{real[key]}")
    return misses + signature_misses(manifest)


def _parity(directory: Path, manifest: dict, src: ExportSource, batches, data: Optional[dict]) -> dict:
    """The parity report of the bundle in ``directory`` (written nowhere: the caller decides where)."""
    from .parity import check_inputs, parity_prompts, synthetic_images

    arts = manifest["artifacts"]
    precision = {t: arts[t]["precision"] for t in ("image", "text")}
    backend = backends.get(arts["image"]["backend"])
    # The bundle as the runtime and bench open it (mobileclip.runtime.open_bundle): what cannot be built from the
    # manifest is a miss; a Hugging Face tokenizer is left out (the runtime has none): the text side then gets
    # the source's ids.
    from mobileclip.runtime.core import open_bundle

    opened = open_bundle(directory, device=backend.parity_device, strict=False, manifest=manifest, hf_tokenizer=None)
    bundle_pre, bundle_tok, build_misses = opened.preprocess, opened.tokenizer, list(opened.problems.values())
    images = data["images"] if data else None
    pil = (images or [])[:6] + synthetic_images(6)   # the synthetic ones include non-square pictures
    inputs = check_inputs(pil, parity_prompts(src.tokenizer, 8), src.preprocess, src.tokenizer, bundle_pre,
                          bundle_tok)
    inputs["misses"] = build_misses + _manifest_checks(directory, manifest, src) + inputs["misses"]
    runners = opened.runners
    why = backend.unavailable()
    if why and backend.static_parity is None:
        raise BackendUnavailable(f"cannot check the {backend.name} bundle here: {why}")
    if why:   # e.g. Core ML off macOS: the spec, and the graph run in fp16 in PyTorch
        from .parity import THRESHOLDS

        n = max(batches)
        x = torch.stack([src.preprocess(im) for im in synthetic_images(n, src.image_size)])
        tokens = src.tokenizer(parity_prompts(src.tokenizer, n))
        report = backend.static_parity(directory, manifest, src.model, x, tokens, THRESHOLDS["fp16"]["min_cosine"])
    else:
        dtype = np.int32 if manifest["tokenizer"].get("token_dtype", "int32") == "int32" else np.int64
        # With the manifest's inputs already wrong, the towers are still compared, on the reference inputs
        # (a wrong context length would not even fit the graph): the report then says what else is off.
        ok = not inputs["misses"]
        try:
            report = run_parity(src.model, src.preprocess, src.tokenizer, runners["image"], runners["text"],
                                batches=batches, images=images, token_dtype=dtype,
                                classnames=data["classnames"] if data else None,
                                bundle_preprocess=bundle_pre if ok else None,
                                bundle_tokenizer=bundle_tok if ok else None)
        finally:
            for r in runners.values():
                r.deactivate()
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
    if arts["image"]["backend"] == "web":   # the bundle's own app in headless Chromium (skipped where there is none)
        from .browser import browser_parity

        report["browser"] = browser_parity(directory, manifest, src, data)
        report["misses"] += report["browser"]["misses"]
    report["passed"] = not report["misses"]
    report["precision"] = precision
    return report


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
    fixed = backends.runner_for(bundle, manifest["artifacts"]["image"]).fixed_batch
    result = _parity(bundle, manifest, src, _batches(fixed, max_batch), _images(data))
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
