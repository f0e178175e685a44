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
    from mobileclip.distill.data import StepBatches, collate_train

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
    for i in range(warmup + steps):
        sync()
        t0 = time.perf_counter()
        batch = trainer.to_device(next(it))   # as Trainer.fit does: the step runs on the trainer's device
        sync()
        t1 = time.perf_counter()
        spent["teacher"] = 0.0
        trainer.train_step(batch)
        sync()
        t2 = time.perf_counter()
        if i >= warmup:
            rows.append({"data": t1 - t0, "teacher": spent["teacher"], "student": t2 - t1 - spent["teacher"],
                         "total": t2 - t0})
    trainer.teacher_features = orig_teacher
    mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    mean["samples_per_s"] = cfg.batch_size / mean["total"]
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

    import mobileclip

    model, _, tok = mobileclip.create_model(student)
    x = torch.zeros(1, 3, model.image_size, model.image_size)
    with FlopCounterMode(display=False) as counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        model.encode_image(x)
        model.encode_text(tok(["a photo of a dog"]))
    return 3.0 * counter.get_total_flops()


def main() -> None:
    from mobileclip.distill import Trainer, build_cache, load_config
    from mobileclip.distill.data import SyntheticPairs
    from mobileclip.teachers import load_teacher

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", default="mobileclip-s0")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--image-size", type=int, default=256, help="synthetic image size (the student's input size)")
    ap.add_argument("--teachers", nargs="*", default=["open_clip:ViT-B-32", "open_clip:ViT-L-14"])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    ap.add_argument("--compile", action="store_true", help="torch.compile the student's encoders")
    ap.add_argument("--peak-tflops", type=float, default=None, help="peak dense FLOP/s of the device, in TFLOP/s")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    n = args.batch * (args.steps + 1)
    common = [f"student={args.student}", f"batch_size={args.batch}", f"data.size={n}",
              f"data.image_size={args.image_size}", f"data.workers={args.workers}", "progress=false",
              f"steps={args.steps + 1}", "aug.flip_prob=0.0", f"precision={args.precision}",
              f"compile={str(args.compile).lower()}"]
    device = "cuda" if torch.cuda.is_available() else "cpu"   # where the Trainer's device=auto puts the step
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tr = Trainer(load_config(None, common + [f"out={tmp}/s", "losses.clip=1.0"]))
        results.append({"mode": "student only", **_measure(tr, args.steps)})
        print(results[-1])
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
    peak = args.peak_tflops or known_peak_tflops()
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
           + (" --compile" if args.compile else "") + " --teachers " + " ".join(args.teachers))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "distill_throughput.json").write_text(json.dumps({"command": cmd, "environment": env,
                                                             "rows": results}, indent=2) + "\n")
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
    (out / "distill_throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
