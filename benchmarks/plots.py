"""PNG plots of a ``mobileclip bench`` result (matplotlib, drawn off-screen with the Agg canvas).

* ``latency_vs_batch.png``: one panel per tower; p50 latency against batch size on log-log
  axes, one line per model / runtime / precision (colour = model, marker and dash = runtime
  and precision), a shaded band up to p90; the legend sits below the panels and the title
  names the machine.
* ``accuracy_vs_latency.png``: zero-shot top-1 against the image tower's p50 latency at the
  smallest batch timed, one point per model / runtime / precision with an accuracy.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f",
          "#bcbd22")
STYLES = (("o", "-"), ("s", "--"), ("^", ":"), ("D", "-."), ("v", (0, (5, 1))), ("P", (0, (1, 1))),
          ("X", (0, (3, 1, 1, 1))), ("*", "-"))


def _log_label(v: float, _pos=None) -> str:
    """Tick labels on a log axis: 1, 2 and 5 times a power of ten, plainly written; others blank."""
    if v <= 0:
        return ""
    mantissa = v / 10 ** math.floor(math.log10(v) + 1e-9)
    return f"{v:g}" if any(abs(mantissa - m) < 1e-6 for m in (1, 2, 5)) else ""


def _variant(r: dict) -> str:
    """Runtime and precision of a row, e.g. ``onnxruntime int8 (static)``."""
    return f"{r['runtime']} {r['precision']}" + (f" ({r['quant']})" if r.get("quant") else "")


def _machine(result: dict) -> str:
    env = result["environment"]
    n = env["threads"]
    where = f"GPU {env['gpu']}" if env.get("gpu") else f"{env['cpu']}, {n} thread{'' if n == 1 else 's'}"
    return f"{where}; torch {env.get('torch')}, onnxruntime {env.get('onnxruntime')}"


def _kind(r: dict) -> str:
    """Runtime and precision, without the quantization method: what marker and dash show."""
    return f"{r['runtime']} {r['precision']}"


def _styles(rows: list) -> tuple[dict, dict]:
    """Colour per model; (marker, dash) per runtime + precision (:func:`_kind`)."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    kinds = list(dict.fromkeys(_kind(r) for r in rows))
    return ({m: COLORS[i % len(COLORS)] for i, m in enumerate(models)},
            {k: STYLES[i % len(STYLES)] for i, k in enumerate(kinds)})


def _line_label(rows: list, model: str, kind: str) -> str:
    """``model · runtime precision``, plus the int8 method: ``(static)``, or per tower when they differ."""
    quant = {r["tower"]: r["quant"] for r in rows if r["model"] == model and _kind(r) == kind and r.get("quant")}
    if not quant:
        return f"{model} · {kind}"
    if len(set(quant.values())) == 1:
        return f"{model} · {kind} ({next(iter(quant.values()))})"
    return f"{model} · {kind} (" + ", ".join(f"{t} {q}" for t, q in quant.items()) + ")"


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    FigureCanvasAgg(fig)
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    tmp.replace(path)
    return path


def plot_latency(result: dict, path: Path) -> Path:
    """Latency vs batch, one panel per tower; returns ``path``."""
    rows = [r for r in result["rows"] if r["status"] == "ok" and r["p50_ms"] is not None]
    towers = list(dict.fromkeys(r["tower"] for r in rows)) or ["image"]
    color, style = _styles(rows)
    lines = list(dict.fromkeys((r["model"], _kind(r)) for r in rows))
    fig = Figure(figsize=(6.2 * len(towers), 5.2 + 0.28 * ((len(lines) + 1) // 2)))
    axes = [fig.add_subplot(1, len(towers), i + 1) for i in range(len(towers))]
    handles = {}
    batches = sorted({r["batch"] for r in rows}) or [1]
    for ax, tower in zip(axes, towers):
        for model, kind in lines:
            pts = sorted((r["batch"], r["p50_ms"], r["p90_ms"]) for r in rows
                         if r["tower"] == tower and r["model"] == model and _kind(r) == kind)
            if not pts:
                continue
            xs, p50, p90 = zip(*pts)
            marker, dash = style[kind]
            (h,) = ax.plot(xs, p50, marker=marker, linestyle=dash, color=color[model], linewidth=1.8, markersize=6,
                           label=_line_label(rows, model, kind))
            ax.fill_between(xs, p50, p90, color=color[model], alpha=0.12, linewidth=0)
            handles.setdefault(h.get_label(), h)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(FixedLocator(batches))
        ax.xaxis.set_major_formatter(lambda v, _pos: f"{v:g}")
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_minor_formatter(NullFormatter())
        if len(batches) == 1:
            ax.set_xlim(batches[0] / 1.5, batches[0] * 1.5)
        ax.yaxis.set_major_formatter(_log_label)
        ax.yaxis.set_minor_formatter(_log_label)
        ax.grid(True, which="major", alpha=0.35)
        ax.grid(True, which="minor", axis="y", alpha=0.12)
        ax.set_xlabel("batch size (log scale)")
        ax.set_ylabel("p50 latency per call, ms (log scale; band: up to p90)")
        ax.set_title(f"{tower} tower", fontsize=12)
    fig.suptitle(f"Latency vs batch — {_machine(result)}", fontsize=11.5, y=0.995)
    if handles:
        fig.legend(list(handles.values()), list(handles.keys()), loc="upper center", bbox_to_anchor=(0.5, 0.0),
                   ncol=2 if len(towers) > 1 else 1, fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    return _save(fig, path)


def accuracy_points(result: dict) -> list[tuple[str, str, float, float, int]]:
    """``(model, variant, p50 ms, accuracy, batch)`` for the image tower at the smallest batch timed."""
    rows = [r for r in result["rows"] if r["status"] == "ok" and r["tower"] == "image" and r["accuracy"] is not None]
    out = []
    for key in dict.fromkeys((r["model"], _variant(r)) for r in rows):
        best = min((r for r in rows if (r["model"], _variant(r)) == key), key=lambda r: r["batch"])
        out.append((key[0], key[1], best["p50_ms"], best["accuracy"], best["batch"]))
    return out


def plot_accuracy(result: dict, path: Path) -> Optional[Path]:
    """Zero-shot top-1 vs image-tower latency; None (nothing written) when no accuracy is known."""
    pts = accuracy_points(result)
    if not pts:
        return None
    rows = [r for r in result["rows"] if r["status"] == "ok"]
    color, style = _styles(rows)
    fig = Figure(figsize=(8.0, 5.6 + 0.28 * len(pts)))
    ax = fig.add_subplot(1, 1, 1)
    for model, variant, ms, acc, batch in pts:
        marker, _ = style[variant.split(" (")[0]]
        ax.scatter([ms], [100 * acc], s=70, marker=marker, color=color[model], label=f"{model} · {variant}",
                   zorder=3)
    for model in dict.fromkeys(p[0] for p in pts):  # one name per model, under its fastest point
        ms, acc = min((p[2], p[3]) for p in pts if p[0] == model)
        ax.annotate(model, (ms, 100 * acc), textcoords="offset points", xytext=(0, -16), ha="center", fontsize=8.5,
                    color=color[model])
    batches = sorted({p[4] for p in pts})
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(_log_label)
    ax.xaxis.set_minor_formatter(_log_label)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_xlabel(f"image tower p50 latency, ms (log scale; batch {', '.join(map(str, batches))})")
    ax.set_ylabel("zero-shot top-1, %")
    ax.margins(x=0.25, y=0.2)
    ax.set_title(f"Accuracy vs latency — {_machine(result)}", fontsize=11)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=1, fontsize=9, frameon=False)
    fig.tight_layout()
    return _save(fig, path)
