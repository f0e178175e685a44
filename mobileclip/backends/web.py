"""The web backend: a bundle that a browser runs on its own - both towers, the tokenizer and preprocessing client-side.

The bundle is the ``onnx`` backend's towers (same precisions and quantization; onnxruntime-web's WASM backend runs
them) plus a small static app and the JS libraries it needs, copied from the npm registry at pinned versions:

* ``index.html`` + ``app.mjs`` (from ``mobileclip/web_app/``): drop images, type labels or a query, see zero-shot
  scores and ranked images. It checks every file it loads against its sha256 in ``manifest.json`` first, and does
  the manifest's preprocessing in JS (Pillow's resampling reproduced exactly: a PNG gives the Python runtime's
  pixels bit for bit);
* ``vendor/onnxruntime-web/`` - ``ort.wasm.min.mjs``, ``ort-wasm-simd-threaded.mjs`` and ``.wasm`` (the WASM
  backend only; threads where the page is cross-origin isolated);
* ``vendor/tokenizers/tokenizers.min.mjs`` - ``@huggingface/tokenizers``, a pure-JS reader of the bundle's
  ``tokenizer.json`` (the app truncates and pads as open_clip does: that library applies neither).

The vendored files' sha256 are pinned here (:data:`VENDOR`) and checked after every install; the manifest lists them
like every other file. The libraries are installed once with ``npm ci`` from ``web_app/package-lock.json`` (npm checks
each package's registry integrity) into :func:`js_deps_dir`; after that, exports need no network.
``mobileclip serve BUNDLE`` serves the folder on loopback with the headers threaded WASM needs
(:mod:`.web_browser`, which also drives Chromium for the browser parity check).

The Python-side runner is native ONNX Runtime on the same ``.onnx`` files (``mobileclip classify`` and ``bench`` run
a web bundle as an ONNX one); what the browser computes is checked by the export's browser parity.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Optional

import PIL

from .base import Backend, BackendUnavailable, ExportOptions
from .bundle import BundleError
from .onnx import BACKEND as ONNX, OrtRunner, check_options, export_onnx, read_io_file

APP_DIR = Path(__file__).resolve().parent.parent / "web_app"
APP_FILES = ("index.html", "app.mjs")
LOCK_FILES = ("package.json", "package-lock.json")
# Images above this many pixels are refused by the page: 4096 x 4096, the largest canvas Safari allows.
MAX_PIXELS = 16_777_216

# bundle path -> (file under node_modules, its sha256 at the version package-lock.json pins)
VENDOR = {
    "vendor/onnxruntime-web/ort.wasm.min.mjs": (
        "onnxruntime-web/dist/ort.wasm.min.mjs", "c21d9c326d453a4a61398270c804d5979e118540597cb0c07f7b3d64e6098234"),
    "vendor/onnxruntime-web/ort-wasm-simd-threaded.mjs": (
        "onnxruntime-web/dist/ort-wasm-simd-threaded.mjs",
        "30ed0b5cd1182ede931fea448afb567d4dc705ec957af09f108a2be5f770dac3"),
    "vendor/onnxruntime-web/ort-wasm-simd-threaded.wasm": (
        "onnxruntime-web/dist/ort-wasm-simd-threaded.wasm",
        "4b884c203b0fa48d057be3332c65513ff85aa3c5bddd6946acc0fab7ecda001d"),
    "vendor/tokenizers/tokenizers.min.mjs": (
        "@huggingface/tokenizers/dist/tokenizers.min.mjs",
        "258e46332101335ce8d95aed7745b19ac3b46d37f3e159a89cf894c2ea9b1d3a"),
    "vendor/tokenizers/LICENSE": (
        "@huggingface/tokenizers/LICENSE", "c71d239df91726fc519c6eb72d318ec65820627232b2f796219e87dcf35d0ab4"),
}


def js_packages() -> dict:
    """``{package: version}`` that ``web_app/package.json`` pins."""
    return dict(json.loads((APP_DIR / "package.json").read_text())["dependencies"])


def js_deps_dir() -> Path:
    """Where the pinned JS libraries are installed: ``$MOBILECLIP_WEB_DEPS``, else a cache folder named by the
    lock file's hash (a new pin installs beside the old one)."""
    env = os.environ.get("MOBILECLIP_WEB_DEPS")
    if env:
        return Path(env).expanduser()
    from mobileclip.hashing import sha256_file

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "mobileclip" / f"web-{sha256_file(APP_DIR / 'package-lock.json')[:12]}"


def _vendor_problems(modules: Path) -> list:
    """What is wrong with the installed files :data:`VENDOR` copies (empty when all match their pins)."""
    from mobileclip.hashing import sha256_file

    out = []
    for rel, (src, digest) in VENDOR.items():
        p = modules / src
        if not p.is_file():
            out.append(f"{src} is missing")
        elif sha256_file(p) != digest:
            out.append(f"{src} does not match its pinned sha256 (another version, or modified)")
    return out


def ensure_js_deps(install: bool = True) -> Path:
    """The ``node_modules`` folder holding the pinned files, installed with ``npm ci`` when missing."""
    root = js_deps_dir()
    modules = root / "node_modules"
    problems = _vendor_problems(modules)
    if not problems:
        return modules
    if not install:
        raise BackendUnavailable(f"the web app's JS libraries are not installed in {str(root)!r}: {problems[0]}")
    npm = shutil.which("npm")
    if npm is None:
        raise BackendUnavailable(
            f"the web app needs {', '.join(f'{k}@{v}' for k, v in js_packages().items())} from the npm registry, "
            f"and npm is not installed (install Node.js, or put a node_modules folder with them in "
            "$MOBILECLIP_WEB_DEPS/node_modules)")
    root.mkdir(parents=True, exist_ok=True)
    for f in LOCK_FILES:
        shutil.copy(APP_DIR / f, root / f)
    print(f"mobileclip: installing the web app's JS libraries once into {root} (npm ci)", flush=True)
    try:
        run = subprocess.run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--omit=dev"], cwd=root,
                             capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        raise BackendUnavailable(f"npm ci in {str(root)!r} took over 10 minutes; check the network and run it "
                                 "again") from None
    if run.returncode != 0:
        tail = " ".join((run.stderr or run.stdout).split()[-40:])
        raise BackendUnavailable(f"npm ci in {str(root)!r} failed (exit {run.returncode}): {tail}")
    problems = _vendor_problems(modules)
    if problems:
        raise BundleError(f"npm installed the web app's libraries into {str(root)!r}, but {problems[0]}; the pins in "
                          "mobileclip/backends/web.py and web_app/package-lock.json disagree - refusing to ship it")
    return modules


# ------------------------------------------------------------------ export

def web_entry() -> dict:
    """What the page reads from each artifact entry's ``web`` key."""
    return {
        "app": list(APP_FILES),
        "ort": "vendor/onnxruntime-web/ort.wasm.min.mjs",
        "ort_glue": "vendor/onnxruntime-web/ort-wasm-simd-threaded.mjs",
        "ort_wasm": "vendor/onnxruntime-web/ort-wasm-simd-threaded.wasm",
        "tokenizers": "vendor/tokenizers/tokenizers.min.mjs",
        "dependencies": {name: {"version": version, "registry": "npm"} for name, version in js_packages().items()},
        "max_pixels": MAX_PIXELS,
        # The app resamples as this Pillow does (the pass order changed in Pillow 13): the version the reference uses.
        "pillow": PIL.__version__,
        "templates": ["a photo of a {}."],
    }


def export_web(src, out_dir: Path, options: ExportOptions) -> dict:
    """The ONNX towers (as the onnx backend writes them), the app and the vendored JS libraries."""
    if src.tokenizer_info.get("name") != "clip-bpe":
        raise BundleError(f"the web app tokenizes with CLIP's BPE (the bundle's tokenizer.json); {src.name!r} uses "
                          f"a {src.tokenizer_info.get('name')!r} tokenizer, which it does not read")
    modules = ensure_js_deps()
    info = export_onnx(src, out_dir, options)
    for f in APP_FILES:
        shutil.copy(APP_DIR / f, out_dir / f)
    for rel, (path, _) in VENDOR.items():
        (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(modules / path, out_dir / rel)
    web = web_entry()
    for t in ("image", "text"):
        info[t].update(backend="web", web=web)
    return info


def _unavailable() -> Optional[str]:
    return ONNX.unavailable()


def _prepare_export() -> None:
    why = _unavailable()
    if why:
        raise BackendUnavailable(f"cannot export web bundles: {why}")
    ensure_js_deps()


BACKEND = Backend(
    label="Web", name="web", precisions=("fp32", "fp16", "int8"), runtime="onnxruntime", extra="onnx",
    io="host numpy arrays in and out (native ONNX Runtime on the bundle's .onnx files; the browser's own latency: "
       "benchmarks/web_latency.py)",
    summary="a static web app (index.html + app.mjs) running both towers with onnxruntime-web and the tokenizer "
            "with tokenizers.js, client-side",
    export=export_web, runner=OrtRunner, unavailable=_unavailable, check_options=check_options,
    prepare_export=_prepare_export, read_io=read_io_file, int8_refused=ONNX.int8_refused)
