"""What the temperature trap did: the real-teacher benchmark's README recipe, trained once at the teacher's true
scale and once at the scale the 2026-11 benchmark recorded (its exp, where the multiplier belongs: every KD target
one-hot), side by side on val, with the zero-shot classifier's answers counted.

    python -m mobileclip.benchmarks.distill_real_trap [--work runs/distill_real] [--steps 400]

Needs the work folder of ``distill_real`` (data, teacher, caches). The trapped run cannot be configured any more
(every entry point refuses a scale above 100), so this script sets the trainer's teacher scale itself, after the
config was checked: it reproduces the defect, it does not offer it. Writes ``distill_real_trap.json`` and ``.md``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch


def answers(model, preprocess, tokenizer, folder: Path) -> dict:
    """Zero-shot on ``folder``: top-1, balanced top-1 and the share of the most frequent answer."""
    from mobileclip.data import ImageFolderDataset
    from mobileclip.zeroshot import TEMPLATES, build_classifier

    ds = ImageFolderDataset(folder, preprocess)
    model.eval()
    with torch.no_grad():
        cls = build_classifier(model, tokenizer, ds.classnames, TEMPLATES, torch.device("cpu"))
        preds, labels = [], []
        for i in range(len(ds)):
            x, y, _ = ds[i]
            preds.append(int((model.encode_image(x[None], normalize=True) @ cls.T).argmax()))
            labels.append(y)
    preds, labels = np.array(preds), np.array(labels)
    share = np.bincount(preds, minlength=len(ds.classnames)) / len(preds)
    per = [float(np.mean(preds[labels == c] == c)) for c in range(len(ds.classnames)) if np.any(labels == c)]
    n = len(cls)
    sims = cls @ cls.T
    return {"top1": float(np.mean(preds == labels)), "balanced_top1": float(np.mean(per)),
            "most_answered": ds.classnames[int(share.argmax())], "most_answered_share": float(share.max()),
            "prompt_cosine": float((sims.sum() - sims.diag().sum()) / (n * n - n))}


def run(work: Path, name: str, scale_override, args) -> dict:
    from mobileclip.factory import create_model
    from mobileclip.distill import load_config
    from mobileclip.distill.train import Trainer

    from .distill_real import student_overrides

    out = work / "runs" / f"trap-{name}-s{args.steps}"
    ns = argparse.Namespace(image_size=64, steps=args.steps, batch_size=64, threads=args.threads, lr=2e-3,
                            curve_points=8, unpaired_ratio=1.0)
    cfg = load_config(None, student_overrides("readme", 0, work, ns, out))
    trainer = Trainer(cfg, overwrite=True)
    if scale_override is not None:   # the defect, reproduced: the cache's scale exponentiated once more
        trainer.teacher_scales = torch.full_like(trainer.teacher_scales, scale_override)
    t0 = time.time()
    summary = trainer.fit()
    model, pp, tok = create_model(str(out / "student"))
    curve = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines() if line.strip()]
    return {"name": name, "teacher_scale": float(trainer.teacher_scales[0]), "train_s": time.time() - t0,
            "val": summary["eval"], "curve": curve, "answers": answers(model, pp, tok, work / "data" / "zeroshot_val")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", default="runs/distill_real")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--threads", type=int, default=max(1, os.cpu_count() or 1))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    from mobileclip.distill import TeacherCache

    if not (work / "cache" / "pairs" / "manifest.json").is_file():
        print(f"distill_real_trap: {work} holds no distill_real caches; run python -m mobileclip.benchmarks."
              "distill_real --prepare-only first", file=sys.stderr)
        return 2
    own = TeacherCache(work / "cache" / "pairs").teacher_scales[0]
    rows = [run(work, "true scale", None, args), run(work, "trapped", math.exp(own), args)]
    import platform

    report = {"command": "python -m mobileclip.benchmarks.distill_real_trap "
                         + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} "
                         "threads", "date": time.strftime("%Y-%m-%d"), "steps": args.steps, "own_scale": own,
              "rows": rows}
    write(Path(args.out), report)
    return 0


def write(out: Path, report: dict) -> None:
    from mobileclip.files import atomic_write, atomic_write_json

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "distill_real_trap.json", report)
    own, rows = report["own_scale"], report["rows"]
    md = ["# The temperature trap, reproduced", "",
          f"Command: `{report['command']}`  ", f"Machine: {report['machine']}  ", f"Date: {report['date']}", "",
          f"The README recipe of 2026-11 (kd 1 + feature 1 + clip 0.25, the 334 pairs, {report['steps']} steps, seed 0) "
          f"with the teacher at its true multiplier ({own:.2f}) and at exp of it ({math.exp(own):.3g}), the scale the "
          "2026-11 benchmark's cache recorded. Val split (409 pairs; zero-shot over 12 clip-art folders whose largest "
          "holds 30 % of the images).", "",
          "| teacher scale | val R@1 | zero-shot top-1 | balanced top-1 | most frequent answer (share) | "
          "mean cosine between class prompts |", "|---|---:|---:|---:|---|---:|"]
    for r in rows:
        a = r["answers"]
        md.append(f"| {r['teacher_scale']:.3g} ({r['name']}) | {100 * r['val']['retrieval_R@1']:.1f} | "
                  f"{100 * a['top1']:.1f} | {100 * a['balanced_top1']:.1f} | {a['most_answered']} "
                  f"({100 * a['most_answered_share']:.0f} %) | {a['prompt_cosine']:.3f} |")
    md += ["", "Zero-shot top-1 during training (val, every 50 steps):", ""]
    for r in rows:
        md.append(f"- {r['name']}: " + ", ".join(f"{100 * e['zeroshot_top1']:.1f}" for e in r["curve"]))
    with atomic_write(out / "distill_real_trap.md", "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    sys.exit(main())
