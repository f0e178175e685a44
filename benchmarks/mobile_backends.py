"""On-device backends side by side: MobileCLIP-S0's towers on ONNX Runtime, ORT format, LiteRT and
ExecuTorch, fp32 and int8, batch 1, interleaved in one run, with cosine to PyTorch.

    .venv/bin/python -m mobileclip.benchmarks.mobile_backends [--model mobileclip-s0] [--threads 2]
        [--rounds 5] [--iters 10] [--out benchmarks/results]

Every bundle is made by ``mobileclip export`` (so its parity report is the export's own) and every
artifact is timed through the runner its backend registers (``mobileclip.backends.runner_for``):
the engine each app would ship (ONNX Runtime, the LiteRT interpreter with XNNPACK, ExecuTorch's
runtime with the XNNPACK delegate). Cases run in interleaved rounds, so drift on a shared machine
hits them alike; compare them as ratios.

Weights: the registered architecture at random init gives an image tower whose output hardly
depends on its input (BatchNorm statistics at identity, layer scales at 1e-5), which makes int8
parity meaningless. The model is re-initialized by :func:`lively` — BatchNorm statistics and
layer scales away from their defaults, a fixed seed — saved as a checkpoint and exported from
there; the report states how much its embeddings vary across inputs. Cosine to PyTorch: each
artifact through its runner on 16 synthetic images / prompts, raw and centered.
int8 methods are each engine's recommended one (see the table).
Backends whose packages are missing are listed as skipped with the reason. Writes
``mobile_backends.json`` and ``.md``.
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

# (backend, precision, int8 method): ONNX Runtime runs static QDQ fastest on x86; LiteRT's static
# int8 is 2.6-5x slower than fp32 on x86 (dynamic-range is its recommended int8 there); ExecuTorch's
# XNNPACK int8 is PT2E static, calibrated.
CASES = (("onnx", "fp32", None), ("onnx", "int8", "static"), ("ort", "fp32", None), ("ort", "int8", "static"),
         ("litert", "fp32", None), ("litert", "int8", "dynamic"), ("executorch", "fp32", None),
         ("executorch", "int8", "static"))


def lively(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Weights whose embeddings depend on the input as a trained model's do (a fixed seed): conv and
    linear weights scaled by fan-in, BatchNorm statistics and affine parameters and layer scales
    away from their init. (timm's init, std 0.02 and layer scales of 1e-5, leaves S0's image
    embedding nearly constant: cosine 0.99999 between different images.)"""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 0.5 + 0.75)
                if m.affine:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.5 + 0.75)
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.05)
            elif isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * m.weight[0].numel() ** -0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.05)
        for name, p in model.named_parameters():
            if "layer_scale" in name or name.endswith(".gamma"):
                p.copy_(torch.rand(p.shape, generator=g) * 0.1 + 0.05)
    return model


def cosines(ref: np.ndarray, got: np.ndarray) -> dict:
    """Minimum cosine to the reference, raw and centered on the reference's mean (the part of the
    embedding that differs between inputs: a large shared component inflates the raw cosine)."""
    def cos(a, b):
        return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)

    ref, got = ref.astype(np.float64), got.astype(np.float64)
    mu = ref.mean(0, keepdims=True)
    return {"min_cosine": float(cos(ref, got).min()), "min_centered_cosine": float(cos(ref - mu, got - mu).min())}


def _spread(e: np.ndarray) -> float:
    """Mean cosine between the embeddings of different inputs (1.0: the output ignores its input)."""
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    c = e @ e.T
    n = len(e)
    return float((c.sum() - np.trace(c)) / (n * n - n))


def main() -> None:
    from mobileclip import backends

    from .common import environment
    from .export_latency import time_interleaved

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mobileclip-s0")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from mobileclip.checkpoint import save_checkpoint
    from mobileclip.data import write_synthetic
    from mobileclip.export import export
    from mobileclip.factory import create_model

    work = Path(tempfile.mkdtemp(prefix="mobile_backends_"))
    torch.manual_seed(0)   # the parameters lively() leaves (embeddings, norms) come from the seeded init
    model, preprocess, tokenizer = create_model(args.model)
    lively(model.eval())
    ckpt = save_checkpoint(model, work / "model")
    size = preprocess.cfg.image_size if hasattr(preprocess, "cfg") else 256
    calib = work / "calib"
    write_synthetic(calib, 32, split="train", image_size=size)
    from mobileclip.export.parity import parity_prompts, synthetic_images

    evalset = {"image": torch.stack([preprocess(im) for im in synthetic_images(16, size)]).numpy(),
               "text": tokenizer(parity_prompts(tokenizer, 16)).numpy().astype(np.int32)}
    with torch.inference_mode():
        ref = {"image": model.encode_image(torch.from_numpy(evalset["image"]), normalize=True).numpy(),
               "text": model.encode_text(torch.from_numpy(evalset["text"]).long(), normalize=True).numpy()}
    spread = {t: _spread(ref[t]) for t in ref}
    print(f"{args.model}: mean cosine between different inputs' embeddings: image {spread['image']:.3f}, "
          f"text {spread['text']:.3f}")

    rows, skipped, cases = [], [], {}
    x = {"image": np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32),
         "text": tokenizer(["a photo of a red circle next to a blue square"]).numpy().astype(np.int32)}
    for name, precision, quant in CASES:
        b = backends.get(name)
        why = b.unavailable()
        try:
            b.prepare_export()
        except backends.BackendUnavailable as e:
            why = why or str(e)
        if why:
            skipped.append({"backend": name, "precision": precision, "reason": why})
            print(f"skip {name} {precision}: {why}")
            continue
        out = work / f"{name}-{precision}"
        t0 = time.time()
        kw = {"calib": str(calib), "calib_size": 32, "quant": quant} if quant else {}
        if precision == "int8":   # a latency table: LiteRT's int8, refused by default for its accuracy, is timed too
            kw["accept_int8_loss"] = True
        try:
            m = export(str(ckpt), out, fmt=name, precision=precision, max_batch=2, allow_mismatch=True, **kw)
        except Exception as e:   # reported, not hidden: the table says which export failed and why
            skipped.append({"backend": name, "precision": precision, "reason": f"export failed: {type(e).__name__}: "
                            f"{' '.join(str(e).split())[:300]}"})
            print(f"export {name} {precision} failed: {e}")
            continue
        secs = time.time() - t0
        print(f"exported {name} {precision} in {secs:.0f} s (parity: "
              + ("passed" if m["parity"]["passed"] else "; ".join(m["parity"]["misses"])) + ")")
        for tower in ("image", "text"):
            entry = m["artifacts"][tower]
            runner = backends.runner_for(out, entry, threads=args.threads).activate()
            agree = cosines(ref[tower], runner.infer(evalset[tower]))
            key = f"{tower} {name} {entry['precision']}"
            cases[key] = (lambda r=runner, t=tower: r.infer(x[t]))
            q = entry.get("quantization", {})
            rows.append({"case": key, "tower": tower, "backend": name, "runtime": b.runtime,
                         "precision": entry["precision"], "int8_method": q.get("method", "—"),
                         "mb": (out / entry["file"]).stat().st_size / 1e6, "export_s": round(secs, 1),
                         **agree})

    eager = {t: (lambda t=t: getattr(model, f"encode_{t}")(torch.from_numpy(x[t]) if t == "image" else
                                                             torch.from_numpy(x[t]).long())) for t in x}
    for t, fn in eager.items():
        def run(fn=fn):
            with torch.inference_mode():
                return fn()
        cases[f"{t} PyTorch eager fp32"] = run
        rows.append({"case": f"{t} PyTorch eager fp32", "tower": t, "backend": "torch", "runtime": "torch",
                     "precision": "fp32", "int8_method": "—"})
    print(f"timing {len(cases)} cases: {args.rounds} rounds x {args.iters} calls, batch 1, {args.threads} threads")
    stats = time_interleaved(cases, args.rounds, args.iters, warmup=3)
    for r in rows:
        r.update(stats[r["case"]])
    onnx_fp32 = {t: stats.get(f"{t} onnx fp32", {}).get("p50") for t in x}
    for r in rows:
        base = onnx_fp32[r["tower"]]
        r["vs_onnx_fp32"] = r["p50"] / base if base else None
        print(f"{r['case']:28} p50 {r['p50']:8.2f} ms" + (f"  x{r['vs_onnx_fp32']:.2f} of ONNX fp32"
                                                          if r["vs_onnx_fp32"] else ""))

    import onnxruntime

    from mobileclip.backends.base import installed_versions

    tools = installed_versions("onnxruntime", "litert-torch", "ai-edge-litert", "executorch", "torchao")
    cmd = "python -m mobileclip.benchmarks.mobile_backends " + " ".join(sys.argv[1:])
    env = environment(torch=torch.__version__, onnxruntime=onnxruntime.__version__, threads=args.threads, batch=1,
                      **{k.replace("-", "_"): v for k, v in tools.items() if k != "onnxruntime"})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "mobile_backends.json").write_text(json.dumps(
        {"command": cmd, "environment": env, "model": args.model, "embedding_spread": spread, "rows": rows,
         "skipped": skipped}, indent=2) + "\n")
    md = [f"# On-device backends: {args.model}, batch 1, {args.threads} threads", "", f"Command: `{cmd}`", "",
          f"Machine: {env['cpu']}, {env['cores']} cores; torch {env['torch']}; "
          + ", ".join(f"{k} {v}" for k, v in tools.items() if v) + f"; {env['date']}.",
          f"{args.rounds} rounds x {args.iters} calls per case, cases interleaved. Weights: the registered "
          f"architecture, re-initialized by `lively` (seed 0, weights scaled by fan-in, BatchNorm statistics and layer "
          f"scales away from init); mean cosine between different inputs' embeddings: image {spread['image']:.3f}, "
          f"text {spread['text']:.3f}. Cosines: each artifact through its runner against PyTorch fp32, 16 synthetic "
          "images / 16 prompts (short, padded, full-context), minimum; *centered*: after subtracting the mean "
          "PyTorch embedding, i.e. on the part that differs between inputs.", "",
          "| tower | backend | runtime | precision | int8 method | p50 ms | p90 ms | × ONNX fp32 | file MB | "
          "min cosine | min centered cosine |", "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: (r["tower"], r["p50"])):
        md.append(f"| {r['tower']} | {r['backend']} | {r['runtime']} | {r['precision']} | {r['int8_method']} | "
                  f"{r['p50']:.2f} | {r['p90']:.2f} | "
                  + (f"{r['vs_onnx_fp32']:.2f}" if r.get("vs_onnx_fp32") else "—") + " | "
                  + (f"{r['mb']:.1f}" if "mb" in r else "—") + " | "
                  + (f"{r['min_cosine']:.5f} | {r['min_centered_cosine']:.4f}" if "min_cosine" in r else "— | —")
                  + " |")
    if skipped:
        md += ["", "Skipped:", ""] + [f"- {s['backend']} {s['precision']}: {s['reason']}" for s in skipped]
    (out / "mobile_backends.md").write_text("\n".join(md) + "\n")
    print(f"wrote {out / 'mobile_backends.md'}")


if __name__ == "__main__":
    main()
