"""`mobileclip synth`, `distill` and `cache-teacher`: data, training and the teacher cache."""
from __future__ import annotations

import json
import os

from .. import spec as specs
from ..errors import MobileCLIPError
from .common import torch_device


def cmd_synth(args) -> int:
    from ..data import write_synthetic

    info = write_synthetic(args.out, args.n, split=args.split, image_size=args.image_size, seed=args.seed,
                           two_object_prob=args.two_object_prob)
    print(f"wrote {info['images']} {info['split']} images in {info['classes']} class folders to {info['root']} "
          f"(+ captions.csv)")
    return 0


def cmd_distill(args) -> int:
    from ..distill import load_config, train

    cfg = load_config(args.config, args.overrides)
    summary = train(cfg, resume=args.resume, overwrite=args.overwrite)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary.get("eval", {}), indent=2))
        print(f"student checkpoint: {summary.get('student')}")
    return 0


def cmd_cache_teacher(args) -> int:
    import torch

    from ..distill.cache import build_cache, check_cache_args
    from ..distill.sources import (CaptionPairs, ImageFiles, SyntheticImages, SyntheticPairs, SyntheticTexts,
                                   TextLines, WebDatasetPairs)
    from ..scales import check_scale
    from ..factory import load_teacher

    check_cache_args(args.augs, args.shard_size, args.batch_size, args.scale, (3 / 4, 4 / 3), args.flip_prob)
    given = [f for f in ("data", "images", "texts") if getattr(args, f)]
    if len(given) != 1:
        raise MobileCLIPError("cache-teacher needs exactly one of --data (image-caption pairs), --images (images "
                              "without captions) and --texts (texts without images)" +
                              (f"; got {', '.join('--' + g for g in given)}" if given else ""))
    synthetic = getattr(args, given[0]) == "synthetic"
    if synthetic and args.size < 1:
        raise MobileCLIPError(f"--size is the number of synthetic images and must be at least 1, got {args.size}")
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    device = torch_device(args.device)
    if device.type == "cuda" and world > 1:
        device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
    synth_args = (args.split, args.size, args.image_size, args.seed, args.two_object_prob)
    if args.images:
        source = SyntheticImages(*synth_args) if synthetic else ImageFiles(args.images)
    elif args.texts:
        source = SyntheticTexts(*synth_args) if synthetic else TextLines(args.texts)
    elif synthetic:
        source = SyntheticPairs(*synth_args)
    elif args.data.endswith(".tar") or "{" in args.data:
        source = WebDatasetPairs(args.data)
    else:
        source = CaptionPairs(args.data, args.image_root)
    scales = args.teacher_scale or []
    if scales and len(scales) not in (1, len(args.teacher)):
        raise MobileCLIPError(f"--teacher-scale takes one multiplier for every teacher or one per --teacher "
                              f"({len(args.teacher)}), got {len(scales)}")
    for v in scales:   # before any teacher is loaded
        check_scale(v, "--teacher-scale")
    teachers = [load_teacher(t, device=device) for t in args.teacher]
    for i, t in enumerate(teachers if scales else []):
        t.set_scale(scales[i] if len(scales) > 1 else scales[0])
    build_cache(teachers, source, args.out, augs=args.augs, shard_size=args.shard_size, batch_size=args.batch_size,
                seed=args.seed, scale=tuple(args.scale), flip_prob=args.flip_prob, device=device, rank=rank,
                world=world, num_workers=args.workers, precision=args.precision, view=args.view)
    return 0


def register(sub) -> None:
    """Add ``synth``, ``distill`` and ``cache-teacher`` to an argparse sub-parsers object."""
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
                   help=f"teacher spec (repeat for an ensemble): {specs.HELP}")
    s.add_argument("--data", default=None,
                   help="image-caption pairs: 'synthetic', a caption file (.csv/.tsv/.jsonl), or WebDataset shards "
                        "('shards/{000..099}.tar')")
    s.add_argument("--images", default=None,
                   help="images without captions (unpaired): a folder, searched recursively, or 'synthetic'")
    s.add_argument("--texts", default=None,
                   help="texts without images (unpaired): a UTF-8 file with one text per line, or 'synthetic'")
    s.add_argument("--image-root", default=None)
    s.add_argument("--out", required=True)
    s.add_argument("--augs", type=int, default=4, help="augmentations per image (K)")
    s.add_argument("--shard-size", type=int, default=1024)
    s.add_argument("--batch-size", type=int, default=128)
    s.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    s.add_argument("--device", default=None)
    s.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                   help="the teachers' precision: auto = bf16 autocast on CUDA, fp32 on the CPU (recorded in the cache)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--scale", type=float, nargs=2, default=(0.5, 1.0), help="crop area range")
    s.add_argument("--teacher-scale", type=float, action="append", default=None, metavar="MULTIPLIER",
                   help="the teachers' similarity multiplier in [1, 100] (exp of a CLIP's logit_scale, e.g. 100), "
                        "instead of each one's own; once for all, or once per --teacher")
    s.add_argument("--view", choices=["center", "squash"], default="center",
                   help="what the student sees of a crop, which the teachers embed: its centre square (students "
                        "with resize_mode shortest: every zoo student) or all of it squashed (resize_mode squash)")
    s.add_argument("--flip-prob", type=float, default=0.5)
    s.add_argument("--size", type=int, default=10000, help="synthetic: number of images")
    s.add_argument("--split", choices=["train", "val", "novel"], default="train",
                   help="synthetic: which colour-shape pairs ('novel': those the train split never shows)")
    s.add_argument("--image-size", type=int, default=64, help="synthetic: rendered size")
    s.add_argument("--two-object-prob", type=float, default=0.35)
    s.set_defaults(func=cmd_cache_teacher)
