"""Browser parity of a web bundle: headless Chromium runs the bundle's own app against the PyTorch source.

The page is the one a person opens (served by :class:`~mobileclip.backends.web_browser.BundleServer`, files chosen in
its file input), so everything the browser does is under test: the sha256 checks, JPEG/PNG decoding, the manifest's
preprocessing in JS, tokenizers.js on ``tokenizer.json`` with the app's truncation and padding, and both towers in
onnxruntime-web's WASM backend. Checked against the source (PyTorch, on its own preprocessing and tokenizer):

* token ids of the parity prompts (short, padded, and one exactly the context length) equal the source's;
* image and text embeddings within the precision's cosine threshold (:data:`.parity.THRESHOLDS`);
* zero-shot top-1: the page's ``classify`` against PyTorch's, on the same files and classes;
* the page's pixels against the Python runtime's preprocessing of the same files (reported: exact on PNGs);
* the page fetched only files of the bundle.

It also times each tower in the page and in native ONNX Runtime at the same thread count.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .parity import check, class_means, compare, parity_prompts, synthetic_images

# Files the browser check writes: the synthetic pictures and up to this many --data images, as PNG.
DATA_IMAGES = 10
BENCH_RUNS = 10


def write_images(folder: Path, data: Optional[dict], image_size: int) -> list:
    """Real image files for the page: PNGs (lossless, so the page's pixels can equal the runtime's), two JPEGs, one
    PNG with transparency and one JPEG with an EXIF rotation."""
    from PIL import Image

    pil = list((data or {}).get("images", []))[:DATA_IMAGES] + synthetic_images(6, max(64, image_size))
    paths = []
    for i, im in enumerate(pil):
        p = folder / f"img{i:02d}.png"
        im.convert("RGB").save(p)
        paths.append(p)
    for i, im in enumerate(pil[:2]):
        p = folder / f"img{i:02d}.jpg"
        im.convert("RGB").save(p, quality=90)
        paths.append(p)
    rgba = pil[0].convert("RGBA")
    alpha = np.full(rgba.size[::-1], 255, np.uint8)
    alpha[: alpha.shape[0] // 2] = 0           # the top half transparent: composited on white
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(folder / "transparent.png")
    exif = Image.Exif()
    exif[0x0112] = 6                            # orientation: rotate 90 degrees clockwise to view
    pil[1].convert("RGB").save(folder / "rotated.jpg", quality=90, exif=exif)
    return paths + [folder / "transparent.png", folder / "rotated.jpg"]


def bench_image(size: int) -> np.ndarray:
    """``[1, 3, size, size]``: the fixed pseudo-random image the page's ``mobileclip.bench`` times (app.mjs)."""
    img = ((np.arange(3 * size * size, dtype=np.int64) * 2654435761) % 1000) / 1000 - 0.5
    return img.astype(np.float32).reshape(1, 3, size, size)


def native_latency(directory: Path, manifest: dict, threads: int, runs: int) -> dict:
    """p50 ms of each tower in native ONNX Runtime, on the inputs the page's bench uses."""
    from mobileclip.backends import runner_for

    out = {}
    for role, x in (("image", bench_image(manifest["image_size"])), ("text", None)):
        entry = manifest["artifacts"][role]
        runner = runner_for(directory, entry, threads=threads)
        if x is None:
            x = np.zeros((1, manifest["tokenizer"]["context_length"]), np.dtype(entry["inputs"][0]["dtype"]))
        times = []
        with runner:
            for i in range(3 + runs):
                t0 = time.perf_counter()
                runner.infer(x)
                if i >= 3:
                    times.append((time.perf_counter() - t0) * 1e3)
        out[role] = {"p50_ms": float(np.median(times)), "runs": runs}
    return out


@torch.no_grad()
def browser_parity(directory: Path, manifest: dict, src, data: Optional[dict], threads: int = 2,
                   bench_runs: int = BENCH_RUNS) -> dict:
    """The browser section of a web bundle's parity report (``{"skipped": why}`` where Chromium cannot run)."""
    from mobileclip.backends.web_browser import Browser, BundleServer, browser_unavailable, floats
    from mobileclip.data.synthetic import classnames as synthetic_classnames
    from mobileclip.runtime.core import Preprocessor
    from mobileclip.transforms import load_image

    why = browser_unavailable()
    if why:
        return {"skipped": why, "misses": []}
    arts, dim = manifest["artifacts"], manifest["embed_dim"]
    precision = {t: arts[t]["precision"] for t in ("image", "text")}
    prompts = parity_prompts(src.tokenizer, 8)
    labels = list(data["classnames"]) if data else synthetic_classnames()
    templates = ["a photo of a {}."]
    misses, report = [], {"threads": threads}
    with tempfile.TemporaryDirectory(prefix="mobileclip-web-") as tmp:
        files = write_images(Path(tmp), data, manifest["image_size"])
        with BundleServer(directory) as server, Browser() as b:
            report["chromium"] = b.version
            if not b.open(f"{server.url}?threads={threads}"):
                msgs = b.call("mobileclip.messages()")
                return {**report, "misses": [f"browser: the page refused the bundle: {'; '.join(msgs)}"]}
            report["onnxruntime_web"] = b.call("mobileclip.info()")["onnxruntimeWeb"]
            b.choose_files(files)
            refused = b.call("mobileclip.messages()")
            shown = {im["name"]: im for im in b.call("mobileclip.images()")}
            ids = np.asarray(b.call("mobileclip.tokenize(args[0])", prompts))
            text = floats(b.call("mobileclip.encodeTexts(args[0])", prompts), dim)
            classified = b.call("mobileclip.classify(args[0], args[1])", labels, templates)
            report["latency"] = {"browser": {r: {"p50_ms": v["p50_ms"], "runs": v["runs"]} for r, v in
                                             b.call("mobileclip.bench({runs: args[0]})", bench_runs).items()}}
            requests = server.requests
        report["latency"]["native_onnxruntime"] = native_latency(directory, manifest, threads, bench_runs)
        misses += [f"browser: the page refused an image: {m}" for m in refused]
        names = [f.name for f in files if f.name in shown]
        S = manifest["image_size"]
        pixels = np.stack([floats(shown[n]["pixels"], 3 * S * S).reshape(3, S, S) for n in names])
        got_img = np.concatenate([floats(shown[n]["embedding"], dim) for n in names])
        pre = Preprocessor.from_manifest(manifest)
        loaded = [load_image(Path(tmp) / n) for n in names]
        runtime_px = np.stack([pre(im) for im in loaded])
        ref_img = src.model.encode_image(torch.stack([src.preprocess(im) for im in loaded])).numpy()
    diff = np.abs(pixels - runtime_px).reshape(len(names), -1).max(1)
    png = [i for i, n in enumerate(names) if n.endswith(".png")]
    report["pixels"] = {"files": names, "max_abs_vs_runtime": float(diff.max()),
                        "png_exact": int(sum(diff[i] == 0 for i in png)), "png": len(png)}
    ref_tok = src.tokenizer(prompts).numpy()
    report["tokens_equal"] = bool(ids.shape == ref_tok.shape and (ids == ref_tok).all())
    if not report["tokens_equal"]:
        bad = [p for p, a, r in zip(prompts, ids, ref_tok) if not np.array_equal(a, r)]
        misses.append(f"browser: tokenizers.js gives other token ids than the source for {len(bad)} prompts "
                      f"(first: {bad[0][:60]!r})")
    report["image"] = compare(ref_img, got_img)
    report["text"] = compare(src.model.encode_text(torch.from_numpy(ref_tok)).numpy(), text)
    cls_tok = src.tokenizer([t.format(c) for c in labels for t in templates])
    ref_top1 = (ref_img @ class_means(src.model.encode_text(cls_tok).numpy(), len(labels)).T).argmax(1)
    by_name = {c["name"]: c["top1"] for c in classified}
    report["top1_agreement"] = float((ref_top1 == np.asarray([by_name[n] for n in names])).mean())
    # the thresholds every backend's parity holds (one "batch" per tower: every file, every prompt)
    rows = {"image": [dict(report["image"], batch=len(names))], "text": [dict(report["text"], batch=len(prompts))],
            "top1_agreement": report["top1_agreement"], "agreement": {"images": len(names)}}
    misses += [f"browser: {m}" for m in check(rows, precision)]
    listed = set(manifest["files"]) | {"manifest.json", ""}
    outside = sorted({p.split("?")[0].lstrip("/") for _, p, _ in requests} - listed)
    report["requests"] = {"count": len(requests), "outside_bundle": outside}
    if outside:
        misses.append(f"browser: the page fetched files that are not in the bundle: {outside[:5]}")
    report["misses"] = misses
    return report
