"""The robustness benchmark's inputs and hostile cases (``CASES``, ``DISK``, ``CRASH``): each a real CLI command on a real
input built in a folder of its own, with the exit status and error line it must give (run by
:mod:`mobileclip.benchmarks.robustness`)."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from PIL import Image


REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONHASHSEED="0")
CLASSIFY = ["classify", "b", "x.png", "--labels", "red,blue"]
DISTILL = ["distill", "student=mobileclip-tiny", "batch_size=8", "data.size=32", "data.workers=0", "progress=false",
           "eval.size=36", "steps=2", "ckpt_every=2"]
CT = ["--augs", "2", "--shard-size", "4", "--workers", "0", "--device", "cpu"]
SYNTH_CT = ["cache-teacher", "--teacher", "clip-vit-tiny", "--data", "synthetic", "--size", "12", "--image-size", "32",
            *CT]
ABBREV = {" ".join(DISTILL): "distill $D", " ".join(CT): "$CT"}   # shortened in the table, spelled out above it


def mc(argv, cwd, check=True, timeout=900) -> subprocess.CompletedProcess:
    """``mobileclip ARGV`` as a subprocess in ``cwd``."""
    p = subprocess.run([sys.executable, "-m", "mobileclip", *map(str, argv)], cwd=cwd, env=ENV, capture_output=True,
                       text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise RuntimeError(f"setup command failed: mobileclip {' '.join(map(str, argv))}\n{p.stderr[-3000:]}")
    return p


def digest(root: Path) -> dict:
    root = Path(root)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return {p.relative_to(root.parent).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def error_line(p: subprocess.CompletedProcess) -> str:
    """The line a user reads: the last ``mobileclip:`` line of stderr (progress bars cut off), else on
    success the last line printed, else stderr's last line."""
    lines = [ln.strip() for ln in re.split(r"[\r\n]", p.stderr) if ln.strip()]
    mine = [ln[ln.index("mobileclip:"):] for ln in lines if "mobileclip:" in ln]
    out = [ln.strip() for ln in p.stdout.splitlines() if ln.strip()]
    return (mine or (out if p.returncode == 0 else []) or lines or out or [""])[-1]


@dataclass
class Base:
    """Inputs built once and copied into each case's folder."""
    root: Path

    def bundle(self, d: Path, name="b") -> Path:
        shutil.copytree(self.root / "bundle", d / name, symlinks=True)
        red_png(d)
        return d / name


def red_png(d: Path, name="x.png", rgb=(200, 10, 10)) -> None:
    Image.new("RGB", (64, 64), rgb).save(d / name)


def write(d: Path, name: str, data) -> str:
    (d / name).write_bytes(data if isinstance(data, bytes) else data.encode())
    return name


def manifest_edit(edit: Callable) -> Callable:
    """A case setup: copy the bundle, apply ``edit(dir, manifest)`` and write the manifest back.
    ``edit`` may return a replacement (any JSON value) or raw bytes."""
    def setup(d: Path, base: Base) -> list:
        b = base.bundle(d)
        m = json.loads((b / "manifest.json").read_text())
        new = edit(b, m)
        new = m if new is None else new
        (b / "manifest.json").write_bytes(new if isinstance(new, bytes) else json.dumps(new, indent=2).encode())
        return CLASSIFY
    return setup


def vocab_unlisted(b, m):
    shutil.copy(b / m["tokenizer"]["vocab_file"], b / "other_vocab.txt.gz")
    m["tokenizer"]["vocab_file"] = "other_vocab.txt.gz"


def evil_py(b, m):
    (b / "evil.py").write_text("import pathlib\npathlib.Path(__file__).resolve().parents[1].joinpath('pwned').touch()\n")


def symlink_out(b, m):
    shutil.move(b / "image.onnx", b.parent / "outside.onnx")
    (b / "image.onnx").symlink_to(b.parent / "outside.onnx")


def not_utf8(b, m):
    m["model"] = "caf\u00e9"
    return json.dumps(m).replace("\\u00e9", "\u00e9").encode("latin-1")


def flip_byte(d, base):
    b = base.bundle(d)
    data = bytearray((b / "image.onnx").read_bytes())
    data[len(data) // 2] ^= 1
    (b / "image.onnx").write_bytes(bytes(data))
    return CLASSIFY


def resigned(section, key, value) -> Callable:
    """A manifest re-signed with a wrong number: the checksums pass, the number is wrong."""
    def setup(d, base):
        from mobileclip.backends.bundle import write_manifest

        b = base.bundle(d)
        m = json.loads((b / "manifest.json").read_text())
        (m[section] if section else m)[key] = value
        write_manifest(b, m)
        return ["validate", "b", "--max-batch", "2"]
    return setup


RAMP = np.linspace(0, 1, 64 * 64).reshape(64, 64)


def deep_image(kind: str) -> Callable:
    """A 16-bit or float image and its 8-bit version (converted here with numpy): they must classify alike."""
    def setup(d, base):
        base.bundle(d)
        if kind == "png16":
            v = np.round(RAMP * 65535).astype(np.uint16)
            Image.fromarray(v).save(d / "deep.png")
            ref, name = np.round(v / 257.0), "deep.png"
        elif kind == "tiff-unit":
            v = RAMP.astype(np.float32)
            Image.fromarray(v).save(d / "deep.tif")
            ref, name = np.round(v.astype(np.float64) * 255), "deep.tif"
        else:   # values up to 7.5: no defined range
            Image.fromarray((RAMP * 7.5).astype(np.float32)).save(d / "deep.tif")
            return ["classify", "b", "deep.tif", "--labels", "red,blue", "--json"]
        Image.fromarray(ref.astype(np.uint8), "L").save(d / "ref8.png")
        return ["classify", "b", name, "--labels", "red,blue", "--json"]
    return setup


def truncated_jpeg(d, base):
    base.bundle(d)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(d / "t.jpg")
    data = (d / "t.jpg").read_bytes()
    (d / "t.jpg").write_bytes(data[: len(data) // 2])
    return ["classify", "b", "t.jpg", "--labels", "red,blue"]


def captions(name: str, content) -> Callable:
    def setup(d, base):
        red_png(d, "a.png")
        red_png(d, "c.png", (10, 10, 200))
        return ["retrieval", "--model", "mobileclip-tiny", "--data", write(d, name, content), "--workers", "0",
                "--device", "cpu"]
    return setup


def templates(content: Optional[bytes]) -> Callable:
    def setup(d, base):
        base.bundle(d)
        name = write(d, "t.txt", content) if content is not None else "none.txt"
        return CLASSIFY + ["--templates", name]
    return setup


def config(text: bytes) -> Callable:
    return lambda d, base: ["distill", "--config", write(d, "c.yaml", text), "out=r"]


def teacher_changed(d, base):
    """A cache built from a checkpoint-directory teacher, killed after two shards; then the teacher changes."""
    import torch

    from mobileclip.checkpoint import save_checkpoint

    from mobileclip.factory import create_model

    model = create_model("clip-vit-tiny")[0]
    save_checkpoint(model, d / "t")
    argv = ["cache-teacher", "--teacher", "t", "--data", "synthetic", "--size", "12", "--image-size", "32", *CT,
            "--out", "c"]
    mc(argv, d)
    shutil.rmtree(d / "c" / "shard_00002")   # as a killed run leaves it
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)
    save_checkpoint(model, d / "t")
    return argv


def captions_reordered(d, base):
    mc(["synth", "--out", "data", "--n", "12", "--image-size", "32"], d)
    mc(["cache-teacher", "--teacher", "clip-vit-tiny", "--data", "data/captions.csv", *CT, "--out", "c"], d)
    head, *rows = (d / "data" / "captions.csv").read_text().splitlines()
    rows[0], rows[1] = rows[1], rows[0]
    (d / "data" / "captions.csv").write_text("\n".join([head, *rows]) + "\n")
    return DAMAGED


def damaged_cache(kind: str) -> Callable:
    def setup(d, base):
        shutil.copytree(base.root / "cache", d / "c")
        c = d / "c"
        if kind == "bad JSON":
            (c / "manifest.json").write_text("{" + (c / "manifest.json").read_text())
        elif kind == "truncated npy":
            f = c / "shard_00001" / "img_0.npy"
            f.write_bytes(f.read_bytes()[:-100])
        elif kind == "empty shard":
            shutil.rmtree(c / "shard_00001")
            (c / "shard_00001").mkdir()
        return DAMAGED
    return setup


def run_copy(damage: Optional[str] = None, student: Optional[str] = None) -> Callable:
    def setup(d, base):
        shutil.copytree(base.root / "run", d / "run")
        state = d / "run" / "last" / "train_state.pt"
        if damage == "truncated":
            state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
        elif damage == "pickle":   # a pickle whose loading runs `touch pwned`
            state.write_bytes(b"cos\nsystem\n(S'touch pwned'\ntR.")
        other = [f"student={student}"] if student else []   # the later override wins
        return [*DISTILL, *other, "out=run"] + (["--resume", "run"] if damage or student else [])
    return setup


def full_disk(kind: str) -> Callable:
    """A small tmpfs mounted at disk/ (we are root): the write runs out of space."""
    def setup(d, base):
        bundle_kb = sum(f.stat().st_size for f in (base.root / "bundle").rglob("*")) // 1024
        size = {"export": "2m", "cache": "20k", "overwrite": f"{bundle_kb + 2048}k"}[kind]
        (d / "disk").mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d / "disk")], check=True,
                       capture_output=True)
        MOUNTS.append(d / "disk")
        if kind == "overwrite":
            shutil.copytree(base.root / "bundle", d / "disk" / "b")
            return ["export", "mobileclip-tiny", "--out", "disk/b", "--overwrite", "--max-batch", "2", "--seed", "1"]
        if kind == "export":
            return ["export", "mobileclip-tiny", "--out", "disk/b", "--max-batch", "2"]
        return [*SYNTH_CT, "--out", "disk/c"]
    return setup


MOUNTS: list = []


@dataclass
class Case:
    group: str
    name: str
    setup: Callable          # (case folder, Base) -> argv after `mobileclip`, relative to the case folder
    code: int                # expected exit status
    message: str             # regex the error line must match (exit 0: the last line printed)
    guard: tuple = ()        # files or folders that must be byte-identical after the run
    absent: tuple = ()       # must not exist after (markers of code that must never run, outputs refused)
    present: tuple = ()      # must exist after
    compare: str = ""        # an 8-bit image that must give the same --json probabilities


def set_(section=None, **kv) -> Callable:
    return lambda b, m: (m[section] if section else m).update(kv)


def bundle(name, setup, message, **kw) -> Case:
    """classify with a damaged bundle: exit 2 and the bundle unchanged."""
    setup = setup if setup is flip_byte else manifest_edit(setup)
    return Case("Bundles (classify)", name, setup, 2, message, ("b",) + kw.pop("guard", ()), **kw)


def existing(rel: str, text: str, *a) -> Callable:
    """A user's own file at ``rel`` (in a folder of its own), then run ``a``."""
    def setup(d, base):
        (d / rel).parent.mkdir(parents=True)
        (d / rel).write_text(text)
        return list(a)
    return setup


def just(*a) -> Callable:
    return lambda d, base: list(a)


def on_bundle(*a) -> Callable:
    """Copy the bundle to b/, then run ``a``."""
    return lambda d, base: (base.bundle(d), list(a))[1]


VALIDATE, DAMAGED = ["validate", "b", "--max-batch", "2"], [*DISTILL, "losses.kd=1.0", "data.cache=c", "out=r"]


def edit_tokenizer_json(b: Path, edit: Callable) -> None:
    """Edit bundle ``b``'s tokenizer.json with ``edit(config)`` and re-sign the manifest (checksums pass); also used
    by tests/test_bundle_consistency.py."""
    from mobileclip.backends.bundle import write_manifest

    m = json.loads((b / "manifest.json").read_text())
    path = b / m["tokenizer"]["tokenizer_json"]
    cfg = json.loads(path.read_text())
    edit(cfg)
    path.write_text(json.dumps(cfg))
    write_manifest(b, m)


def tokenizer_json(edit: Callable, argv=None) -> Callable:
    """A case setup: the bundle's tokenizer.json edited by ``edit(config)``, the manifest re-signed."""
    def setup(d, base):
        edit_tokenizer_json(base.bundle(d), edit)
        return list(argv or CLASSIFY)
    return setup


def swap_ids(cfg):
    v = cfg["model"]["vocab"]
    v["red</w>"], v["blue</w>"] = v["blue</w>"], v["red</w>"]


def litert_truncated(d, base):
    """A LiteRT bundle whose .tflite is cut in half, the manifest re-signed."""
    from mobileclip.backends.bundle import write_manifest

    mc(["export", "mobileclip-tiny", "--format", "litert", "--out", "b", "--max-batch", "1"], d)
    m = json.loads((d / "b" / "manifest.json").read_text())
    f = d / "b" / m["artifacts"]["image"]["file"]
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    write_manifest(d / "b", m)
    return VALIDATE


def resigned_token_table(d, base):
    """A stored token table (data.token_cache) with one caption's ids changed and its sha256 re-signed."""
    from mobileclip.hashing import sha256_file

    mc(["synth", "--out", "data", "--n", "12", "--image-size", "32"], d)
    argv = [*DISTILL, "data.source=captions", "data.path=data/captions.csv", "data.token_cache=tc", "steps=1"]
    mc([*argv, "out=first"], d)
    folder = next((d / "tc").glob("tokens-*"))
    tokens = np.load(folder / "tokens.npy")
    offsets = np.load(folder / "offsets.npy")
    tokens[offsets[1] + 1] += 1   # caption 1's first word
    np.save(folder / "tokens.npy", tokens)
    meta = json.loads((folder / "table.json").read_text())
    meta["sha256"]["tokens.npy"] = sha256_file(folder / "tokens.npy")
    (folder / "table.json").write_text(json.dumps(meta))
    shutil.rmtree(d / "first")
    return [*argv, "out=r"]


def scan_cut_short(d, base):
    """A JPEG whose header says 960 x 800 over the scan of a 96 x 80 image (libjpeg fills the rest grey)."""
    import io

    base.bundle(d)
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (80, 96, 3), dtype=np.uint8)).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    sof = data.find(b"\xff\xc0")
    data[sof + 5:sof + 9] = (800).to_bytes(2, "big") + (960).to_bytes(2, "big")
    (d / "cut.jpg").write_bytes(bytes(data))
    return ["classify", "b", "cut.jpg", "--labels", "red,blue"]


def dangling_link(d, base):
    (d / "imgs").mkdir()
    for i in range(3):
        red_png(d / "imgs", f"{i}.png")
    (d / "imgs" / "3.png").symlink_to(d / "deleted.png")
    return ["cache-teacher", "--teacher", "clip-vit-tiny", "--images", "imgs", *CT, "--out", "c"]
SAME = "same probabilities as the 8-bit file"
# a user's own teacher (py:) whose code returns NaN, or raises
HOSTILE_PY = """import torch, mobileclip


def _tiny():
    return create_model("clip-vit-tiny")


def nan():
    model, pre, tok = _tiny()
    good = model.encode_image
    model.encode_image = lambda x: good(x, normalize=False) * float("nan")
    return model, pre, tok


def raises():
    model, pre, tok = _tiny()
    def boom(x):
        raise ValueError("could not broadcast (4,100) into (4,256)")
    model.encode_image = boom
    return model, pre, tok


def rows():
    model, pre, tok = _tiny()
    good = model.encode_image
    model.encode_image = lambda x: good(x)[:1]
    return model, pre, tok
"""
PY_CT = ["cache-teacher", "--data", "synthetic", "--size", "12", "--image-size", "32", *CT, "--out", "c", "--teacher"]
C, T, K, R = "Caption files", "Templates", "Teacher caches", "Run directories"
CASES = [
    bundle("manifest is a JSON list", lambda b, m: [m], "must be a JSON object"),
    bundle("`files` is a list", lambda b, m: m.update(files=list(m["files"])), "files: must be an object"),
    bundle("`files` entry `../x`", set_("files", **{"../x": "0" * 64}), r"'\.\./x' is not a plain relative path"),
    bundle("`files` entry `/etc/passwd`", set_("files", **{"/etc/passwd": "0" * 64}),
           "'/etc/passwd' is not a plain relative path"),
    bundle("`tokenizer.vocab_file: /etc/passwd`", set_("tokenizer", vocab_file="/etc/passwd"),
           "vocab_file: '/etc/passwd' is not a plain relative path"),
    bundle("vocab file not listed", vocab_unlisted, "other_vocab.txt.gz' is read by the runtime but has no checksum"),
    bundle("`std` with a 0", set_(std=[0.5, 0, 0.5]), r"std\[1\]: must be a finite positive number"),
    bundle("`logit_scale` -1", set_(logit_scale=-1.0), "logit_scale: must be a finite positive"),
    bundle("`logit_scale` NaN (JSON `NaN`)", set_(logit_scale=float("nan")), "logit_scale: must be a finite"),
    bundle("`logit_scale` the string \"100\"", set_(logit_scale="100"), "logit_scale: must be a number"),
    bundle("`embed_dim` the string \"256\"", set_(embed_dim="256"), "embed_dim: must be an integer"),
    bundle("an unlisted `evil.py` (writes `pwned` if run)", evil_py, "holds files its manifest does not list: evil.py",
           absent=("pwned",)),
    bundle("artifact is a symlink out of the bundle", symlink_out, "image.onnx' of .* leads outside the bundle",
           guard=("outside.onnx",)),
    bundle("one flipped byte in `image.onnx`", flip_byte, "image.onnx' does not match its checksum"),
    bundle("manifest not UTF-8", not_utf8, "manifest.json' is not UTF-8"),
    Case("Bundles (classify)", "tokenizer.json with two ids swapped (re-signed)", tokenizer_json(swap_ids), 2,
         r"does not agree with the bundle's vocabulary file .*its vocabulary differs", ("b",)),
    Case("Bundles (classify)", "tokenizer.json maps a word to id 999999 (re-signed)",
         tokenizer_json(lambda c: c["model"]["vocab"].update({"red</w>": 999999})), 2,
         r"'red</w>': 999999 in tokenizer\.json", ("b",)),
    Case("Bundles (classify)", "`bench` on that bundle (ids swapped)",
         tokenizer_json(swap_ids, ["bench", "b", "--towers", "text", "--batch", "1", "--min-runs", "2",
                                   "--min-seconds", "0", "--warmup", "0", "--peak-seconds", "0.05", "--out", "o"]), 2,
         r"1 of 1 cases failed .*does not agree with the bundle's vocabulary file", ("b",)),

    Case("validate", "plain validate", on_bundle(*VALIDATE), 0,
         "parity passed", ("b",), present=("b.validate.json",)),
    Case("validate", "re-signed: context length 77", resigned("tokenizer", "context_length", 77), 1,
         "context_length is 77, the source's 16", ("b",)),
    Case("validate", "re-signed: std 0.5", resigned(None, "std", [0.5, 0.5, 0.5]), 1,
         r"preprocessing \(manifest mean/std/resize\) differs", ("b",)),
    Case("validate", "re-signed: logit scale 1.0", resigned(None, "logit_scale", 1.0), 1,
         "logit_scale is 1.0, the source's", ("b",)),
    Case("validate", "re-signed: embed dim 128", resigned(None, "embed_dim", 128), 1,
         "embed_dim is 128, the source's 256", ("b",)),
    Case("validate", "LiteRT bundle with its `.tflite` cut in half (re-signed)", litert_truncated, 2,
         r"litert cannot read 'image\.tflite'.*the file is damaged", ("b",)),
    Case("validate", "`--report` inside the bundle",
         on_bundle(*VALIDATE, "--report", "b/r.json"), 2,
         "inside the bundle", ("b",)),
    Case("validate", "`export --overwrite` onto a non-bundle directory",
         existing("notes/thesis.txt", "years of work", "export", "mobileclip-tiny", "--out", "notes", "--overwrite",
                  "--max-batch", "2"), 2, "replaces a bundle only",
         ("notes",)),

    Case("Images", "16-bit grey PNG", deep_image("png16"), 0, SAME, compare="ref8.png"),
    Case("Images", "float32 TIFF in [0, 1]", deep_image("tiff-unit"), 0, SAME, compare="ref8.png"),
    Case("Images", "float TIFF with values up to 7.5", deep_image("tiff-7.5"), 2, r"float images must lie in \[0, 1\]"),
    Case("Images", "truncated JPEG", truncated_jpeg, 2, r"t\.jpg.*truncated"),
    Case("Images", "JPEG whose scan ends before its header's 960x800 are filled", scan_cut_short, 2,
         r"cut\.jpg.*the scan ends before the image its header declares is filled"),
    Case("Images", "`cache-teacher --images` with a dangling symbolic link", dangling_link, 0,
         "1 unreadable images skipped"),

    Case(C, "latin-1 CSV", captions("c.csv", "image,caption\na.png,ok\na.png,caf\u00e9 au lait\n".encode("latin-1")),
         2, r"not UTF-8 text \(byte 0xe9 on line 3"),
    Case(C, "UTF-8 CSV with a BOM", captions("c.csv", "\ufeffimage,caption\na.png,a red square\nc.png,a blue square\n"),
         0, "retrieval on 2 images / 2 captions"),
    Case(C, "malformed JSONL line", captions("c.jsonl", '{"image": "a.png", "caption": "x"}\n\n{"image": "a.png", '
                                                        '"caption": \n'), 2, "line 3 is not valid JSON"),
    Case(C, "integer image path in JSONL",
         captions("c.jsonl", '{"image": "a.png", "caption": "x"}\n{"image": 3, "caption": "x"}\n'), 2,
         r"line 2: the image path \('image'\) is 3 \(of type int"),
    Case(C, "empty caption", captions("c.csv", "image,caption\na.png,x\nc.png,\n"), 2,
         r"line 3: the caption \('caption'\) is empty"),
    Case(T, "template `{x}`", templates(b"a photo of a {}.\na photo of {x}\n"), 2,
         r"line 2: template 'a photo of \{x\}' has the field '\{x\}'"),
    Case(T, "two `{}`", templates(b"# comment\n\na {} of a {}\n"), 2, r"line 3: .* has 2 '\{\}' fields; use exactly one"),
    Case(T, "missing templates file", templates(None), 2, r"none\.txt.*does not exist"),
    Case(T, "latin-1 templates", templates("a photo of a {}.\nune photo d'un {} \u00e9\n".encode("latin-1")), 2,
         r"not UTF-8 text \(byte 0xe9 on line 2"),

    Case("Configs", "`!!python/object/apply:os.system` tag (runs `touch pwned`)",
         config(b"optim: !!python/object/apply:os.system ['touch pwned']\n"), 2, "YAML tag .* is not allowed",
         absent=("pwned", "r")),
    Case("Configs", "YAML syntax error", config(b"steps: [1, 2\n"), 2, "not valid YAML at line", absent=("r",)),
    Case("Configs", "config not UTF-8", config(b"student: caf\xe9\n"), 2, "not UTF-8 text", absent=("r",)),
    Case("Configs", "override `optim.lr=nan`", just("distill", "progress=false", "out=r", "optim.lr=nan"), 2,
         "expected a finite number", absent=("r",)),
    Case("Configs", "override `aug.scale=[0.5,1.5]`", just("distill", "progress=false", "out=r", "aug.scale=[0.5,1.5]"),
         2, r"aug\.scale", absent=("r",)),
    Case("Configs", "`student_image_size=100000`", just(*DISTILL, "student_image_size=100000", "out=r"), 2,
         "student_image_size: 100,000 is above the limit of 2,048", absent=("r",)),
    Case("Configs", "`batch_size=1000000` at 256 px", just(*DISTILL, "batch_size=1000000", "student_image_size=256",
                                                           "out=r"), 2,
         "a batch of 1,000,000 images at 256 px .* of pixels alone", absent=("r",)),
    Case("Configs", "`data.token_cache=` a file", existing("x/tc", "not a folder", *DISTILL, "data.token_cache=x/tc",
                                                           "out=r"), 2,
         r"data\.token_cache: 'x/tc' is a file; give a folder", ("x",), ("r",)),
    Case("Configs", "`cache-teacher --augs 100000`", just(*SYNTH_CT, "--augs", "100000", "--out", "c"), 2,
         "--augs: 100,000 is above the limit of 1,024", absent=("c",)),

    Case(K, "`cache-teacher --shard-size 0`", just(*SYNTH_CT, "--shard-size", "0", "--out", "c"), 2,
         "--shard-size must be at least 1", absent=("c",)),
    Case(K, "`cache-teacher --scale 0.5 1.5`", just(*SYNTH_CT, "--scale", "0.5", "1.5", "--out", "c"), 2,
         "--scale is the range of crop areas", absent=("c",)),
    Case(K, "`cache-teacher --size 0`", just(*SYNTH_CT, "--size", "0", "--out", "c"), 2,
         "--size is the number of synthetic images", absent=("c",)),
    Case(K, "`py:` teacher whose `encode_image` returns NaN", existing("t/hostile.py", HOSTILE_PY, *PY_CT,
                                                                       "py:t/hostile.py:nan"), 2,
         r"teacher 'py:t/hostile\.py:nan': encode_image on \d+ input\(s\) returned non-finite", ("t",), ("c",)),
    Case(K, "`py:` teacher whose `encode_image` raises", existing("t/hostile.py", HOSTILE_PY, *PY_CT,
                                                                  "py:t/hostile.py:raises"), 2,
         r"encode_image raised ValueError: could not broadcast", ("t",), ("c",)),
    Case(K, "`py:` teacher whose `encode_image` returns one row for a batch",
         existing("t/hostile.py", HOSTILE_PY, *PY_CT, "py:t/hostile.py:rows"), 2,
         r"encode_image on \d+ input\(s\) returned shape \(1, \d+\), not \(\d+, dim\)", ("t",), ("c",)),
    Case(K, "token table (`data.token_cache`) with one caption's ids edited, sha256 re-signed", resigned_token_table,
         2, r"caption .* is tokenized differently today", ("tc", "data"), ("r",)),
    Case(K, "resume after the checkpoint-dir teacher's weights changed", teacher_changed, 2, r"teacher 0 weights",
         ("c",)),
    Case(K, "distill from a caption-file cache after the file was reordered", captions_reordered, 2,
         r"samples differ .*first in samples 0\.\.3", ("c", "data"), ("r",)),
    Case(K, "distill from an intact cache (control)", damaged_cache("none"), 0, "student checkpoint", ("c",)),
    Case(K, "cache manifest with bad JSON", damaged_cache("bad JSON"), 2, r"c/manifest\.json' is not valid JSON",
         ("c",), ("r",)),
    Case(K, "a truncated `.npy`", damaged_cache("truncated npy"), 2,
         r"c/shard_00001/img_0\.npy.* does not match its checksum", ("c",)),
    Case(K, "an empty shard directory", damaged_cache("empty shard"), 2,
         r"c/shard_00001.* has no readable sha256\.json", ("c",)),

    Case(R, "distill into a finished run's `out=`", run_copy(), 2, "already holds a run.*--resume.*--overwrite",
         ("run",)),
    Case(R, "distill refused after `out=` was made (batch larger than the data)",
         just(*DISTILL, "data.size=4", "out=r"), 2, r"batch size 8 is larger than the dataset \(4 samples\)",
         absent=("r",)),
    Case(R, "`--overwrite` on a non-run directory",
         existing("photos/a.jpg", "precious", *DISTILL, "out=photos", "--overwrite"), 2, "holds no run", ("photos",)),
    Case(R, "`--resume` from a truncated `train_state.pt`", run_copy("truncated"), 2, "truncated or damaged", ("run",)),
    Case(R, "`--resume` from a malicious pickle (runs `touch pwned`)", run_copy("pickle"), 2, "other than tensors",
         ("run",), ("pwned",)),
    Case(R, "`--resume` with another student (`mobileclip-s0`)", run_copy(student="mobileclip-s0"), 2,
         "cannot resume.*mobileclip-tiny", ("run",)),

    Case("synth", "`synth --out` onto a folder whose captions.csv differs",
         existing("mine/captions.csv", "image,caption\nholiday.jpg,my own caption\n", "synth", "--out", "mine", "--n",
                  "4"), 2,
         r"captions\.csv' already exists", ("mine",)),
]
DISK = [
    Case("Full disk (tmpfs)", "export onto a full disk", full_disk("export"), 2, "no space left", absent=("disk/b",)),
    Case("Full disk (tmpfs)", "`export --overwrite` of a bundle, the new one does not fit", full_disk("overwrite"), 2,
         "no space left", ("disk/b",)),
    Case("Full disk (tmpfs)", "cache-teacher onto a full disk", full_disk("cache"), 2, "no space left",
         absent=("disk/c/shard_00000",)),
]
CRASH = {   # tests/test_crash.py: kill -9 at 3 seeded write points each
    "test_kill_export": "`export --overwrite`: the old or the new bundle whole, rerun succeeds",
    "test_kill_index": "`index` update: the old index or the new one, rerun succeeds",
    "test_kill_validate": "`validate`: bundle untouched, report absent or whole",
    "test_kill_cache_teacher": "`cache-teacher`: shards whole, rerun bit-identical to an uninterrupted build",
    "test_kill_distill": "`distill`: checkpoints load, resume ends where the uninterrupted run does",
}
