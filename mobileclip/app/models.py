"""`mobileclip models`, `zeroshot` and `retrieval`: list the models, evaluate one."""
from __future__ import annotations

import json
import os
import time
from typing import Optional

from .. import spec as specs
from .common import torch_device, write_json


def _fmt_m(n) -> str:
    return f"{n / 1e6:.1f}M" if n else "?"


def cmd_models(args) -> int:
    from ..catalog import student_rows, teacher_rows

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
    from ..factory import create_model

    model, preprocess, tokenizer = create_model(args.model, pretrained=args.pretrained)
    device = torch_device(args.device)
    return model.to(device), preprocess, tokenizer, device


def _read_templates(path: Optional[str]):
    from ..runtime.commands import read_templates
    from ..zeroshot import TEMPLATES

    return read_templates(path, default=TEMPLATES)


def cmd_zeroshot(args) -> int:
    from ..data import ImageFolderDataset
    from ..zeroshot import evaluate_zeroshot

    templates = _read_templates(args.templates)
    model, preprocess, tokenizer, device = _load(args)
    dataset = ImageFolderDataset(args.data, transform=preprocess)
    t0 = time.time()
    res = evaluate_zeroshot(model, tokenizer, dataset, templates=templates, batch_size=args.batch_size,
                            num_workers=args.workers, device=device)
    res.update(model=args.model, data=str(args.data), templates=len(templates), seconds=round(time.time() - t0, 2))
    print(f"zero-shot on {res['n']} images, {res['classes']} classes: top-1 {100 * res['top1']:.2f}%  "
          f"top-5 {100 * res['top5']:.2f}%" + (f"  ({res['skipped']} unreadable images skipped)" if res["skipped"] else ""))
    write_json(args.json, res)
    return 0


def cmd_retrieval(args) -> int:
    from ..data import CaptionDataset
    from ..zeroshot import evaluate_retrieval

    model, preprocess, tokenizer, device = _load(args)
    dataset = CaptionDataset(args.data, image_root=args.image_root, transform=preprocess)
    res = evaluate_retrieval(model, tokenizer, dataset, batch_size=args.batch_size, num_workers=args.workers,
                             device=device)
    res.update(model=args.model, data=str(args.data))
    print(f"retrieval on {res['images']} images / {res['texts']} captions: "
          + "  ".join(f"{k} {100 * v:.2f}%" for k, v in res.items() if "R@" in k and not k.startswith("mean"))
          + (f"  ({res['skipped']} unreadable images skipped)" if res["skipped"] else ""))
    write_json(args.json, res)
    return 0


def _model_args(s) -> None:
    s.add_argument("--model", required=True, help=f"the model: {specs.HELP}")
    s.add_argument("--pretrained", default=None,
                   help="weights for a registered name: our checkpoint (dir or file), Apple's mobileclip_*.pt, "
                        "or an open_clip MobileCLIP/MobileCLIP2 file")
    s.add_argument("--batch-size", type=int, default=64)
    s.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    s.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when present)")
    s.add_argument("--json", default=None, metavar="PATH", help="write the results as JSON")


def register(sub) -> None:
    """Add ``models``, ``zeroshot`` and ``retrieval`` to an argparse sub-parsers object."""
    s = sub.add_parser("models", help="list students and teachers with parameters and image size")
    s.add_argument("--students-only", action="store_true", help="leave out the open_clip teacher architectures")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=cmd_models)

    s = sub.add_parser("zeroshot", help="zero-shot top-1/top-5 on an image folder (one sub-folder per class)")
    _model_args(s)
    s.add_argument("--data", required=True, help="image folder: DATA/<class name>/<images>")
    s.add_argument("--templates", default=None, help="file with one prompt template per line ('{}' = class)")
    s.set_defaults(func=cmd_zeroshot)

    s = sub.add_parser("retrieval", help="image<->text recall@1/5/10 on a CSV/TSV/JSONL of image,caption")
    _model_args(s)
    s.add_argument("--data", required=True, help="caption file (.csv, .tsv, .jsonl)")
    s.add_argument("--image-root", default=None, help="folder relative image paths start from (default: the file's)")
    s.set_defaults(func=cmd_retrieval)
