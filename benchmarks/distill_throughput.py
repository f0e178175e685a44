"""Training throughput with the teacher read from the cache vs run online.

    .venv/bin/python -m mobileclip.benchmarks.distill_throughput [--student mobileclip-s0] [--batch 16]
        [--teachers open_clip:ViT-B-32 open_clip:ViT-L-14] [--steps 3] [--out benchmarks/results]

Same student and batch in every row, measured side by side in one run:

* ``student only``  — the student's own step (clip loss), the floor;
* ``cache: T``      — distillation (kd + clip) reading teacher T's cached embeddings;
* ``online: T``     — the same losses with teacher T run in the loop.

Each step is split into data (waiting for the loader), teacher forward, and student
step (forward, loss, backward, optimizer). Teachers have random weights: speed does not
depend on them. Writes ``distill_throughput.json`` and ``.md``.

On a GPU: ``--precision bf16 --compile --batch 256 --teachers`` (no teachers: the
student's own step only) also reports the model FLOP utilisation: training FLOPs per
sample (3x the forward, counted with ``torch.utils.flop_counter``) times samples/s over
the GPU's peak dense bf16 FLOP/s (known GPUs, or ``--peak-tflops``).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _measure(trainer, steps: int, warmup: int = 1) -> dict:
    """Time ``warmup + steps`` optimizer steps, split into data / teacher / student."""
    from mobileclip.benchmarks.stats import device_sync
    from mobileclip.distill.samples import StepBatches, collate_train

    cfg = trainer.cfg
    sampler = StepBatches(len(trainer.source), cfg.batch_size, warmup + steps, cfg.seed)
    loader = torch.utils.data.DataLoader(trainer.dataset, batch_sampler=sampler, num_workers=cfg.data.workers,
                                         collate_fn=collate_train,   # as Trainer.fit loads: pinned for a GPU
                                         pin_memory=trainer.device.type == "cuda")
    rows = []
    orig_teacher = trainer.teacher_features
    spent = {"teacher": 0.0}

    def sync():   # CUDA runs asynchronously: a time taken without a sync measures the launch, not the work
        device_sync(trainer.device)

    def timed_teacher(chunk):
        sync()
        t = time.perf_counter()
        out = orig_teacher(chunk)
        sync()
        spent["teacher"] += time.perf_counter() - t
        return out

    trainer.teacher_features = timed_teacher
    it = iter(loader)
    first = None
    for i in range(warmup + steps):
        sync()
        t0 = time.perf_counter()
        batch = trainer.to_device(next(it))   # as Trainer.fit does: the step runs on the trainer's device
        sync()
        t1 = time.perf_counter()
        spent["teacher"] = 0.0
        out = trainer.train_step(batch)
        if i == 0 and isinstance(out, dict):
            first = {"loss": float(out["loss"]), "grad_norm": float(out["grad_norm"])}
        sync()
        t2 = time.perf_counter()
        if i >= warmup:
            rows.append({"data": t1 - t0, "teacher": spent["teacher"], "student": t2 - t1 - spent["teacher"],
                         "total": t2 - t0})
    trainer.teacher_features = orig_teacher
    mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    mean["samples_per_s"] = cfg.batch_size / mean["total"]
    mean["first_step"] = first   # from the initial weights and the run's first batch (the warm-up step)
    return mean


# Peak dense bf16 tensor-core FLOP/s (TFLOP/s, without sparsity) from NVIDIA's data sheets, matched against
# torch.cuda.get_device_name() by whole words, most specific first. A part whose variant is not listed (an
# H100 that says neither PCIe, NVL nor SXM) gets no MFU rather than a guess: pass --peak-tflops.
PEAK_BF16_TFLOPS = [
    (r"\bH100\b.*\bPCIe\b", 756.0), (r"\bH100\b.*\bNVL\b", 835.0), (r"\bH100\b.*\b(SXM|HBM3)\b", 989.4),
    (r"\bH200\b.*\bNVL\b", 835.0), (r"\bH200\b", 989.4),
    (r"\bA100\b", 312.0), (r"\bL40S\b", 362.1), (r"\bL4\b", 121.0), (r"\bA10\b", 125.0),
]


def known_peak_tflops(name=None):
    """The peak dense bf16 TFLOP/s of a GPU by its name (default: GPU 0), or None when it is not known. A MIG
    slice ("... MIG 3g.40gb") has a fraction of the whole GPU's compute, which its name does not give exactly:
    None, so that --peak-tflops must say it."""
    import re

    if name is None:
        if not torch.cuda.is_available():
            return None
        name = torch.cuda.get_device_name()
    if re.search(r"\bMIG\b", name):
        return None
    return next((v for pattern, v in PEAK_BF16_TFLOPS if re.search(pattern, name)), None)


def train_flops_per_sample(student: str) -> float:
    """3x the forward FLOPs of one image + one caption (backward is about twice the forward).

    Attention runs through the math kernel while counting: the counter has formulas for CUDA's fused
    attention kernels but not for the CPU's flash kernel, whose FLOPs it would silently miss."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from mobileclip.factory import create_model

    model, _, tok = create_model(student)
    x = torch.zeros(1, 3, model.image_size, model.image_size)
    with FlopCounterMode(display=False) as counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        model.encode_image(x)
        model.encode_text(tok(["a photo of a dog"]))
    return 3.0 * counter.get_total_flops()


# A compiled bf16 step against the eager one, from the same weights and batch (the check the gpu-marked test
# test_compiled_bf16_step_matches_eager_on_gpu makes at batch 16; here at the measured batch, with one compile).
COMPILE_RTOL = {"loss": 2e-2, "grad_norm": 5e-2}


def compiled_vs_eager(eager: dict, compiled: dict) -> dict:
    """Relative differences of the first step's loss and gradient norm, and whether each is within tolerance."""
    out = {}
    for k, tol in COMPILE_RTOL.items():
        a, b = eager[k], compiled[k]
        rel = abs(b - a) / max(abs(a), 1e-12)
        out[k] = {"eager": a, "compiled": b, "rel_diff": rel, "rtol": tol,
                  "ok": bool(np.isfinite(a) and np.isfinite(b) and rel <= tol)}
    return out


def peak_for(device_name, peak_tflops):
    """The peak dense bf16 TFLOP/s to compute MFU against: ``--peak-tflops`` when given (> 0), else the GPU's
    known one. A MIG slice has a fraction of the GPU's compute, which its name does not say: ``--peak-tflops`` is
    required there (ConfigError), rather than an MFU against the whole GPU's peak."""
    import re

    from mobileclip.errors import ConfigError

    if peak_tflops is not None:
        if not (np.isfinite(peak_tflops) and 0 < peak_tflops <= 1e5):
            raise ConfigError(f"--peak-tflops {peak_tflops}: the device's peak dense TFLOP/s, a number in (0, 1e5]")
        return float(peak_tflops)
    if device_name and re.search(r"\bMIG\b", device_name):
        raise ConfigError(f"{device_name!r} is a MIG slice, whose share of the GPU's peak its name does not give: "
                          "pass --peak-tflops (the slice's peak dense bf16 TFLOP/s) for the MFU")
    return known_peak_tflops(device_name) if device_name else None


def main(argv=None) -> int:
    from mobileclip.errors import MobileCLIPError

    try:
        return _main(argv)
    except MobileCLIPError as e:
        import sys

        print(f"distill_throughput: error: {e}", file=sys.stderr)
        return 2


def _main(argv=None) -> int:
    from mobileclip.distill import Trainer, build_cache, load_config
    from mobileclip.distill.sources import SyntheticPairs
    from mobileclip.factory import load_teacher

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", default="mobileclip-s0")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--image-size", type=int, default=256, help="synthetic image size (the student's input size)")
    ap.add_argument("--teachers", nargs="*", default=["open_clip:ViT-B-32", "open_clip:ViT-L-14"])
    ap.add_argument("--steps", type=int, default=None,
                    help="timed steps after one warm-up (default: 20 on a GPU, 3 on the CPU)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    ap.add_argument("--compile", action="store_true", help="torch.compile the student's encoders")
    ap.add_argument("--eager-too", action="store_true",
                    help="with --compile: first time the student-only step eager, in the same process, and compare "
                         "the compiled first step's loss and gradient norm with the eager one's (exit 1 beyond "
                         f"{COMPILE_RTOL})")
    ap.add_argument("--peak-tflops", type=float, default=None, help="peak dense FLOP/s of the device, in TFLOP/s")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)
    from mobileclip.errors import ConfigError

    device = "cuda" if torch.cuda.is_available() else "cpu"   # where the Trainer's device=auto puts the step
    if args.steps is None:
        args.steps = 20 if device == "cuda" else 3
    if args.steps < 1 or args.batch < 1 or args.workers < 0:
        raise ConfigError(f"--steps {args.steps}, --batch {args.batch}, --workers {args.workers}: steps and batch "
                          ">= 1, workers >= 0")
    if args.eager_too and not args.compile:
        raise ConfigError("--eager-too compares eager with compiled: add --compile")
    peak = peak_for(torch.cuda.get_device_name() if device == "cuda" else None, args.peak_tflops)
    n = args.batch * (args.steps + 1)
    common = [f"student={args.student}", f"batch_size={args.batch}", f"data.size={n}",
              f"data.image_size={args.image_size}", f"data.workers={args.workers}", "progress=false",
              f"steps={args.steps + 1}", "aug.flip_prob=0.0", f"precision={args.precision}",
              f"compile={str(args.compile).lower()}"]
    results, check = [], None
    with tempfile.TemporaryDirectory() as tmp:
        if args.eager_too:
            tr = Trainer(load_config(None, common[:-1] + ["compile=false", f"out={tmp}/e", "losses.clip=1.0"]))
            results.append({"mode": "student only, eager", **_measure(tr, args.steps)})
            print(results[-1])
            del tr
            if device == "cuda":
                torch.cuda.empty_cache()
        tr = Trainer(load_config(None, common + [f"out={tmp}/s", "losses.clip=1.0"]))
        results.append({"mode": "student only" + (", compiled" if args.eager_too else ""), **_measure(tr, args.steps)})
        print(results[-1])
        if args.eager_too:
            check = compiled_vs_eager(results[0]["first_step"], results[1]["first_step"])
            print("compiled vs eager, first step:", check)
            del tr
        for spec in args.teachers:
            cache = Path(tmp) / spec.replace(":", "_")
            t = time.perf_counter()
            build_cache([load_teacher(spec)], SyntheticPairs("train", n, args.image_size, seed=0), cache, augs=1,
                        shard_size=n, batch_size=args.batch, flip_prob=0.0, num_workers=args.workers,
                        progress=False, device=device)
            cache_s = time.perf_counter() - t
            tr = Trainer(load_config(None, common + [f"out={tmp}/c", f"data.cache={cache}", "losses.kd=1.0",
                                                     "losses.clip=1.0"]))
            results.append({"mode": f"cache: {spec}", "cache_build_s": cache_s, **_measure(tr, args.steps)})
            print(results[-1])
            tr = Trainer(load_config(None, common + [f"out={tmp}/o", f"teachers=[{spec}]", "losses.kd=1.0",
                                                     "losses.clip=1.0"]))
            results.append({"mode": f"online: {spec}", **_measure(tr, args.steps)})
            print(results[-1])
    base = results[0]["total"]
    flops = train_flops_per_sample(args.student)
    for r in results:
        r["step_vs_student_only"] = r["total"] / base
        r["student_train_gflops_per_sample"] = flops / 1e9
        # Two figures: over the whole step (data wait and teacher included) and over the student's own time
        r["mfu"] = flops * r["samples_per_s"] / (peak * 1e12) if peak else None
        r["mfu_student"] = (flops * args.batch / r["student"] / (peak * 1e12)
                            if peak and r["student"] > 0 else None)
    import open_clip
    import timm

    from mobileclip.benchmarks.common import environment

    env = environment(torch_threads=torch.get_num_threads(),
                      cuda=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                      torch=torch.__version__, timm=timm.__version__, open_clip=open_clip.__version__)
    cmd = ("python -m mobileclip.benchmarks.distill_throughput --student " + args.student + f" --batch {args.batch}"
           f" --image-size {args.image_size} --steps {args.steps} --precision {args.precision}"
           + (" --compile" if args.compile else "") + (" --eager-too" if args.eager_too else "")
           + (f" --peak-tflops {args.peak_tflops}" if args.peak_tflops else "") + " --teachers " + " ".join(args.teachers))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "distill_throughput.json").write_text(json.dumps({"command": cmd, "environment": env, "peak_tflops": peak,
                                                             "compiled_vs_eager": check, "rows": results},
                                                            indent=2) + "\n")
    lines = ["# Distillation step: teacher from the cache vs online", "",
             f"`{cmd}` on {env['cpu']} ({env['cores']} cores, {env['torch_threads']} torch threads), torch "
             f"{env['torch']}, {env['date']}. Student `{args.student}` at {args.image_size} px, batch {args.batch}, "
             f"mean of {args.steps} steps after 1 warm-up; random weights.", "",
             f"Precision {args.precision}, compile {args.compile}; student training FLOPs "
             f"{flops / 1e9:.2f} GFLOP/sample" + (f"; MFU against {peak} TFLOP/s peak, over the whole step and "
                                                   "over the student's own time (no data wait, no teacher)."
                                                   if peak else "."), "",
             "| mode | samples/s | step s | data s | teacher s | student s | step / student-only | MFU (step) "
             "| MFU (student) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    pct = (lambda v: f"{100 * v:.1f}%" if v is not None else "—")
    lines += [f"| {r['mode']} | {r['samples_per_s']:.2f} | {r['total']:.2f} | {r['data']:.2f} | {r['teacher']:.2f} | "
              f"{r['student']:.2f} | {r['step_vs_student_only']:.2f}x | {pct(r['mfu'])} | {pct(r['mfu_student'])} |"
              for r in results]
    if check:
        lines += ["", "Compiled vs eager, the first step from the same weights and batch: " + "; ".join(
            f"{k} {v['eager']:.5g} vs {v['compiled']:.5g} (relative {v['rel_diff']:.2e}, "
            f"{'within' if v['ok'] else 'BEYOND'} {v['rtol']})" for k, v in check.items()) + "."]
    (out / "distill_throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 1 if check and not all(v["ok"] for v in check.values()) else 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
