"""The torch-free runtime: parity with PyTorch, tokenizer and preprocessing parity, the index, the CLI, errors."""
import argparse
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")

from mobileclip import runtime  # noqa: E402
from mobileclip.errors import MobileCLIPError  # noqa: E402
from mobileclip.config import OPENAI_MEAN, OPENAI_STD, PreprocessConfig  # noqa: E402
from mobileclip.backends.bundle import BundleError, load_manifest, write_manifest  # noqa: E402
from mobileclip.runtime.commands import add_commands  # noqa: E402
from mobileclip.transforms import ImagePreprocess, load_image  # noqa: E402
from tokenizer_corpus import CORPUS  # noqa: E402  (the hard corpus, shared with test_hf_tokenizer.py)

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    return tiny_bundle


@pytest.fixture(scope="module")
def model(bundle):
    return runtime.load(bundle, batch_size=3)   # 3: several session calls per encode in the tests below


@pytest.fixture(scope="module")
def src(bundle):
    from mobileclip.export.source import load_source

    return load_source(load_manifest(bundle)["source"])


def _variant(bundle, dest, edit, link=True):
    """A copy of ``bundle`` with its manifest edited (checksums rewritten)."""
    shutil.copytree(bundle, dest, copy_function=os.link if link else shutil.copy2)
    m = json.loads((dest / "manifest.json").read_text())
    edit(dest, m)
    write_manifest(dest, m)
    return dest


@pytest.fixture(scope="module")
def other_bundle(bundle, tmp_path_factory):
    """The same towers with different artifact bytes (a doc string): another bundle fingerprint."""
    import onnx

    def edit(d, m):
        (d / "image.onnx").unlink()   # a hard link: replace, never modify, the shared file
        g = onnx.load(str(bundle / "image.onnx"))
        g.doc_string = "another export"
        onnx.save(g, str(d / "image.onnx"))

    return _variant(bundle, tmp_path_factory.mktemp("rt2") / "other", edit)


def _torch_embed(src, x: torch.Tensor, kind: str) -> np.ndarray:
    with torch.no_grad():
        e = src.model.encode_image(x) if kind == "image" else src.model.encode_text(x)
    return torch.nn.functional.normalize(e.float(), dim=-1).numpy()


def _images_dir(root: Path) -> list:
    """Real image files of different sizes and modes, written with Pillow."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    smooth = lambda h, w, c: (np.linspace(0, 255, h * w * c).reshape(h, w, c) * 0.6  # noqa: E731
                              + rng.integers(0, 100, (h, w, c))).astype(np.uint8)
    paths = []

    def save(im, name, **kw):
        p = root / name
        im.save(p, **kw)
        paths.append(p)

    save(Image.fromarray(smooth(300, 451, 3), "RGB"), "rgb_wide.jpg", quality=95)
    save(Image.fromarray(smooth(513, 200, 3), "RGB"), "rgb_tall.png")
    rgba = smooth(120, 80, 4)
    rgba[:40, :, 3] = 0                         # a fully transparent band: composited on white
    rgba[40:60, :, 3] = 128
    save(Image.fromarray(rgba, "RGBA"), "rgba.png")
    save(Image.fromarray(smooth(97, 97, 1)[:, :, 0], "L"), "gray.png")
    pal = Image.fromarray(smooth(70, 90, 3), "RGB").quantize(16)
    save(pal, "palette.png", transparency=3)   # palette index 3 is transparent
    save(Image.fromarray(smooth(7, 5, 3), "RGB"), "tiny.png")
    exif = Image.Exif()
    exif[0x0112] = 6                            # rotate 90° clockwise for display
    save(Image.fromarray(smooth(40, 100, 3), "RGB"), "exif6.jpg", exif=exif, quality=95)
    return paths


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    return _images_dir(tmp_path_factory.mktemp("imgs"))


@pytest.fixture()
def garbage_jpg(tmp_path):
    p = tmp_path / "broken.jpg"
    p.write_bytes(b"this is not a jpeg \x00\x01\x02" * 20)
    return p


# ------------------------------------------------------------------ torch-free

def test_runtime_never_imports_torch(bundle, image_files, tmp_path):
    code = textwrap.dedent(f"""
        import sys, importlib.abc
        class Block(importlib.abc.MetaPathFinder):   # as if torch were not installed at all
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "torchvision", "open_clip", "timm"):
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Block())
        import mobileclip.runtime as rt
        assert "torch" not in sys.modules
        m = rt.load({str(bundle)!r})
        e = m.encode_image([{str(image_files[0])!r}, {str(image_files[2])!r}])
        t = m.encode_text(["a red circle", "a photo of a dog"])
        p = m.classify({str(image_files[1])!r}, ["cat", "dog"])
        idx = rt.ImageIndex.build(m, {str(image_files[0].parent)!r}, progress=False)
        idx.save({str(tmp_path / "x.idx")!r})
        hits = rt.ImageIndex.load({str(tmp_path / "x.idx")!r}).search("a cat", k=2)
        assert e.shape == (2, 256) and t.shape == (2, 256) and len(p) == 2 and len(hits) == 2
        bad = sorted(k for k in sys.modules if k.split(".")[0] in ("torch", "torchvision", "open_clip", "timm"))
        print("LOADED", bad)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "LOADED []" in r.stdout


# ------------------------------------------------------------------ parity with PyTorch

def test_encode_image_matches_pytorch(model, src, image_files):
    x = torch.stack([src.preprocess(load_image(p)) for p in image_files])
    want = _torch_embed(src, x, "image")
    got = model.encode_image(image_files)           # 7 paths, batch_size 3: three session calls
    assert got.shape == (len(image_files), 256) and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert (got * want).sum(1).min() >= 0.99999
    # The same image as a path, a PIL image, a uint8 array, a batch array, alone or in a list.
    pil = load_image(image_files[0])
    arr = np.asarray(pil)
    one = model.encode_image(str(image_files[0]))
    assert one.shape == (1, 256)
    for form in (pil, arr, [pil], arr[None], Path(image_files[0])):
        np.testing.assert_allclose(model.encode_image(form), one, atol=1e-6)
    assert model.encode_image([]).shape == (0, 256)


def test_encode_text_matches_pytorch(model, src):
    texts = ["a photo of a cat", "A RED CIRCLE!!", "two blue squares on a checkered background " * 4, "", "🐶 東京"]
    want = _torch_embed(src, src.tokenizer(texts), "text")
    got = model.encode_text(texts)
    assert got.shape == (5, 256) and got.dtype == np.float32
    assert (got * want).sum(1).min() >= 0.99999
    np.testing.assert_allclose(model.encode_text("a photo of a cat"), got[:1], atol=1e-6)
    tokens = model.tokenize(texts)
    assert tokens.dtype == np.int32 and tokens.shape == (5, 16)   # the manifest's token dtype and context
    assert np.array_equal(tokens, src.tokenizer(texts).numpy())


def test_fixed_batch_artifact_is_chunked_and_padded(bundle, tmp_path, image_files, model):
    def edit(d, m):
        m["artifacts"]["image"]["inputs"][0]["shape"][0] = 2
        m["artifacts"]["text"]["inputs"][0]["shape"][0] = 2

    fixed = runtime.load(_variant(bundle, tmp_path / "fixed", edit))
    assert fixed.image_tower.fixed_batch == 2 and fixed.batch_size == 2
    seen = []
    run = fixed.image_tower.session.run
    fixed.image_tower.session.run = lambda out, feeds: seen.append(len(next(iter(feeds.values())))) or run(out, feeds)
    got = fixed.encode_image(image_files[:5])
    assert seen == [2, 2, 2]                  # 5 images: two full chunks and one padded
    np.testing.assert_allclose(got, model.encode_image(image_files[:5]), atol=1e-5)
    np.testing.assert_allclose(fixed.encode_text(["a", "b", "c"]), model.encode_text(["a", "b", "c"]), atol=1e-5)


# ------------------------------------------------------------------ classify

def test_classify_probabilities(model, src, image_files):
    labels = ["red circle", "blue square", "green triangle", "dog"]
    preds = model.classify(image_files[0], labels)
    assert sorted(lb for lb, _ in preds) == sorted(labels)
    probs = [p for _, p in preds]
    assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1.0, abs=1e-9)
    # Equal to softmax(logit_scale * cosine) computed with PyTorch.
    img = _torch_embed(src, src.preprocess(load_image(image_files[0]))[None], "image")
    txt = _torch_embed(src, src.tokenizer([f"a photo of a {lb}." for lb in labels]), "text")
    want = torch.softmax(torch.from_numpy(src.logit_scale * img @ txt.T), -1)[0].numpy()
    assert model.logit_scale == pytest.approx(src.logit_scale)
    for lb, p in preds:
        assert p == pytest.approx(float(want[labels.index(lb)]), abs=1e-5)
    # Templates: the per-label mean of prompt embeddings, renormalized.
    templates = ["a photo of a {}.", "a drawing of the {}"]
    w = model.class_embeddings(labels, templates)
    e = model.encode_text([t.format(lb) for lb in labels for t in templates]).reshape(4, 2, -1).mean(1)
    np.testing.assert_allclose(w, e / np.linalg.norm(e, axis=1, keepdims=True), atol=1e-6)
    assert not np.allclose(w, model.class_embeddings(labels))
    # A list of images gives one list per image; top keeps the most likely.
    many = model.classify(image_files[:3], labels, templates, top=2)
    assert len(many) == 3 and all(len(r) == 2 for r in many)
    alone = model.classify(image_files[0], labels, templates)[:2]
    assert [lb for lb, _ in many[0]] == [lb for lb, _ in alone]
    np.testing.assert_allclose([p for _, p in many[0]], [p for _, p in alone], atol=1e-6)


def test_classify_errors(model, image_files):
    with pytest.raises(runtime.RuntimeInputError, match="label list is empty"):
        model.classify(image_files[0], [])
    with pytest.raises(runtime.RuntimeInputError, match="not one string"):
        model.classify(image_files[0], "cat,dog")
    with pytest.raises(runtime.RuntimeInputError, match=r"\{\}"):
        model.classify(image_files[0], ["cat"], templates=["a photo of a cat"])


# ------------------------------------------------------------------ errors

def test_missing_and_tampered_bundle(bundle, tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        runtime.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="not a bundle"):
        runtime.load(tmp_path / "empty")
    bad = tmp_path / "tampered"
    shutil.copytree(bundle, bad)
    with open(bad / "text.onnx", "r+b") as f:
        f.seek(1000)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(BundleError, match="text.onnx.*checksum"):
        runtime.load(bad)
    (bad / "text.onnx").unlink()
    with pytest.raises(BundleError, match="text.onnx.*missing"):
        runtime.load(bad)


def test_unsupported_backend_and_tokenizer(bundle, tmp_path):
    def coreml(d, m):
        m["artifacts"]["image"]["backend"] = "coreml"

    with pytest.raises(runtime.RuntimeBackendError, match=r"'coreml'.*--format onnx"):
        runtime.load(_variant(bundle, tmp_path / "coreml", coreml))

    def hf(d, m):
        (d / "tokenizer.json").unlink()   # a hard link to the shared bundle's file: replace, never modify
        (d / "tokenizer.json").write_text("{}")
        m["tokenizer"] = {"name": "hf", "files": ["tokenizer.json"], "context_length": 16, "pad_id": 0}

    with pytest.raises(runtime.TokenizerError, match="Hugging Face tokenizer"):
        runtime.load(_variant(bundle, tmp_path / "hf", hf))

    def longest(d, m):
        m["resize"]["mode"] = "longest"

    with pytest.raises(BundleError, match=r"resize.mode: is 'longest'; allowed: \['shortest', 'squash'\]"):
        runtime.load(_variant(bundle, tmp_path / "longest", longest))


def test_undecodable_image_names_the_file(model, garbage_jpg, image_files, tmp_path):
    with pytest.raises(runtime.ImageReadError, match="broken.jpg.*not a decodable image"):
        model.encode_image(garbage_jpg)
    with pytest.raises(runtime.ImageReadError, match="broken.jpg"):
        model.encode_image([image_files[0], garbage_jpg])
    with pytest.raises(runtime.ImageReadError, match="missing.png.*does not exist"):
        model.classify(tmp_path / "missing.png", ["cat"])
    with pytest.raises(runtime.RuntimeInputError, match="uint8"):
        model.encode_image(np.zeros((8, 8, 3), np.float32))
    assert issubclass(runtime.ImageReadError, MobileCLIPError)   # the CLI prints it and exits 2


# ------------------------------------------------------------------ tokenizer parity



@pytest.mark.parametrize("context", [77, 16, 5])
def test_tokenizer_ids_equal_open_clip(bundle, context):
    from open_clip.tokenizer import SimpleTokenizer

    ours = runtime.ClipBPE(bundle / "bpe_simple_vocab_16e6.txt.gz", context)
    want = SimpleTokenizer(context_length=context)(CORPUS, context_length=context).numpy()
    got = ours(CORPUS)
    assert got.shape == (len(CORPUS), context) and got.dtype == np.int64
    assert np.array_equal(got, want)
    assert got[CORPUS.index("word " * 100), -1] == ours.eot_token_id      # truncated, end token kept
    assert got[CORPUS.index(""), :3].tolist() == [ours.sot_token_id, ours.eot_token_id, 0]
    assert ours.vocab_size == 49408
    if context == 77:
        assert ours.decode(ours("a photo of a cat")[0]) == "a photo of a cat"


def test_tokenizer_errors(tmp_path):
    with pytest.raises(runtime.TokenizerError, match="does not exist"):
        runtime.ClipBPE(tmp_path / "none.txt.gz")
    (tmp_path / "bad.txt.gz").write_bytes(b"not gzip")
    with pytest.raises(runtime.TokenizerError, match="cannot be read"):
        runtime.ClipBPE(tmp_path / "bad.txt.gz")
    with pytest.raises(runtime.TokenizerError, match="unknown-bpe"):
        runtime.tokenizer_from_manifest(tmp_path, {"name": "unknown-bpe"})


# ------------------------------------------------------------------ preprocessing parity

PREPROCESS_CASES = [
    (64, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "bilinear", "shortest"),   # the tiny bundle's own settings
    (224, OPENAI_MEAN, OPENAI_STD, "bicubic", "shortest"),             # an open_clip ViT's settings
    (96, OPENAI_MEAN, OPENAI_STD, "bicubic", "squash"),
]


def _plain_rgb(im: Image.Image, exif: bool) -> Image.Image:
    """The reference decode, with Pillow and numpy only (none of this package's code): EXIF orientation applied
    (files only), transparent pixels composited on white, RGB."""
    from PIL import ImageOps

    if exif:
        im = ImageOps.exif_transpose(im)
    if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
        a = np.asarray(im.convert("RGBA"), np.float64)
        alpha = a[..., 3:] / 255
        return Image.fromarray(np.round(a[..., :3] * alpha + 255 * (1 - alpha)).astype(np.uint8), "RGB")
    return im.convert("RGB")


@pytest.mark.parametrize("size,mean,std,interp,mode", PREPROCESS_CASES)
def test_preprocess_matches_pytorch(image_files, size, mean, std, interp, mode):
    """The runtime's preprocessing and the PyTorch one (ImagePreprocess) both equal a reference built apart from
    them: Pillow + numpy decoding, then open_clip's torchvision pipeline."""
    from open_clip.transform import image_transform

    manifest = {"image_size": size, "mean": list(mean), "std": list(std),
                "resize": {"mode": mode, "interpolation": interp, "crop": "center"}}
    ours = runtime.Preprocessor.from_manifest(manifest)
    torch_pp = ImagePreprocess(PreprocessConfig(size, tuple(mean), tuple(std), interp, mode))
    oc = image_transform(size, is_train=False, mean=mean, std=std, interpolation=interp, resize_mode=mode)
    for p in image_files:
        with Image.open(p) as raw:
            raw.load()
            from_file, in_memory = oc(_plain_rgb(raw, exif=True)).numpy(), oc(_plain_rgb(raw, exif=False)).numpy()
        got = ours(p)
        assert got.shape == (3, size, size) and got.dtype == np.float32
        assert np.abs(got - from_file).max() <= 1e-5, p.name
        assert np.abs(torch_pp(p).numpy() - from_file).max() <= 1e-5, p.name
        with Image.open(p) as raw:                   # an in-memory PIL image in its own mode (no EXIF rotation)
            raw.load()
            assert np.abs(ours(raw) - in_memory).max() <= 1e-5, p.name
            assert np.abs(torch_pp(raw).numpy() - in_memory).max() <= 1e-5, p.name


def test_preprocess_modes_exif_and_transparency(image_files):
    pp = runtime.Preprocessor(64, (0, 0, 0), (1, 1, 1), "bilinear", "squash")
    by = {p.name: p for p in image_files}
    rotated = runtime.read_image(by["exif6.jpg"])
    assert rotated.size == (40, 100)                # 100x40 stored, displayed rotated
    with Image.open(by["exif6.jpg"]) as raw:
        assert raw.size == (100, 40)
    rgba = pp(by["rgba.png"])
    assert np.allclose(rgba[:, :20], 1.0)           # the transparent band is white
    for p in image_files:
        assert runtime.read_image(p).mode == "RGB"
    assert pp(np.zeros((5, 9), np.uint8)).shape == (3, 64, 64)


# ------------------------------------------------------------------ index

def _counting(model):
    """Wrap ``encode_pixels`` to count the images embedded."""
    counter = {"n": 0}
    orig = model.encode_pixels

    def encode(x):
        counter["n"] += len(x)
        return orig(x)

    model.encode_pixels = encode
    return counter, lambda: setattr(model, "encode_pixels", orig)


@pytest.fixture()
def photos(tmp_path):
    from mobileclip.data import write_synthetic

    root = tmp_path / "photos"
    write_synthetic(root, 10, split="val")
    (root / "nested" / "deeper").mkdir(parents=True)
    Image.fromarray(np.full((50, 80, 3), (200, 30, 30), np.uint8)).save(root / "nested" / "deeper" / "red.jpg")
    (root / "nested" / "broken.jpg").write_bytes(b"\xff\xd8 garbage, not a jpeg" * 10)
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    Image.new("RGB", (8, 8)).save(root / ".hidden" / "x.png")
    return root


def test_index_build_save_load_search(model, photos, tmp_path):
    counter, restore = _counting(model)
    try:
        index = runtime.ImageIndex.build(model, photos, progress=False)
    finally:
        restore()
    s = index.stats
    assert s["files"] == len(index) == 11 and s["embedded"] == counter["n"] == 11
    assert s["skipped"] and s["skipped"][0][0] == "nested/broken.jpg" and s["unreadable_total"] == 1
    assert not any(".hidden" in p for p in index.paths)
    out = index.save(tmp_path / "pics.idx")
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["pics.idx"]   # no temp file left
    loaded = runtime.ImageIndex.load(out)
    assert loaded.paths == index.paths and loaded.dtype == "float32"
    assert loaded.fingerprint == model.fingerprint and loaded.model_name == "mobileclip-tiny"
    assert loaded.skipped[0]["path"] == "nested/broken.jpg" and "decodable" in loaded.skipped[0]["error"]
    np.testing.assert_allclose(loaded.embeddings, model.encode_image(index.paths), atol=1e-5)
    # An image of the index finds itself first, with cosine ~1.
    target = photos / "nested" / "deeper" / "red.jpg"
    hits = loaded.search(target, k=3, model=model)
    assert hits[0][0] == str(target) and hits[0][1] == pytest.approx(1.0, abs=1e-4)
    assert len(hits) == 3 and hits[1][1] < hits[0][1]
    # Text search: k results, sorted, equal to brute force.
    hits = loaded.search("a red circle", k=5)      # the index's own bundle, loaded on demand
    scores = loaded.embeddings @ model.encode_text("a red circle")[0]
    order = np.argsort(-scores)[:5]
    assert [p for p, _ in hits] == [loaded.paths[i] for i in order]
    assert [round(s, 5) for _, s in hits] == [round(float(scores[i]), 5) for i in order]
    assert len(loaded.search("x", k=100, model=model)) == 11
    with pytest.raises(runtime.RuntimeInputError, match="k must be"):
        loaded.search("x", k=0, model=model)


def test_index_update_embeds_only_new_and_changed(model, photos, tmp_path):
    index = runtime.ImageIndex.build(model, photos, progress=False)
    out = index.save(tmp_path / "pics.idx")
    files = sorted(photos.rglob("val_*.png"))
    files[0].unlink()                                                    # deleted
    Image.fromarray(np.full((64, 64, 3), (20, 200, 20), np.uint8)).save(files[1])   # changed
    st = files[1].stat()
    os.utime(files[1], ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    new_a, new_b = photos / "new" / "a.png", photos / "b.jpg"
    new_a.parent.mkdir()
    Image.fromarray(np.full((30, 70, 3), (10, 10, 240), np.uint8)).save(new_a)
    Image.fromarray(np.full((64, 64, 3), (240, 240, 10), np.uint8)).save(new_b)

    index = runtime.ImageIndex.load(out)
    counter, restore = _counting(model)
    try:
        s = index.update(model)
    finally:
        restore()
    assert counter["n"] == s["embedded"] == 3                   # two new + one changed, nothing else
    assert (s["added"], s["changed"], s["removed"], s["unchanged"]) == (2, 1, 1, 9)
    assert s["skipped"] == [] and s["unreadable_total"] == 1    # unchanged broken file: not retried
    assert str(files[0]) not in index.paths and str(new_a) in index.paths and len(index) == 12
    row = index.paths.index(str(files[1]))
    np.testing.assert_allclose(index.embeddings[row], model.encode_image(files[1])[0], atol=1e-5)
    index.save(out)
    s = runtime.ImageIndex.load(out).update(model)
    assert s["embedded"] == 0 and s["unchanged"] == 12


def test_index_fp16_and_errors(model, other_bundle, photos, tmp_path, garbage_jpg):
    index = runtime.ImageIndex.build(model, photos, fp16=True, progress=False)
    out = index.save(tmp_path / "half.idx")
    loaded = runtime.ImageIndex.load(out)
    assert loaded.dtype == "float16"
    target = index.paths[3]
    hits = loaded.search(Path(target), k=1, model=model)
    assert hits[0][0] == target and hits[0][1] > 0.999
    # Another bundle: a clear error for update and search, naming the original bundle.
    other = runtime.load(other_bundle)
    assert other.fingerprint != model.fingerprint
    with pytest.raises(runtime.IndexMismatchError, match="built with bundle"):
        loaded.update(other)
    with pytest.raises(runtime.IndexMismatchError, match=str(model.directory.resolve())):
        loaded.search("a red car", model=other)
    with pytest.raises(runtime.ImageIndexError, match="does not exist"):
        runtime.ImageIndex.load(tmp_path / "none.idx")
    with pytest.raises(runtime.ImageIndexError, match="not a mobileclip image index"):
        runtime.ImageIndex.load(garbage_jpg)
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(runtime.ImageIndexError, match="no image files"):
        runtime.ImageIndex.build(model, tmp_path / "empty_dir", progress=False)
    with pytest.raises(runtime.ImageIndexError, match="does not exist"):
        runtime.ImageIndex.build(model, tmp_path / "no_such_dir", progress=False)


# ------------------------------------------------------------------ CLI

def _cli(argv):
    p = argparse.ArgumentParser(prog="mobileclip")
    sub = p.add_subparsers(dest="command", required=True)
    add_commands(sub)
    args = p.parse_args([str(a) for a in argv])
    return args.func(args)


def test_cli_classify(bundle, image_files, garbage_jpg, tmp_path, capsys):
    assert _cli(["classify", bundle, image_files[0], image_files[1], "--labels", "cat, dog,car", "--top", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == str(image_files[0]) and len(out) == 6 and out[1].strip().endswith("%")
    tpl = tmp_path / "templates.txt"
    tpl.write_text("# prompts\na photo of a {}.\n\na drawing of a {}\n")
    assert _cli(["classify", bundle, image_files[0], "--labels", "cat,dog,car", "--templates", tpl, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    preds = data["results"][0]["predictions"]
    assert data["templates"] == ["a photo of a {}.", "a drawing of a {}"] and len(preds) == 3
    assert sum(p["probability"] for p in preds) == pytest.approx(1.0)
    with pytest.raises(runtime.RuntimeInputError, match="--labels is empty"):
        _cli(["classify", bundle, image_files[0], "--labels", " , "])
    with pytest.raises(runtime.ImageReadError, match="broken.jpg"):
        _cli(["classify", bundle, garbage_jpg, "--labels", "cat,dog"])
    with pytest.raises(BundleError, match="does not exist"):
        _cli(["classify", tmp_path / "nope", image_files[0], "--labels", "cat"])


def test_cli_index_and_search(bundle, other_bundle, photos, tmp_path, capsys):
    out = tmp_path / "pics.idx"
    assert _cli(["index", bundle, photos, "--out", out, "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"built {out}: 11 images") and "skipped nested/broken.jpg" in text
    Image.fromarray(np.full((64, 64, 3), (9, 9, 9), np.uint8)).save(photos / "late.png")
    assert _cli(["index", bundle, photos, "--out", out, "--no-progress", "--fp16"]) == 0
    text = capsys.readouterr().out
    assert f"updated {out}: 12 images" in text and "embedded 1 (1 new, 0 changed)" in text and "float16" in text
    assert _cli(["search", out, "a red circle", "-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("text query 'a red circle': top 3 of 12") and len(lines) == 4
    scores = [float(ln.split()[1]) for ln in lines[1:]]
    assert scores == sorted(scores, reverse=True)
    assert _cli(["search", out, photos / "late.png", "-k", "2", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["kind"] == "image" and data["results"][0]["path"] == str(photos / "late.png")
    with pytest.raises(runtime.IndexMismatchError):
        _cli(["search", out, "a red circle", "--bundle", other_bundle])
    with pytest.raises(runtime.IndexMismatchError):
        _cli(["index", other_bundle, photos, "--out", out, "--no-progress"])


def test_open_bundle_is_the_one_way_a_bundle_is_opened(tiny_bundle, tmp_path):
    """open_bundle gives the checked manifest, the preprocessing and tokenizer the bundle ships and a runner per
    tower; the runtime, export's parity check and bench all open bundles through it. A backend the caller does not
    run is refused before its module is imported; with strict=False what cannot be built is a named problem."""
    from mobileclip.runtime import OpenedBundle, open_bundle

    ob = open_bundle(tiny_bundle)
    assert isinstance(ob, OpenedBundle) and ob.problems == {} and set(ob.runners) == {"image", "text"}
    ids = ob.tokens(["a photo of a dog"])
    assert ids.dtype == ob.token_dtype and ids.shape == (1, ob.manifest["tokenizer"]["context_length"])
    m = runtime.load(tiny_bundle)
    assert np.array_equal(ids, np.asarray(m.tokenizer(["a photo of a dog"])).astype(ids.dtype))
    x = ob.preprocess(np.zeros((40, 30, 3), np.uint8))[None]
    assert np.allclose(ob.runners["image"].infer(x), m.image_tower.infer(x))
    ob.close()
    # a Core ML bundle is refused by a caller that runs ONNX Runtime only, without importing the Core ML backend
    code = ("import json, shutil, sys; from pathlib import Path; from mobileclip.runtime import open_bundle, "
            "RuntimeBackendError; d = Path(sys.argv[1]); m = json.loads((d / 'manifest.json').read_text()); "
            "m['artifacts']['image']['backend'] = 'coreml'\n"
            "try:\n    open_bundle(d, manifest=m, backends_allowed=('onnx',))\n"
            "except RuntimeBackendError as e:\n    print('refused:', 'coreml' in str(e))\n"
            "print('torch' in sys.modules, 'mobileclip.backends.coreml' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(tiny_bundle)], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["refused:", "True", "False", "False"], out.stderr
    # strict=False: a tokenizer that cannot be built is a problem, the rest still opens
    broken = tmp_path / "b"
    shutil.copytree(tiny_bundle, broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["tokenizer"]["vocab_file"] = "missing.txt.gz"
    ob = open_bundle(broken, manifest=manifest, strict=False)
    assert ob.tokenizer is None and ob.preprocess is not None and set(ob.problems) == {"tokenizer"}
    assert ob.problems["tokenizer"].startswith("the bundle's tokenizer cannot be built from its manifest")
    with pytest.raises(BundleError, match="tokenizer cannot be built"):
        ob.tokens(["x"])
    with pytest.raises(MobileCLIPError):
        open_bundle(broken, manifest=manifest)   # strict: raised, as the runtime needs it
