"""Robustness: every file the toolkit reads or writes is right or refused, never silently wrong, never lost.

    .venv/bin/python -m mobileclip.benchmarks.robustness [--out benchmarks/results] [--work DIR] [--crash]

Builds small real inputs in a work folder (a bundle of mobileclip-tiny, a teacher cache, a
finished distill run, images, caption files), then runs each hostile case as a real CLI
subprocess in a folder of its own and checks: the exit status, a fragment of the error line,
that the files that existed before are byte-identical afterwards (sha256), that no marker file
of malicious code appeared, and that no temporary (``*.tmp*``, ``*.old``) is left. ``--crash``
adds the kill -9 tests of tests/test_crash.py. Writes ``robustness.json`` and ``robustness.md``.
"""
from __future__ import annotations

import argparse
import json
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from mobileclip.benchmarks.common import environment

from .robustness_cases import (ABBREV, Base, CASES, CRASH, CT, Case, DISK, DISTILL, ENV, MOUNTS, REPO, SYNTH_CT,
                               digest, error_line, mc)


def show(argv) -> str:
    s = "mobileclip " + " ".join(map(str, argv))
    for long, short in ABBREV.items():
        s = s.replace(long, short)
    return s


def expected(c: Case) -> str:
    checks = (("unchanged", c.guard), ("not created", c.absent), ("written", c.present))
    return "; ".join([f"{c.code}, `{c.message}`"] + [f"{k}: {', '.join(v)}" for k, v in checks if v])


def probabilities(stdout: str) -> list:
    return [(p["label"], p["probability"]) for p in json.loads(stdout)["results"][0]["predictions"]]


def run_case(c: Case, d: Path, base: Base) -> dict:
    d.mkdir(parents=True)
    argv = [str(a) for a in c.setup(d, base)]
    before = {g: digest(d / g) for g in c.guard}
    t = time.perf_counter()
    p = mc(argv, d, check=False)
    seconds = time.perf_counter() - t
    line, problems = error_line(p), []
    if p.returncode != c.code:
        problems.append(f"exit {p.returncode}, expected {c.code}")
    if c.compare:
        ref = mc([argv[0], argv[1], c.compare, *argv[3:]], d, check=False)
        try:
            same = probabilities(p.stdout) == probabilities(ref.stdout)
            line = (f"same probabilities as the 8-bit file: {probabilities(p.stdout)[0]}" if same else
                    f"differs: {probabilities(p.stdout)} vs 8-bit {probabilities(ref.stdout)}")
        except (ValueError, KeyError, IndexError) as e:
            line = f"{line} (no JSON result to compare: {e!r})"
    if not re.search(c.message, line):
        problems.append("message does not match")
    for g, was in before.items():
        now = digest(d / g) if (d / g).exists() else {}
        if now != was:
            changed = sorted(k for k in was.keys() | now.keys() if was.get(k) != now.get(k))
            problems.append(f"changed: {', '.join(changed[:4])}")
    problems += [f"exists: {a}" for a in c.absent if (d / a).exists() or (d / a).is_symlink()]
    problems += [f"missing: {a}" for a in c.present if not (d / a).exists()]
    left = sorted(q.relative_to(d).as_posix() for q in d.rglob("*") if ".tmp" in q.name or q.name.endswith(".old"))
    problems += [f"left behind: {', '.join(left)}"] if left else []
    return {"group": c.group, "case": c.name, "command": show(argv), "argv": argv, "expected": expected(c),
            "exit": p.returncode, "message": line, "problems": problems, "verdict": "FAIL" if problems else "ok",
            "seconds": round(seconds, 2), "stderr_tail": p.stderr[-1500:]}


def build_base(root: Path) -> Base:
    root.mkdir(parents=True)
    steps = [("bundle", ["export", "mobileclip-tiny", "--out", "bundle", "--max-batch", "2"]),
             ("finished run", [*DISTILL, "out=run"]),
             ("teacher cache", [*SYNTH_CT, "--out", "cache"])]
    for what, argv in steps:
        t = time.perf_counter()
        mc(argv, root)
        print(f"  base: {what} ({time.perf_counter() - t:.1f}s): {show(argv)}", flush=True)
    return Base(root)


def can_mount(work: Path) -> bool:
    probe = work / "mount-probe"
    probe.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)], capture_output=True)
    if p.returncode == 0:
        subprocess.run(["umount", str(probe)], check=True)
    probe.rmdir()
    return p.returncode == 0


def crash_rows(work: Path) -> list:
    xml = work / "crash.xml"
    argv = [sys.executable, "-m", "pytest", "-q", "-m", "slow", "tests/test_crash.py", "-rA", f"--junitxml={xml}"]
    t = time.perf_counter()
    p = subprocess.run(argv, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=7200)
    print(f"  crash tests: exit {p.returncode} in {time.perf_counter() - t:.0f}s", flush=True)
    found = {}
    if xml.exists():
        for tc in ET.parse(xml).iter("testcase"):
            bad = tc.find("failure") if tc.find("failure") is not None else tc.find("error")
            skip = tc.find("skipped")
            msg = ((bad.get("message") or "")[:300] if bad is not None else
                   f"skipped: {skip.get('message')}" if skip is not None else
                   f"passed in {float(tc.get('time', 0)):.0f}s")
            found[tc.get("name")] = ("passed" if bad is None and skip is None else
                                     "failed" if bad is not None else "skipped", msg, float(tc.get("time", 0)))
    rows = []
    for name, what in CRASH.items():
        outcome, msg, secs = found.get(name, ("not run", p.stdout[-300:] or p.stderr[-300:], 0.0))
        rows.append({"group": "Crash (kill -9)", "case": what, "command": f"pytest -m slow tests/test_crash.py::{name}",
                     "argv": argv, "expected": "passed", "exit": outcome, "message": msg,
                     "problems": [] if outcome == "passed" else [outcome], "verdict": "ok" if outcome == "passed"
                     else "FAIL", "seconds": round(secs, 1), "stderr_tail": ""})
    return rows


def cell(s) -> str:
    s = str(s).replace("|", "\\|").replace("\n", " ")
    return s if len(s) <= 120 else s[:117] + "..."


def report(rows: list, result: dict, out: Path, disk_note: str) -> None:
    ok = sum(r["verdict"] == "ok" for r in rows)
    lines = ["# Robustness: every file read or written is right or refused", "",
             "Each row is a hostile input or a damaged file, given to the real command line as a subprocess in a "
             "folder of its own. A row is ok when the exit status is the expected one, the error line matches the "
             "expected fragment (a regular expression; the table leaves out the `mobileclip: error:` that starts each "
             "error line), the files listed as unchanged have the same sha256 before "
             "and after, no file listed as not created appeared (`pwned` is the marker a malicious file would "
             "create if its code ran), and no temporary (`*.tmp*`, `*.old`) was left behind. Inputs are built "
             "from scratch each run: a bundle of `mobileclip-tiny` (`mobileclip export mobileclip-tiny --out "
             "bundle --max-batch 2`), a finished 2-step distill run, a 12-image teacher cache, images written "
             "with numpy/PIL.", "",
             f"Regenerate: `{result['command']}`", "",
             f"**{ok} ok, {len(rows) - ok} FAIL** of {len(rows)} cases; {result['seconds']:.0f} s on "
             f"{result['environment']['cpu']} ({result['environment']['cores']} cores), Python "
             f"{result['environment']['python']}, {result['environment']['date']}.", "",
             f"In commands: `$D` = `{' '.join(DISTILL)}`; `$CT` = `{' '.join(CT)}`.", "", disk_note, ""]
    for group in dict.fromkeys(r["group"] for r in rows):
        lines += [f"## {group}", "", "| case | command | expected | exit | message | verdict |",
                  "|---|---|---|---|---|---|"]
        for r in (r for r in rows if r["group"] == group):
            msg = r["message"].removeprefix("mobileclip: error: ") + (f" — {'; '.join(r['problems'])}"
                                                                       if r["problems"] else "")
            lines.append(f"| {cell(r['case'])} | `{cell(r['command'])}` | {cell(r['expected'])} | {r['exit']} | "
                         f"{cell(msg)} | {r['verdict']} |")
        lines.append("")
    (out / "robustness.md").write_text("\n".join(lines))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--work", default="", help="work folder (kept); default: a temporary one, removed")
    ap.add_argument("--crash", action="store_true", help="also run the kill -9 tests of tests/test_crash.py")
    args = ap.parse_args()
    start = time.perf_counter()
    work = Path(args.work or tempfile.mkdtemp(prefix="mc-robustness-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    print(f"work folder: {work}", flush=True)
    base = build_base(work / "base")
    mount = can_mount(work)
    cases = CASES + (DISK if mount else [])
    disk_note = ("Full disk: a small tmpfs is mounted for each of those cases (`mount -t tmpfs -o size=...`)." if mount
                 else "Full disk (ENOSPC) is left out: mounting a small tmpfs was refused here. It is covered by "
                      "tests/test_trust.py::test_full_disk_leaves_no_half_written_shard.")
    rows = []
    for i, c in enumerate(cases, 1):
        d = work / "cases" / f"{i:02d}"
        try:
            row = run_case(c, d, base)
        except Exception as e:   # a setup that broke is a FAIL of this row, not of the whole run
            row = {"group": c.group, "case": c.name, "command": "", "argv": [], "expected": expected(c), "exit": "-",
                   "message": f"setup failed: {e!r}"[:400], "problems": ["setup failed"], "verdict": "FAIL",
                   "seconds": 0, "stderr_tail": ""}
        finally:
            while MOUNTS:
                subprocess.run(["umount", str(MOUNTS.pop())], capture_output=True)
        rows.append(row)
        print(f"[{i:2d}/{len(cases)}] {row['verdict']:4s} {c.group}: {c.name}  (exit {row['exit']}, "
              f"{row['seconds']}s)  {row['message'][:100]}" + (f"  <- {row['problems']}" if row["problems"] else ""),
              flush=True)
        if row["verdict"] == "ok":
            shutil.rmtree(d, ignore_errors=True)
    if args.crash:
        rows += crash_rows(work)
    cmd = "python -m mobileclip.benchmarks.robustness" + (" --crash" if args.crash else "")
    result = {"benchmark": "robustness", "command": cmd, "argv": sys.argv,
              "environment": environment(platform=platform.platform(), numpy=np.__version__),
              "seconds": round(time.perf_counter() - start, 1), "ok": sum(r["verdict"] == "ok" for r in rows),
              "fail": sum(r["verdict"] != "ok" for r in rows), "full_disk_cases": mount, "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "robustness.json").write_text(json.dumps(result, indent=2) + "\n")
    report(rows, result, out, disk_note)
    print(f"{result['ok']} ok, {result['fail']} FAIL in {result['seconds']:.0f}s; wrote {out / 'robustness.md'}")
    if not args.work and not result["fail"]:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if not result["fail"] else 1


if __name__ == "__main__":
    sys.exit(main())
