"""Training data pipeline throughput: samples/s per CPU core from JPEG files to the student's batch.

    .venv/bin/python -m mobileclip.benchmarks.data_throughput [--student mobileclip-s0] [--images 256]
        [--samples 512] [--batch 32] [--rounds 3] [--workers 0 1 2] [--out benchmarks/results]

What it reads: ``--images`` JPEGs of 500x375 px (quality 90, 4:2:0), each a random crop (60-100 % of
the width, random flip) of one of the real photographs that installed packages ship
(scikit-learn's ``china.jpg`` and ``flower.jpg``, matplotlib's ``grace_hopper.jpg``), resized to
500x375 — decode speed depends on content, so these are photos, not synthetic images. They are
written once to a temporary folder as a captions CSV and as WebDataset shards (4 shards); every
sample has its own caption.

Each configuration is :class:`mobileclip.distill.samples.TrainSamples` read through a DataLoader with
``collate_train`` and the trainer's ``StepBatches`` sampler, as the trainer reads it (no teacher
cache: augmentations are drawn per sample; student ``mobileclip-s0`` at 256 px). The levers are
added one at a time, cumulatively: the baseline (the old default, and the old collate), then the
new collate (shared memory), uint8 images, pre-tokenized captions, JPEG draft decoding, torch's
resize, torchvision's JPEG decoder, simplejpeg's instead; the last rows combine the exact levers only. Each is timed with
0 workers (the main process does everything: one core), 1 worker and 2 workers; samples/s per core
is samples/s for 0 and 1 worker and samples/s / 2 for 2 workers. Configurations are interleaved in
``--rounds`` rounds and the median is reported, because the machine's cores may be shared. The time
to the first batch (worker start) is reported separately — the cost ``persistent_workers`` would
save per new iterator. A second, smaller table shows draft decoding where it applies (1024x768
JPEGs, the photos upscaled).

Writes ``data_throughput.json`` and ``.md``.
"""
from __future__ import annotations

import argparse
import csv
import importlib.util
import io
import json
import os
import statistics
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

IMAGE_SIZE = (500, 375)


def photo_paths() -> list:
    """Real photographs shipped by installed packages (no download): scikit-learn's sample images and
    matplotlib's Grace Hopper portrait. Empty when neither package is installed."""
    out = []
    for pkg, rel in (("sklearn", ("datasets", "images", "china.jpg")),
                     ("sklearn", ("datasets", "images", "flower.jpg")),
                     ("matplotlib", ("mpl-data", "sample_data", "grace_hopper.jpg"))):
        spec = importlib.util.find_spec(pkg)
        for root in (spec.submodule_search_locations or []) if spec else []:
            p = Path(root, *rel)
            if p.is_file():
                out.append(p)
                break
    return out


def photos() -> tuple:
    """``(list of PIL RGB photos, description)``; falls back to synthetic images, upscaled and textured, when no
    photo is installed."""
    paths = photo_paths()
    if paths:
        return ([Image.open(p).convert("RGB") for p in paths],
                "real photos: " + ", ".join(f"{p.parent.parent.parent.name}/{p.name}" for p in paths))
    from mobileclip.data.synthetic import SyntheticGenerator

    gen, rng = SyntheticGenerator("train", 128, 0), np.random.default_rng(0)
    ims = []
    for i in range(3):
        a = np.asarray(Image.fromarray(gen[i].image).resize((640, 480), Image.BICUBIC), np.float32)
        a += rng.normal(0, 12, a.shape)
        ims.append(Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)))
    return ims, "synthetic images upscaled to 640x480 with Gaussian noise (no photo installed)"


def make_jpeg(photo: Image.Image, rng: np.random.Generator, size: tuple = IMAGE_SIZE, quality: int = 90) -> bytes:
    """A JPEG of ``size``: a random crop (60-100 % of the width, the aspect of ``size``) of ``photo``, maybe flipped."""
    W, H = photo.size
    aspect = size[0] / size[1]
    w = int(W * rng.uniform(0.6, 1.0))
    h = int(w / aspect)
    if h > H:
        h = H
        w = int(h * aspect)
    x, y = int(rng.integers(0, W - w + 1)), int(rng.integers(0, H - h + 1))
    im = photo.crop((x, y, x + w, y + h)).resize(size, Image.BICUBIC)
    if rng.random() < 0.5:
        im = im.transpose(Image.FLIP_LEFT_RIGHT)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)  # Pillow's default chroma subsampling: 4:2:0
    return buf.getvalue()


ADJ = ("red", "small", "old", "bright", "wooden", "busy", "quiet", "tall", "striped", "wet", "dark", "sunny")
NOUN = ("building", "flower", "woman", "bridge", "garden", "street", "boat", "tower", "portrait", "field", "roof")
PLACE = ("in the city", "at night", "in spring", "near a river", "on a hill", "in a museum", "by the sea")


def caption(i: int) -> str:
    """A distinct caption for sample ``i``."""
    return (f"a photo of a {ADJ[i % len(ADJ)]} {NOUN[(i // len(ADJ)) % len(NOUN)]} "
            f"{PLACE[(i // (len(ADJ) * len(NOUN))) % len(PLACE)]}, number {i}")


def write_dataset(root: Path, n: int, seed: int = 0, shards: int = 4, size: tuple = IMAGE_SIZE) -> dict:
    """``n`` JPEGs of ``size`` + ``captions.csv`` + WebDataset shards ``shard-{0..shards-1}.tar`` under ``root``."""
    ims, what = photos()
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    blobs = [make_jpeg(ims[i % len(ims)], rng, size) for i in range(n)]
    rows = []
    for i, b in enumerate(blobs):
        (root / "images" / f"{i:06d}.jpg").write_bytes(b)
        rows.append((f"images/{i:06d}.jpg", caption(i)))
    with open(root / "captions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "caption"])
        w.writerows(rows)
    per = -(-n // shards)
    for s in range(shards):
        with tarfile.open(root / f"shard-{s}.tar", "w") as tf:
            for i in range(s * per, min(n, (s + 1) * per)):
                for name, data in ((f"{i:06d}.jpg", blobs[i]), (f"{i:06d}.txt", caption(i).encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
    return {"images": n, "content": what, "mean_jpeg_bytes": float(np.mean([len(b) for b in blobs])),
            "shards": f"shard-{{0..{shards - 1}}}.tar"}


def legacy_collate(items: list) -> dict:
    """``collate_train`` before this benchmark: ``torch.stack`` in the worker's own memory."""
    kept = [x for x in items if "skip" not in x]
    batch = {"skipped": [x["skip"] for x in items if "skip" in x]}
    for key in dict.fromkeys(k for x in kept for k in x):
        vals = [x[key] for x in kept if key in x]
        batch[key] = torch.stack(vals) if isinstance(vals[0], torch.Tensor) else torch.tensor(vals)
    return batch


# Cumulative levers: (row name, collate, TrainSamples options); the last row is the best exact combination.
_U8 = {"image_dtype": "uint8"}
_TOK = {**_U8, "pretokenize": True}
_DRAFT = {**_TOK, "draft": True}
_RESIZE = {**_DRAFT, "resize": "torch"}
LEVERS = [
    ("baseline (the old default: float32, tokenized per sample, Pillow)", "legacy", {}),
    ("+ collate into shared memory", "new", {}),
    ("+ uint8 images (normalize on device)", "new", _U8),
    ("+ pre-tokenized captions", "new", _TOK),
    ("+ JPEG draft decoding", "new", _DRAFT),
    ("+ torch resize (±1 level)", "new", _RESIZE),
    ("+ torchvision JPEG decoder", "new", {**_RESIZE, "decoder": "torchvision"}),
    ("+ simplejpeg decoder (instead of torchvision's)", "new", {**_RESIZE, "decoder": "simplejpeg"}),
    ("exact only: uint8 + pre-tokenized + torchvision decoder", "new", {**_TOK, "decoder": "torchvision"}),
    ("exact only: uint8 + pre-tokenized + simplejpeg decoder (the default)", "new", {**_TOK, "decoder": "simplejpeg"}),
    ("uint8 + pre-tokenized + JPEG decoding left to the device (CPU side only)", "new", {**_TOK, "decoder": "device"}),
]
AUG = {"scale": (0.5, 1.0), "ratio": (0.75, 1.3333333), "flip_prob": 0.5}  # the trainer's defaults


def build(source, pp, tok, options: dict):
    from mobileclip.distill.samples import TrainSamples

    t = time.perf_counter()
    ds = TrainSamples(source, pp, tok, seed=0, aug=AUG, **options)
    return ds, time.perf_counter() - t


def measure(ds, collate, workers: int, samples: int, batch: int, device=None, size: int = 256) -> dict:
    """samples/s over ``samples`` samples after the first batch, and the time to the first batch. Batches with
    JPEGs left to the device are not decoded in the timed loop (its samples/s is the CPU side's); with ``device``,
    the first four are then decoded there, timed apart (``device_ms_per_sample``)."""
    from mobileclip.distill.samples import StepBatches

    steps = samples // batch + 1
    sampler = StepBatches(len(ds), batch, steps, seed=0)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, num_workers=workers, collate_fn=collate,
                                         prefetch_factor=4 if workers else None)
    t0 = time.perf_counter()
    it = iter(loader)
    first = next(it)
    t1 = time.perf_counter()
    n, skipped = 0, len(first["skipped"])
    kept = [first]
    for b in it:
        n += len(b["index"])
        skipped += len(b["skipped"])
        if device is not None and len(kept) < 4 and "image_jpeg" in b:
            kept.append(b)
    t2 = time.perf_counter()
    out = {"samples_per_s": n / (t2 - t1), "first_batch_s": t1 - t0, "skipped": skipped}
    if device is not None and "image_jpeg" in first:
        out["device_ms_per_sample"], out["device_cpu_ms_per_sample"] = device_decode_ms(kept, device, size)
    return out


def device_decode_ms(batches: list, device, size: int) -> tuple:
    """``(wall ms, this process's CPU ms)`` per sample to decode, crop and resize batches' deferred JPEGs on
    ``device`` (the trainer's ``to_device`` work beyond the copy), synchronized; the CPU time shows what the
    decoder still does on the host (nvJPEG may decode small images' Huffman data on the CPU). The first batch
    warms up and is not counted."""
    from mobileclip.distill.images import decode_deferred
    from mobileclip.distill.samples import pop_deferred

    from mobileclip.benchmarks.stats import device_sync

    device = torch.device(device)

    def sync():
        device_sync(device)

    total, cpu, samples = 0.0, 0.0, 0
    for j, b in enumerate(batches):
        b = dict(b)
        deferred = pop_deferred(b)
        sync()
        t, c = time.perf_counter(), time.process_time()
        for k, entries in deferred.items():
            decode_deferred(b, k, entries, device, size, "bilinear")
        sync()
        if j:
            total += time.perf_counter() - t
            cpu += time.process_time() - c
            samples += len(b["image"])
    return 1e3 * total / max(1, samples), 1e3 * cpu / max(1, samples)


def pretokenize_cost(tok, n: int = 100_000) -> dict:
    """Time and memory of a TokenTable over ``n`` distinct captions (a caption file of ``n`` rows)."""
    from mobileclip.distill.tokens import TokenTable

    class Captions:
        def __len__(self):
            return n

        def captions(self, i):
            return [caption(i)]

    t = time.perf_counter()
    table = TokenTable(Captions(), tok)
    s = time.perf_counter() - t
    t = time.perf_counter()
    for i in range(0, n, 100):
        tok([caption(i)])[0]
    per_sample = (time.perf_counter() - t) / len(range(0, n, 100))
    return {"captions": n, "init_s": s, "bytes": table.nbytes, "bytes_per_caption": table.nbytes / n,
            "fixed_int32_bytes": n * table.context_length * 4, "per_sample_tokenize_ms": 1e3 * per_sample}


def main() -> None:
    from mobileclip.factory import create_model
    from mobileclip.distill.samples import collate_train
    from mobileclip.distill.sources import CaptionPairs, WebDatasetPairs

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", default="mobileclip-s0")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--samples", type=int, default=512, help="samples timed per configuration")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--sources", nargs="+", default=["captions", "webdataset"], choices=["captions", "webdataset"])
    ap.add_argument("--levers", type=int, nargs="*", default=None, help="indices into the lever list (default all)")
    ap.add_argument("--draft-size", type=int, nargs=2, default=[1024, 768],
                    help="the draft demo's JPEG size (0 0: no demo): where draft decoding applies")
    ap.add_argument("--pretokenize-captions", type=int, default=100_000,
                    help="distinct captions in the pre-tokenizing cost measurement")
    ap.add_argument("--device", default="cpu", help="where JPEGs left to the device are decoded (cpu, cuda)")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    torch.set_num_threads(1)  # a DataLoader worker's setting; the main process reads with 0 workers like one
    model, pp, tok = create_model(args.student)
    del model
    levers = [LEVERS[i] for i in args.levers] if args.levers else LEVERS
    collates = {"legacy": legacy_collate, "new": collate_train}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = write_dataset(root, args.images)
        sources = {"captions": lambda: CaptionPairs(str(root / "captions.csv")),
                   "webdataset": lambda: WebDatasetPairs(str(root / data["shards"]))}
        datasets, init = {}, {}
        for src in args.sources:
            source = sources[src]()
            for name, coll, opts in levers:
                datasets[src, name], init[src, name] = build(source, pp, tok, opts)
        times: dict = {}
        for r in range(args.rounds):
            for src in args.sources:
                for w in args.workers:
                    for name, coll, opts in levers:
                        m = measure(datasets[src, name], collates[coll], w, args.samples, args.batch,
                                    args.device if opts.get("decoder") == "device" else None, pp.cfg.image_size)
                        times.setdefault((src, name, w), []).append(m)
            print(f"round {r + 1}/{args.rounds} done", flush=True)
        demo = None
        if args.draft_size[0]:
            # Draft decoding where it applies: larger JPEGs (the photos upscaled), captions, 0 workers.
            droot = root / "large"
            ddata = write_dataset(droot, 64, seed=1, size=tuple(args.draft_size))
            dsrc = CaptionPairs(str(droot / "captions.csv"))
            dsets = {"uint8 + pre-tokenized": build(dsrc, pp, tok, _TOK)[0],
                     "+ JPEG draft decoding": build(dsrc, pp, tok, _DRAFT)[0],
                     "+ torch resize + torchvision decoder": build(dsrc, pp, tok, {**_RESIZE,
                                                                                    "decoder": "torchvision"})[0]}
            dt: dict = {}
            for r in range(args.rounds):
                for name, ds in dsets.items():
                    dt.setdefault(name, []).append(measure(ds, collate_train, 0, args.samples // 2, args.batch))
            demo = {"size": args.draft_size, "images": 64, "mean_jpeg_bytes": ddata["mean_jpeg_bytes"],
                    "reduced": dsets["+ JPEG draft decoding"].images.reduced,
                    "decoded": dsets["+ JPEG draft decoding"].images.decoded,
                    "rows": [{"configuration": n, "w0_samples_per_s": statistics.median(m["samples_per_s"] for m in v),
                              "w0_runs": [round(m["samples_per_s"], 1) for m in v]} for n, v in dt.items()]}
        drafted = [name for name, _, opts in levers if opts.get("draft")]
        reduced = {src: sum(datasets[src, n].images.reduced for n in drafted) for src in args.sources}
        decoded = {src: sum(datasets[src, n].images.decoded for n in drafted) for src in args.sources}
    rows = []
    for src in args.sources:
        for name, coll, opts in levers:
            row = {"source": src, "lever": name, "options": opts, "collate": coll,
                   "init_s": init[src, name]}
            for w in args.workers:
                ms = times[src, name, w]
                sps = statistics.median(m["samples_per_s"] for m in ms)
                row[f"w{w}_samples_per_s"] = sps
                row[f"w{w}_per_core"] = sps / max(1, w)
                row[f"w{w}_runs"] = [round(m["samples_per_s"], 1) for m in ms]
                row[f"w{w}_first_batch_s"] = statistics.median(m["first_batch_s"] for m in ms)
                row[f"w{w}_skipped"] = max(m["skipped"] for m in ms)
                for key in ("device_ms_per_sample", "device_cpu_ms_per_sample"):
                    if key in ms[0]:
                        row[f"w{w}_{key}"] = statistics.median(m[key] for m in ms)
            row["skipped"] = max(row[f"w{w}_skipped"] for w in args.workers)
            rows.append(row)
    tok_cost = pretokenize_cost(tok, args.pretokenize_captions)
    from mobileclip.benchmarks.common import environment

    import PIL
    import PIL.features
    import torchvision

    import simplejpeg

    env = environment(torch=torch.__version__, torchvision=torchvision.__version__, pillow=PIL.__version__,
                      libjpeg_turbo=PIL.features.version("libjpeg_turbo"), simplejpeg=simplejpeg.__version__,
                      load=list(os.getloadavg()))
    cmd = (f"python -m mobileclip.benchmarks.data_throughput --student {args.student} --images {args.images} "
           f"--samples {args.samples} --batch {args.batch} --rounds {args.rounds} --workers "
           + " ".join(map(str, args.workers)))
    base = {src: next(r for r in rows if r["source"] == src) for src in args.sources}
    for r in rows:
        for w in args.workers:
            r[f"w{w}_vs_baseline"] = r[f"w{w}_samples_per_s"] / base[r["source"]][f"w{w}_samples_per_s"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"command": cmd, "environment": env, "data": data, "student": args.student, "batch": args.batch,
              "device": args.device,
              "samples_per_config": args.samples, "rounds": args.rounds, "draft_reduced": reduced,
              "draft_decoded": decoded, "draft_demo": demo, "pretokenize": tok_cost, "rows": rows}
    (out / "data_throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    ws = args.workers
    head = " | ".join(f"{w} worker{'s' if w != 1 else ''}: per core (x base)" for w in ws)
    lines = ["# Data pipeline: samples/s per core, JPEG files to the student's batch", "",
             f"`{cmd}` on {env['cpu']} ({env['cores']} cores, shared; load average at the end "
             f"{env['load'][0]:.1f}), torch {env['torch']}, torchvision {env['torchvision']}, Pillow {env['pillow']} "
             f"(libjpeg-turbo {env['libjpeg_turbo']}), simplejpeg {env['simplejpeg']}, {env['date']}.", "",
             f"Data: {data['images']} JPEGs of 500x375 (quality 90, 4:2:0, mean "
             f"{data['mean_jpeg_bytes'] / 1e3:.0f} kB), "
             f"random crops of {data['content']}; a distinct caption per sample. Student `{args.student}` at 256 px "
             f"(bilinear, short side + center crop), random resized crops (scale 0.5-1) and flips, batch "
             f"{args.batch}, {args.samples} samples per configuration after the first batch, median of {args.rounds} "
             "interleaved rounds. 0 workers: the main process does all the work on one core; 2 workers: "
             "samples/s / 2. Levers are cumulative, top to bottom, except the simplejpeg row (replacing torchvision's "
             "decoder), the two 'exact only' rows, and the last row (uint8 and pre-tokenized, with JPEG decoding left "
             "to the training device: `data.decoder=device`). "
             "Between parentheses: samples/s relative to the baseline with the same number of workers.", "",
             f"| source | configuration | {head} |", "|---|---|" + "---:|" * len(ws)]
    for r in rows:
        cells = " | ".join(f"{r[f'w{w}_per_core']:.0f} ({r[f'w{w}_vs_baseline']:.2f}x)" for w in ws)
        lines.append(f"| {r['source']} | {r['lever']} | {cells} |")
    exact = {w: max((r for r in rows if "resize" not in r["options"] and not r["options"].get("draft")
                      and r["options"].get("decoder") != "device"), key=lambda r: r[f"w{w}_per_core"], default=None)
             for w in ws}
    best = {w: max((r for r in rows if r["options"].get("decoder") != "device"), key=lambda r: r[f"w{w}_per_core"],
                   default=None) for w in ws}
    dev_rows = [r for r in rows if r["options"].get("decoder") == "device"]
    if dev_rows:
        gpu = torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda") else None
        lines += ["", "With JPEG decoding left to the device, the workers only read files, check JPEG headers and draw "
                  "the crop, and collate the bytes: that row's samples/s is the "
                  "CPU side's; the decode, crop and resize run where the batch lands (`Trainer.to_device`), timed apart "
                  f"on {'the GPU, ' + gpu + ' (nvJPEG)' if gpu else 'this CPU (libjpeg-turbo; on a GPU it is nvJPEG, not measured here)'}: "
                  + "; ".join(f"{r['source']} {statistics.median(r[f'w{w}_device_ms_per_sample'] for w in ws):.3f} ms "
                              f"per sample, of which the main process's CPU "
                              f"{statistics.median(r[f'w{w}_device_cpu_ms_per_sample'] for w in ws):.3f} ms"
                              for r in dev_rows) + "."]
    skipped = {f"{r['source']}, {r['lever']}": r["skipped"] for r in rows if r["skipped"]}
    lines += ["", "Samples skipped as unreadable (every JPEG here is valid, so any is a bug): " + (
        "; ".join(f"{k}: {v}" for k, v in skipped.items()) if skipped else "none, in every configuration") + "."]
    if all(best.values()) and all(exact.values()):
        lines += ["", "Best per core decoding on the CPU (goal: 800 samples/s per core): " + "; ".join(
            f"{w} worker{'s' if w != 1 else ''} {best[w][f'w{w}_per_core']:.0f} ({best[w]['source']}, "
            f"{best[w][f'w{w}_vs_baseline']:.2f}x)" for w in ws) + ". Exact levers only: " + "; ".join(
            f"{w} worker{'s' if w != 1 else ''} {exact[w][f'w{w}_per_core']:.0f}" for w in ws) + "."]
    lines += ["", f"Draft decoding reduced {sum(reduced.values())} of {sum(decoded.values())} images decoded in the 0-worker "
        "runs: a 500x375 image's crops at 256 px are never twice the target size, so it never applies here."]
    if demo:
        lines += ["", f"Where it applies — {demo['images']} JPEGs of {demo['size'][0]}x{demo['size'][1]} "
                  "(the same photos "
                  f"upscaled, mean {demo['mean_jpeg_bytes'] / 1e3:.0f} kB), captions CSV, 0 workers; "
                  f"{demo['reduced']} of {demo['decoded']} decoded at a reduced scale:", "",
                  "| configuration | samples/s (one core) |", "|---|---:|"]
        lines += [f"| {r['configuration']} | {r['w0_samples_per_s']:.0f} |" for r in demo["rows"]]
    lines += ["", f"Pre-tokenized captions: {tok_cost['captions']} distinct captions take "
              f"{tok_cost['init_s']:.1f} s to "
              f"tokenize at construction and {tok_cost['bytes'] / 1e6:.1f} MB ({tok_cost['bytes_per_caption']:.0f} "
              f"B/caption; a fixed int32 [N, 77] array would take {tok_cost['fixed_int32_bytes'] / 1e6:.0f} MB); "
              f"tokenizing per sample costs {tok_cost['per_sample_tokenize_ms']:.3f} ms.", "",
              "Time to the first batch (worker start), median s: " + "; ".join(
                  f"{w} workers {statistics.median(r[f'w{w}_first_batch_s'] for r in rows):.2f}" for w in ws)
              + " — what `persistent_workers` saves per new iterator (the trainer makes one per run).", "",
              "Pinned memory is not measured by this benchmark" + (
                  " (the trainer pins its batches on a GPU)." if torch.cuda.is_available()
                  else ": this machine has no GPU.")]
    (out / "data_throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
