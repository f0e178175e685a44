"""`make demo`: the embedded default, end to end, with no downloads.

No pretrained CLIP can be downloaded here, so the demo makes its own teacher:

1. trains a teacher — ``clip-hybrid-tiny``, a FastViT-SA hybrid (convolutional stages,
   attention in the last) CLIP with 1.6x the student's parameters — with the contrastive
   loss on synthetic captioned images;
2. caches the teacher's embeddings of K augmentations of each training image
   (``cache-teacher``);
3. distills the student ``mobileclip-tiny`` from the cache (the paired part of the recommended
   recipe, ``recipe=kd-unpaired``: KD + feature + 0.25 CLIP), never running the teacher again;
3b. caches the teacher's embeddings of unpaired data — images of the held-out colour–shape
   pairs *without captions*, and captions of them *without images* — and distills the same
   student from the pairs plus those with the whole recommended recipe (the three unpaired
   losses as well), to show what unpaired data adds;
4. trains the same student for the same steps on the same images with the ``clip`` loss
   alone (the baseline);
5. evaluates all three on held-out images, on held-out colour–shape pairs, and for
   retrieval;
6. exports the distilled student to ONNX fp32 and int8, Core ML fp16, a web bundle (checked in headless
   Chromium where it is installed: browser parity and WASM latency), and the Android/mobile formats — ONNX Runtime Mobile (.ort) int8, LiteRT fp32 and int8,
   ExecuTorch fp32 and int8 — each where its tools are installed (skipped with the reason
   otherwise), and checks each against PyTorch on held-out images. Each int8 bundle is the
   recipe its format ships by default (:func:`int8_recipe`); where every int8 recipe is
   refused by default (benchmarks/results/precision/summary.md), the dynamic one is
   exported with ``accept_int8_loss`` and shown as refused, with its parity;
7. with the torch-free runtime and the int8 bundle, classifies a few held-out images and
   runs a text search over an index of the held-out images; times every bundle this
   machine can run, side by side with the PyTorch student (``mobileclip bench``), and writes ``runs/demo/report.md`` and
   ``report.json``.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from ..files import atomic_write, atomic_write_json

# Budget: the training part (teacher + cache + two students) must stay under 8 minutes on
# a 2-core CPU; report.md records the measured times.
TEACHER, STUDENT = "clip-hybrid-tiny", "mobileclip-tiny"
COMMON = ["aug.flip_prob=0.0",  # captions say "left of"/"right of": a flip would make them wrong
          "aug.scale=[0.7,1.0]", "progress=true", "eval.size=360", "data.workers=2", "log_every=10"]
TEACHER_ARGS = [f"student={TEACHER}", "steps=220", "batch_size=64", "data.size=20000", "optim.lr=2e-3",
                "optim.warmup_steps=15"]
STUDENT_DATA = 2048  # images the students see (the cached subset)
STUDENT_ARGS = [f"student={STUDENT}", "steps=120", "batch_size=64", "optim.lr=2e-3", "optim.warmup_steps=15"]
CACHE_AUGS = 2
UNPAIRED_IMAGES, UNPAIRED_TEXTS = 1024, 512   # held-out colour-shape pairs: images without captions, texts
# The recommended recipe (distill/recipes.py, chosen on the real-teacher benchmark's val split): KD at the teacher's own
# scale + feature + 0.25 clip on the pairs, and the three unpaired losses. The "distilled" student takes its paired part.
RECIPE = "recipe=kd-unpaired"
PAIRED_ONLY = ["losses.unpaired_feature=0", "losses.unpaired_intra_kd=0", "losses.unpaired_cross_kd=0"]
UNPAIRED_DATA = ["data.image_ratio=0.5", "data.text_ratio=0.25"]


def _params(ckpt: Path) -> dict:
    return json.loads((ckpt / "config.json").read_text())["params"]


def run_demo(out: Path, quick: bool = False) -> dict:
    """The full demo; ``quick=True`` runs the same pipeline with a few steps (for tests)."""
    from ..distill import build_cache, load_config, train
    from ..distill.sources import SyntheticImages, SyntheticPairs, SyntheticTexts
    from ..factory import load_teacher

    out.mkdir(parents=True, exist_ok=True)
    times, results = {}, {}
    teacher_args, student_args, common, n_student = TEACHER_ARGS, STUDENT_ARGS, COMMON, STUDENT_DATA
    n_images, n_texts = UNPAIRED_IMAGES, UNPAIRED_TEXTS
    if quick:
        shrink = ["steps=3", "batch_size=16", "data.size=128", "eval.size=36", "progress=false", "data.workers=0"]
        teacher_args, student_args, common, n_student = (teacher_args + shrink, student_args + shrink,
                                                         common + shrink, 128)
        n_images, n_texts = 32, 16

    print(f"[1/5] training the demo teacher ({TEACHER}) with the clip loss")
    t = time.time()
    results["teacher"] = train(load_config(None, common + teacher_args + [f"out={out / 'teacher'}"]),
                               overwrite=True)
    times["teacher"] = time.time() - t

    print(f"[2/5] caching the teacher's embeddings: {n_student} images x {CACHE_AUGS} augmentations")
    t = time.time()
    teacher = load_teacher(str(out / "teacher" / "student"))
    shutil.rmtree(out / "cache", ignore_errors=True)   # the demo's own cache, of the teacher it just trained
    build_cache([teacher], SyntheticPairs("train", n_student, 64, seed=0), out / "cache", augs=CACHE_AUGS,
                shard_size=1024, batch_size=256, seed=0, scale=(0.7, 1.0), flip_prob=0.0,
                num_workers=0 if quick else 2, progress=not quick)
    times["cache"] = time.time() - t

    print(f"[3/5] distilling {STUDENT} from the cache ({RECIPE}, its paired part: kd + feature + 0.25 clip)")
    t = time.time()
    results["distilled"] = train(load_config(None, common + student_args + [
        f"out={out / 'distilled'}", f"data.cache={out / 'cache'}", RECIPE, *PAIRED_ONLY]), overwrite=True)
    times["distilled"] = time.time() - t

    print(f"[3b] unpaired data: {n_images} images of held-out colour-shape pairs without captions, {n_texts} "
          "captions without images; distilling the same student from pairs + unpaired")
    t = time.time()
    for name, source in (("cache_images", SyntheticImages("novel", n_images, 64, seed=1)),
                         ("cache_texts", SyntheticTexts("novel", n_texts, 64, seed=2))):
        shutil.rmtree(out / name, ignore_errors=True)
        build_cache([teacher], source, out / name, augs=CACHE_AUGS, shard_size=1024, batch_size=256, seed=0,
                    scale=(0.7, 1.0), flip_prob=0.0, num_workers=0 if quick else 2, progress=not quick)
    times["cache"] += time.time() - t
    t = time.time()
    results["unpaired"] = train(load_config(None, common + student_args + [
        f"out={out / 'unpaired'}", f"data.cache={out / 'cache'}", RECIPE, f"data.image_cache={out / 'cache_images'}",
        f"data.text_cache={out / 'cache_texts'}", *UNPAIRED_DATA]), overwrite=True)
    times["unpaired"] = time.time() - t

    print(f"[4/5] baseline: the same {STUDENT}, same images and steps, clip loss only")
    t = time.time()
    results["clip_only"] = train(load_config(None, common + student_args + [
        f"out={out / 'clip_only'}", f"data.size={n_student}", "losses.clip=1.0"]), overwrite=True)
    times["clip_only"] = time.time() - t

    rows = []
    for key, label, arch in (("teacher", "teacher", TEACHER), ("distilled", "student, distilled", STUDENT),
                             ("unpaired", "student, distilled + unpaired", STUDENT),
                             ("clip_only", "student, clip loss only", STUDENT)):
        ev = results[key]["eval"]
        p = _params(out / key / "student")
        rows.append({"model": label, "arch": arch, "params_m": p["total"] / 1e6, "train_s": times[key],
                     "zeroshot_top1": ev["zeroshot_top1"], "zeroshot_novel_top1": ev["zeroshot_novel_top1"],
                     "retrieval_R@1": ev["retrieval_R@1"]})
    print("[5/5] exporting the distilled student (ONNX, Core ML, web, ORT Mobile, LiteRT, ExecuTorch) and checking parity")
    t = time.time()
    exports = export_student(out / "distilled" / "student", out, quick)
    times_export = time.time() - t
    print("[+] the torch-free runtime on the int8 bundle: classify, index, search; latency")
    runtime_rows = runtime_step(out, quick)
    latency_md = latency_step(out, quick)
    report = {"rows": rows, "cache_s": times["cache"], "training_total_s": sum(times.values()),
              "chance_top1": 1 / 36, "teacher_note": "a small ViT CLIP trained here on synthetic data (no downloads)",
              "exports": exports, "export_s": times_export, "runtime": runtime_rows}
    atomic_write_json(out / "report.json", report)
    md = [
        "# mobileclip demo report", "",
        f"Synthetic captioned images (36 colour-shape classes, 64 px). The teacher is `{TEACHER}`, a small "
        "hybrid conv/attention CLIP **trained here from scratch** in a few minutes (no pretrained CLIP can be "
        f"downloaded), not a real pretrained CLIP. Students see {n_student} images; the distilled one "
        f"reads the teacher's cached embeddings ({CACHE_AUGS} augmentations per image) and never runs the teacher; "
        "it trains with the paired part of the recommended recipe (`recipe=kd-unpaired`: kd + feature + 0.25 clip), "
        "the *distilled + unpaired* student with the whole recipe. "
        f"The *distilled + unpaired* student also sees the teacher's embeddings of {n_images} images of the held-out "
        f"colour-shape pairs **without captions** and {n_texts} captions of them **without images** (the losses "
        "unpaired_feature, unpaired_intra_kd, unpaired_cross_kd); the last columns test exactly those pairs, "
        "on other images.", "",
        "| model | arch | params | train s | zero-shot top-1 (held-out images) | zero-shot top-1 (held-out "
        "colour-shape pairs) | retrieval R@1 |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    md += [f"| {r['model']} | `{r['arch']}` | {r['params_m']:.1f}M | {r['train_s']:.0f} | "
           f"{100 * r['zeroshot_top1']:.1f}% | {100 * r['zeroshot_novel_top1']:.1f}% | "
           f"{100 * r['retrieval_R@1']:.1f}% |" for r in rows]
    md += ["", distillation_verdict(rows), "",
           f"Chance: {100 / 36:.1f}% top-1. Cache build: {times['cache']:.0f} s. Training part in all: "
           f"{report['training_total_s']:.0f} s.", ""]
    md += export_table(exports, times_export) + browser_table(exports)
    md += runtime_table(runtime_rows) + latency_md
    with atomic_write(out / "report.md", "w") as f:
        f.write("\n".join(md))
    print("\n".join(md))
    print(f"wrote {out / 'report.md'} and {out / 'report.json'}")
    return report


def distillation_verdict(rows: list) -> str:
    """Whether each distilled student is ahead of the clip-only one on zero-shot *and* retrieval, said plainly."""
    by = {r["model"]: r for r in rows}
    base = by["student, clip loss only"]
    out = []
    for name in ("student, distilled", "student, distilled + unpaired"):
        r = by[name]
        diffs = [(label, 100 * (r[k] - base[k])) for label, k in (
            ("zero-shot top-1 on held-out images", "zeroshot_top1"),
            ("on held-out colour-shape pairs", "zeroshot_novel_top1"), ("retrieval R@1", "retrieval_R@1"))]
        behind = [f"{label} ({d:+.1f} points)" for label, d in diffs if d <= 0]
        ahead = ", ".join(f"{label} {d:+.1f}" for label, d in diffs)
        out.append(f"**The {name.split(', ', 1)[1]} student is {'ahead of' if not behind else 'not ahead of'} the "
                   f"clip-only student on zero-shot and retrieval**" + (
                       f" ({ahead} points)." if not behind else f": it is level or behind on {', '.join(behind)}."))
    return " ".join(out) + (" One seed each: differences of a point or two are within the noise of a single run "
                            "(the real-data benchmark measures seeds: benchmarks/results/distill_real.md).")


def int8_recipe(fmt: str, calib: dict) -> dict:
    """The export options of the int8 recipe a user of ``fmt`` gets by default: static (calibrated on ``calib``)
    where it is not refused, else dynamic; where both are refused (benchmarks/results/precision/summary.md), the
    dynamic one with ``accept_int8_loss``, so the demo shows its miss."""
    from .. import backends

    refused = backends.get(fmt).int8_refused
    if "static" not in refused:
        return dict(calib, quant="static")
    if "dynamic" not in refused:
        return {"quant": "dynamic"}
    return {"quant": "dynamic", "accept_int8_loss": True}


def export_student(student: Path, out: Path, quick: bool = False) -> list:
    """Export ``student`` to the demo's bundles and check each against PyTorch on held-out images.

    A parity miss does not stop the demo: it is recorded in the report (and the bundle's
    ``parity.json``) for the reader to see.
    """
    from .. import backends
    from ..data import write_synthetic
    from ..errors import MobileCLIPError
    from ..export import export

    data = out / "data"
    write_synthetic(data / "heldout", 16 if quick else 64, split="val", seed=1, overwrite=True)
    write_synthetic(data / "calib", 16 if quick else 64, split="train", seed=2, overwrite=True)
    calib = {"calib": str(data / "calib")}
    jobs = [("onnx", "fp32", {}), ("onnx", "int8", int8_recipe("onnx", calib)), ("coreml", "fp16", {}),
            ("web", "fp32", {})]
    if not quick:   # the on-device formats for Android (and ORT Mobile apps); the quick run keeps to the above
        jobs += [("ort", "int8", int8_recipe("ort", calib)), ("litert", "fp32", {}),
                 ("litert", "int8", int8_recipe("litert", calib)),
                 ("executorch", "fp32", {}), ("executorch", "int8", int8_recipe("executorch", calib))]
    ready = []
    for fmt, precision, extra in jobs:
        try:
            backends.get(fmt).prepare_export()
        except MobileCLIPError as e:   # its tools are not installed here: said, not hidden
            print(f"skipping the {fmt} export: {e}")
            continue
        ready.append((backends.get(fmt).label or fmt, fmt, precision, extra))
    jobs = ready
    rows = []
    for label, fmt, precision, extra in jobs:
        dest = out / "bundles" / f"{fmt}-{precision}"
        m = export(str(student), dest, fmt=fmt, precision=precision, max_batch=8, data=str(data / "heldout"),
                   overwrite=True, allow_mismatch=True, **extra)
        parity = json.loads((dest / "parity.json").read_text())
        size = sum(_size(dest / a["file"]) for a in m["artifacts"].values())
        cos = {t: min((r["min_cosine"] for r in parity[t]), default=None) for t in ("image", "text")}
        recipe = (extra["quant"] + (", refused by default" if extra.get("accept_int8_loss") else "")
                  if extra.get("quant") else None)
        shown = precision + (f" ({recipe})" if recipe else "")
        rows.append({"bundle": str(dest), "format": label, "precision": precision, "recipe": recipe, "mb": size / 1e6,
                     "passed": parity["passed"], "misses": parity["misses"], "mode": parity.get("mode"),
                     "image_min_cosine": cos["image"], "text_min_cosine": cos["text"],
                     "top1_agreement": parity.get("top1_agreement"), "browser": parity.get("browser")})
        print(f"  {label} {shown}: {size / 1e6:.1f} MB, parity " + ("passed" if parity["passed"] else
                                                                          "FAILED: " + "; ".join(parity["misses"])))
    return rows


def runtime_step(out: Path, quick: bool = False) -> dict:
    """Classify held-out images and search an index of them with the torch-free runtime."""
    from .. import runtime
    from ..data.synthetic import classnames

    model = runtime.load(out / "bundles" / "onnx-int8")
    folder = out / "data" / "heldout"
    images = sorted(folder.rglob("*.png"))
    picks = images[:: max(1, len(images) // (4 if quick else 8))][: 4 if quick else 8]
    labels = classnames()
    classified = []
    for path in picks:
        top = model.classify(path, labels, top=1)[0]
        truth = path.parent.name.replace("_", " ")
        classified.append({"image": str(path.relative_to(out)), "truth": truth, "predicted": top[0],
                           "probability": float(top[1])})
        print(f"  {path.relative_to(out)}: {top[0]} ({100 * top[1]:.0f}%), truth {truth}")
    index = runtime.ImageIndex.build(model, folder, progress=False)
    index.save(out / "heldout.idx")
    query = "a photo of a red circle."
    hits = runtime.ImageIndex.load(out / "heldout.idx").search(query, k=5)
    found = [{"image": os.path.relpath(p, folder), "score": float(sc)} for p, sc in hits]
    for h in found:
        print(f"  search {query!r}: {h['image']} ({h['score']:.3f})")
    return {"classified": classified, "query": query, "hits": found, "indexed": len(index)}


def runtime_table(rows: dict) -> list:
    md = ["## The torch-free runtime (int8 bundle)", "",
          "| held-out image | truth | predicted | probability |", "|---|---|---|---:|"]
    md += [f"| `{c['image']}` | {c['truth']} | {c['predicted']} | {100 * c['probability']:.0f}% |"
           for c in rows["classified"]]
    md += ["", f"Text search over an index of the {rows['indexed']} held-out images, query "
           f"\"{rows['query']}\" (top 5):", "", "| image | cosine |", "|---|---:|"]
    md += [f"| `{h['image']}` | {h['score']:.3f} |" for h in rows["hits"]]
    return md + [""]


def latency_step(out: Path, quick: bool = False) -> list:
    """``mobileclip bench`` over the bundles this machine can run and the PyTorch student; its table for the report."""
    from .bench import main as bench

    runs = ["--min-runs", "3", "--min-seconds", "0", "--warmup", "1"] if quick else [
        "--min-runs", "20", "--min-seconds", "1"]
    from .. import backends
    from ..backends.bundle import load_manifest

    bundles, engines = [], ["torch"]
    for d in sorted((out / "bundles").iterdir()):   # every bundle whose engine runs on this machine
        backend = backends.get(load_manifest(d)["artifacts"]["image"]["backend"])
        if backend.unavailable() is None:
            bundles.append(str(d))
            engines += [backend.runtime] if backend.runtime not in engines else []
    bench([*bundles, "--model", str(out / "distilled" / "student"), "--runtime", ",".join(engines),
           "--batch", "1,8", "--threads", "2", *runs, "--out", str(out / "bench")])
    table = (out / "bench" / "bench.md").read_text().splitlines()
    return ["## Latency (`mobileclip bench`)", "", f"Full output: `{out / 'bench'}` (JSON, plots).", ""] + [
        ln for ln in table if not ln.startswith("# ")] + [""]


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def export_table(rows: list, seconds: float) -> list:
    def num(v, fmt):
        return format(v, fmt) if v is not None else "—"

    md = ["## The distilled student, exported", "",
          f"Checked against PyTorch on held-out images ({seconds:.0f} s for all exports and checks). Core ML "
          "cannot run off macOS: there the check is the model spec plus the same graph run in fp16 in PyTorch.", "",
          "| bundle | precision | size | image min cosine | text min cosine | zero-shot top-1 agreement | parity |",
          "|---|---|---:|---:|---:|---:|---|"]
    md += [f"| {r['format']} | {r['precision']}" + (f" ({r['recipe']})" if r.get("recipe") else "")
           + f" | {r['mb']:.1f} MB | {num(r['image_min_cosine'], '.5f')} | "
           f"{num(r['text_min_cosine'], '.5f')} | "
           + (f"{100 * r['top1_agreement']:.1f}%" if r["top1_agreement"] is not None else "—") + " | "
           + ("passed" if r["passed"] else "FAILED: " + "; ".join(r["misses"]))
           + (" (spec + PyTorch fp16 check; Core ML predictions need macOS)"
              if r["mode"] and r["mode"].startswith("spec") else "") + " |" for r in rows]
    return md + [""]


def browser_table(rows: list) -> list:
    """The web bundle in headless Chromium: its parity and each tower's latency beside native ONNX Runtime."""
    web = [r for r in rows if r.get("browser") is not None]
    if not web:
        return []
    b = web[0]["browser"]
    md = ["## In the browser (web bundle)", ""]
    if "skipped" in b:
        return md + [f"Browser parity skipped: {b['skipped']}.", ""]
    px = b["pixels"]
    md += [f"The bundle's own page (`mobileclip serve {web[0]['bundle']}`) in headless Chromium {b['chromium']}, "
           f"onnxruntime-web {b['onnxruntime_web']} (WASM, {b['threads']} threads), on {len(px['files'])} image files "
           f"(PNG, JPEG, transparent, EXIF-rotated): token ids {'equal' if b['tokens_equal'] else 'DIFFER'} to the "
           f"source's; image min cosine {b['image']['min_cosine']:.6f}, text {b['text']['min_cosine']:.6f}; zero-shot "
           f"top-1 agreement {100 * b['top1_agreement']:.1f}%; the JS preprocessing gave the runtime's pixels exactly "
           f"on {px['png_exact']} of {px['png']} PNGs (largest difference on any file {px['max_abs_vs_runtime']:.2g}); "
           f"files fetched from outside the bundle: {len(b['requests']['outside_bundle'])}. "
           + ("Parity passed." if not b["misses"] else "Parity FAILED: " + "; ".join(b["misses"])), "",
           "| tower | Chromium WASM p50 | native ONNX Runtime p50 | ratio |", "|---|---:|---:|---:|"]
    lat = b["latency"]
    for t in ("image", "text"):
        w, n = lat["browser"][t]["p50_ms"], lat["native_onnxruntime"][t]["p50_ms"]
        md.append(f"| {t} | {w:.2f} ms | {n:.2f} ms | {w / n:.1f}x |")
    return md + ["", f"Batch 1, {b['threads']} threads on both sides, {lat['browser']['image']['runs']} runs each.", ""]


def cmd_demo(args) -> int:
    run_demo(Path(args.out))
    return 0


def register(sub) -> None:
    """Add ``demo`` to an argparse sub-parsers object."""
    s = sub.add_parser("demo", help="the embedded end-to-end demo (no downloads)")
    s.add_argument("--out", default="runs/demo")
    s.set_defaults(func=cmd_demo)


if __name__ == "__main__":
    run_demo(Path("runs/demo"))
