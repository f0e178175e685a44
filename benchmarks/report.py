"""The report of a ``mobileclip bench`` run: ``bench.json``, ``bench.md``, the PNG plots and the
table printed at the end."""
from __future__ import annotations

from pathlib import Path

DEFINITIONS = {
    "latency": "wall-clock time of one call (one batch), ms; p50/p90/p99 interpolate linearly between ranks",
    "throughput_sps": "samples per second = batch / mean latency",
    "params": "parameters the tower's forward pass touches in the PyTorch source (after reparameterization)",
    "gflops_per_sample": "FLOPs of one sample (batch 1) counted by torch.utils.flop_counter.FlopCounterMode on the "
                         "PyTorch source in fp32: matmul, convolution and attention matmuls, 2 per multiply-add",
    "limit_ms": "gflops_per_sample x batch / the measured matmul peak (fp32; on CUDA, bf16 for fp16/bf16 cases): "
                "the latency that peak would allow",
    "gap": "p50_ms / limit_ms (int8 kernels can beat the fp32 peak, so a gap below 1 is possible)",
    "artifact_mb": "size of the tower's exported file (sum of files for a directory such as a .mlpackage)",
    "nodes_by_provider": "ONNX Runtime rows: how many of the graph's nodes each execution provider ran, read from "
                         "ONNX Runtime's profiler on the first call (providers: the session's own list)",
    "eval": "with --eval DIR: zero-shot top-1 over DIR's class folders, R@1 both ways over DIR/captions.csv, each bundle "
            "run as users run it (its manifest's preprocessing, its own tokenizer) and the fp32 PyTorch source "
            "through its own transform and tokenizer, both through mobileclip.zeroshot's evaluators",
    "min_cosine": "a bundle tower's minimum cosine to its PyTorch source in the bundle's parity report (parity.json, "
                  "written by export)",
}


def _f(v, fmt: str = ".2f") -> str:
    return "—" if v is None else format(v, fmt)


def markdown(result: dict) -> str:
    env, rows = result["environment"], result["rows"]
    p = result["peak"]["fp32"]
    machine = (f"{env['cpu']}, {env['cores']} cores, {env['threads']} threads" + (f", GPU {env['gpu']}"
                                                                                   if env.get("gpu") else ""))
    lines = ["# Latency: models x runtimes x precisions x batch sizes", "",
             f"Command: `{result['command']}`", "",
             f"Machine: {machine}; device {env['device']}; torch {env.get('torch')}, onnxruntime "
             f"{env.get('onnxruntime')}; {env['date']}. Measured peak: {p['gflops']:.1f} GFLOP/s ({p['how']}).", "",
             "| model | runtime | precision | tower | batch | p50 ms | p90 ms | p99 ms | samples/s | peak RSS MB "
             "| size MB | cosine | params M | GFLOP/sample | limit ms | gap |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r["status"] != "ok":
            continue
        prec = r["precision"] + (f" ({r['quant']})" if r["quant"] else "")
        lines.append(f"| {r['model']} | {r['runtime']} | {prec} | {r['tower']} | {r['batch']} | {_f(r['p50_ms'])} | "
                     f"{_f(r['p90_ms'])} | {_f(r['p99_ms'])} | {_f(r['throughput_sps'], '.1f')} | "
                     f"{_f(r['peak_rss_mb'], '.0f')} | {_f(r['artifact_mb'], '.1f')} | {_f(r['min_cosine'], '.5f')} | "
                     f"{_f(r['params'] / 1e6 if r['params'] else None)} | {_f(r['gflops_per_sample'], '.3f')} | "
                     f"{_f(r['limit_ms'], '.3f')} | {_f(r['gap'], '.1f')} |")
    other = [r for r in rows if r["status"] != "ok"]
    if other:
        lines += ["", "Not timed:", ""]
        lines += [f"- {r['model']} {r['runtime']} {r['precision']} {r['tower']} batch {r['batch']}: "
                  f"**{r['status']}**: {r['reason']}" for r in other]
    placed = {}
    for r in rows:
        if r.get("nodes_by_provider"):
            placed.setdefault((r["bundle"], r["tower"]), r)
    if placed:
        lines += ["", "Where ONNX Runtime ran each tower's nodes (its profiler, first call; `providers` is the "
                  "session's list):", "", "| bundle | tower | providers | nodes by provider |", "|---|---|---|---|"]
        lines += [f"| {b} | {t} | {', '.join(r['providers'])} | "
                  + ", ".join(f"{k}: {v}" for k, v in r["nodes_by_provider"].items()) + " |"
                  for (b, t), r in placed.items()]
    notes = [r for r in rows if r["status"] == "ok" and r["reason"]]
    if notes:
        lines += ["", "Notes on timed rows:", ""]
        lines += [f"- {r['model']} {r['runtime']} {r['precision']} {r['tower']} batch {r['batch']}: {r['reason']}"
                  for r in notes]
    lines += eval_table(rows)
    acc = {(r["model"], r["precision"]): r for r in rows if r["accuracy"] is not None and r["eval_images"] is None}
    if acc:
        lines += ["", "| model | precision | zero-shot top-1 | source |", "|---|---|---:|---|"]
        lines += [f"| {m} | {pr} | {100 * r['accuracy']:.1f}% | {r['accuracy_source']} |" for (m, pr), r in acc.items()]
    lines += ["", "Definitions:", ""] + [f"- `{k}`: {v}" for k, v in result["definitions"].items()]
    return "\n".join(lines) + "\n"


def _moved(r: dict, way: str) -> str:
    """`` (lost L, gained G)``: the queries the artifact missed that the source hit, and the reverse."""
    lost, gained = r.get(f"eval_{way}_lost"), r.get(f"eval_{way}_gained")
    return "" if lost is None or gained is None or not (lost or gained) else f" ({lost}↓ {gained}↑)"


def eval_table(rows: list) -> list:
    """``--eval``: one line per artifact (both towers), its metrics and their change from the fp32 PyTorch source."""
    seen: dict = {}
    for r in rows:
        if r.get("eval_images") is not None:
            seen.setdefault((r["model"], r["runtime"], r["bundle"]), {})[r["tower"]] = r
    if not seen:
        return []
    first = next(iter(next(iter(seen.values())).values()))
    lines = ["", f"Accuracy on the evaluation folder ({first['eval_images']} images"
             + (f", {first['eval_captions']} captions" if first["eval_captions"] else "")
             + "): each artifact against its fp32 PyTorch source (change in points; agreement: the share of images "
               "whose zero-shot top-1 class is the source's; L↓ G↑: the queries it lost and gained against the source).", "",
             "| model | runtime | precision | bundle | size MB | zero-shot top-1 | Δ top-1 | Δ text→image R@1 "
             "| Δ image→text R@1 | top-1 agreement |", "|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for (model, runtime, bundle), towers in seen.items():
        r = towers.get("image") or next(iter(towers.values()))
        prec = "/".join(dict.fromkeys(t["precision"] + (f" ({t['quant']})" if t["quant"] else "")
                                      for t in towers.values()))
        lines.append(f"| {model} | {runtime} | {prec} | {bundle or '—'} | {_f(r['bundle_mb'], '.1f')} | "
                     f"{_f(100 * r['eval_zeroshot_top1'], '.1f')}% | {_f(r['eval_delta_zeroshot_top1'], '+.1f')} | "
                     f"{_f(r['eval_delta_text_to_image_R@1'], '+.1f')}{_moved(r, 'text_to_image')} | "
                     f"{_f(r['eval_delta_image_to_text_R@1'], '+.1f')}{_moved(r, 'image_to_text')} "
                     f"| {_f(100 * r['eval_top1_agreement'] if r['eval_top1_agreement'] is not None else None, '.1f')}% |")
    return lines


def write_reports(result: dict, out: Path) -> dict:
    """``bench.json``, ``bench.md`` and the PNG plots; returns ``{kind: path or reason}``."""
    from mobileclip.checkpoint import atomic_write, atomic_write_json

    out.mkdir(parents=True, exist_ok=True)
    written = {}
    try:
        from .plots import plot_accuracy, plot_latency

        written["latency_plot"] = str(plot_latency(result, out / "latency_vs_batch.png"))
        acc = plot_accuracy(result, out / "accuracy_vs_latency.png")
        written["accuracy_plot"] = str(acc) if acc else "no accuracy known (pass --accuracy LABEL=VALUE)"
    except ImportError as e:
        written["latency_plot"] = f"not drawn: matplotlib is missing (pip install 'mobileclip-toolkit[bench]'): {e}"
    result["plots"] = written
    atomic_write_json(out / "bench.json", result)
    with atomic_write(out / "bench.md", "w") as f:
        f.write(markdown(result))
    print(f"wrote {out / 'bench.json'}, {out / 'bench.md'}" + "".join(
        f", {v}" for v in written.values() if v.endswith(".png")))
    return written


def print_table(result: dict) -> None:
    print(f"{'model':28} {'runtime':13} {'prec':9} {'tower':5} {'batch':>5} {'p50 ms':>9} {'p90 ms':>9} "
          f"{'samples/s':>10} {'gap':>6}  status")
    for r in result["rows"]:
        prec = r["precision"] + ("/" + r["quant"][0] if r["quant"] else "")
        print(f"{r['model'][:28]:28} {r['runtime']:13} {prec:9} {r['tower']:5} {r['batch']:5} {_f(r['p50_ms']):>9} "
              f"{_f(r['p90_ms']):>9} {_f(r['throughput_sps'], '.1f'):>10} {_f(r['gap'], '.1f'):>6}  "
              + (r["status"] if r["status"] == "ok" else f"{r['status']}: {r['reason']}"))
