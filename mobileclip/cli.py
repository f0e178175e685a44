"""The `mobileclip` command line."""
from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from . import backends
from .errors import MobileCLIPError


def _device(arg: Optional[str]):
    import torch

    if arg:
        return torch.device(arg)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _write_json(path: Optional[str], data: dict) -> None:
    if path:
        from .checkpoint import atomic_write_json

        atomic_write_json(path, data)
        print(f"wrote {path}")


def _fmt_m(n) -> str:
    return f"{n / 1e6:.1f}M" if n else "?"


def cmd_models(args) -> int:
    from .catalog import student_rows, teacher_rows

    rows = student_rows()
    if not args.students_only:
        rows += teacher_rows()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    head = f"{'name':<38} {'role':<13} {'image':>5} {'ctx':>4} {'embed':>5} {'image params':>12} {'text params':>11}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['name']:<38} {r['role']:<13} {str(r['image_size'] or '?'):>5} {str(r['context_length'] or '?'):>4} "
              f"{str(r['embed_dim'] or '?'):>5} {_fmt_m(r.get('image_params')):>12} {_fmt_m(r.get('text_params')):>11}")
    print("\nTeachers: open_clip:<arch>[:<pretrained tag or weights file>] for any open_clip architecture"
          + (" (leave out --students-only to list them)" if args.students_only else
             " ('?': needs a Hugging Face text tower to count)")
          + ", hf:<dir or hub id> for a transformers CLIPModel, or any checkpoint directory.")
    return 0


def _load(args):
    from .factory import create_model

    model, preprocess, tokenizer = create_model(args.model, pretrained=args.pretrained)
    device = _device(args.device)
    return model.to(device), preprocess, tokenizer, device


def _read_templates(path: Optional[str]):
    from .runtime.commands import read_templates
    from .zeroshot import TEMPLATES

    return read_templates(path, default=TEMPLATES)


def cmd_zeroshot(args) -> int:
    from .data import ImageFolderDataset
    from .zeroshot import evaluate_zeroshot

    templates = _read_templates(args.templates)
    model, preprocess, tokenizer, device = _load(args)
    dataset = ImageFolderDataset(args.data, transform=preprocess)
    t0 = time.time()
    res = evaluate_zeroshot(model, tokenizer, dataset, templates=templates, batch_size=args.batch_size,
                            num_workers=args.workers, device=device)
    res.update(model=args.model, data=str(args.data), templates=len(templates), seconds=round(time.time() - t0, 2))
    print(f"zero-shot on {res['n']} images, {res['classes']} classes: top-1 {100 * res['top1']:.2f}%  "
          f"top-5 {100 * res['top5']:.2f}%" + (f"  ({res['skipped']} unreadable images skipped)" if res["skipped"] else ""))
    _write_json(args.json, res)
    return 0


def cmd_retrieval(args) -> int:
    from .data import CaptionDataset
    from .zeroshot import evaluate_retrieval

    model, preprocess, tokenizer, device = _load(args)
    dataset = CaptionDataset(args.data, image_root=args.image_root, transform=preprocess)
    res = evaluate_retrieval(model, tokenizer, dataset, batch_size=args.batch_size, num_workers=args.workers,
                             device=device)
    res.update(model=args.model, data=str(args.data))
    print(f"retrieval on {res['images']} images / {res['texts']} captions: "
          + "  ".join(f"{k} {100 * v:.2f}%" for k, v in res.items() if "R@" in k and not k.startswith("mean"))
          + (f"  ({res['skipped']} unreadable images skipped)" if res["skipped"] else ""))
    _write_json(args.json, res)
    return 0


def cmd_synth(args) -> int:
    from .data import write_synthetic

    info = write_synthetic(args.out, args.n, split=args.split, image_size=args.image_size, seed=args.seed,
                           two_object_prob=args.two_object_prob)
    print(f"wrote {info['images']} {info['split']} images in {info['classes']} class folders to {info['root']} "
          f"(+ captions.csv)")
    return 0


def cmd_distill(args) -> int:
    from .distill import load_config, train

    cfg = load_config(args.config, args.overrides)
    summary = train(cfg, resume=args.resume, overwrite=args.overwrite)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary.get("eval", {}), indent=2))
        print(f"student checkpoint: {summary.get('student')}")
    return 0


def cmd_cache_teacher(args) -> int:
    import torch

    from .distill.cache import build_cache
    from .distill.data import CaptionPairs, SyntheticPairs, WebDatasetPairs
    from .teachers import load_teacher

    from .distill.cache import check_cache_args

    check_cache_args(args.augs, args.shard_size, args.batch_size, args.scale, (3 / 4, 4 / 3), args.flip_prob)
    if args.data == "synthetic" and args.size < 1:
        raise MobileCLIPError(f"--size is the number of synthetic images and must be at least 1, got {args.size}")
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    device = _device(args.device)
    if device.type == "cuda" and world > 1:
        device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
    if args.data == "synthetic":
        source = SyntheticPairs("train", args.size, args.image_size, args.seed, args.two_object_prob)
    elif args.data.endswith(".tar") or "{" in args.data:
        source = WebDatasetPairs(args.data)
    else:
        source = CaptionPairs(args.data, args.image_root)
    teachers = [load_teacher(t, device=device) for t in args.teacher]
    build_cache(teachers, source, args.out, augs=args.augs, shard_size=args.shard_size, batch_size=args.batch_size,
                seed=args.seed, scale=tuple(args.scale), flip_prob=args.flip_prob, device=device, rank=rank,
                world=world, num_workers=args.workers)
    return 0


def _parity_line(p: dict) -> str:
    agree = p.get("top1_agreement")
    return (("passed" if p["passed"] else "FAILED: " + "; ".join(p["misses"]))
            + (f" (zero-shot top-1 agreement {100 * agree:.1f}%)" if agree is not None else "")
            + (f" [{p['mode']}]" if p.get("mode") and p["mode"] != "predictions" else ""))


def cmd_export(args) -> int:
    from .export import export

    try:
        m = export(args.model, args.out, fmt=args.format, precision=args.precision, fixed_batch=args.fixed_batch,
                   exporter=args.exporter, token_dtype=args.token_dtype, max_batch=args.max_batch, data=args.data,
                   calib=args.calib, calib_size=args.calib_size, quant=args.quant, compress=args.compress,
                   overwrite=args.overwrite, allow_mismatch=args.allow_mismatch, seed=args.seed,
                   workspace_gb=args.workspace_gb, timing_cache=args.timing_cache, pretrained=args.pretrained)
    except ModuleNotFoundError as e:
        from . import DISTRIBUTION

        top = (e.name or "").split(".")[0]
        extra = {"coremltools": "coreml", "tensorrt": "tensorrt"}.get(top, _EXTRA_OF.get(top, "onnx"))
        extra = "onnx" if extra == "runtime" else extra
        raise MobileCLIPError(f"export --format {args.format} needs the {extra} extra: "
                              f"pip install '{DISTRIBUTION}[{extra}]' ({e})") from e
    print(f"wrote {args.out}: {', '.join(a['file'] for a in m['artifacts'].values())}; parity "
          + _parity_line(m["parity"]))
    return 0 if m["parity"]["passed"] else 1


def cmd_validate(args) -> int:
    from .export import validate

    r = validate(args.bundle, data=args.data, allow_mismatch=True, max_batch=args.max_batch, report=args.report)
    for tower in ("image", "text"):
        for row in r[tower]:
            print(f"{tower:5} batch {row['batch']:4}: min cosine {row['min_cosine']:.7f}  "
                  f"mean {row['mean_cosine']:.7f}  max-abs {row['max_abs_diff']:.2e}")
    print("parity " + _parity_line(r) + f"; report: {r['report_path']} (the bundle is not modified)")
    if not r["passed"] and args.allow_mismatch:
        return 0
    return 0 if r["passed"] else 1


def cmd_convert(args) -> int:
    from .convert import convert_checkpoint

    r = convert_checkpoint(args.src, args.out, model=args.model, overwrite=args.overwrite)
    print(f"wrote {r['out']}: {r['model']} converted from {args.src} ({r['layout']} layout, sha256 "
          f"{r['sha256'][:12]}…); load it with mobileclip.create_model({r['out']!r})")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(Path(args.out))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mobileclip", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("models", help="list students and teachers with parameters and image size")
    s.add_argument("--students-only", action="store_true", help="leave out the open_clip teacher architectures")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=cmd_models)

    def model_args(s):
        s.add_argument("--model", required=True, help="registered name, open_clip:/hf:/py: teacher spec, or checkpoint dir")
        s.add_argument("--pretrained", default=None,
                       help="weights for a registered name: our checkpoint (dir or file), Apple's mobileclip_*.pt, "
                            "or an open_clip MobileCLIP/MobileCLIP2 file")
        s.add_argument("--batch-size", type=int, default=64)
        s.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
        s.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when present)")
        s.add_argument("--json", default=None, metavar="PATH", help="write the results as JSON")

    s = sub.add_parser("zeroshot", help="zero-shot top-1/top-5 on an image folder (one sub-folder per class)")
    model_args(s)
    s.add_argument("--data", required=True, help="image folder: DATA/<class name>/<images>")
    s.add_argument("--templates", default=None, help="file with one prompt template per line ('{}' = class)")
    s.set_defaults(func=cmd_zeroshot)

    s = sub.add_parser("retrieval", help="image<->text recall@1/5/10 on a CSV/TSV/JSONL of image,caption")
    model_args(s)
    s.add_argument("--data", required=True, help="caption file (.csv, .tsv, .jsonl)")
    s.add_argument("--image-root", default=None, help="folder relative image paths start from (default: the file's)")
    s.set_defaults(func=cmd_retrieval)

    s = sub.add_parser("synth", help="write synthetic captioned images as an image folder + captions.csv")
    s.add_argument("--out", required=True)
    s.add_argument("--n", type=int, default=1000)
    s.add_argument("--split", choices=["train", "val", "novel"], default="val")
    s.add_argument("--image-size", type=int, default=64)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--two-object-prob", type=float, default=0.0)
    s.set_defaults(func=cmd_synth)

    s = sub.add_parser("distill", help="train a student (distillation and/or contrastive losses)")
    s.add_argument("--config", default=None, help="YAML config; keys as in mobileclip.distill.TrainConfig")
    s.add_argument("--resume", default=None, help="a run's out dir or its last/ checkpoint")
    s.add_argument("--overwrite", action="store_true",
                   help="replace the run already in out= (without it, an existing run directory is refused)")
    s.add_argument("overrides", nargs="*", help="key=value overrides, e.g. student=mobileclip-s0 losses.kd=0.75")
    s.set_defaults(func=cmd_distill)

    s = sub.add_parser("cache-teacher", help="run teachers once over a dataset with K augmentations; store embeddings")
    s.add_argument("--teacher", action="append", required=True,
                   help="teacher spec (repeat for an ensemble): open_clip:ARCH[:TAG|FILE], hf:DIR, checkpoint dir")
    s.add_argument("--data", required=True,
                   help="'synthetic', a caption file (.csv/.tsv/.jsonl), or WebDataset shards ('shards/{000..099}.tar')")
    s.add_argument("--image-root", default=None)
    s.add_argument("--out", required=True)
    s.add_argument("--augs", type=int, default=4, help="augmentations per image (K)")
    s.add_argument("--shard-size", type=int, default=1024)
    s.add_argument("--batch-size", type=int, default=128)
    s.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    s.add_argument("--device", default=None)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--scale", type=float, nargs=2, default=(0.5, 1.0), help="crop area range")
    s.add_argument("--flip-prob", type=float, default=0.5)
    s.add_argument("--size", type=int, default=10000, help="synthetic: number of images")
    s.add_argument("--image-size", type=int, default=64, help="synthetic: rendered size")
    s.add_argument("--two-object-prob", type=float, default=0.35)
    s.set_defaults(func=cmd_cache_teacher)

    s = sub.add_parser("convert", help="convert released weights (Apple's mobileclip_*.pt, open_clip MobileCLIP/"
                                       "MobileCLIP2 files) into one of our checkpoints")
    s.add_argument("src", help="weights file: .pt/.pth/.bin (read with weights_only=True) or .safetensors")
    s.add_argument("--model", default=None, help="registered model name (default: detected from the keys)")
    s.add_argument("--out", required=True, help="checkpoint directory to write (config.json + model.safetensors)")
    s.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    s.set_defaults(func=cmd_convert)

    s = sub.add_parser("export", help="export both towers to a bundle and check parity with PyTorch")
    s.add_argument("model", help="checkpoint directory; a registered name (random weights, seeded by --seed); "
                                 "open_clip:<arch>[:<tag or weights file>]; or hf:<CLIPModel directory>")
    s.add_argument("--pretrained", default=None,
                   help="weights for a registered MODEL: our checkpoint, Apple's mobileclip_*.pt, or an open_clip "
                        "MobileCLIP/MobileCLIP2 file (converted on load)")
    s.add_argument("--format", default="onnx", choices=backends.names(),
                   help="artifact format (a backend of mobileclip.backends)")
    s.add_argument("--precision", default="fp32", choices=backends.all_precisions(),
                   help="fp16 keeps fp32 inputs/outputs and LayerNorm/Softmax/reductions in fp32; int8: see --quant")
    s.add_argument("--out", required=True)
    s.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    s.add_argument("--fixed-batch", type=int, default=0, help="a fixed batch size instead of a dynamic one")
    s.add_argument("--max-batch", type=int, default=32,
                   help="largest batch the parity check runs (and TensorRT's profile / Core ML's range allow)")
    s.add_argument("--exporter", default="dynamo", choices=["dynamo", "legacy"])
    s.add_argument("--token-dtype", default="int32", choices=["int32", "int64"])
    s.add_argument("--quant", default="auto", choices=["auto", "dynamic", "static"],
                   help="int8 method for the image tower: static QDQ calibrated on --calib, or dynamic; "
                        "auto = static when --calib is given")
    s.add_argument("--calib", default=None, help="image folder for static int8 calibration (real images)")
    s.add_argument("--calib-size", type=int, default=64, help="calibration images to use")
    s.add_argument("--compress", default="none",
                   choices=["none", "palettize4", "palettize6", "palettize8", "int8"],
                   help="Core ML weight compression")
    s.add_argument("--workspace-gb", type=float, default=4.0, help="TensorRT builder workspace limit")
    s.add_argument("--timing-cache", default=None, help="TensorRT timing cache file, reused across builds")
    s.add_argument("--data", default=None, help="image folder for the parity check (default: synthetic images)")
    s.add_argument("--allow-mismatch", action="store_true", help="exit 0 even when parity fails")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("validate", help="re-check a bundle against PyTorch; non-zero exit when it fails")
    s.add_argument("bundle")
    s.add_argument("--data", default=None, help="image folder (default: synthetic images)")
    s.add_argument("--max-batch", type=int, default=32)
    s.add_argument("--allow-mismatch", action="store_true", help="exit 0 even when parity fails")
    s.add_argument("--report", default=None,
                   help="where to write the JSON report (default: BUNDLE.validate.json beside the bundle; "
                        "validate never modifies the bundle)")
    s.set_defaults(func=cmd_validate)

    from .runtime.commands import add_commands as add_runtime_commands

    add_runtime_commands(sub)  # classify, index, search: the torch-free runtime
    from .benchmarks.harness import add_commands as add_bench_commands

    add_bench_commands(sub)  # bench: models x runtimes x precisions x batch sizes

    s = sub.add_parser("demo", help="the embedded end-to-end demo (no downloads)")
    s.add_argument("--out", default="runs/demo")
    s.set_defaults(func=cmd_demo)
    return p


# Which extra installs a missing module (for the one-line error that names it).
_EXTRA_OF = {"torch": "train", "torchvision": "train", "timm": "train", "open_clip": "train",
             "transformers": "train", "safetensors": "train", "webdataset": "train", "braceexpand": "train",
             "onnx": "onnx", "onnxscript": "onnx", "onnxruntime": "runtime", "coremltools": "coreml",
             "tensorrt": "tensorrt", "matplotlib": "bench", "regex": "runtime", "ftfy": "runtime"}
# OS errors that are about the user's paths or disk, not about this program.
_USER_ERRNOS = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR, errno.ENOSPC,
                errno.EDQUOT, errno.EROFS, errno.ENAMETOOLONG, errno.ELOOP, errno.EEXIST, errno.ENOTEMPTY}


def user_error(e: BaseException) -> Optional[str]:
    """The one-line message for an error the user can fix, or None for a bug (which keeps its traceback)."""
    if isinstance(e, MobileCLIPError):
        return str(e)
    if isinstance(e, ModuleNotFoundError) and e.name:
        top = e.name.split(".")[0]
        if top in _EXTRA_OF:
            from . import DISTRIBUTION

            return (f"this command needs {top}, which is not installed: pip install "
                    f"'{DISTRIBUTION}[{_EXTRA_OF[top]}]'")
        return None
    if isinstance(e, OSError) and e.errno in _USER_ERRNOS:
        where = f" {e.filename!r}" if e.filename else ""
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            return f"no space left on the device{' writing' + where if where else ''}; free some space and run again"
        return f"{e.strerror or e}:{where}" if where else str(e)
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # `mobileclip models | head`
        sys.stderr.close()
        return 0
    except (MobileCLIPError, ModuleNotFoundError, OSError) as e:
        msg = user_error(e)
        if msg is None:
            raise
        print(f"mobileclip: error: {' '.join(msg.split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mobileclip: interrupted", file=sys.stderr)
        return 130
