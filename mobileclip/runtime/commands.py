"""``mobileclip classify`` / ``index`` / ``search``: the torch-free runtime on the command line.

``add_commands(sub)`` adds the three sub-commands to an ``argparse`` sub-parser set; each
handler returns an exit code and raises :class:`mobileclip.errors.MobileCLIPError`
subclasses for the main CLI to print (exit 2).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional, Sequence

from mobileclip.errors import MobileCLIPError, RuntimeInputError
from mobileclip.templates import DEFAULT_TEMPLATES, check_templates

from .core import ImageReadError, load, read_image
from .index import IMAGE_EXTENSIONS, ImageIndex, ImageIndexError


def read_templates(path: Optional[str], default: Sequence[str] = DEFAULT_TEMPLATES) -> list:
    """Prompt templates from a text file: one per line, ``{}`` where the label goes.

    Blank lines and lines starting with ``#`` are ignored; the file is UTF-8 (a BOM is
    allowed). Without ``path``, ``default``. Every problem — a missing file, a directory, a
    file that is not UTF-8, a template that does not take exactly one label (``{x}``, two
    ``{}``, a lone brace) — is a one-line :class:`RuntimeInputError` naming the file and line.
    """
    if not path:
        return list(default)
    p = Path(path).expanduser()
    if not p.exists():
        raise RuntimeInputError(f"templates file {str(p)!r} does not exist")
    if p.is_dir():
        raise RuntimeInputError(f"templates file {str(p)!r} is a directory; give a text file with one template "
                                "per line")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise RuntimeInputError(f"templates file {str(p)!r} cannot be read ({e.strerror or e})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise RuntimeInputError(f"templates file {str(p)!r} is not UTF-8 text (byte 0x{data[e.start]:02x} on line "
                                f"{line}, byte offset {e.start}); save it as UTF-8") from None
    templates = []
    for n, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            check_templates([line])
        except RuntimeInputError as e:
            raise RuntimeInputError(f"templates file {str(p)!r} line {n}: {e}") from None
        templates.append(line)
    if not templates:
        raise RuntimeInputError(f"templates file {str(p)!r} has no templates (only blank lines or # comments); "
                                "give one per line, each with '{}' where the label goes")
    return templates


def parse_labels(text: str) -> list:
    labels = [s.strip() for s in text.split(",")]
    labels = [s for s in labels if s]
    if not labels:
        raise RuntimeInputError("--labels is empty; give comma-separated labels, e.g. --labels \"cat,dog,car\"")
    return labels


def _size(path: Path) -> str:
    n = path.stat().st_size
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


# ------------------------------------------------------------------ classify

def cmd_classify(args) -> int:
    labels = parse_labels(args.labels)
    templates = read_templates(args.templates)
    if args.top is not None and args.top < 1:
        raise RuntimeInputError(f"--top must be >= 1, got {args.top}")
    model = load(args.bundle, threads=args.threads)
    results, errors = [], []
    for path in args.images:
        try:
            image = read_image(path)
        except ImageReadError as e:
            errors.append(e)
            continue
        preds = model.classify(image, labels, templates, top=args.top)
        results.append({"image": path, "predictions": [{"label": lb, "probability": p} for lb, p in preds]})
    if args.json:
        print(json.dumps({"bundle": str(args.bundle), "model": model.name, "labels": labels, "templates": templates,
                          "results": results, "unreadable": [{"image": e.path, "error": e.reason} for e in errors]},
                         indent=2))
    else:
        width = max(len(lb) for lb in labels)
        for r in results:
            print(r["image"])
            for p in r["predictions"]:
                print(f"  {p['label']:<{width}}  {100 * p['probability']:6.2f}%")
    if errors:
        if len(errors) == 1:
            raise errors[0]
        raise MobileCLIPError(f"{len(errors)} of {len(args.images)} images could not be read: "
                              + "; ".join(f"{e.path!r}: {e.reason}" for e in errors))
    return 0


# ------------------------------------------------------------------ index

def cmd_index(args) -> int:
    out = Path(args.out).expanduser()
    folder = Path(args.folder).expanduser().resolve()
    model = load(args.bundle, threads=args.threads, batch_size=args.batch_size)
    t0 = time.time()
    if out.exists():
        index = ImageIndex.load(out)
        if index.root != folder:
            raise ImageIndexError(f"{str(out)!r} indexes {str(index.root)!r}, not {str(folder)!r}; give another "
                                  "--out to index this folder")
        index.update(model, progress=not args.no_progress)   # checks the bundle fingerprint first
        if args.fp16:
            index.convert(fp16=True)
        verb = "updated"
    else:
        index = ImageIndex.build(model, folder, fp16=args.fp16, progress=not args.no_progress)
        verb = "built"
    index.save(out)
    s = index.stats
    print(f"{verb} {out}: {s['files']} images from {index.root} ({index.dtype}, {_size(out)}, "
          f"{time.time() - t0:.1f} s)")
    print(f"  embedded {s['embedded']} ({s['added']} new, {s['changed']} changed), {s['unchanged']} unchanged, "
          f"{s['removed']} removed, {s['unreadable_total']} unreadable")
    for path, err in s["skipped"][:20]:
        print(f"  skipped {path}: {err}")
    if len(s["skipped"]) > 20:
        print(f"  ... and {len(s['skipped']) - 20} more unreadable files (listed in the index's metadata)")
    return 0


# ------------------------------------------------------------------ search

def cmd_search(args) -> int:
    if args.k < 1:
        raise RuntimeInputError(f"-k must be >= 1, got {args.k}")
    index = ImageIndex.load(args.index)
    if not args.bundle and not Path(index.bundle).is_dir():
        raise ImageIndexError(f"the index's bundle {index.bundle!r} does not exist any more; pass --bundle with "
                              "the same export")
    model = load(args.bundle or index.bundle, threads=args.threads)
    qpath = Path(args.query).expanduser()
    is_image = not args.text and qpath.suffix.lower() in IMAGE_EXTENSIONS and qpath.is_file()
    hits = index.search(qpath if is_image else args.query, k=args.k, model=model)
    if args.json:
        print(json.dumps({"index": str(args.index), "query": args.query, "kind": "image" if is_image else "text",
                          "results": [{"path": p, "score": s} for p, s in hits]}, indent=2))
        return 0
    print(f"{'image' if is_image else 'text'} query {args.query!r}: top {len(hits)} of {len(index)} images")
    for rank, (path, score) in enumerate(hits, 1):
        print(f"{rank:>3}. {score:.4f}  {path}")
    return 0


# ------------------------------------------------------------------ parsers

def add_commands(sub) -> None:
    """Add ``classify``, ``index`` and ``search`` to ``sub = parser.add_subparsers(...)``."""
    s = sub.add_parser("classify", help="zero-shot classify images with an ONNX bundle (no torch needed)")
    s.add_argument("bundle", metavar="BUNDLE", help="an ONNX bundle directory (mobileclip export --format onnx)")
    s.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    s.add_argument("--labels", required=True, help='comma-separated labels, e.g. "cat,dog,car"')
    s.add_argument("--templates", help="file with one prompt template per line, '{}' for the label "
                                       f"(default: {DEFAULT_TEMPLATES[0]!r})")
    s.add_argument("--top", type=int, help="print only the K most likely labels")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: its default)")
    s.set_defaults(func=cmd_classify)

    s = sub.add_parser("index", help="embed every image under a folder into a searchable index (incremental)")
    s.add_argument("bundle", metavar="BUNDLE", help="an ONNX bundle directory")
    s.add_argument("folder", metavar="FOLDER", help="folder of images, searched recursively")
    s.add_argument("--out", required=True, help="index file (e.g. pictures.idx); updated in place when it exists")
    s.add_argument("--fp16", action="store_true", help="store embeddings as float16 (half the size)")
    s.add_argument("--batch-size", type=int, default=32, help="images per session call")
    s.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: its default)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_index)

    s = sub.add_parser("search", help="search an image index by text (or by an image file)")
    s.add_argument("index", metavar="INDEX", help="an index file written by `mobileclip index`")
    s.add_argument("query", metavar="QUERY", help="text, or the path of an image file to find similar images")
    s.add_argument("-k", type=int, default=5, help="number of results (default 5)")
    s.add_argument("--bundle", help="bundle to embed the query with (default: the one that built the index)")
    s.add_argument("--text", action="store_true", help="treat the query as text even if it names a file")
    s.add_argument("--json", action="store_true", help="print JSON instead of a list")
    s.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: its default)")
    s.set_defaults(func=cmd_search)


__all__ = ["add_commands", "cmd_classify", "cmd_index", "cmd_search", "parse_labels", "read_templates"]
