"""What checking a stored token table (``data.token_cache``) costs when a run reads it back.

    .venv/bin/python -m mobileclip.benchmarks.token_cache [--sizes 50000,1000000] [--out benchmarks/results]

For each size, distinct captions (~12 words) in a text file are tokenized by MobileCLIP-S0's tokenizer and
stored (:class:`mobileclip.distill.tokens.TokenTable` with ``store=``), then read back three times; the median
read is split into its parts, the checks each timed alone on the same table:

* **captions**: the rest of the read: the caption file read, indexed and every caption digested (what names
  the table; a run without the cache pays it too);
* **sha256**: the table's two files against their recorded digests;
* **structure**: every row starts with the start token, ends with the end token, fits the context and holds
  ids within the vocabulary (numpy over the whole table);
* **ids**: captions tokenized again and compared with their stored rows: all of them up to
  ``TokenTable.FULL_CHECK_MAX``, ``TokenTable.SAMPLE`` random ones beyond.

The largest size is extrapolated to 10 million captions, each part by its own law (linear, or constant for the
sampled ids), and marked as an extrapolation. Numbers go to ``token_cache.json`` / ``token_cache.md``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def _captions(n: int) -> str:
    rng = np.random.default_rng(0)
    words = ("a photo of the small large red blue wooden old new dog cat boat car house tree on in at near with "
             "lake street field sofa table beach snow night sunny two three people child man woman").split()
    return "".join(" ".join(rng.choice(words, 11)) + f" {i}\n" for i in range(n))


def measure(n: int) -> dict:
    from mobileclip.factory import create_model
    from mobileclip.distill.sources import TextLines
    from mobileclip.distill.tokens import TokenTable
    from mobileclip.hashing import sha256_file

    tok = create_model("mobileclip-s0")[2]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "texts.txt"
        path.write_text(_captions(n))
        t = time.perf_counter()
        built = TokenTable(TextLines(str(path)), tok, store=tmp + "/tokens")
        build = time.perf_counter() - t
        reads = []
        for _ in range(3):
            t = time.perf_counter()
            table = TokenTable(TextLines(str(path)), tok, store=tmp + "/tokens")
            reads.append(time.perf_counter() - t)
            assert table.loaded and not built.loaded
        folder = next(Path(tmp, "tokens").glob("tokens-*"))
        parts = {}
        src = TextLines(str(path))
        uniques = list(dict.fromkeys(c for i in range(len(src)) for c in src.captions(i)))
        t = time.perf_counter()
        for f in ("tokens.npy", "offsets.npy"):
            sha256_file(folder / f)
        parts["sha256"] = time.perf_counter() - t
        tokens, offsets = (np.load(folder / f"{k}.npy", mmap_mode="r") for k in ("tokens", "offsets"))
        t = time.perf_counter()
        assert table._row_problem(tokens, offsets, table.context_length) is None
        parts["structure"] = time.perf_counter() - t
        checked = n if n <= TokenTable.FULL_CHECK_MAX else TokenTable.SAMPLE + 2
        probe = list(range(checked))   # which captions does not change the cost
        t = time.perf_counter()
        for b in range(0, len(probe), 1024):   # as TokenTable._load does it
            want = tok([uniques[u] for u in probe[b:b + 1024]])
            assert np.array_equal(want.numpy().astype(np.int64), table._rows(np.asarray(probe[b:b + 1024])))
        parts["ids"] = time.perf_counter() - t
        # the rest of a read: the caption file read, indexed and digested (what names the table; any run pays it)
        parts = {"captions": max(0.0, statistics.median(reads) - sum(parts.values())), **parts}
        return {"captions": n, "mode": "every caption" if n <= TokenTable.FULL_CHECK_MAX else
                f"{TokenTable.SAMPLE} random + first + last", "ids_checked": checked,
                "build_and_store_s": build, "read_s": statistics.median(reads), "parts_s": parts,
                "table_mb": sum((folder / f).stat().st_size for f in ("tokens.npy", "offsets.npy")) / 1e6}


def extrapolate(r: dict, n: int) -> dict:
    """Each part at ``n`` captions by its own law: linear in the captions, constant for sampled ids."""
    k = n / r["captions"]
    parts = {p: v * (1 if p == "ids" and r["ids_checked"] < r["captions"] else k) for p, v in r["parts_s"].items()}
    return {"captions": n, "build_and_store_s": r["build_and_store_s"] * k, "read_s": sum(parts.values()),
            "parts_s": parts, "from": r["captions"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="50000,1000000")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    from mobileclip.benchmarks.common import environment
    from mobileclip.distill.tokens import TokenTable

    sizes = [int(s) for s in args.sizes.split(",")]
    runs = []
    for n in sizes:
        print(f"{n:,} captions ...", flush=True)
        runs.append(measure(n))
        print(json.dumps(runs[-1]), flush=True)
    big = max(runs, key=lambda r: r["captions"])
    est = extrapolate(big, 10_000_000)
    result = {"command": f"python -m mobileclip.benchmarks.token_cache --sizes {args.sizes}",
              "environment": environment(), "full_check_max": TokenTable.FULL_CHECK_MAX,
              "sample": TokenTable.SAMPLE, "runs": runs, "extrapolated_10m": est}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "token_cache.json").write_text(json.dumps(result, indent=2) + "\n")
    e = result["environment"]
    lines = ["# Reading back a stored token table (`data.token_cache`): what its checks cost", "",
             f"`{result['command']}` on {e['cpu']}, {e['cores']} cores, {e['date']}. Captions of ~12 words, "
             "MobileCLIP-S0's tokenizer. A read = the median of 3; the checks were timed alone on the same table, "
             "the captions' part is the rest of the read.", "",
             "| captions | ids checked | build + store (s) | read (s) | captions: read, index, digest (s) | sha256 (s) "
             "| structure, every row (s) | ids (s) | table (MB) |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs + [est]:
        p = r["parts_s"]
        label = (f"{r['captions']:,} (extrapolated from {r['from']:,})" if "from" in r else f"{r['captions']:,}")
        mode = "sampled, as above" if "from" in r else r["mode"]
        lines.append(f"| {label} | {mode} | {r['build_and_store_s']:.1f} | {r['read_s']:.2f} | {p['captions']:.2f} | "
                     f"{p['sha256']:.2f} | {p['structure']:.2f} | {p['ids']:.2f} | "
                     + (f"{r['table_mb']:.1f}" if "table_mb" in r else "—") + " |")
    lines += ["", f"Every caption is tokenized again up to {TokenTable.FULL_CHECK_MAX:,} captions; beyond, "
              f"{TokenTable.SAMPLE:,} random ones (fresh at every read), the first and the last."]
    (out / "token_cache.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
