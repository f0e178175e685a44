"""Crash tests: `kill -9` of export, index, validate, cache-teacher and distill at seeded points.

Each command runs once to completion under tests/_crashhook.py, which counts the operations
that change the file system; then, for seeded random operation numbers N, the command runs
again from the same starting state and SIGKILLs itself just before its N-th write. After
each kill: nothing under a real name is half-written (every bundle, index, cache shard and
checkpoint that exists loads and verifies), nothing that existed before is lost, and running
the command again succeeds with the same result as the uninterrupted run.
"""
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")

from mobileclip.export import export  # noqa: E402
from mobileclip.backends.bundle import load_manifest  # noqa: E402

pytestmark = pytest.mark.slow
HOOK = Path(__file__).with_name("_crashhook.py")
POINTS = 3   # kill points per command
SEED = 9


def run(args, cwd, crash_at=0, count_file=None):
    env = dict(os.environ, MC_CRASH_AT=str(crash_at), PYTHONHASHSEED="0")
    if count_file:
        env["MC_CRASH_COUNT"] = str(count_file)
    p = subprocess.run([sys.executable, str(HOOK), *map(str, args)], cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=600)
    return p


def crash_points(name, args, cwd):
    """Run ``args`` to completion counting writes; return seeded kill points in [1, count]."""
    count = cwd / f"{name}.count"
    p = run(args, cwd, count_file=count)
    assert p.returncode == 0, p.stderr[-2000:]
    total = int(count.read_text())
    assert total > 3, total
    rng = random.Random(f"{SEED}-{name}")
    return sorted(rng.sample(range(1, total + 1), min(POINTS, total)))


def digest(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*")) if p.is_file()}


def leftovers(folder: Path) -> list:
    return sorted(p.name for p in Path(folder).rglob("*") if ".tmp" in p.name or p.name.endswith(".old"))


def with_bundle(folder: Path, bundle: Path) -> Path:
    """``folder`` holding a copy of ``bundle`` as ``b``: the starting state of a bundle command."""
    folder.mkdir()
    shutil.copytree(bundle, folder / "b")
    return folder


def killed(p) -> bool:
    return p.returncode == -signal.SIGKILL


@pytest.fixture(scope="module")
def old_bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("old") / "bundle"
    export("mobileclip-tiny", out, max_batch=2, seed=1)
    return out


def test_kill_export(old_bundle, tmp_path):
    args = ["export", "mobileclip-tiny", "--out", "b", "--overwrite", "--max-batch", "2", "--seed", "0"]
    old = digest(old_bundle)
    for n in crash_points("export", args, with_bundle(tmp_path / "ref", old_bundle)):
        work = with_bundle(tmp_path / f"at{n}", old_bundle)
        p = run(args, work, crash_at=n)
        assert killed(p), (n, p.returncode, p.stderr[-1000:])
        b, parked = work / "b", work / ".b.old"
        if b.exists():   # the old bundle, or the complete new one: both verify
            m = load_manifest(b)
            assert digest(b) == old or m["source"]["seed"] == 0
        else:            # killed between the two renames: the old bundle is parked whole
            assert digest(parked) == old
        p = run(args, work)
        assert p.returncode == 0, p.stderr[-2000:]
        assert load_manifest(b)["source"]["seed"] == 0 and load_manifest(b)["parity"]["passed"]
        assert leftovers(work) == []


def test_kill_index(tiny_bundle, tmp_path):
    from PIL import Image

    from mobileclip import runtime
    from mobileclip.runtime import load_index

    model = runtime.load(tiny_bundle)

    def prepare(work: Path) -> Path:
        """Three pictures indexed, then two new ones: the command under test updates the index."""
        pics = work / "pics"
        pics.mkdir(parents=True)
        for i in range(5):
            if i == 3:
                runtime.build_index(model, pics, progress=False).save(work / "pics.idx")
            Image.new("RGB", (24 + i, 20), (40 * i, 100, 200 - 30 * i)).save(pics / f"im{i}.png")
        return work

    args = ["index", tiny_bundle, "pics", "--out", "pics.idx", "--no-progress"]
    for n in crash_points("index", args, prepare(tmp_path / "ref")):
        work = prepare(tmp_path / f"at{n}")
        p = run(args, work, crash_at=n)
        assert killed(p), (n, p.returncode, p.stderr[-1000:])
        assert len(load_index(work / "pics.idx")) in (3, 5)   # the old index or the new one, never a torn file
        p = run(args, work)
        assert p.returncode == 0, p.stderr[-2000:]
        assert len(load_index(work / "pics.idx")) == 5 and leftovers(work) == []


def test_kill_validate(tiny_bundle, tmp_path):
    args = ["validate", "b", "--max-batch", "2"]
    before = digest(tiny_bundle)
    for n in crash_points("validate", args, with_bundle(tmp_path / "ref", tiny_bundle)):
        work = with_bundle(tmp_path / f"at{n}", tiny_bundle)
        p = run(args, work, crash_at=n)
        assert killed(p), (n, p.returncode, p.stderr[-1000:])
        assert digest(work / "b") == before and load_manifest(work / "b")
        report = work / "b.validate.json"
        assert not report.exists() or json.loads(report.read_text())["passed"]
        p = run(args, work)
        assert p.returncode == 0, p.stderr[-2000:]
        assert json.loads(report.read_text())["passed"] and leftovers(work) == []


def test_kill_cache_teacher(tmp_path):
    from mobileclip.distill.cache import TeacherCache, _verify_shard

    args = ["cache-teacher", "--teacher", "clip-vit-tiny", "--data", "synthetic", "--size", "12", "--image-size",
            "32", "--augs", "2", "--shard-size", "4", "--batch-size", "8", "--workers", "0", "--device", "cpu",
            "--out", "c"]
    ref = tmp_path / "ref"
    ref.mkdir()
    points = crash_points("cache", args, ref)
    want = digest(ref / "c")
    for n in points:
        work = tmp_path / f"at{n}"
        work.mkdir()
        p = run(args, work, crash_at=n)
        assert killed(p), (n, p.returncode, p.stderr[-1000:])
        c = work / "c"
        if (c / "manifest.json").exists():
            m = json.loads((c / "manifest.json").read_text())
            for s in range(m["num_shards"]):
                if (c / f"shard_{s:05d}").exists():
                    _verify_shard(c, m, s)   # every shard under its real name is whole
        p = run(args, work)
        assert p.returncode == 0, p.stderr[-2000:]
        assert TeacherCache(c).manifest["num_shards"] == 3
        assert digest(c) == want   # bit-identical to the uninterrupted build
        assert leftovers(work) == []


def test_kill_distill(tmp_path):
    import torch

    args = ["distill", "student=mobileclip-tiny", "batch_size=8", "data.size=32", "data.workers=0", "progress=false",
            "eval.size=36", "steps=3", "ckpt_every=1", "log_every=1", "out=r"]
    ref = tmp_path / "ref"
    ref.mkdir()
    points = crash_points("distill", args, ref)

    def weights(d):   # bit-exact tensors (safetensors orders its metadata differently in every process)
        from safetensors.torch import load_file

        return load_file(d / "model.safetensors")

    want = weights(ref / "r" / "student")
    for n in points:
        work = tmp_path / f"at{n}"
        work.mkdir()
        p = run(args, work, crash_at=n)
        assert killed(p), (n, p.returncode, p.stderr[-1000:])
        r = work / "r"
        for last in (r / "last", r / ".last.old"):
            if (last / "train_state.pt").exists():   # any checkpoint under a real name loads
                torch.load(last / "train_state.pt", weights_only=True)
        resumable = (r / "last").is_dir() or (r / ".last.old").is_dir()
        again = args + (["--resume", "r"] if resumable else ["--overwrite"] if r.exists() else [])
        p = run(again, work)
        assert p.returncode == 0, (n, p.stderr[-2000:])
        got = weights(r / "student")   # the resumed run ends where the uninterrupted one did, bit for bit
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
        steps = [json.loads(x)["step"] for x in (r / "metrics.jsonl").read_text().splitlines()]
        assert steps == [1, 2, 3], steps
        assert leftovers(work) == []
