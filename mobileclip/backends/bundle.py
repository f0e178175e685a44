"""The bundle: a directory of exported towers plus ``manifest.json``.

The manifest records everything a runtime needs to use the artifacts without the
training code — embed dim, image size, mean/std and the resize/crop rule, the tokenizer
(its vocabulary file is copied into the bundle), context length and token dtype, the
logit scale, each artifact's backend, precision, inputs and outputs — plus tool
versions, a sha256 of every file, and the parity results. Bundles are written to a
temporary directory and renamed into place.

Loading trusts nothing it has not checked (:func:`load_manifest`):

* the manifest is a JSON object of the schema :func:`check_manifest` enforces — types,
  required keys, allowed values, finite positive numbers where a runtime divides or scales;
* every path in it is relative, normalized and inside the bundle; no file of the bundle is
  a symbolic link;
* every file the runtime reads (artifacts, vocabulary) is listed in ``files`` with its
  sha256, every listed file matches, and the bundle holds no file that is not listed.

Nothing here imports torch: the runtime loads bundles through this module.
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path, PurePosixPath
from typing import Union

from mobileclip.errors import MobileCLIPError

# The bundle contract's tensor names: every backend's towers take and give these (and the manifest says so).
IMAGE_IN, TEXT_IN = "image", "tokens"
IMAGE_OUT, TEXT_OUT = "image_embedding", "text_embedding"
TENSOR_NAMES = {"image": (IMAGE_IN, IMAGE_OUT), "text": (TEXT_IN, TEXT_OUT)}
from mobileclip.hashing import sha256_file

from . import REGISTRY

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PRECISIONS = ("fp32", "fp16", "int8")
TOKEN_DTYPES = ("int32", "int64")
RESIZE_MODES = ("shortest", "squash")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
TOKENIZERS = ("clip-bpe", "hf")
# Files an operating system drops into any folder it shows; never read, so never a reason to refuse.
IGNORED_FILES = (".DS_Store", "Thumbs.db", "desktop.ini")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class BundleError(MobileCLIPError):
    """A bundle is missing, incomplete, malformed, or has been modified since it was written."""


def sha256(path: Union[str, Path]) -> str:
    return sha256_file(path)


def bundle_files(directory: Path) -> list:
    """Every regular file under ``directory`` but the manifest, as sorted relative POSIX paths.

    A symbolic link anywhere in the bundle is a :class:`BundleError`: a bundle holds its own files.
    """
    out = []
    for root, dirs, files in os.walk(directory, followlinks=False):
        for name in sorted(dirs + files):
            p = Path(root) / name
            rel = p.relative_to(directory).as_posix()
            if p.is_symlink():
                raise BundleError(f"bundle {str(directory)!r}: {rel!r} is a symbolic link; a bundle holds regular "
                                  "files only (copy the file in, or re-export the bundle)")
            if name in files and rel not in (MANIFEST, f".{MANIFEST}.tmp") and name not in IGNORED_FILES:
                out.append(rel)
    return sorted(out)


def write_manifest(directory: Path, manifest: dict) -> None:
    """Checksum every file in ``directory`` (but the manifest) into the manifest and write it.

    Only for a directory this process has just written (the export's temporary directory): it signs
    whatever is there.
    """
    manifest["files"] = {rel: sha256(directory / rel) for rel in bundle_files(directory)}
    check_manifest(manifest)
    tmp = directory / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, directory / MANIFEST)


# ------------------------------------------------------------------ schema

def _fail(key: str, msg: str) -> None:
    raise BundleError(f"manifest {key}: {msg}; re-export the bundle")


def _get(d: dict, key: str, where: str, types, required: bool = True):
    if key not in d:
        if required:
            _fail(f"{where}{key}", "is missing")
        return None
    v = d[key]
    names = {int: "an integer", float: "a number", str: "a string", dict: "an object", list: "a list",
             bool: "true or false"}
    types = types if isinstance(types, tuple) else (types,)
    ok = isinstance(v, types) and not (isinstance(v, bool) and bool not in types)
    if float in types and isinstance(v, int) and not isinstance(v, bool):
        ok = True
    if not ok:
        _fail(f"{where}{key}", f"must be {' or '.join(names[t] for t in types)}, got {json.dumps(v)[:60]}")
    return v


def _positive_int(d: dict, key: str, where: str, required: bool = True):
    v = _get(d, key, where, int, required)
    if v is not None and v < 1:
        _fail(f"{where}{key}", f"must be a positive integer, got {v}")
    return v


def _finite(d: dict, key: str, where: str, positive: bool = False, required: bool = True):
    v = _get(d, key, where, float, required)
    if v is not None and (not math.isfinite(v) or (positive and v <= 0)):
        _fail(f"{where}{key}", f"must be a finite{' positive' if positive else ''} number, got {v}")
    return v


def _choice(d: dict, key: str, where: str, allowed, required: bool = True):
    v = _get(d, key, where, str, required)
    if v is not None and v not in allowed:
        _fail(f"{where}{key}", f"is {v!r}; allowed: {list(allowed)}")
    return v


def check_relpath(rel, what: str) -> str:
    """A bundle-relative POSIX path that cannot leave the bundle: no absolute path, drive, backslash,
    ``.``/``..`` or empty component. Returns it unchanged; :class:`BundleError` otherwise."""
    if not isinstance(rel, str) or not rel:
        _fail(what, f"must be a non-empty relative path, got {json.dumps(rel)[:60]}")
    parts = rel.split("/")
    if (rel.startswith("/") or "\\" in rel or "\x00" in rel or re.match(r"^[A-Za-z]:", rel)
            or any(p in ("", ".", "..") for p in parts) or PurePosixPath(rel).as_posix() != rel):
        _fail(what, f"{rel!r} is not a plain relative path inside the bundle (no '..', no absolute path)")
    return rel


def _tensor_specs(entry: dict, key: str, where: str) -> None:
    specs = _get(entry, key, where, list)
    if not specs:
        _fail(f"{where}{key}", "must list at least one tensor")
    for i, s in enumerate(specs):
        w = f"{where}{key}[{i}]."
        if not isinstance(s, dict):
            _fail(w[:-1], "must be an object")
        _get(s, "name", w, str)
        shape = _get(s, "shape", w, list)
        for d in shape:
            # ONNX names a dynamic dimension ("batch"); TensorRT writes -1
            if isinstance(d, bool) or not (isinstance(d, str) or (isinstance(d, int) and d >= -1)):
                _fail(f"{w}shape", f"dimensions must be integers >= -1 or names, got {d!r}")
        _get(s, "dtype", w, str)


def check_manifest(manifest) -> dict:
    """Validate a manifest's schema; returns it. :class:`BundleError` names the first key that is wrong."""
    if not isinstance(manifest, dict):
        raise BundleError(f"the manifest must be a JSON object, got a JSON {type(manifest).__name__}; "
                          "re-export the bundle")
    version = _get(manifest, "format_version", "", int)
    if version != FORMAT_VERSION:
        raise BundleError(f"unsupported bundle format {version!r} (this version reads {FORMAT_VERSION}); "
                          "re-export the bundle with this version of mobileclip")
    _get(manifest, "model", "", str)
    _positive_int(manifest, "embed_dim", "")
    _positive_int(manifest, "image_size", "")
    for key in ("mean", "std"):
        v = _get(manifest, key, "", list)
        if len(v) != 3:
            _fail(key, f"needs 3 values (R, G, B), got {len(v)}")
        for i, x in enumerate(v):
            if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or (
                    key == "std" and x <= 0):
                _fail(f"{key}[{i}]", f"must be a finite{' positive' if key == 'std' else ''} number, got "
                                     f"{json.dumps(x)[:60]}")
    resize = _get(manifest, "resize", "", dict)
    _choice(resize, "mode", "resize.", RESIZE_MODES)
    _choice(resize, "interpolation", "resize.", INTERPOLATIONS)
    _choice(resize, "crop", "resize.", ("center",), required=False)
    _finite(manifest, "logit_scale", "", positive=True)
    tok = _get(manifest, "tokenizer", "", dict)
    name = _choice(tok, "name", "tokenizer.", TOKENIZERS)
    _positive_int(tok, "context_length", "tokenizer.")
    _choice(tok, "token_dtype", "tokenizer.", TOKEN_DTYPES, required=False)
    pad = _get(tok, "pad_id", "tokenizer.", int, required=False)
    if pad is not None and pad < 0:
        _fail("tokenizer.pad_id", f"must be >= 0, got {pad}")
    _get(tok, "lowercase", "tokenizer.", bool, required=False)
    if "vocab_size" in tok:   # the text tower's token-embedding rows (recorded since this check exists)
        _positive_int(tok, "vocab_size", "tokenizer.")
    if name == "clip-bpe":
        check_relpath(_get(tok, "vocab_file", "tokenizer.", str), "tokenizer.vocab_file")
        if "tokenizer_json" in tok:
            check_relpath(_get(tok, "tokenizer_json", "tokenizer.", str), "tokenizer.tokenizer_json")
    else:
        for i, f in enumerate(_get(tok, "files", "tokenizer.", list)):
            check_relpath(f, f"tokenizer.files[{i}]")
    arts = _get(manifest, "artifacts", "", dict)
    for role in ("image", "text"):
        entry = _get(arts, role, "artifacts.", dict)
        w = f"artifacts.{role}."
        check_relpath(_get(entry, "file", w, str), f"{w}file")
        _choice(entry, "backend", w, tuple(REGISTRY))   # the registered backends
        _choice(entry, "precision", w, PRECISIONS)
        _tensor_specs(entry, "inputs", w)
        _tensor_specs(entry, "outputs", w)
        if "onnx" in entry:
            check_relpath(_get(entry, "onnx", w, str), f"{w}onnx")
    files = _get(manifest, "files", "", dict)
    for rel, digest in files.items():
        check_relpath(rel, f"files[{rel!r}]")
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            _fail(f"files[{rel!r}]", f"must be a sha256 hex digest, got {json.dumps(digest)[:60]}")
    return manifest


def signature_misses(manifest: dict) -> list:
    """Where the artifact entries' inputs and outputs disagree with the manifest's own image size,
    context length, token dtype and embed dim (empty when they agree). A runtime sizes its inputs from
    the manifest, so each of these would feed a graph what it does not take."""
    misses = []
    tok = manifest["tokenizer"]
    for role in ("image", "text"):
        spec_in, spec_out = (manifest["artifacts"][role][k][0] for k in ("inputs", "outputs"))
        shape_in = spec_in["shape"]
        if role == "image" and shape_in[-2:] != [manifest["image_size"]] * 2:
            misses.append(f"image: the artifact takes {shape_in[-2:]} images, the manifest's image_size is "
                          f"{manifest['image_size']}")
        if role == "text":
            if shape_in[-1] != tok["context_length"]:
                misses.append(f"text: the artifact takes {shape_in[-1]} tokens, the manifest's context_length is "
                              f"{tok['context_length']}")
            if spec_in["dtype"] != tok.get("token_dtype", "int32"):
                misses.append(f"text: the artifact takes {spec_in['dtype']} tokens, the manifest's token_dtype is "
                              f"{tok.get('token_dtype', 'int32')}")
        if spec_out["shape"][-1] != manifest["embed_dim"]:
            misses.append(f"{role}: the artifact gives {spec_out['shape'][-1]}-d embeddings, the manifest's "
                          f"embed_dim is {manifest['embed_dim']}")
    return misses


def files_read(manifest: dict) -> list:
    """The bundle paths a runtime reads: the artifacts (a file, or every listed file of a directory
    artifact such as a Core ML ``.mlpackage``) and the tokenizer's files."""
    tok = manifest["tokenizer"]
    return ([manifest["artifacts"][r]["file"] for r in ("image", "text")]
            + ([tok["vocab_file"]] + ([tok["tokenizer_json"]] if "tokenizer_json" in tok else [])
               if tok["name"] == "clip-bpe" else list(tok["files"])))


# ------------------------------------------------------------------ loading

def load_manifest(directory: Union[str, Path], verify: bool = True) -> dict:
    """Read and validate a bundle's manifest; with ``verify``, check every file against its sha256 and
    refuse files the manifest does not list."""
    directory = Path(directory)
    if not directory.exists():
        raise BundleError(f"bundle {str(directory)!r} does not exist")
    if not directory.is_dir():
        raise BundleError(f"bundle {str(directory)!r} is a file; a bundle is the directory `mobileclip export` "
                          "wrote (it holds manifest.json)")
    mpath = directory / MANIFEST
    if mpath.is_symlink() or (mpath.exists() and not mpath.is_file()):
        raise BundleError(f"{str(mpath)!r} is not a regular file; re-export the bundle")
    if not mpath.is_file():
        raise BundleError(f"{str(directory)!r} is not a bundle (no {MANIFEST}); create one with `mobileclip export`")
    try:
        manifest = json.loads(mpath.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise BundleError(f"{str(mpath)!r} is not UTF-8 text ({e.reason} at byte {e.start}); re-export the "
                          "bundle") from e
    except (json.JSONDecodeError, RecursionError) as e:
        raise BundleError(f"{str(mpath)!r} is not valid JSON ({e}); re-export the bundle") from e
    try:
        check_manifest(manifest)
    except BundleError as e:
        raise BundleError(f"{str(mpath)!r}: {e}") from None
    files = manifest["files"]
    root = directory.resolve()
    for rel in files_read(manifest):
        listed = rel in files or any(f.startswith(rel + "/") for f in files)
        if not listed:
            raise BundleError(f"{str(mpath)!r}: {rel!r} is read by the runtime but has no checksum in 'files'; "
                              "re-export the bundle")
    for rel in files:
        p = directory / rel
        if p.resolve() != root / rel:
            raise BundleError(f"bundle file {rel!r} of {str(directory)!r} leads outside the bundle (through a "
                              "symbolic link); re-export the bundle")
    if verify:
        present = bundle_files(directory)
        unlisted = [f for f in present if f not in files]
        if unlisted:
            raise BundleError(f"bundle {str(directory)!r} holds files its manifest does not list: "
                              f"{', '.join(unlisted[:5])}{' …' if len(unlisted) > 5 else ''}; they were not written "
                              "by `mobileclip export` (remove them, or re-export the bundle)")
        for rel, digest in files.items():
            p = directory / rel
            if not p.is_file():
                raise BundleError(f"bundle file {str(p)!r} is missing; re-export the bundle")
            if sha256(p) != digest:
                raise BundleError(f"bundle file {str(p)!r} does not match its checksum (modified or truncated); "
                                  "re-export the bundle")
    return manifest
