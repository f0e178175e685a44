"""`mobileclip bench`: latency across models, runtimes, precisions and batch sizes (the command line; the run is
:mod:`mobileclip.benchmarks.harness`)."""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Optional, Sequence

from ..benchmarks.harness import (DESCRIPTION, EXPORT_PRECISIONS, RUNTIMES, TORCH_PRECISIONS, TOWERS, BenchConfig,
                                  parse_accuracy, parse_choices, parse_int_list, print_table, run_bench)
from .. import spec as specs
from ..errors import MobileCLIPError


def register(sub) -> None:
    """Add ``bench`` to the `mobileclip` command line."""
    add_commands(sub)


def add_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("bundles", nargs="*", metavar="BUNDLE", help="bundle directories written by `mobileclip export`")
    s.add_argument("--model", action="append", default=[], metavar="NAME",
                   help=f"PyTorch model (repeatable): {specs.HELP} (not py:)")
    s.add_argument("--batch", default="1,8", help="comma-separated batch sizes (default 1,8)")
    s.add_argument("--runtime", default=",".join(RUNTIMES),
                   help=f"comma-separated runtimes to run (default all: {','.join(RUNTIMES)})")
    s.add_argument("--towers", default="image,text", help="image,text (default both)")
    s.add_argument("--threads", type=int, default=0,
                   help="CPU threads: ORT intra_op_num_threads and torch.set_num_threads (default: all cores)")
    s.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="cpu, or cuda (torch on the GPU, ORT's CUDA provider, TensorRT)")
    s.add_argument("--warmup", type=int, default=3, help="warm-up calls per case (default 3; at least 1 is made)")
    s.add_argument("--min-runs", type=int, default=20, help="timed calls per case, at least (default 20)")
    s.add_argument("--min-seconds", type=float, default=1.0,
                   help="timed seconds per case, at least (default 1.0; both minimums must be met)")
    s.add_argument("--compile", action="store_true", help="also time torch.compile of each --model")
    s.add_argument("--torch-precision", default="fp32",
                   help="precisions of the torch runtime: fp32, bf16, fp16 (autocast), comma-separated")
    s.add_argument("--export", default="", metavar="PRECISIONS",
                   help="also export each --model to ONNX bundles in these precisions (fp32,fp16,int8) and time them")
    s.add_argument("--export-dir", default=None,
                   help="where --export writes (and reuses) bundles; default: a temporary directory, removed after")
    s.add_argument("--int8-quant", default="auto", choices=["auto", "static", "dynamic"],
                   help="int8 image towers for --export: auto = static QDQ (synthetic calibration) when the tower's "
                        "FLOPs are mostly convolutions, else dynamic")
    s.add_argument("--accuracy", action="append", default=[], metavar="LABEL=VALUE",
                   help="zero-shot top-1 (0..1) of a model (row label) or model/precision, for the accuracy plot")
    s.add_argument("--eval", default=None, metavar="DIR",
                   help="an evaluation folder (DIR/<class>/<image>, DIR/captions.csv for retrieval): zero-shot top-1, "
                        "R@1 both ways and top-1 agreement of every bundle against its fp32 PyTorch source")
    s.add_argument("--peak-seconds", type=float, default=1.0, help="how long to time the peak matmul (default 1)")
    s.add_argument("--out", default="bench", help="output directory (default bench/)")


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    return BenchConfig(
        bundles=list(args.bundles), models=list(args.model), batches=parse_int_list(args.batch, "--batch"),
        runtimes=parse_choices(args.runtime, RUNTIMES, "--runtime"),
        towers=parse_choices(args.towers, TOWERS, "--towers"), threads=args.threads, device=args.device,
        warmup=args.warmup, min_runs=args.min_runs, min_seconds=args.min_seconds, compile=args.compile,
        torch_precisions=parse_choices(args.torch_precision, TORCH_PRECISIONS, "--torch-precision"),
        export=parse_choices(args.export, EXPORT_PRECISIONS, "--export") if args.export else [],
        export_dir=args.export_dir, int8_quant=args.int8_quant, accuracy=parse_accuracy(args.accuracy), eval=args.eval,
        peak_seconds=args.peak_seconds, out=args.out, command=command_line(args))


def command_line(args: argparse.Namespace) -> str:
    """The command, spelled out with every option that differs from its default."""
    parts = ["mobileclip", "bench", *args.bundles]
    for m in args.model:
        parts += ["--model", m]
    for a in args.accuracy:
        parts += ["--accuracy", a]
    defaults = {"batch": "1,8", "runtime": ",".join(RUNTIMES), "towers": "image,text", "threads": 0, "device": "cpu",
                "warmup": 3, "min_runs": 20, "min_seconds": 1.0, "torch_precision": "fp32", "export": "",
                "export_dir": None, "int8_quant": "auto", "eval": None, "peak_seconds": 1.0, "out": "bench"}
    for k, d in defaults.items():
        v = getattr(args, k)
        if v != d:
            parts += [f"--{k.replace('_', '-')}", str(v)]
    if args.compile:
        parts.append("--compile")
    return " ".join(shlex.quote(p) for p in parts)


def cmd_bench(args: argparse.Namespace) -> int:
    """The ``bench`` handler: 0 when every case ran or was skipped for a stated reason; 2 when one failed (a
    damaged bundle, an engine error), with one line on stderr naming the first and where the others are."""
    result = run_bench(config_from_args(args))
    print_table(result)
    failed = [r for r in result["rows"] if r["status"] == "failed"]
    if not failed:
        return 0
    first = failed[0]
    where = first.get("bundle") or first["runtime"]
    print(f"mobileclip: error: {len(failed)} of {len(result['rows'])} cases failed (first: {where}, {first['tower']} "
          f"batch {first['batch']}: {first['reason']}); every reason is in {Path(args.out) / 'bench.md'}",
          file=sys.stderr)
    return 2


def add_commands(sub) -> None:
    """Add ``bench`` to an argparse sub-parsers object (``mobileclip bench ...``)."""
    s = sub.add_parser("bench", help="latency of bundles and PyTorch models across runtimes, precisions and "
                                     "batch sizes (JSON, Markdown, PNG plots)",
                       description=DESCRIPTION)
    add_arguments(s)
    s.set_defaults(func=cmd_bench)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="mobileclip bench", description=DESCRIPTION)
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        return cmd_bench(args)
    except MobileCLIPError as e:
        print(f"mobileclip bench: error: {e}", file=sys.stderr)
        return 2
