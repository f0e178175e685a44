"""Released weights: conversion checks against Apple's and open_clip's own code, and S0 exported from a
converted Apple checkpoint (parity and latency).

    .venv/bin/python -m mobileclip.benchmarks.released [--open-clip fast|all|none] [--no-export]
        [--threads 2] [--out benchmarks/results]

Run from a checkout: it reads the reference that Apple's ``ml-mobileclip`` code produced
(``tests/apple_reference``: the state-dict layouts of S0/S1/S2/B and Apple's embeddings on fixed
inputs, with the weight recipe). No released weights can be downloaded here, so every check
uses the recipe's deterministic weights in Apple's (or open_clip's) exact layout.

1. Apple ``mobileclip_*.pt`` → ``create_model(name, pretrained=file)``: keys, seconds, and the
   max-abs difference of the normalized embeddings from Apple's, plain and reparameterized.
2. open_clip MobileCLIP/MobileCLIP2 files → ours, against open_clip's own model (``fast``: S1, B,
   MobileCLIP2-S0; ``all``: the nine configs, ~4 min more).
3. ``mobileclip export mobileclip-s0 --pretrained mobileclip_s0.pt``: ONNX fp32 and int8 (static
   QDQ image tower calibrated on synthetic images, dynamic text tower): parity, size, and ONNX
   Runtime CPU latency at batch 1 next to PyTorch eager, interleaved rounds.

Writes ``released.json`` and ``released.md``.
"""
from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

APPLE = {"mobileclip_s0": "mobileclip-s0", "mobileclip_s1": "mobileclip-s1", "mobileclip_s2": "mobileclip-s2",
         "mobileclip_b": "mobileclip-b"}
FAST_OPEN_CLIP = ["MobileCLIP-S1", "MobileCLIP-B", "MobileCLIP2-S0"]


def _reference_dir() -> Path:
    here = Path(__file__).resolve().parent.parent / "tests" / "apple_reference"
    if not (here / "reference.npz").is_file():
        sys.exit(f"released: {here} is missing; run this benchmark from a checkout of the repository")
    return here


def _recipe(ref: Path):
    spec = importlib.util.spec_from_file_location("apple_recipe", ref / "recipe.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _embed(model, recipe, size: int, context: int = 77):
    with torch.no_grad():
        return (model.encode_image(recipe.fixed_images(size)).numpy(),
                model.encode_text(recipe.fixed_tokens(context)).numpy())


def apple_table(work: Path, recipe, ref: Path) -> list:
    from mobileclip.factory import create_model
    from mobileclip.reparam import reparameterize

    with gzip.open(ref / "layouts.json.gz", "rt") as f:
        layouts = json.load(f)
    want = dict(np.load(ref / "reference.npz"))
    rows = []
    for apple, ours in APPLE.items():
        path = work / f"{apple}.pt"
        torch.save(recipe.state_dict_for(layouts[apple]), path)
        t0 = time.perf_counter()
        model, _, _ = create_model(ours, pretrained=path)
        seconds = time.perf_counter() - t0
        img, txt = _embed(model, recipe, model.image_size)
        fast = reparameterize(model)
        img_r, txt_r = _embed(fast, recipe, model.image_size)
        rows.append({
            "source": f"Apple {apple}.pt", "model": ours, "source_keys": len(layouts[apple]),
            "model_keys": len(model.state_dict()), "load_s": round(seconds, 2),
            "image_max_abs": float(np.abs(img - want[f"{apple}/image"]).max()),
            "text_max_abs": float(np.abs(txt - want[f"{apple}/text"]).max()),
            "image_max_abs_reparam": float(np.abs(img_r - want[f"{apple}/image_reparam"]).max()),
            "text_max_abs_reparam": float(np.abs(txt_r - want[f"{apple}/text_reparam"]).max()),
        })
        print(rows[-1])
        if apple == "mobileclip_b":   # what timm's B (stem padding 0, LayerNorm eps 1e-6) would give instead
            timm_b, _, _ = create_model("mobileclip2-b")
            timm_b.load_state_dict(model.state_dict())
            img_t, _ = _embed(timm_b, recipe, 224)
            rows[-1]["note"] = (f"timm's vit_base_mci_224 with the same weights: image max-abs "
                                f"{float(np.abs(img_t - want['mobileclip_b/image']).max()):.2e}")
        if apple != "mobileclip_s0":
            path.unlink()
    return rows


def open_clip_table(work: Path, recipe, archs: list) -> list:
    import open_clip
    from safetensors.torch import save_file

    from mobileclip.factory import create_model

    from mobileclip.reparam import reparameterize
    from mobileclip.convert import OPEN_CLIP_ARCHS

    rows = []
    for arch in archs:
        ref = open_clip.create_model(arch)
        layout = [[k, list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in ref.state_dict().items()]
        state = recipe.state_dict_for(layout, seed=1)
        ref.load_state_dict(state)
        ref.eval()
        path = work / "open_clip_model.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, path)
        del state
        name = OPEN_CLIP_ARCHS[arch]
        twin = "mobileclip2-b" if name == "mobileclip-b" else name   # open_clip runs timm's B
        t0 = time.perf_counter()
        model, _, _ = create_model(twin, pretrained=path)
        seconds = time.perf_counter() - t0
        size = model.image_size
        x, t = recipe.fixed_images(size), recipe.fixed_tokens(model.context_length)
        with torch.no_grad():
            wi, wt = ref.encode_image(x, normalize=True).numpy(), ref.encode_text(t, normalize=True).numpy()
        img, txt = _embed(model, recipe, size, model.context_length)
        img_r, txt_r = _embed(reparameterize(model), recipe, size, model.context_length)
        row = {"source": f"open_clip {arch}", "model": twin, "source_keys": len(layout),
               "model_keys": len(model.state_dict()), "load_s": round(seconds, 2),
               "image_max_abs": float(np.abs(img - wi).max()), "text_max_abs": float(np.abs(txt - wt).max()),
               "image_max_abs_reparam": float(np.abs(img_r - wi).max()),
               "text_max_abs_reparam": float(np.abs(txt_r - wt).max())}
        if twin != name:
            apple_b, _, _ = create_model(name, pretrained=path)
            img_b, _ = _embed(apple_b, recipe, size)
            row["note"] = (f"compared as mobileclip2-b (timm's B, what open_clip runs); loaded as mobileclip-b "
                           f"(Apple's B) the image differs by {float(np.abs(img_b - wi).max()):.2e}")
        rows.append(row)
        print(row)
        del ref, model
        path.unlink()
    return rows


def export_s0(work: Path, threads: int, rounds: int, iters: int) -> dict:
    from mobileclip.factory import create_model
    from mobileclip.reparam import reparameterize
    from mobileclip.tokenizer import Tokenizer
    from mobileclip.data import write_synthetic
    from mobileclip.export import export

    from .export_latency import ort_case, time_interleaved

    calib = work / "calib"
    write_synthetic(calib, 64, split="train", image_size=256)
    weights = work / "mobileclip_s0.pt"
    out = {}
    bundles = {}
    for label, kw in (("fp32", {}), ("int8", {"precision": "int8", "calib": str(calib)})):
        t0 = time.time()
        # allow_mismatch: record the numbers whatever they are (int8 on the recipe's random weights is not
        # what int8 does on trained ones; the report says so)
        m = export("mobileclip-s0", work / f"s0-{label}", pretrained=str(weights), max_batch=8, data=str(calib),
                   allow_mismatch=True, **kw)
        parity = json.loads((work / f"s0-{label}" / "parity.json").read_text())
        bundles[label] = work / f"s0-{label}"
        out[label] = {
            "export_s": round(time.time() - t0, 1), "passed": m["parity"]["passed"], "misses": m["parity"]["misses"],
            "top1_agreement": parity["top1_agreement"],
            "image_min_cosine": min(r["min_cosine"] for r in parity["image"]),
            "text_min_cosine": min(r["min_cosine"] for r in parity["text"]),
            "preprocess_max_abs": parity["inputs"]["preprocess_max_abs"],
            "tokens_equal": parity["inputs"]["tokens_equal"],
            "image_mb": (bundles[label] / "image.onnx").stat().st_size / 1e6,
            "text_mb": (bundles[label] / "text.onnx").stat().st_size / 1e6,
        }
        print(label, out[label])
    model = reparameterize(create_model("mobileclip-s0", pretrained=weights)[0])
    img = np.random.default_rng(0).random((1, 3, 256, 256), dtype=np.float32)
    tok = Tokenizer(model.cfg.tokenizer)(["a photo of a red circle next to a blue square"]).numpy()

    def eager(fn, x):
        x = torch.from_numpy(x)

        def run():
            with torch.inference_mode():
                return fn(x)
        return run

    cases = {}
    for tower, x, inp in (("image", img, "image"), ("text", tok.astype(np.int32), "tokens")):
        for label, b in bundles.items():
            cases[f"{tower} ONNX {label}"] = ort_case(b / f"{tower}.onnx", {inp: x}, threads)
        cases[f"{tower} PyTorch eager"] = eager(getattr(model, f"encode_{tower}"),
                                                x.astype(np.int64) if tower == "text" else x)
    out["latency_ms"] = time_interleaved(cases, rounds, iters)
    return out


def _fmt(v: float) -> str:
    return f"{v:.1e}"


def write_report(res: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "released.json").write_text(json.dumps(res, indent=2) + "\n")
    env = res["environment"]
    lines = [
        "# Released weights: conversion checks and S0 from a converted Apple checkpoint", "",
        f"`{res['command']}` on {env['cpu']} ({env['cores']} cores), {env['date']}; torch {env['torch']}, "
        f"timm {env['timm']}, open_clip {env['open_clip']}, onnxruntime {env.get('onnxruntime', '-')}.", "",
        "No released weights can be downloaded here. Every file below is in the exact layout of the release "
        "(Apple's `mobileclip_*.pt` state dict; open_clip's MobileCLIP/MobileCLIP2 state dict) with the "
        "deterministic weights of `tests/apple_reference/recipe.py`. The Apple reference embeddings were "
        "computed once by Apple's own ml-mobileclip code (commit 4144bb1) on those weights; the open_clip "
        "reference is open_clip's own model, run in the same process.", "",
        "## Conversion: max-abs difference of L2-normalized embeddings from the reference", "",
        "| source | loads as | keys (source → ours) | load + convert s | image | text | image, reparameterized "
        "| text, reparameterized |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    notes = []
    for r in res["conversion"]:
        lines.append(f"| {r['source']} | `{r['model']}` | {r['source_keys']} → {r['model_keys']} | {r['load_s']} | "
                     f"{_fmt(r['image_max_abs'])} | {_fmt(r['text_max_abs'])} | "
                     f"{_fmt(r['image_max_abs_reparam'])} | {_fmt(r['text_max_abs_reparam'])} |")
        if r.get("note"):
            notes.append(f"- {r['source']}: {r['note']}.")
    lines += [""] + notes
    if res.get("export"):
        e = res["export"]
        lines += ["", "## `mobileclip export mobileclip-s0 --pretrained mobileclip_s0.pt` (Apple layout)", "",
                  "Parity on 64 synthetic images at batch 1/2/8 (the bundle side uses the manifest's preprocessing "
                  "and tokenizer); int8: image tower static QDQ calibrated on the same synthetic folder, text tower "
                  "dynamic.", "",
                  "| bundle | parity | image min cosine | text min cosine | top-1 agreement | image MB | text MB |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for label in ("fp32", "int8"):
            b = e[label]
            lines.append(f"| ONNX {label} | {'passed' if b['passed'] else 'FAILED'} | {b['image_min_cosine']:.6f} | "
                         f"{b['text_min_cosine']:.6f} | {100 * b['top1_agreement']:.1f}% | {b['image_mb']:.1f} | "
                         f"{b['text_mb']:.1f} |")
        if not e["int8"]["passed"]:
            lines += ["", "The fp32 bundle is exact. The int8 image tower misses the int8 thresholds on these "
                      "weights: the recipe draws every weight at random with layer scales of 0.05-0.15 and "
                      "BatchNorms far from identity, so its activations are unlike a trained model's, and int8 "
                      "parity is a property of the weights (the demo's trained student passes int8 at cosine 0.998; "
                      "the same "
                      "S0 with timm's near-identity initialization at 0.9999, `export_latency.md`). How int8 does "
                      "on Apple's real S0 cannot be measured here; `mobileclip export ... --precision int8` "
                      "reports it on the real file."]
        lines += ["", f"Latency, batch 1, {res['threads']} threads, ms (interleaved rounds):", "",
                  "| case | p50 | p90 | p99 | vs PyTorch eager (p50) |", "|---|---:|---:|---:|---:|"]
        lat = e["latency_ms"]
        for k, v in lat.items():
            base = lat[f"{k.split()[0]} PyTorch eager"]["p50"]
            lines.append(f"| {k} | {v['p50']:.2f} | {v['p90']:.2f} | {v['p99']:.2f} | {v['p50'] / base:.2f}x |")
    (out / "released.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'released.md'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--open-clip", default="fast", choices=["fast", "all", "none"])
    ap.add_argument("--no-export", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import open_clip
    import timm

    from mobileclip.convert import OPEN_CLIP_ARCHS

    from .common import environment

    ref = _reference_dir()
    recipe = _recipe(ref)
    work = Path(tempfile.mkdtemp(prefix="released_"))
    env = environment(torch=torch.__version__, timm=timm.__version__, open_clip=open_clip.__version__)
    rows = apple_table(work, recipe, ref)
    archs = {"fast": FAST_OPEN_CLIP, "all": sorted(OPEN_CLIP_ARCHS), "none": []}[args.open_clip]
    rows += open_clip_table(work, recipe, archs)
    res = {"command": "python -m mobileclip.benchmarks.released " + " ".join(sys.argv[1:]), "environment": env,
           "threads": args.threads, "conversion": rows}
    if not args.no_export:
        import onnxruntime

        env["onnxruntime"] = onnxruntime.__version__
        res["export"] = export_s0(work, args.threads, args.rounds, args.iters)
    write_report(res, Path(args.out))


if __name__ == "__main__":
    main()
