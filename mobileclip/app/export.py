"""`mobileclip convert`, `export` and `validate`: released weights in, bundles out, parity checked."""
from __future__ import annotations

from .. import backends
from .. import spec as specs
from ..errors import MobileCLIPError
from .common import EXTRA_OF

ORT_FORMAT = "ort"   # the backend --ort-format selects


def _parity_line(p: dict) -> str:
    agree = p.get("top1_agreement")
    return (("passed" if p["passed"] else "FAILED: " + "; ".join(p["misses"]))
            + (f" (zero-shot top-1 agreement {100 * agree:.1f}%)" if agree is not None else "")
            + (f" [{p['mode']}]" if p.get("mode") and p["mode"] != "predictions" else "")
            + _browser_line(p.get("browser")))


def _browser_line(b) -> str:
    """The web bundle's browser parity, in the export line (validate's report has it as ``browser``)."""
    if b is None:
        return ""
    if "skipped" in b:
        return f"; browser parity SKIPPED: {b['skipped']}"
    def cos(t):   # the manifest's summary has {t}_min_cosine, validate's full report {t: {min_cosine}}
        return b.get(f"{t}_min_cosine", (b.get(t) or {}).get("min_cosine", float("nan")))

    return (f"; in Chromium {b.get('chromium', '?')} (onnxruntime-web {b.get('onnxruntime_web', '?')}): token ids "
            f"{'equal' if b.get('tokens_equal') else 'DIFFER'}, min cosine image {cos('image'):.6f} / "
            f"text {cos('text'):.6f}, top-1 agreement {100 * b.get('top1_agreement', 0):.1f}%")


def cmd_export(args) -> int:
    from ..errors import ConfigError
    from ..export import export

    if args.ort_format:   # the ONNX bundle, also in ORT format for ONNX Runtime Mobile: the `ort` backend
        if args.format not in ("onnx", ORT_FORMAT):
            raise ConfigError(f"--ort-format converts ONNX towers; it cannot be combined with --format {args.format}")
        args.format = ORT_FORMAT
    try:
        m = export(args.model, args.out, fmt=args.format, precision=args.precision, fixed_batch=args.fixed_batch,
                   exporter=args.exporter, token_dtype=args.token_dtype, max_batch=args.max_batch, data=args.data,
                   calib=args.calib, calib_size=args.calib_size, quant=args.quant, compress=args.compress,
                   overwrite=args.overwrite, allow_mismatch=args.allow_mismatch, seed=args.seed,
                   workspace_gb=args.workspace_gb, timing_cache=args.timing_cache, pretrained=args.pretrained,
                   accept_int8_loss=args.accept_int8_loss, exact_gelu=args.exact_gelu)
    except ModuleNotFoundError as e:
        from ..version import DISTRIBUTION

        top = (e.name or "").split(".")[0]
        # the PyTorch stack is the train extra; anything else is the format's own tools
        extra = "train" if EXTRA_OF.get(top) == "train" else backends.get(args.format).extra
        raise MobileCLIPError(f"export --format {args.format} needs the {extra} extra: "
                              f"pip install '{DISTRIBUTION}[{extra}]' ({e})") from e
    if m.get("int8_loss_accepted"):
        print(f"--accept-int8-loss: exported although {m['int8_loss_accepted']}")
    print(f"wrote {args.out}: {', '.join(a['file'] for a in m['artifacts'].values())}; parity "
          + _parity_line(m["parity"]))
    return _exit_status(m["parity"]["passed"], args.allow_mismatch, "manifest.json and parity.json")


def cmd_validate(args) -> int:
    from ..export import validate

    r = validate(args.bundle, data=args.data, allow_mismatch=True, max_batch=args.max_batch, report=args.report)
    for tower in ("image", "text"):
        for row in r[tower]:
            print(f"{tower:5} batch {row['batch']:4}: min cosine {row['min_cosine']:.7f}  "
                  f"mean {row['mean_cosine']:.7f}  max-abs {row['max_abs_diff']:.2e}")
    print("parity " + _parity_line(r) + f"; report: {r['report_path']} (the bundle is not modified)")
    return _exit_status(r["passed"], args.allow_mismatch, r["report_path"])


def _exit_status(passed: bool, allow_mismatch: bool, where: str) -> int:
    """0 when parity passed, or when it failed under ``--allow-mismatch`` (the miss is recorded in
    ``where`` and said here); 1 otherwise."""
    if passed:
        return 0
    if allow_mismatch:
        print(f"--allow-mismatch: exit status 0 although parity failed; the misses are recorded in {where}")
        return 0
    return 1


def cmd_convert(args) -> int:
    from ..convert import convert_checkpoint

    r = convert_checkpoint(args.src, args.out, model=args.model, overwrite=args.overwrite)
    print(f"wrote {r['out']}: {r['model']} converted from {args.src} ({r['layout']} layout, sha256 "
          f"{r['sha256'][:12]}…); load it with mobileclip.create_model({r['out']!r})")
    return 0


def register(sub) -> None:
    """Add ``convert``, ``export`` and ``validate`` to an argparse sub-parsers object."""
    s = sub.add_parser("convert", help="convert released weights (Apple's mobileclip_*.pt, open_clip MobileCLIP/"
                                       "MobileCLIP2 files) into one of our checkpoints")
    s.add_argument("src", help="weights file: .pt/.pth/.bin (read with weights_only=True) or .safetensors")
    s.add_argument("--model", default=None, help="registered model name (default: detected from the keys)")
    s.add_argument("--out", required=True, help="checkpoint directory to write (config.json + model.safetensors)")
    s.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    s.set_defaults(func=cmd_convert)

    s = sub.add_parser("export", help="export both towers to a bundle and check parity with PyTorch")
    s.add_argument("model", help=f"the model: {specs.HELP} (registered names get random weights seeded by --seed; "
                                 "py: models cannot be exported: a bundle must be able to re-create its reference)")
    s.add_argument("--pretrained", default=None,
                   help="weights for a registered MODEL: our checkpoint, Apple's mobileclip_*.pt, or an open_clip "
                        "MobileCLIP/MobileCLIP2 file (converted on load)")
    s.add_argument("--format", default="onnx", choices=backends.names(),
                   help="artifact format (a backend of mobileclip.backends)")
    s.add_argument("--precision", default="fp32", choices=backends.all_precisions(),
                   help="fp16 keeps fp32 inputs/outputs and LayerNorm/Softmax/reductions in fp32; int8: see --quant")
    s.add_argument("--ort-format", action="store_true",
                   help="ONNX Runtime Mobile: also write each tower as an .ort file plus the reduced-operator "
                        "config a minimal ORT build needs; the bundle runs the .ort files (= --format ort)")
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
    s.add_argument("--accept-int8-loss", action="store_true",
                   help="export an int8 recipe the format refuses by default (LiteRT: it lost more than the 98 %% "
                        "top-1 agreement a default recipe must keep on trained students)")
    s.add_argument("--exact-gelu", action="store_true",
                   help="static int8 for ONNX Runtime: keep GELU exact, in float between dequantize and quantize "
                        "(slower), instead of x*sigmoid(1.702x) in int8")
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
