"""What ``mobileclip bench`` measures: the benchmark's configuration (:class:`BenchConfig`), the
facts of a PyTorch source (params, FLOPs), the bundles ``--export`` writes, and one model's cases
(rows) prepared, timed and filled in (:func:`run_group`)."""
from __future__ import annotations

import gc
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from mobileclip import spec as specs
from mobileclip.errors import ConfigError, MobileCLIPError

from .accuracy import against, check_eval_dir, evaluate_bundle, evaluate_source
from .runtimes import (BACKEND_RUNTIME, PROMPTS, RUNTIMES, TORCH_PRECISIONS, TOWERS, BundleRuntime, Runtime, Skip,
                       TorchRuntime)
from .stats import Case, MemoryProbe, error_reason, gap, latency_stats, limit_ms, throughput, time_cases

EXPORT_PRECISIONS = ("fp32", "fp16", "int8")
CONV_STATIC_INT8 = 0.5         # image towers with more conv FLOPs than this get static QDQ int8

ROW_KEYS = ("model", "runtime", "precision", "quant", "compile", "device", "tower", "batch", "status", "reason",
            "bundle", "io", "threads", "n_runs", "timed_s", "mean_ms", "min_ms", "p50_ms", "p90_ms", "p99_ms",
            "throughput_sps", "peak_rss_mb", "run_rss_mb", "load_rss_mb", "peak_cuda_mb", "artifact_mb",
            "bundle_mb", "params", "gflops_per_sample", "limit_ms", "gap", "accuracy", "accuracy_source",
            "min_cosine", "providers", "nodes_by_provider", "eval_zeroshot_top1", "eval_text_to_image_R@1",
            "eval_image_to_text_R@1", "eval_delta_zeroshot_top1", "eval_delta_text_to_image_R@1",
            "eval_delta_image_to_text_R@1", "eval_top1_agreement", "eval_images", "eval_captions",
            "eval_text_to_image_lost", "eval_text_to_image_gained", "eval_image_to_text_lost",
            "eval_image_to_text_gained")


# =========================================================================== model facts

class _ParamsSeen:
    """Records the parameters passed to any torch function while active (a TorchFunctionMode)."""

    def __init__(self, params: dict) -> None:
        import torch
        from torch.overrides import TorchFunctionMode
        from torch.utils._pytree import tree_flatten

        seen = self.seen = {}

        class Mode(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                for leaf in tree_flatten((args, kwargs))[0]:
                    if isinstance(leaf, torch.nn.Parameter) and id(leaf) in params:
                        seen[id(leaf)] = leaf.numel()
                return func(*args, **kwargs)

        self.mode = Mode()

    @property
    def count(self) -> int:
        return int(sum(self.seen.values()))


def tower_facts(model, image_size: int, tokenizer) -> dict:
    """Per tower: ``params`` its forward touches, ``gflops`` per sample at batch 1, ``conv_fraction``.

    Counted in fp32 eager on the CPU with the math attention kernel and nn.MultiheadAttention's
    fused fast path off, so attention matmuls are visible to the FLOP counter.
    """
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    params = {id(p): p for p in model.parameters()}
    inputs = {"image": torch.zeros(1, 3, image_size, image_size), "text": tokenizer([PROMPTS[0]])}
    fastpath = torch.backends.mha.get_fastpath_enabled()
    out = {}
    try:
        torch.backends.mha.set_fastpath_enabled(False)
        for tower in TOWERS:
            seen = _ParamsSeen(params)
            counter = FlopCounterMode(display=False)
            with torch.inference_mode(), sdpa_kernel([SDPBackend.MATH]), counter, seen.mode:
                getattr(model, f"encode_{tower}")(inputs[tower])
            counts = counter.get_flop_counts().get("Global", {})
            total = float(sum(counts.values()))
            conv = float(sum(v for k, v in counts.items() if "convolution" in str(k)))
            out[tower] = {"params": seen.count, "gflops": total / 1e9, "conv_fraction": conv / total if total else 0.0}
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return out


def _size_mb(path: Path) -> float:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6
    return path.stat().st_size / 1e6


def model_label(model: str) -> str:
    """A short, stable name for a model spec: checkpoint paths relative to the working directory."""
    parsed = specs.parse(model) if specs.is_third_party(model) else None
    hf = parsed is not None and parsed.kind == specs.HF
    rest = parsed.target if hf else model
    if os.path.isabs(rest):
        try:
            rel = os.path.relpath(rest)
        except ValueError:  # another drive (Windows): keep the absolute path
            rel = ".."
        if not rel.startswith(".."):
            rest = rel
    return specs.hf(rest) if hf else rest


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-") or "model"


def source_accuracy(model: str) -> Optional[tuple[float, str]]:
    """Zero-shot top-1 of a checkpoint directory from the ``summary.json`` beside it, if any."""
    parsed = specs.parse(model) if specs.is_third_party(model) else None
    path = parsed.target if parsed is not None and parsed.kind == specs.HF else model
    summary = Path(path).expanduser().parent / "summary.json"
    if not Path(path).expanduser().is_dir() or not summary.is_file():
        return None
    try:
        value = json.loads(summary.read_text()).get("eval", {}).get("zeroshot_top1")
    except json.JSONDecodeError as e:
        raise ConfigError(f"{summary} is not valid JSON ({e}); fix or remove it") from e
    return (float(value), model_label(str(summary.resolve()))) if isinstance(value, (int, float)) else None


# =========================================================================== configuration

@dataclass
class BenchConfig:
    bundles: list = field(default_factory=list)
    models: list = field(default_factory=list)
    batches: list = field(default_factory=lambda: [1, 8])
    runtimes: list = field(default_factory=lambda: list(RUNTIMES))
    towers: list = field(default_factory=lambda: list(TOWERS))
    threads: int = 0
    device: str = "cpu"
    warmup: int = 3
    min_runs: int = 20
    min_seconds: float = 1.0
    compile: bool = False
    torch_precisions: list = field(default_factory=lambda: ["fp32"])
    export: list = field(default_factory=list)
    export_dir: Optional[str] = None
    int8_quant: str = "auto"
    accuracy: dict = field(default_factory=dict)
    eval: Optional[str] = None             # an evaluation folder: accuracy of every bundle against its source
    peak_seconds: float = 1.0
    out: str = "bench"
    command: str = ""

    def check(self) -> None:
        if not self.bundles and not self.models:
            raise ConfigError("nothing to benchmark: give bundle directories and/or --model NAME")
        for b in self.bundles:
            if not Path(b).is_dir():
                raise ConfigError(f"bundle directory {str(b)!r} does not exist; create it with `mobileclip export`")
        for name, values, choices in (("--runtime", self.runtimes, RUNTIMES), ("--towers", self.towers, TOWERS),
                                      ("--torch-precision", self.torch_precisions, TORCH_PRECISIONS),
                                      ("--export", self.export, EXPORT_PRECISIONS)):
            bad = [v for v in values if v not in choices]
            if bad:
                raise ConfigError(f"{name}: {', '.join(map(repr, bad))} not known; choose from {list(choices)}")
        if not self.runtimes or not self.towers or not self.batches or not self.torch_precisions:
            raise ConfigError("--runtime, --towers, --batch and --torch-precision must not be empty")
        if any(not isinstance(b, int) or b < 1 for b in self.batches):
            raise ConfigError(f"--batch sizes must be whole numbers >= 1, got {self.batches}")
        if self.device not in ("cpu", "cuda"):
            raise ConfigError(f"--device {self.device!r}: choose cpu or cuda")
        if self.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise ConfigError("--device cuda: no CUDA GPU is visible (torch.cuda.is_available() is False); "
                                  "use --device cpu")
        if self.threads < 0 or self.warmup < 0 or self.min_runs < 1 or self.min_seconds < 0 \
                or self.peak_seconds <= 0:
            raise ConfigError("--threads >= 0, --warmup >= 0, --min-runs >= 1, --min-seconds >= 0 and "
                              "--peak-seconds > 0 please")
        for m in self.models:
            _check_model_name(m)
        if self.export and not self.models:
            raise ConfigError("--export exports the --model names to bundles: give at least one --model")
        if self.export and "onnxruntime" not in self.runtimes:
            raise ConfigError("--export writes ONNX bundles, which --runtime leaves out: add onnxruntime")
        if self.int8_quant not in ("auto", "static", "dynamic"):
            raise ConfigError(f"--int8-quant {self.int8_quant!r}: choose auto, static or dynamic")
        check_eval_dir(self.eval)


def _check_model_name(name: str) -> None:
    """Fail before any work on a --model that is neither registered, a teacher spec nor a directory."""
    parsed = specs.parse(name)
    if parsed.kind == specs.OPEN_CLIP:
        import open_clip

        if parsed.target not in open_clip.list_models():
            raise ConfigError(f"--model {name}: open_clip has no architecture {parsed.target!r}; `mobileclip models` "
                              "lists the known ones")
    elif parsed.kind == specs.PY:
        raise ConfigError(f"--model {name}: bench times a registered name, a checkpoint directory, open_clip:... or "
                          "hf:...; a py: model has no spec its bundles could re-create their reference from")
    elif parsed.kind == specs.CHECKPOINT and not Path(name).expanduser().is_dir():
        raise ConfigError(f"--model {name}: no such checkpoint directory, and not a registered name "
                          "(`mobileclip models` lists them)")
    elif parsed.kind == specs.REGISTERED:
        from mobileclip.zoo import get_entry

        get_entry(name)  # UnknownModelError listing the registered names


# =========================================================================== one model's cases

@dataclass
class _Group:
    label: str
    spec: Optional[dict] = None            # the PyTorch source to load (for --model, or a bundle's source)
    torch: bool = False                     # time it on the torch runtime
    bundles: list = field(default_factory=list)   # (path, manifest, exported)


class Sources:
    """PyTorch sources, loaded once, with their facts; released group by group."""

    def __init__(self) -> None:
        self.facts: dict = {}          # model spec -> tower facts, or an error string
        self.load_rss: dict = {}

    def load(self, spec: dict):
        from mobileclip.export.source import load_source

        rss0 = MemoryProbe.rss_mb()
        src = load_source(spec)
        self.load_rss[spec["model"]] = MemoryProbe.rss_mb() - rss0
        if spec["model"] not in self.facts:
            self.facts[spec["model"]] = tower_facts(src.model, src.image_size, src.tokenizer)
        return src

    def facts_for(self, spec: dict):
        """Facts of ``spec``'s model, loading it (and letting it go) when not yet known."""
        if spec["model"] not in self.facts:
            try:
                self.load(spec)
            except (MobileCLIPError, OSError, KeyError, ValueError, RuntimeError) as e:
                self.facts[spec["model"]] = f"PyTorch source {spec['model']!r} could not be loaded: {error_reason(e)}"
            gc.collect()
        return self.facts[spec["model"]]


def export_bundles(cfg: BenchConfig, sources: Sources, export_dir: Path, failed: Optional[list] = None) -> list:
    """Export every --model in every --export precision (reusing matching bundles); returns (path, model).

    An export that raises is appended to ``failed`` as ``(model, precision, reason)`` and the others go on, so
    one precision's failure loses neither the other bundles nor the PyTorch rows (without ``failed``, it raises)."""
    from mobileclip.export import export, load_manifest
    from mobileclip.backends.bundle import BundleError
    from mobileclip.export.source import resolve_spec

    out, calib = [], None
    for name in cfg.models:
        spec = resolve_spec(name, 0)
        for precision in cfg.export:
            d = export_dir / f"{_slug(model_label(spec['model']))}-{precision}"
            if d.exists():
                try:
                    m = load_manifest(d)
                except BundleError as e:
                    raise ConfigError(f"{d} exists but is not a usable bundle ({e}); remove it to re-export") from e
                if m["source"]["model"] != spec["model"] or m["artifacts"]["image"]["precision"] != precision:
                    raise ConfigError(f"{d} holds a bundle of {m['source']['model']} "
                                      f"{m['artifacts']['image']['precision']}, not {spec['model']} {precision}; "
                                      "use another --export-dir or remove it")
                print(f"reusing {d}")
                out.append((d, name))
                continue
            kw = {}
            if precision == "int8":
                method = cfg.int8_quant
                if method == "auto":
                    facts = sources.facts_for(spec)
                    conv = facts["image"]["conv_fraction"] if isinstance(facts, dict) else 0.0
                    method = "static" if conv > CONV_STATIC_INT8 else "dynamic"
                if method == "static":
                    if calib is None:
                        from mobileclip.data import write_synthetic

                        calib = export_dir / "calib-synthetic"
                        if not calib.is_dir():
                            write_synthetic(calib, 64, split="train", image_size=256)
                    kw = {"calib": str(calib), "quant": "static"}
                else:
                    kw = {"quant": "dynamic"}
            print(f"exporting {name} ({precision}{', ' + kw['quant'] if kw else ''}) to {d}")
            try:
                # a benchmark measures every recipe, the ones refused by default included (what they cost is
                # the point); a bundle's own parity and refusal are in its manifest
                export(name, d, precision=precision, max_batch=max(cfg.batches), allow_mismatch=True,
                       accept_int8_loss=True, **kw)
            except Exception as e:  # noqa: BLE001 - recorded as failed rows; the exit status says so
                if failed is None:
                    raise
                print(f"export of {name} ({precision}) failed: {error_reason(e)}")
                failed.append((name, precision, f"export to ONNX {precision} failed: {error_reason(e)}"))
                continue
            out.append((d, name))
    return out


def export_failed_rows(cfg: BenchConfig, failed: list) -> list:
    """One failed row per tower and batch of each export that raised (``export_bundles``' ``failed``)."""
    from mobileclip.export.source import resolve_spec

    rows = []
    for name, precision, reason in failed:
        g = _Group(model_label(resolve_spec(name, 0)["model"]))
        for tower in cfg.towers:
            for batch in cfg.batches:
                row = _new_row(cfg, g, BACKEND_RUNTIME.get("onnx", "onnxruntime"), precision, tower, batch)
                row.update(status="failed", reason=reason)
                rows.append(row)
    return rows


def make_groups(cfg: BenchConfig, exported: list) -> list:
    from mobileclip.export import load_manifest
    from mobileclip.export.source import resolve_spec

    groups: dict = {}

    def group(spec: dict) -> _Group:
        label = model_label(spec["model"])
        if label not in groups:
            groups[label] = _Group(label, spec)
        return groups[label]

    for b in cfg.bundles:
        m = load_manifest(b)
        group(m["source"]).bundles.append((Path(b), m, False))
    for name in cfg.models:
        group(resolve_spec(name, 0)).torch = "torch" in cfg.runtimes
    for d, name in exported:
        group(resolve_spec(name, 0)).bundles.append((d, load_manifest(d), True))
    return list(groups.values())


def _accuracy(cfg: BenchConfig, label: str, precision: str, spec: Optional[dict]):
    for key in (f"{label}/{precision}", label):
        if key in cfg.accuracy:
            return cfg.accuracy[key], "--accuracy"
    found = source_accuracy(spec["model"]) if spec else None
    return found if found else (None, None)


def _new_row(cfg: BenchConfig, group: _Group, runtime: str, precision: str, tower: str, batch: int, **kw) -> dict:
    row = dict.fromkeys(ROW_KEYS)
    row.update(model=group.label, runtime=runtime, precision=precision, tower=tower, batch=batch, status="ok",
               device=cfg.device, threads=cfg.threads, compile=runtime == "torch.compile", **kw)
    return row


def _fill(row: dict, case: Optional[Case], facts, peak: dict, cfg: BenchConfig, spec: Optional[dict]) -> dict:
    if case is not None and case.samples:
        row.update(latency_stats(case.samples))
        row["throughput_sps"] = throughput(row["batch"], row["mean_ms"])
        row["peak_rss_mb"], row["run_rss_mb"] = case.peak_rss, case.run_rss
        if row["runtime"].startswith("torch") and cfg.device == "cuda":
            row["peak_cuda_mb"] = case.peak_cuda
    if isinstance(facts, dict):
        f = facts[row["tower"]]
        row["params"], row["gflops_per_sample"] = f["params"], f["gflops"]
        p = peak.get("bf16" if cfg.device == "cuda" and row["precision"] in ("bf16", "fp16") else "fp32")
        if p and row["p50_ms"] is not None and f["gflops"] > 0:
            row["limit_ms"] = limit_ms(f["gflops"], row["batch"], p["gflops"])
            row["gap"] = gap(row["p50_ms"], row["limit_ms"])
    elif isinstance(facts, str) and row["status"] == "ok":
        row["reason"] = facts  # timed, but params/FLOPs unknown: say why
    row["accuracy"], row["accuracy_source"] = _accuracy(cfg, row["model"], row["precision"], spec)
    return row


def _parity_cosines(path: Path) -> dict:
    """Each tower's minimum cosine to PyTorch in the bundle's own parity report (empty when it has none)."""
    import json

    try:
        report = json.loads((path / "parity.json").read_text())
        return {t: min(r["min_cosine"] for r in report[t]) for t in ("image", "text") if report.get(t)}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def run_group(g: _Group, cfg: BenchConfig, sources: Sources, probe: MemoryProbe, peak: dict) -> list:
    """Prepare, time (interleaved) and report every case of one model."""
    rows, cases, runtimes = [], [], []
    src = None
    if g.torch:
        src = sources.load(g.spec)
        if cfg.device == "cuda":
            src.model.to(cfg.device)
    facts = sources.facts_for(g.spec) if g.spec else None
    spec = g.spec

    def add(rt: Runtime, row: dict) -> None:
        try:
            fn = rt.prepare(row["tower"], row["batch"])
        except Skip as e:
            row.update(status="skipped", reason=str(e))
            rows.append((row, None, rt))
            return
        except Exception as e:  # a failed case is a row with its reason; the exit code says something failed
            row.update(status="failed", reason=error_reason(e))
            rows.append((row, None, rt))
            return
        case = Case(row, rt, fn)
        cases.append(case)
        rows.append((row, case, rt))

    if src is not None:
        variants = [(p, False) for p in cfg.torch_precisions] + ([(p, True) for p in cfg.torch_precisions]
                                                                 if cfg.compile else [])
        for precision, comp in variants:
            rt = TorchRuntime(src, cfg.device, precision, comp)
            runtimes.append(rt)
            for tower in cfg.towers:
                for batch in cfg.batches:
                    add(rt, _new_row(cfg, g, rt.name, precision, tower, batch, io=rt.io,
                                     load_rss_mb=sources.load_rss.get(spec["model"])))
    for path, manifest, exported in g.bundles:
        runtime_name = BACKEND_RUNTIME.get(manifest["artifacts"]["image"]["backend"], "?")
        if runtime_name not in cfg.runtimes:
            continue
        from mobileclip.runtime.core import open_bundle

        opened = open_bundle(path, cfg.device, cfg.threads, strict=False, manifest=manifest,
                             hf_tokenizer=True if "text" in cfg.towers else None)
        tok_error = opened.problems.get("tokenizer")
        rt = BundleRuntime(opened)
        runtimes.append(rt)
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6
        cosine = _parity_cosines(path)
        for tower in cfg.towers:
            entry = manifest["artifacts"][tower]
            for batch in cfg.batches:
                row = _new_row(cfg, g, rt.name, entry["precision"], tower, batch, io=rt.io,
                               bundle=str(path) + (" (exported by this run)" if exported else ""),
                               quant=entry.get("quantization", {}).get("method"),
                               artifact_mb=_size_mb(path / entry["file"]), bundle_mb=size,
                               min_cosine=cosine.get(tower))
                if tower == "text" and tok_error:
                    row.update(status="failed", reason=tok_error)
                    rows.append((row, None, rt))
                    continue
                add(rt, row)
    for row, _, rt in rows:  # bundles: memory added by creating the tower's session (known once it exists)
        if row["load_rss_mb"] is None and row["tower"] in rt.load_rss:
            row["load_rss_mb"] = rt.load_rss[row["tower"]]

    print(f"{g.label}: timing {len(cases)} cases interleaved (>= {cfg.min_runs} runs and >= {cfg.min_seconds} s "
          f"each, {cfg.warmup} warm-up calls)" + (f"; {len(rows) - len(cases)} not runnable" if len(rows) > len(cases)
                                                 else ""))
    time_cases(cases, cfg.warmup, cfg.min_runs, cfg.min_seconds, probe, cuda=cfg.device == "cuda")
    out = [_placed(_fill(row, case, facts, peak, cfg, spec), rt) for row, case, rt in rows]
    if cfg.eval:
        _evaluate(g, cfg, sources, src, [(row, rt) for row, _, rt in rows])
    for rt in runtimes:
        rt.close()
    return out


def _evaluate(g: _Group, cfg: BenchConfig, sources: Sources, src, rows: list) -> None:
    """``--eval``: the fp32 PyTorch source and every bundle of the group on the evaluation folder; each row gets its
    artifact's metrics, their change from the source (points) and the zero-shot top-1 agreement."""
    folder = check_eval_dir(cfg.eval)
    try:
        reference = evaluate_source(src if src is not None else sources.load(g.spec), folder)
    except (MobileCLIPError, OSError, KeyError, ValueError, RuntimeError) as e:
        for row, _ in rows:
            row["reason"] = "; ".join(filter(None, [row["reason"], f"--eval: the source could not be evaluated: "
                                                                   f"{error_reason(e)}"]))
        return
    results: dict = {}
    for row, rt in rows:
        key = id(rt)
        if key not in results:
            try:
                results[key] = (against(reference, reference) if isinstance(rt, TorchRuntime) and
                                rt.precision("image") == "fp32" and not rt.compile else
                                against(reference, evaluate_bundle(rt.opened, folder))
                                if isinstance(rt, BundleRuntime) else None)
            except Exception as e:   # one artifact's failure is its rows' reason, not the run's end
                results[key] = f"--eval failed: {error_reason(e)}"
        res = results[key]
        if isinstance(res, str):
            row["reason"] = "; ".join(filter(None, [row["reason"], res]))
        elif res is not None:
            row.update({f"eval_{k}": v for k, v in res.items()})
            row["accuracy"], row["accuracy_source"] = res["zeroshot_top1"], f"--eval {cfg.eval}"


def _placed(row: dict, rt: Runtime) -> dict:
    """The providers a timed bundle row's session really used and how many nodes each ran; a GPU row with nodes
    on the CPU says so in its reason (it is still timed: that is what this artifact does on this machine)."""
    placement = rt.placement(row["tower"]) if isinstance(rt, BundleRuntime) and row["status"] == "ok" else None
    if not placement:
        return row
    row["providers"], row["nodes_by_provider"] = placement["providers"], placement["nodes"]
    cpu = placement["nodes"].get("CPUExecutionProvider", 0)
    if row["device"] != "cpu" and cpu:
        note = (f"{cpu} of {sum(placement['nodes'].values())} nodes ran on the CPU (ONNX Runtime placed them there: "
                "no kernel on the GPU provider for their op or type)")
        row["reason"] = f"{row['reason']}; {note}" if row["reason"] else note
    return row
