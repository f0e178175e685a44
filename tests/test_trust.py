"""Issue 9, "trust": every file the toolkit reads is what was written, or a clear refusal.

Hostile inputs for bundles (schema, paths, unlisted files, symlinks), `validate` (read-only,
checks the manifest's own numbers), teacher caches (fingerprints of teachers, dataset and
settings; damaged shards and manifests), run directories, training configs and the CLI's
error boundary. Each case expects a typed error (or exit 2 and one line) and checks that
nothing that existed before was changed.
"""
import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")

import mobileclip  # noqa: E402
from mobileclip import runtime  # noqa: E402
from mobileclip.app.cli import main  # noqa: E402
from mobileclip.distill import TeacherCache, build_cache, load_config, train  # noqa: E402
from mobileclip.distill.cache import CacheError  # noqa: E402
from mobileclip.distill.sources import CaptionPairs, SyntheticPairs
from mobileclip.errors import ConfigError  # noqa: E402
from mobileclip.export import ParityError, export, validate  # noqa: E402
from mobileclip.backends.bundle import BundleError, load_manifest, write_manifest  # noqa: E402
from mobileclip.files import remove_stale_temps, temp_dir_for  # noqa: E402


def tree_digest(root: Path) -> dict:
    """Every file under ``root`` with its sha256: equal before and after means nothing was changed."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*")) if p.is_file()}


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    return code, err


# ------------------------------------------------------------------ bundles: the manifest schema and paths

def _copy(bundle, dest):
    shutil.copytree(bundle, dest)
    return dest


def _write_raw(d: Path, m):
    (d / "manifest.json").write_text(json.dumps(m))


def _sign(d: Path, m: dict, rel: str):
    m["files"][rel] = hashlib.sha256((d / rel).read_bytes()).hexdigest()


def _vocab_outside(d, m):
    m["tokenizer"]["vocab_file"] = "/etc/passwd"


def _vocab_unlisted(d, m):
    shutil.copy(d / m["tokenizer"]["vocab_file"], d / "other_vocab.txt.gz")
    m["tokenizer"]["vocab_file"] = "other_vocab.txt.gz"
    # the copy is neither listed nor checksummed: refused either way


def _files_dotdot(d, m):
    m["files"]["../secret.txt"] = "0" * 64


def _files_absolute(d, m):
    m["files"]["/etc/passwd"] = "0" * 64


def _artifact_dotdot(d, m):
    m["artifacts"]["image"]["file"] = "../image.onnx"


def _evil_file(d, m):
    (d / "evil.py").write_text("import os\n")


def _symlinked_artifact(d, m):
    outside = d.parent / f"{d.name}-outside.onnx"
    shutil.copy(d / "image.onnx", outside)
    (d / "image.onnx").unlink()
    (d / "image.onnx").symlink_to(outside)


HOSTILE_MANIFESTS = {
    "a JSON list": (lambda d, m: m.clear(), "must be a JSON object", lambda m: [m]),
    "files is a list": (lambda d, m: m.update(files=list(m["files"])), "files: must be an object", None),
    "no format_version": (lambda d, m: m.pop("format_version"), "format_version: is missing", None),
    "embed_dim a string": (lambda d, m: m.update(embed_dim="256"), "embed_dim: must be an integer", None),
    "image_size zero": (lambda d, m: m.update(image_size=0), "image_size: must be a positive integer", None),
    "std 0": (lambda d, m: m.update(std=[0.5, 0, 0.5]), r"std\[1\]: must be a finite positive number", None),
    "mean of 2": (lambda d, m: m.update(mean=[0, 0]), "mean: needs 3 values", None),
    "negative logit scale": (lambda d, m: m.update(logit_scale=-1.0), "logit_scale: must be a finite positive",
                             None),
    "NaN logit scale": (lambda d, m: m.update(logit_scale=float("nan")), "logit_scale: must be a finite", None),
    "logit scale a string": (lambda d, m: m.update(logit_scale="100"), "logit_scale: must be a number", None),
    "unknown backend": (lambda d, m: m["artifacts"]["image"].update(backend="pickle"), "backend: is 'pickle'",
                        None),
    "token dtype float": (lambda d, m: m["tokenizer"].update(token_dtype="float32"), "token_dtype: is 'float32'",
                          None),
    "vocab outside": (_vocab_outside, "vocab_file: '/etc/passwd' is not a plain relative path", None),
    "vocab not listed": (_vocab_unlisted, "other_vocab.txt.gz' is read by the runtime but has no checksum", None),
    "files ../": (_files_dotdot, r"'\.\./secret.txt' is not a plain relative path", None),
    "files absolute": (_files_absolute, "'/etc/passwd' is not a plain relative path", None),
    "artifact ../": (_artifact_dotdot, r"artifacts.image.file: '\.\./image.onnx' is not a plain", None),
    "unlisted evil.py": (_evil_file, "holds files its manifest does not list: evil.py", None),
    "symlink out": (_symlinked_artifact, "image.onnx' of .* leads outside the bundle", None),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_MANIFESTS))
def test_hostile_manifests_are_refused(tiny_bundle, tmp_path, capsys, case):
    edit, message, _ = HOSTILE_MANIFESTS[case]
    d = _copy(tiny_bundle, tmp_path / "b")
    m = json.loads((d / "manifest.json").read_text())
    edit(d, m)
    if case == "a JSON list":
        m = [json.loads((tiny_bundle / "manifest.json").read_text())]
    _write_raw(d, m)
    before = tree_digest(d)
    with pytest.raises(BundleError, match=message):
        load_manifest(d)
    with pytest.raises(BundleError, match=message):
        runtime.load(d)
    img = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (20, 20), (200, 10, 10)).save(img)
    code, err = run_cli(capsys, "classify", d, img, "--labels", "red,blue")
    assert code == 2 and err.startswith("mobileclip: error:") and len(err.splitlines()) == 1, err
    assert tree_digest(d) == before   # nothing in the bundle changed


def test_manifest_that_is_not_utf8_or_not_json(tiny_bundle, tmp_path):
    d = _copy(tiny_bundle, tmp_path / "b")
    (d / "manifest.json").write_bytes(b'{"format_version": 1, "model": "caf\xe9"}')
    with pytest.raises(BundleError, match="not UTF-8"):
        load_manifest(d)
    (d / "manifest.json").write_text('{"format_version": 1,')
    with pytest.raises(BundleError, match="not valid JSON"):
        load_manifest(d)
    with pytest.raises(BundleError, match="is a file"):
        load_manifest(d / "manifest.json")


def test_wrong_context_length_or_dtype_at_the_runtime(tiny_bundle, tmp_path):
    """A manifest re-signed with numbers the graphs do not take is refused when loading."""
    from mobileclip.errors import MobileCLIPError

    # context length: tokenizer.json (when `tokenizers` is installed) or the graph refuses it first
    for key, value, message in (("context_length", 77, "context_length is 77|'context_length': 77"),
                                ("token_dtype", "int64", "takes tensor.int32. input, the manifest says int64")):
        d = _copy(tiny_bundle, tmp_path / key)
        m = json.loads((d / "manifest.json").read_text())
        m["tokenizer"][key] = value
        if key == "token_dtype":
            m["artifacts"]["text"]["inputs"][0]["dtype"] = "int64"
        write_manifest(d, m)
        with pytest.raises(MobileCLIPError, match=message):
            runtime.load(d)


# ------------------------------------------------------------------ validate: read-only, checks the manifest

def test_validate_never_modifies_the_bundle(tiny_bundle, tmp_path, capsys):
    d = _copy(tiny_bundle, tmp_path / "b")
    before = tree_digest(d)
    r = validate(d, max_batch=4)
    assert r["passed"] and Path(r["report_path"]) == tmp_path / "b.validate.json"
    assert json.loads((tmp_path / "b.validate.json").read_text())["passed"] is True
    assert tree_digest(d) == before
    code, err = run_cli(capsys, "validate", d, "--max-batch", "4", "--report", d / "r.json")
    assert code == 2 and "inside the bundle" in err and tree_digest(d) == before
    (d / "evil.py").write_text("print('hi')\n")
    code, err = run_cli(capsys, "validate", d, "--max-batch", "4")
    assert code == 2 and "evil.py" in err
    assert "evil.py" not in load_manifest(tiny_bundle)["files"]


@pytest.mark.parametrize("field, value, miss", [
    ("std", [0.5, 0.5, 0.5], "preprocessing .manifest mean/std/resize. differs"),
    ("logit_scale", 1.0, "logit_scale is 1.0, the source's"),
    ("embed_dim", 128, "embed_dim is 128, the source's 256"),
    ("context_length", 77, "context_length is 77, the source's 16"),
])
def test_validate_checks_the_manifests_own_numbers(tiny_bundle, tmp_path, field, value, miss):
    d = _copy(tiny_bundle, tmp_path / "b")
    m = json.loads((d / "manifest.json").read_text())
    (m["tokenizer"] if field == "context_length" else m)[field] = value
    write_manifest(d, m)   # a re-signed manifest: checksums pass, the numbers are wrong
    before = tree_digest(d)
    with pytest.raises(ParityError, match=miss):
        validate(d, max_batch=4)
    assert tree_digest(d) == before


def test_export_overwrite_replaces_only_a_bundle(tmp_path, capsys):
    keep = tmp_path / "notes"
    keep.mkdir()
    (keep / "thesis.txt").write_text("years of work")
    code, err = run_cli(capsys, "export", "mobileclip-tiny", "--out", keep, "--overwrite", "--max-batch", "2")
    assert code == 2 and "replaces a bundle only" in err
    assert (keep / "thesis.txt").read_text() == "years of work"
    f = tmp_path / "file"
    f.write_text("x")
    code, err = run_cli(capsys, "export", "mobileclip-tiny", "--out", f, "--overwrite")
    assert code == 2 and "is a file" in err and f.read_text() == "x"


# ------------------------------------------------------------------ teacher caches

@pytest.fixture(scope="module")
def caption_data(tmp_path_factory):
    from mobileclip.data import write_synthetic

    root = tmp_path_factory.mktemp("capdata")
    write_synthetic(root, 12, split="train", seed=4)
    return root


@pytest.fixture(scope="module")
def teacher():
    return mobileclip.load_teacher("clip-vit-tiny")


KW = dict(augs=2, shard_size=5, batch_size=8, seed=1, progress=False)


def test_registry_teachers_are_seeded():
    from mobileclip.hashing import state_sha256

    a, b = mobileclip.load_teacher("clip-vit-tiny"), mobileclip.load_teacher("clip-vit-tiny")
    assert state_sha256(a.state_dict()) == state_sha256(b.state_dict())


def test_two_identical_cache_builds_are_bit_identical(teacher, caption_data, tmp_path):
    src = CaptionPairs(str(caption_data / "captions.csv"))
    build_cache([teacher], src, tmp_path / "a", **KW)
    build_cache([mobileclip.load_teacher("clip-vit-tiny")], src, tmp_path / "b", **KW)
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")


def test_resume_with_changed_teacher_weights_is_refused(teacher, caption_data, tmp_path):
    import torch

    src = CaptionPairs(str(caption_data / "captions.csv"))
    build_cache([teacher], src, tmp_path / "c", **KW)
    shutil.rmtree(tmp_path / "c" / "shard_00001")   # as a killed run leaves it
    before = tree_digest(tmp_path / "c")
    other = mobileclip.load_teacher("clip-vit-tiny")
    with torch.no_grad():
        next(other.parameters()).add_(1e-3)
    with pytest.raises(CacheError, match=r"teacher 0 weights \(sha256 of the state dict\)"):
        build_cache([other], src, tmp_path / "c", **KW)
    assert tree_digest(tmp_path / "c") == before
    build_cache([teacher], src, tmp_path / "c", **KW)   # the same teacher finishes it
    assert TeacherCache(tmp_path / "c").manifest["num_shards"] == 3


@pytest.mark.parametrize("change, message", [
    ("reorder", r"samples differ .*first in samples 0\.\.4"),
    ("edit", r"samples differ .*first in samples 5\.\.9"),
    ("add", "the dataset has 13 samples, the cache"),
])
def test_training_from_a_cache_of_other_data_is_refused(teacher, caption_data, tmp_path, change, message):
    data = tmp_path / "data"
    shutil.copytree(caption_data, data)
    src = CaptionPairs(str(data / "captions.csv"))
    build_cache([teacher], src, tmp_path / "c", **KW)
    lines = (data / "captions.csv").read_text().splitlines()
    head, rows = lines[0], lines[1:]
    if change == "reorder":
        rows = rows[1:2] + rows[:1] + rows[2:]
    elif change == "edit":
        rows[6] = rows[6].replace("a ", "one ", 1) if "a " in rows[6] else rows[6] + " x"
    else:
        rows.append(rows[0])
    (data / "captions.csv").write_text("\n".join([head] + rows) + "\n")
    cfg = load_config(None, ["student=mobileclip-tiny", "batch_size=4", "steps=1", "data.workers=0",
                             "progress=false", f"out={tmp_path / 'run'}", f"data.cache={tmp_path / 'c'}",
                             "losses.kd=1.0", "eval.size=36"])
    with pytest.raises(CacheError, match=message):
        train(cfg)
    assert not (tmp_path / "run").exists()
    with pytest.raises(CacheError, match=message.split(" .*")[0]):
        build_cache([teacher], CaptionPairs(str(data / "captions.csv")), tmp_path / "c", **KW)


def _damage(kind, root: Path):
    m = json.loads((root / "manifest.json").read_text())
    shard = root / "shard_00001"
    if kind == "bad JSON":
        (root / "manifest.json").write_text("{" + (root / "manifest.json").read_text())
    elif kind == "wrong counts":
        m["num_samples"] = 11
        (root / "manifest.json").write_text(json.dumps(m))
    elif kind == "wrong shard count":
        m["num_shards"] = 2
        (root / "manifest.json").write_text(json.dumps(m))
    elif kind == "wrong embed dim":
        m["teachers"][0]["embed_dim"] = 7
        (root / "manifest.json").write_text(json.dumps(m))
    elif kind == "string augs":
        m["augs"] = "2"
        (root / "manifest.json").write_text(json.dumps(m))
    elif kind == "truncated npy":
        f = shard / "img_0.npy"
        f.write_bytes(f.read_bytes()[:-100])
    elif kind == "bit flip":
        f = shard / "txt_0.npy"
        b = bytearray(f.read_bytes())
        b[-3] ^= 1
        f.write_bytes(bytes(b))
    elif kind == "empty shard":
        shutil.rmtree(shard)
        shard.mkdir()
    elif kind == "old format":
        m["format_version"] = 1
        (root / "manifest.json").write_text(json.dumps(m))
    elif kind == "teacher scale exponentiated":
        m["teachers"][0]["scale"] = 3.3e6
        (root / "manifest.json").write_text(json.dumps(m))
    elif kind == "teacher scale missing":
        del m["teachers"][0]["scale"]
        (root / "manifest.json").write_text(json.dumps(m))
    elif kind == "format 2 with a double exp":   # what the 2026-11 benchmark's caches held
        m["format_version"] = 2
        m["teachers"][0]["logit_scale"] = 3.3e6
        (root / "manifest.json").write_text(json.dumps(m))
    elif kind == "view edited":
        m["view"] = "whole"
        (root / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("kind, message", [
    ("bad JSON", "is not valid JSON"), ("wrong counts", "the dataset has 12 samples, the cache .* 11"),
    ("wrong shard count", "num_shards is 2, but 12 samples in shards of 5 make 3"),
    ("wrong embed dim", "the manifest implies"), ("string augs", "augs must be a positive integer"),
    ("truncated npy", "does not match its checksum"), ("bit flip", "does not match its checksum"),
    ("empty shard", "has no readable sha256.json"), ("old format", "cache format 1"),
    ("teacher scale exponentiated", r"teachers\[0\]\.scale 3\.3e\+06 is outside \[1, 100\].*did you pass exp\(scale\)"),
    ("teacher scale missing", r"teachers\[0\]\.scale must be a number"),
    ("format 2 with a double exp", r"cache format 2, this version reads 3 \(teachers now embed exactly the student's "
                                   r"view.*scale 3\.3e\+06 is also outside \[1, 100\]"),
    ("view edited", "view must be 'center' or 'squash'"),
])
def test_damaged_caches_are_refused(teacher, tmp_path, kind, message):
    src = SyntheticPairs("train", size=12, image_size=32, seed=0)
    build_cache([teacher], src, tmp_path / "c", **KW)
    _damage(kind, tmp_path / "c")
    with pytest.raises(CacheError, match=message):
        cache = TeacherCache(tmp_path / "c")
        cache.check_source(src)
        for i in range(12):
            cache.image_embedding(i, 0)


def test_full_disk_leaves_no_half_written_shard(teacher, tmp_path, monkeypatch, capsys):
    src = SyntheticPairs("train", size=12, image_size=32, seed=0)
    real_save = np.save
    calls = {"n": 0}

    def save(path, arr, *a, **k):
        calls["n"] += 1
        if calls["n"] == 5:   # the second shard's first array (4 arrays a shard)
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_save(path, arr, *a, **k)

    monkeypatch.setattr(np, "save", save)
    with pytest.raises(OSError, match="no space left"):
        build_cache([teacher], src, tmp_path / "c", **KW)
    names = sorted(p.name for p in (tmp_path / "c").iterdir())
    assert names == ["manifest.json", "shard_00000"]   # no temporary left, no half shard
    monkeypatch.setattr(np, "save", real_save)
    build_cache([teacher], src, tmp_path / "c", **KW)
    assert TeacherCache(tmp_path / "c").manifest["num_shards"] == 3


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    dead = tmp_path / f".shard_00000.tmp-{p.pid}"
    dead.mkdir()
    (dead / "img_0.npy").write_bytes(b"half")
    mine = tmp_path / f".other.tmp-{os.getpid()}"
    mine.mkdir()
    assert remove_stale_temps(tmp_path) == [dead]
    assert not dead.exists() and mine.exists()
    t = temp_dir_for(tmp_path / "x")
    assert t.is_dir() and t.name == f".x.tmp-{os.getpid()}"


# ------------------------------------------------------------------ run directories

BASE = ["student=mobileclip-tiny", "batch_size=8", "data.size=32", "data.workers=0", "log_every=1",
        "progress=false", "eval.size=36", "ckpt_every=2"]


def test_distill_refuses_an_existing_run(tmp_path, capsys):
    out = tmp_path / "run"
    code, _ = run_cli(capsys, "distill", *BASE, "steps=2", f"out={out}")
    assert code == 0
    before = tree_digest(out)
    code, err = run_cli(capsys, "distill", *BASE, "steps=2", f"out={out}")
    assert code == 2 and "already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert tree_digest(out) == before
    code, err = run_cli(capsys, "distill", *BASE, "steps=2", f"out={out}", "--resume", out, "--overwrite")
    assert code == 2 and "pass one of them" in err
    # resume to step 4: every step appears once in the log
    code, _ = run_cli(capsys, "distill", *BASE, "steps=4", f"out={out}", "--resume", out)
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert code == 0 and steps == [1, 2, 3, 4]
    code, _ = run_cli(capsys, "distill", *BASE, "steps=1", f"out={out}", "--overwrite")
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert code == 0 and steps == [1]


def test_a_refused_run_leaves_nothing_and_the_corrected_run_just_works(tmp_path, capsys):
    """Issue 20, item 5: refused after out= was created (the batch is larger than the dataset: found when the
    sampler is built), the run removes what it wrote; a folder that held only what a run writes before its first
    step (a run killed there) does not block the next run."""
    out = tmp_path / "run"
    code, err = run_cli(capsys, "distill", *BASE, "data.size=4", "steps=2", f"out={out}")
    assert code == 2 and "batch size 8 is larger than the dataset (4 samples)" in err and not out.exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    code, err = run_cli(capsys, "distill", *BASE, "data.size=4", "steps=2", f"out={mine}")
    assert code == 2 and mine.is_dir() and not any(mine.iterdir())   # the user's folder stays, empty
    (out).mkdir()
    (out / "train_config.yaml").write_text("steps: 2\n")   # a run killed before its first step
    code, _ = run_cli(capsys, "distill", *BASE, "steps=1", f"out={out}")
    assert code == 0 and (out / "last").is_dir()


def test_resume_drops_log_rows_after_its_checkpoint(tmp_path):
    out = tmp_path / "run"
    train(load_config(None, BASE + ["steps=3", f"out={out}"]))   # last/ at step 3; rows 1..3
    with open(out / "metrics.jsonl", "a") as f:   # rows a killed run wrote after its last checkpoint
        f.write(json.dumps({"step": 4, "loss": 1.0}) + "\n" + '{"step": 5, "lo')
    train(load_config(None, BASE + ["steps=5", f"out={out}"]), resume=str(out))
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]


def test_distill_never_deletes_a_directory_that_is_not_a_run(tmp_path, capsys):
    keep = tmp_path / "photos"
    keep.mkdir()
    (keep / "a.jpg").write_bytes(b"precious")
    code, err = run_cli(capsys, "distill", *BASE, "steps=1", f"out={keep}", "--overwrite")
    assert code == 2 and "holds no run" in err and (keep / "a.jpg").read_bytes() == b"precious"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    train(load_config(None, BASE + ["steps=2", f"out={out}"]))
    return out


def test_resume_from_damaged_states(finished_run, tmp_path, capsys):
    import pickle

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    state = run / "last" / "train_state.pt"
    good = state.read_bytes()
    state.write_bytes(good[: len(good) // 2])
    code, err = run_cli(capsys, "distill", *BASE, "steps=3", f"out={run}", "--resume", run)
    assert code == 2 and "truncated or damaged" in err

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    state.write_bytes(pickle.dumps({"step": Evil()}))
    code, err = run_cli(capsys, "distill", *BASE, "steps=3", f"out={run}", "--resume", run)
    assert code == 2 and "other than tensors" in err and not (tmp_path / "pwned").exists()
    state.write_bytes(good)
    code, err = run_cli(capsys, "distill", *[a for a in BASE if not a.startswith("student=")],
                        "student=mobileclip-s0", "steps=3", f"out={run}", "--resume", run)
    assert code == 2 and "cannot resume" in err and "mobileclip-tiny" in err


# ------------------------------------------------------------------ configs and the CLI's error boundary

@pytest.mark.parametrize("text, message", [
    (b"optim: !!python/object/apply:os.system ['echo pwned']\n", "YAML tag .* is not allowed"),
    (b"steps: [1, 2\n", "not valid YAML at line"),
    (b"student: caf\xe9\n", "not UTF-8 text"),
    (b"- 1\n- 2\n", "the top level must be a mapping"),
])
def test_bad_yaml_configs(tmp_path, capsys, text, message):
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes(text)
    with pytest.raises(ConfigError, match=message):
        load_config(str(cfg))
    code, err = run_cli(capsys, "distill", "--config", cfg, f"out={tmp_path / 'r'}")
    assert code == 2 and len(err.splitlines()) == 1 and not (tmp_path / "r").exists()


@pytest.mark.parametrize("override, message", [
    ("optim.lr=nan", "expected a finite number"), ("optim.lr=0", "optim.lr: must be > 0"),
    ("optim.lr=fast", "expected a number"), ("aug.scale=[0.5, 1.5]", "aug.scale"),
    ("data.size=0", "data.size"), ("optim.beta2=1.0", "optim.beta2"), ("steps=ten", "expected an integer"),
    ("losses.kd_teacher_scale=3.3e6", r"did you pass exp\(scale\)"), ("losses.kd_teacher_scale=nan", "finite"),
    ("recipe=clipkd", "unknown recipe 'clipkd'"), ("losses.feature_alpha=2e6", "far above CLIP-KD's 2000"),
    # issue 20, item 4: sizes that would exhaust memory are refused before anything is created
    ("student_image_size=100000", "student_image_size: 100,000 is above the limit of 2,048"),
    ("student_context_length=1000000", "student_context_length: 1,000,000 is above the limit of 1,024"),
    ("student_embed_dim=100000", "student_embed_dim: 100,000 is above the limit of 8,192"),
    ("batch_size=4194304", "batch_size: 4,194,304 is above the limit of 1,048,576"),
    ("data.image_size=100000", "data.image_size: 100,000 is above the limit"),
    ("data.size=10000000000", "data.size: 10,000,000,000 is above the limit"),
    ("batch_size=1000000", r"batch_size: a batch of 1,000,000 images at 256 px per process .* of pixels alone, more "
                           r"than half of this machine's"),
])
def test_bad_overrides(tmp_path, capsys, override, message):
    extra = ["student_image_size=256"] if override == "batch_size=1000000" else []   # 786 GB of pixels
    code, err = run_cli(capsys, "distill", "progress=false", f"out={tmp_path / 'r'}", override, *extra)
    assert code == 2 and len(err.splitlines()) == 1 and not (tmp_path / "r").exists()
    assert __import__("re").search(message, err), err


@pytest.mark.parametrize("args, message", [
    (["--shard-size", "0"], "--shard-size must be at least 1"),
    (["--scale", "0.5", "1.5"], "--scale is the range of crop areas"),
    (["--size", "0"], "--size is the number of synthetic images"),
    (["--augs", "0"], "--augs must be at least 1"),
    (["--teacher-scale", "3.3e6"], "did you pass exp(scale)?"),
    (["--teacher-scale", "0.5"], "if 0.5 is the log of the scale, pass exp(0.5) = 1.649"),
    (["--teacher-scale", "100", "--teacher-scale", "50"], "one multiplier for every teacher or one per --teacher (1)"),
    (["--augs", "100000"], "--augs: 100,000 is above the limit of 1,024"),
    (["--shard-size", "100000000"], "--shard-size: 100,000,000 is above the limit"),
    (["--image-size", "100000"], "the synthetic image size: 100,000 is above the limit of 2,048"),
    (["--size", "10000000000"], "the number of synthetic samples: 10,000,000,000 is above the limit"),
    (["--augs", "1000", "--batch-size", "100000"], "--batch-size: a batch of 100,000,000 images at"),
])
def test_cache_teacher_argument_errors(tmp_path, capsys, args, message):
    code, err = run_cli(capsys, "cache-teacher", "--teacher", "clip-vit-tiny", "--data", "synthetic",
                        "--out", tmp_path / "c", *args)
    assert code == 2 and message in err and not (tmp_path / "c").exists()


def test_missing_files_are_one_line_errors(tmp_path, capsys, tiny_bundle):
    code, err = run_cli(capsys, "classify", tiny_bundle, tmp_path / "nope.png", "--labels", "a,b")
    assert code == 2 and "nope.png" in err and len(err.splitlines()) == 1
    code, err = run_cli(capsys, "classify", tiny_bundle, tmp_path, "--labels", "a,b", "--templates",
                        tmp_path / "none.txt")
    assert code == 2 and "none.txt" in err and len(err.splitlines()) == 1
    code, err = run_cli(capsys, "validate", tmp_path / "missing-bundle")
    assert code == 2 and "does not exist" in err
    code, err = run_cli(capsys, "distill", "--config", tmp_path / "none.yaml")
    assert code == 2 and "does not exist" in err


def test_missing_extra_is_named(monkeypatch, capsys):
    from mobileclip.app import models

    def needs_torch(args):
        raise ModuleNotFoundError("No module named 'torch'", name="torch")

    monkeypatch.setattr(models, "cmd_models", needs_torch)
    code, err = run_cli(capsys, "models")
    assert code == 2 and "pip install 'mobileclip-toolkit[train]'" in err


def test_unknown_exceptions_keep_their_traceback(monkeypatch):
    from mobileclip.app import models

    def bug(args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(models, "cmd_models", bug)
    with pytest.raises(ZeroDivisionError):
        main(["models"])
