"""Which low-precision recipes may ship by default: the precision tables summed over their evaluation draws.

    .venv/bin/python -m mobileclip.benchmarks.precision_summary      (no options)

Reads every ``benchmarks/results/precision/<model>/bench.json`` (written by ``benchmarks/precision_table.sh``: the
first evaluation draw) and its ``eval-<seed>/bench.json`` (the further draws), and gives, per recipe and trained
model, the mean +- std over the draws of top-1 agreement with the fp32 PyTorch source and of the change in zero-shot
top-1 and in R@1 both ways, with the queries lost and gained summed over the draws. A recipe passes on a model when
its mean agreement is >= 98 % and neither mean R@1 change is below -1 point (the rule of issue 23); it may ship by
default when it passes on every model. Writes ``summary.json`` and ``summary.md`` beside the tables;
``tests/test_precision_policy.py`` checks that the backends refuse exactly the recipes that fail here.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

ROOT = Path("benchmarks/results/precision")
MIN_AGREEMENT = 0.98
MAX_R1_LOSS = 1.0   # points
DIRECTIONS = ("text_to_image", "image_to_text")


def recipe_of(bundle: str) -> dict:
    """``onnx-int8-static`` -> format, precision and int8 method (the job names of precision_table.sh); a
    ``+option`` suffix (``onnx-int8-static+exactgelu``) is a variant of that recipe, exported with that option."""
    name, _, variant = Path(bundle).name.partition("+")
    parts = name.split("-")
    return {"recipe": Path(bundle).name, "format": parts[0], "precision": parts[1],
            "quant": parts[2] if len(parts) > 2 and parts[1] == "int8" else None, "variant": variant or None}


def draws(model_dir: Path) -> list:
    """Each draw's bench rows with an accuracy comparison, one per bundle (both towers share it)."""
    out = []
    for path in [model_dir / "bench.json"] + sorted(model_dir.glob("eval-*/bench.json")):
        rows = {}
        for r in json.loads(path.read_text())["rows"]:
            if r.get("bundle") and r.get("eval_top1_agreement") is not None:
                rows.setdefault(r["bundle"], r)
        out.append(rows)
    return out


def _ms(values: list) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def summarize_model(model_dir: Path) -> list:
    per_draw = draws(model_dir)
    rows = []
    for bundle in per_draw[0]:
        seen = [d[bundle] for d in per_draw if bundle in d]
        row = {**recipe_of(bundle), "model": model_dir.name, "draws": len(seen),
               "images": [r["eval_images"] for r in seen],
               "agreement": _ms([r["eval_top1_agreement"] for r in seen]),
               "delta_zeroshot_top1": _ms([r["eval_delta_zeroshot_top1"] for r in seen])}
        for d in DIRECTIONS:
            if seen[0].get(f"eval_delta_{d}_R@1") is not None:
                row[f"delta_{d}_R@1"] = _ms([r[f"eval_delta_{d}_R@1"] for r in seen])
                row[f"{d}_lost"] = sum(r[f"eval_{d}_lost"] for r in seen)
                row[f"{d}_gained"] = sum(r[f"eval_{d}_gained"] for r in seen)
        misses = []
        if row["agreement"]["mean"] < MIN_AGREEMENT:
            misses.append(f"agreement {100 * row['agreement']['mean']:.1f} % < {100 * MIN_AGREEMENT:.0f} %")
        for d in DIRECTIONS:
            if f"delta_{d}_R@1" in row and row[f"delta_{d}_R@1"]["mean"] < -MAX_R1_LOSS:
                misses.append(f"{d.replace('_', ' ')} R@1 {row[f'delta_{d}_R@1']['mean']:+.1f} points")
        row["misses"] = misses
        rows.append(row)
    return rows


def summarize(root: Path = ROOT) -> dict:
    rows = [r for d in sorted(p for p in root.iterdir() if (p / "bench.json").is_file()) for r in summarize_model(d)]
    verdict = {}
    for r in rows:
        v = verdict.setdefault(r["recipe"], {**{k: r[k] for k in ("format", "precision", "quant", "variant")},
                                             "misses": []})
        v["misses"] += [f"{r['model']}: {m}" for m in r["misses"]]
    models = sorted({r["model"] for r in rows})
    for name, v in verdict.items():   # a recipe some model's table lacks has not passed there
        measured = {r["model"] for r in rows if r["recipe"] == name}
        v["misses"] += [f"{m}: not measured" for m in models if m not in measured]
        v["passes"] = not v["misses"]
    return {"rule": {"min_agreement": MIN_AGREEMENT, "max_R@1_loss_points": MAX_R1_LOSS, "on": "the mean over draws"},
            "models": models, "rows": rows, "recipes": verdict}


def _pm(x: dict, scale: float = 1.0, signed: bool = True) -> str:
    m, s = scale * x["mean"], scale * x["std"]
    return (f"{m:+.1f}" if signed else f"{m:.1f}") + (f" ± {s:.1f}" if s else "")


def markdown(report: dict) -> str:
    md = ["# Which low-precision recipes ship by default", "",
          "Command: `python -m mobileclip.benchmarks.precision_summary` over the tables of "
          "`benchmarks/precision_table.sh` (each model's folder here: the first draw in `bench.md`, further draws in "
          "`eval-<seed>/`).", "",
          f"Rule (issue 23), on the mean over draws: top-1 agreement ≥ {100 * MIN_AGREEMENT:.0f} % and no R@1 "
          f"change below −{MAX_R1_LOSS:.0f} point; a recipe ships by default only where it passes on every model. "
          "Changes are in points against the fp32 PyTorch source, mean ± std over draws; L↓ G↑ are the queries "
          "lost and gained, summed over draws.", "",
          "| recipe | model | draws | agreement % | Δ top-1 | Δ text→image R@1 (L↓ G↑) | Δ image→text R@1 (L↓ G↑) | "
          "passes |", "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in sorted(report["rows"], key=lambda r: (r["recipe"], r["model"])):
        cells = []
        for d in DIRECTIONS:
            k = f"delta_{d}_R@1"
            cells.append(f"{_pm(r[k])} ({r[f'{d}_lost']}↓ {r[f'{d}_gained']}↑)" if k in r else "—")
        md.append(f"| {r['recipe']} | {r['model']} | {r['draws']} | {_pm(r['agreement'], 100, signed=False)} | "
                  f"{_pm(r['delta_zeroshot_top1'])} | {cells[0]} | {cells[1]} | "
                  + ("yes" if not r["misses"] else "**no**: " + "; ".join(r["misses"])) + " |")
    md += ["", "| recipe | ships by default |", "|---|---|"]
    for name, v in sorted(report["recipes"].items()):
        md.append(f"| {name} | " + ("yes" if v["passes"] else "**no** (" + "; ".join(v["misses"]) + ")") + " |")
    return "\n".join(md) + "\n"


def main() -> int:
    report = summarize()
    (ROOT / "summary.json").write_text(json.dumps(report, indent=1) + "\n")
    (ROOT / "summary.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
