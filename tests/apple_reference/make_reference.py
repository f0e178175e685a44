"""Regenerate ``reference.npz`` (and ``layouts.json.gz``) here by running Apple's own MobileCLIP model code.

    # with a checkout of github.com/apple/ml-mobileclip that you already have:
    .venv/bin/python tests/apple_reference/make_reference.py --apple-src /path/to/ml-mobileclip --check
    # or let the script fetch it (git, network) into a temporary folder, at the pinned commit:
    .venv/bin/python tests/apple_reference/make_reference.py --check

``--check`` compares what Apple's code computes now with the committed files and writes nothing (exit status 1
when they differ by more than ``--tol``); without it, ``reference.npz`` and ``layouts.json.gz`` are written to
``--out-dir`` (default: this folder). None of Apple's code is stored in this repository: it is fetched (or
pointed to) at generation time and imported from there, in this process only.

What it does, per model (``mobileclip_s0``, ``_s1``, ``_s2``, ``_b``), as README.md here describes:
``create_model_and_transforms(name, reparameterize=False)`` from Apple's ``mobileclip`` package; its
``state_dict()`` gives the layout ``[name, shape, dtype]``; the weights of ``recipe.py`` (this folder) are loaded
with ``strict=True``; ``eval()``; ``encode_image(recipe.fixed_images(S), normalize=True)`` (S = 256, 224 for B,
from Apple's config) and ``encode_text(recipe.fixed_tokens(), normalize=True)`` under ``torch.no_grad()``; then
Apple's ``reparameterize_model`` and the same two calls (``<model>/image_reparam``, ``<model>/text_reparam``).

Apple's package is also named ``mobileclip``: run this script as its own process (it refuses to run if the
``mobileclip`` it imports is not the one under ``--apple-src``). It needs torch, torchvision and timm (Apple's
code imports them), nothing of this project but ``recipe.py``.
"""
from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
APPLE_REPO = "https://github.com/apple/ml-mobileclip"
APPLE_COMMIT = "4144bb1f081a6bcb9bc9e6552dee3b29a9ef9855"   # the commit the committed reference was made from
MODELS = ("mobileclip_s0", "mobileclip_s1", "mobileclip_s2", "mobileclip_b")
# The committed file is reproduced bit for bit by torch's AVX2 kernels on 2 threads (it was made on a 2-core CPU,
# evidently without AVX-512). The deep, randomly weighted towers amplify rounding: with an AVX-512 CPU's own kernels
# S2's image embedding moves by ~4e-6, and by ~3e-6 between 1 and 2 threads. These variables choose the kernels
# (read when torch starts: set before it is imported).
KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def fetch_apple(into: Path, commit: str, repo: str = APPLE_REPO) -> Path:
    """A shallow fetch of Apple's repository at ``commit`` into ``into`` (git, and network for GitHub)."""
    into.mkdir(parents=True, exist_ok=True)
    for cmd in (["git", "init", "-q"], ["git", "remote", "add", "origin", repo],
                ["git", "fetch", "-q", "--depth", "1", "origin", commit], ["git", "checkout", "-q", "FETCH_HEAD"]):
        subprocess.run(cmd, cwd=into, check=True)
    return into


def source_commit(src: Path) -> str | None:
    """The commit a checkout is at, or None when ``src`` is not the top of a git work tree."""
    r = subprocess.run(["git", "rev-parse", "--show-toplevel", "HEAD"], cwd=src, capture_output=True, text=True)
    lines = r.stdout.split()
    if r.returncode != 0 or len(lines) != 2 or Path(lines[0]).resolve() != src.resolve():
        return None
    return lines[1]


def import_apple(src: Path):
    """Apple's ``mobileclip`` package from ``src`` (the repository root, which holds ``mobileclip/``)."""
    if not (src / "mobileclip" / "__init__.py").is_file():
        sys.exit(f"make_reference: {src} holds no mobileclip/__init__.py; give the root of an ml-mobileclip "
                 "checkout")
    sys.path.insert(0, str(src))
    for name in [m for m in sys.modules if m == "mobileclip" or m.startswith("mobileclip.")]:
        del sys.modules[name]
    import mobileclip   # Apple's
    from mobileclip.modules.common.mobileone import reparameterize_model

    where = Path(mobileclip.__file__).resolve()
    if src.resolve() not in where.parents:
        sys.exit(f"make_reference: `import mobileclip` gave {where}, not Apple's package under {src}; run this "
                 "script as its own process")
    return mobileclip, reparameterize_model


def load_recipe():
    spec = importlib.util.spec_from_file_location("apple_recipe", HERE / "recipe.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def generate(src: Path, threads: int = 2) -> tuple[dict, dict]:
    """``(layouts, arrays)``: Apple's state-dict layouts and its embeddings on the recipe, for every model."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    apple, reparameterize_model = import_apple(src)
    recipe = load_recipe()
    layouts, arrays = {}, {}
    for name in MODELS:
        model, _, _ = apple.create_model_and_transforms(name, reparameterize=False)
        layout = [[k, list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in model.state_dict().items()]
        model.load_state_dict(recipe.state_dict_for(layout), strict=True)
        model.eval()
        with open(src / "mobileclip" / "configs" / f"{name}.json") as f:
            size = json.load(f)["image_cfg"]["image_size"]
        images, tokens = recipe.fixed_images(size), recipe.fixed_tokens()
        for suffix, m in (("", model), ("_reparam", None)):
            if m is None:
                m = reparameterize_model(model)
                m.eval()
            with torch.no_grad():
                arrays[f"{name}/image{suffix}"] = m.encode_image(images, normalize=True).numpy()
                arrays[f"{name}/text{suffix}"] = m.encode_text(tokens, normalize=True).numpy()
        layouts[name] = layout
        print(f"{name}: {len(layout)} tensors, image {size} px", file=sys.stderr)
    return layouts, arrays


def compare(layouts: dict, arrays: dict, tol: float) -> bool:
    """Print how far the new arrays and layouts are from the committed ones; True when within ``tol``."""
    with gzip.open(HERE / "layouts.json.gz", "rt") as f:
        old_layouts = json.load(f)
    old = dict(np.load(HERE / "reference.npz"))
    ok = True
    if old_layouts != layouts:
        ok = False
        print("layouts differ from layouts.json.gz:", [n for n in MODELS if old_layouts.get(n) != layouts.get(n)])
    else:
        print("layouts: identical to layouts.json.gz")
    if sorted(old) != sorted(arrays):
        ok = False
        print("arrays differ in their names:", sorted(set(old) ^ set(arrays)))
    for key in sorted(set(old) & set(arrays)):
        a, b = old[key], arrays[key]
        if a.shape != b.shape or a.dtype != b.dtype:
            ok = False
            print(f"{key}: {b.dtype} {list(b.shape)} now, {a.dtype} {list(a.shape)} in reference.npz")
            continue
        diff = float(np.abs(a - b).max())
        ok &= diff <= tol
        print(f"{key}: max |new - committed| = {diff:.3g}" + ("  (bit-identical)" if np.array_equal(a, b) else ""))
    return ok


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--apple-src", type=Path, help="root of an apple/ml-mobileclip checkout (default: fetch it)")
    ap.add_argument("--commit", default=APPLE_COMMIT, help="the commit to fetch when --apple-src is not given")
    ap.add_argument("--repo", default=APPLE_REPO, help="where to fetch it from (a mirror's URL or path)")
    ap.add_argument("--out-dir", type=Path, default=HERE, help="where to write reference.npz and layouts.json.gz")
    ap.add_argument("--check", action="store_true", help="compare with the committed files; write nothing")
    ap.add_argument("--tol", type=float, default=1e-5,
                    help="largest difference --check accepts (default: the tests' own tolerance; see README.md)")
    ap.add_argument("--kernels", choices=("avx2", "native"), default="avx2",
                    help="avx2 (default): torch's AVX2 kernels, as the committed file was made; native: this CPU's")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2, as the committed file; 0: "
                                                          "torch's default)")
    args = ap.parse_args(argv)
    if "torch" in sys.modules and args.kernels == "avx2":
        sys.exit("make_reference: torch was imported before the kernels could be chosen; run the script itself")
    if args.kernels == "avx2":
        for key, value in KERNELS.items():
            os.environ.setdefault(key, value)
    with tempfile.TemporaryDirectory() as tmp:
        src = args.apple_src or fetch_apple(Path(tmp) / "ml-mobileclip", args.commit, args.repo)
        at = source_commit(src)
        if at is not None and at != APPLE_COMMIT:
            print(f"note: {src} is at {at}; the committed reference was made at {APPLE_COMMIT}", file=sys.stderr)
        layouts, arrays = generate(src.resolve(), args.threads)
    if args.check:
        ok = compare(layouts, arrays, args.tol)
        print("matches the committed reference" if ok else "DIFFERS from the committed reference")
        return 0 if ok else 1
    args.out_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out_dir / "reference.npz", **arrays)
    text = json.dumps(layouts, separators=(",", ":")).encode()
    with open(args.out_dir / "layouts.json.gz", "wb") as raw, \
            gzip.GzipFile("layouts.json", "wb", fileobj=raw, mtime=0) as f:   # no timestamp: the same bytes each run
        f.write(text)
    print(f"wrote {args.out_dir / 'reference.npz'} and {args.out_dir / 'layouts.json.gz'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
