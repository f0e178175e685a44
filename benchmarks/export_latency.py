"""Latency of exported towers on ONNX Runtime CPU, side by side in one run.

    .venv/bin/python -m mobileclip.benchmarks.export_latency [--threads 2] [--rounds 5] [--iters 20]
        [--out benchmarks/results]

Batch 1, ``--threads`` intra-op threads, every case timed in interleaved rounds (so drift
on a shared machine hits all cases alike); p50/p90/p99 in ms. Cases:

* ``mobileclip-s0`` towers exported by ``mobileclip export``: fp32, int8 static QDQ
  (image tower, calibrated on synthetic images), int8 dynamic; and PyTorch eager (the
  same reparameterized model, same thread count);
* open_clip ``ViT-B-32`` exported the same way (fp32, int8 dynamic), fp32 after ONNX
  Runtime's transformer fusions (the optimizer behind optimum's ``ORTOptimizer``), and in
  PyTorch eager;
* a transformers ``CLIPModel`` with ViT-B/32 sizes: our export (two towers) against
  optimum-onnx's export of the same model (one graph computing both embeddings), plain
  and after optimum's ``ORTOptimizer`` (level 2 fusions) when optimum-onnx is installed.

Weights are random (speed does not depend on them), so int8 parity is reported as
cosine only. Writes ``export_latency.json`` and ``.md``.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mobileclip import spec as specs


def ort_session(path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def ort_case(path: Path, feeds: dict, threads: int):
    sess = ort_session(path, threads)
    return lambda: sess.run(None, feeds)


def _min_cos(bundle: Path, tower: str) -> float:
    report = json.loads((bundle / "parity.json").read_text())
    return min(r["min_cosine"] for r in report[tower])


def time_interleaved(cases: dict, rounds: int, iters: int, warmup: int = 5) -> dict:
    """Per-case latency percentiles (ms), every case timed in each round in turn."""
    for fn in cases.values():
        for _ in range(warmup):
            fn()
    samples = {k: [] for k in cases}
    for _ in range(rounds):
        for k, fn in cases.items():
            for _ in range(iters):
                t = time.perf_counter()
                fn()
                samples[k].append(1000 * (time.perf_counter() - t))
    return {k: {"p50": float(np.percentile(v, 50)), "p90": float(np.percentile(v, 90)),
                "p99": float(np.percentile(v, 99)), "n": len(v)} for k, v in samples.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import onnxruntime

    from mobileclip.data import write_synthetic
    from mobileclip.export import export
    from mobileclip.export.source import load_source

    from .common import environment

    work = Path(tempfile.mkdtemp(prefix="export_latency_"))
    calib = work / "calib"
    write_synthetic(calib, 64, split="train", image_size=256)
    t0 = time.time()
    # random weights: int8 top-1 agreement is not meaningful; speed is measured whatever the default policy
    kw = dict(max_batch=4, allow_mismatch=True, accept_int8_loss=True)
    print("exporting mobileclip-s0 (fp32, int8 static, int8 dynamic) and open_clip ViT-B-32 (fp32, int8)")
    b = {
        "s0-fp32": export("mobileclip-s0", work / "s0-fp32", **kw),
        "s0-int8-static": export("mobileclip-s0", work / "s0-int8-static", precision="int8", calib=str(calib),
                                 **kw),
        "s0-int8-dynamic": export("mobileclip-s0", work / "s0-int8-dynamic", precision="int8", **kw),
        "vit-fp32": export("open_clip:ViT-B-32", work / "vit-fp32", **kw),
        "vit-int8-dynamic": export("open_clip:ViT-B-32", work / "vit-int8-dynamic", precision="int8", **kw),
    }
    export_s = time.time() - t0

    s0 = load_source({"model": "mobileclip-s0", "seed": 0})
    vit = load_source({"model": "open_clip:ViT-B-32", "seed": 0})
    img256 = np.random.default_rng(0).random((1, 3, 256, 256), dtype=np.float32)
    img224 = np.ascontiguousarray(img256[:, :, :224, :224])
    tok = s0.tokenizer(["a photo of a red circle next to a blue square"]).numpy().astype(np.int32)
    tok77 = vit.tokenizer(["a photo of a red circle next to a blue square"]).numpy().astype(np.int32)

    def eager(model, fn, x):
        x = torch.from_numpy(x).long() if x.dtype == np.int32 else torch.from_numpy(x)

        def run():
            with torch.inference_mode():
                return getattr(model, fn)(x)
        return run

    cases, meta = {}, {}

    def add(key, fn, bundle=None, tower=None, file=None):
        cases[key] = fn
        meta[key] = {}
        if bundle:
            meta[key]["min_cosine"] = _min_cos(work / bundle, tower)
            meta[key]["mb"] = (work / bundle / file).stat().st_size / 1e6

    for tower, x, name, inp in (("image", img256, "image.onnx", "image"), ("text", tok, "text.onnx", "tokens")):
        for bundle in ("s0-fp32", "s0-int8-static", "s0-int8-dynamic"):
            if tower == "text" and bundle == "s0-int8-static":
                continue  # same text tower as int8-dynamic
            label = bundle.replace("s0-", "").replace("-static", " static QDQ").replace("-dynamic", " dynamic")
            add(f"mobileclip-s0 {tower} ONNX {label}", ort_case(work / bundle / name, {inp: x}, args.threads),
                bundle, tower, name)
        add(f"mobileclip-s0 {tower} PyTorch eager", eager(s0.model, f"encode_{tower}", x))
    fusion_notes = []
    for tower, x, name, inp in (("image", img224, "image.onnx", "image"), ("text", tok77, "text.onnx", "tokens")):
        for bundle in ("vit-fp32", "vit-int8-dynamic"):
            label = bundle.replace("vit-", "").replace("-dynamic", " dynamic")
            add(f"ViT-B-32 {tower} ONNX {label}", ort_case(work / bundle / name, {inp: x}, args.threads),
                bundle, tower, name)
        fused = _transformer_fusions(work / "vit-fp32" / name, work / f"vit-{tower}-fused.onnx", fusion_notes)
        if fused is not None:
            add(f"ViT-B-32 {tower} ONNX fp32 + ORT transformer fusions", ort_case(fused, {inp: x}, args.threads))
        add(f"ViT-B-32 {tower} PyTorch eager", eager(vit.model, f"encode_{tower}", x))

    hf_note = _hf_cases(work, add, img224, tok77, args.threads)
    hf_note = " ".join([hf_note] + fusion_notes)
    print(f"timing {len(cases)} cases: {args.rounds} rounds x {args.iters} calls, batch 1, {args.threads} threads")
    stats = time_interleaved(cases, args.rounds, args.iters)
    rows = [{"case": k, **stats[k], **meta[k]} for k in cases]
    for r in rows:
        print(f"{r['case']:48} p50 {r['p50']:8.2f} ms  p90 {r['p90']:8.2f}")

    p = {k: stats[k]["p50"] for k in stats}
    best_int8 = min(p["mobileclip-s0 image ONNX int8 static QDQ"], p["mobileclip-s0 image ONNX int8 dynamic"])
    ratios = {
        "s0 image fp32 / ViT-B-32 image fp32 (goal <= 0.5)":
            p["mobileclip-s0 image ONNX fp32"] / p["ViT-B-32 image ONNX fp32"],
        "s0 image best int8 / ViT-B-32 image fp32 (goal <= 0.25)": best_int8 / p["ViT-B-32 image ONNX fp32"],
        "s0 image int8 static / fp32 (goal <= 0.6)":
            p["mobileclip-s0 image ONNX int8 static QDQ"] / p["mobileclip-s0 image ONNX fp32"],
        "s0 image int8 dynamic / fp32 (goal <= 0.6)":
            p["mobileclip-s0 image ONNX int8 dynamic"] / p["mobileclip-s0 image ONNX fp32"],
        "s0 text int8 / fp32 (goal <= 0.6)":
            p["mobileclip-s0 text ONNX int8 dynamic"] / p["mobileclip-s0 text ONNX fp32"],
        "ViT-B-32 image int8 / fp32": p["ViT-B-32 image ONNX int8 dynamic"] / p["ViT-B-32 image ONNX fp32"],
        "ViT-B-32 text int8 / fp32": p["ViT-B-32 text ONNX int8 dynamic"] / p["ViT-B-32 text ONNX fp32"],
        "s0 image ONNX fp32 / PyTorch eager (goal <= 0.8)":
            p["mobileclip-s0 image ONNX fp32"] / p["mobileclip-s0 image PyTorch eager"],
        "s0 text ONNX fp32 / PyTorch eager (goal <= 0.8)":
            p["mobileclip-s0 text ONNX fp32"] / p["mobileclip-s0 text PyTorch eager"],
        "ViT-B-32 image ONNX fp32 / PyTorch eager (goal <= 0.8)":
            p["ViT-B-32 image ONNX fp32"] / p["ViT-B-32 image PyTorch eager"],
    }
    hf = "HF CLIPModel (ViT-B/32 sizes) "
    if hf + "optimum-onnx: one graph" in p:
        ours = p[hf + "ours: image"] + p[hf + "ours: text"]
        ratios["HF CLIP ours (image + text p50) / optimum-onnx (goal <= 1.0)"] = (
            ours / p[hf + "optimum-onnx: one graph"])
        if hf + "optimum-onnx + ORTOptimizer O2" in p:
            ratios["HF CLIP ours (image + text p50) / optimum-onnx + ORTOptimizer O2"] = (
                ours / p[hf + "optimum-onnx + ORTOptimizer O2"])
    for k, v in ratios.items():
        print(f"{k:58} {v:.2f}")

    cmd = "python -m mobileclip.benchmarks.export_latency " + " ".join(sys.argv[1:])
    env = environment(torch=torch.__version__, onnxruntime=onnxruntime.__version__, threads=args.threads,
                      batch=1, export_seconds=round(export_s, 1))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "export_latency.json").write_text(json.dumps({"command": cmd, "environment": env, "rows": rows,
                                                          "ratios": ratios, "hf_note": hf_note}, indent=2) + "\n")
    md = ["# Export latency: ONNX Runtime CPU, batch 1", "", f"Command: `{cmd}`", "",
          f"Machine: {env['cpu']}, {env['cores']} cores; {args.threads} threads; torch {env['torch']}, "
          f"onnxruntime {env['onnxruntime']}; {env['date']}. Random weights. {args.rounds} rounds x {args.iters} "
          "calls per case, cases interleaved.", "",
          "| case | p50 ms | p90 ms | p99 ms | file MB | parity min cosine |", "|---|---:|---:|---:|---:|---:|"]
    md += [f"| {r['case']} | {r['p50']:.2f} | {r['p90']:.2f} | {r['p99']:.2f} | "
           + (f"{r['mb']:.1f}" if "mb" in r else "—") + " | "
           + (f"{r['min_cosine']:.5f}" if "min_cosine" in r else "—") + " |" for r in rows]
    md += ["", "| ratio (p50) | value |", "|---|---:|"] + [f"| {k} | {v:.2f} |" for k, v in ratios.items()]
    if hf_note:
        md += ["", hf_note]
    (out / "export_latency.md").write_text("\n".join(md) + "\n")
    print(f"wrote {out / 'export_latency.md'}")


def _transformer_fusions(src: Path, dst: Path, notes: list):
    """ONNX Runtime's transformer optimizer (what optimum's ORTOptimizer runs) on our export."""
    from onnxruntime.transformers.optimizer import optimize_model

    try:
        model = optimize_model(str(src), model_type="clip", num_heads=0, hidden_size=0)
        model.save_model_to_file(str(dst))
    except Exception as e:  # reported in the results, not hidden
        notes.append(f"ORT transformer fusions failed on {src.name}: {type(e).__name__}: {str(e)[:150]}")
        return None
    fused = {k: v for k, v in model.get_fused_operator_statistics().items() if v}
    notes.append(f"ORT transformer fusions on ViT-B-32 {src.stem}: {fused}.")
    return dst


def _hf_cases(work: Path, add, img: np.ndarray, tok: np.ndarray, threads: int) -> str:
    """Our export of a ViT-B/32-sized transformers CLIPModel against optimum-onnx's."""
    from transformers import CLIPConfig, CLIPModel

    from mobileclip.export import export

    torch.manual_seed(0)
    hf_dir = work / "hf-clip"
    CLIPModel(CLIPConfig()).save_pretrained(hf_dir)  # the default CLIPConfig is ViT-B/32 sized
    export(specs.hf(hf_dir), work / "hf-ours", max_batch=4)
    # Timed as two cases and summed: calling one session right after another makes the
    # first one's idle spinning threads compete with the second (measured: the pair took
    # 1.7x its parts' sum when alternated on 2 cores).
    add("HF CLIPModel (ViT-B/32 sizes) ours: image", ort_case(work / "hf-ours" / "image.onnx", {"image": img},
                                                                threads))
    add("HF CLIPModel (ViT-B/32 sizes) ours: text", ort_case(work / "hf-ours" / "text.onnx", {"tokens": tok},
                                                               threads))
    try:
        from optimum.exporters.onnx import main_export
    except ImportError:
        return "optimum-onnx is not installed (pip install 'mobileclip-toolkit[bench]'): no optimum comparison."
    main_export(str(hf_dir), output=str(work / "hf-optimum"), task="zero-shot-image-classification",
                library_name="transformers", do_validation=False)
    feeds = {"input_ids": tok.astype(np.int64), "attention_mask": (tok != 0).astype(np.int64), "pixel_values": img}
    add("HF CLIPModel (ViT-B/32 sizes) optimum-onnx: one graph",
        ort_case(work / "hf-optimum" / "model.onnx", feeds, threads))
    note = ("optimum-onnx exports one graph computing both embeddings (and the logits); ours is two graphs, timed as "
            "two cases whose p50s are summed.")
    try:
        from optimum.onnxruntime import ORTOptimizer
        from optimum.onnxruntime.configuration import OptimizationConfig

        opt = ORTOptimizer.from_pretrained(str(work / "hf-optimum"))
        opt.optimize(save_dir=str(work / "hf-optimum-o2"), optimization_config=OptimizationConfig(
            optimization_level=2))
        files = sorted((work / "hf-optimum-o2").glob("*.onnx"))
        add("HF CLIPModel (ViT-B/32 sizes) optimum-onnx + ORTOptimizer O2", ort_case(files[0], feeds, threads))
    except Exception as e:  # report, do not hide: the table says what optimum's optimizer did
        note += f" ORTOptimizer level 2 failed on this graph: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
    return note


if __name__ == "__main__":
    main()
