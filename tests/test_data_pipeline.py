"""The training data pipeline's levers (distill/images.py, tokens.py, samples.py): uint8 images normalized later, captions
tokenized once, JPEG draft decoding, torchvision's JPEG decoder, torch's resize, the collate.

Images are real photographs shipped by installed packages (scikit-learn's sample images,
matplotlib's Grace Hopper), cropped and re-encoded as 500x375 JPEGs (quality 90, 4:2:0) like the
benchmark's (benchmarks/data_throughput.py); the reference is always the default path.
"""
import csv
import io
import shutil
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from mobileclip.config import PreprocessConfig
from mobileclip.errors import ConfigError
from mobileclip.distill.images import ImageNormalizer, draft_scale, normalize_images
from mobileclip.distill.samples import StepBatches, TrainSamples, UnpairedSamples, collate_train
from mobileclip.distill.sources import CaptionPairs, SyntheticPairs, TextLines, WebDatasetPairs
from mobileclip.distill.tokens import TokenTable
from mobileclip.transforms import ImagePreprocess

CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
AUG = {"scale": (0.5, 1.0), "ratio": (0.75, 1.3333333), "flip_prob": 0.5}
N_PHOTOS = 6
# inverse of each EXIF orientation's transpose: stored = oriented.transpose(INVERSE[o])
INVERSE = {2: Image.FLIP_LEFT_RIGHT, 3: Image.ROTATE_180, 4: Image.FLIP_TOP_BOTTOM, 5: Image.TRANSPOSE,
           6: Image.ROTATE_90, 7: Image.TRANSVERSE, 8: Image.ROTATE_270}


@pytest.fixture(scope="module")
def photos():
    from mobileclip.benchmarks.data_throughput import photo_paths, photos

    if not photo_paths():
        pytest.skip("no photograph installed (scikit-learn or matplotlib)")
    return photos()[0]


@pytest.fixture(scope="module")
def tok():
    from mobileclip.tokenizer import Tokenizer

    return Tokenizer()


@pytest.fixture(scope="module")
def pp():
    return ImagePreprocess(PreprocessConfig(256, mean=CLIP_MEAN, std=CLIP_STD))


def _write(root, files: dict, captions: dict):
    """files: name -> bytes (None: a row whose file is missing). Writes captions.csv and shard.tar."""
    rows = []
    with tarfile.open(root / "shard.tar", "w") as tf:
        for name, data in files.items():
            rows.append((name, captions[name]))
            if data is None:
                continue
            (root / name).write_bytes(data)
            for member, payload in ((name, data), (name.rsplit(".", 1)[0] + ".txt", captions[name].encode())):
                info = tarfile.TarInfo(member)
                info.size = len(payload)
                tf.addfile(info, io.BytesIO(payload))
    with open(root / "captions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "caption"])
        w.writerows(rows)
    wds = WebDatasetPairs(str(root / "shard.tar")) if any(d is not None for d in files.values()) else None
    return CaptionPairs(str(root / "captions.csv")), wds


@pytest.fixture(scope="module")
def jpegs(photos, tmp_path_factory):
    """Six 500x375 photo JPEGs, one of them EXIF-rotated (orientation 6), one grayscale, one CMYK, one PNG."""
    from mobileclip.benchmarks.data_throughput import make_jpeg

    rng = np.random.default_rng(0)
    blobs = [make_jpeg(photos[i % len(photos)], rng) for i in range(N_PHOTOS)]
    files = {f"p{i}.jpg": b for i, b in enumerate(blobs)}
    ex = Image.Exif()
    ex[0x0112] = 6
    rot = Image.open(io.BytesIO(blobs[0])).transpose(INVERSE[6])
    gray = Image.open(io.BytesIO(blobs[1])).convert("L")
    for name, im, kw in (("rot6.jpg", rot, {"exif": ex}), ("gray.jpg", gray, {}),
                         ("cmyk.jpg", Image.open(io.BytesIO(blobs[2])).convert("CMYK"), {}),
                         ("p.png", Image.open(io.BytesIO(blobs[3])), {})):
        buf = io.BytesIO()
        im.save(buf, "PNG" if name.endswith(".png") else "JPEG", quality=90, **kw)
        files[name] = buf.getvalue()
    captions = {name: f"a photo, number {i}" for i, name in enumerate(files)}
    root = tmp_path_factory.mktemp("jpegs")
    return _write(root, files, captions)


def _items(ds, n, epochs=(0,)):
    return [(ds[(i, e)], (i, e)) for e in epochs for i in range(n)]


@pytest.mark.parametrize("which", [0, 1], ids=["captions", "webdataset"])
def test_uint8_images_normalized_on_the_device_equal_the_float_preprocess(jpegs, pp, tok, which):
    source = jpegs[which]
    ref = TrainSamples(source, pp, tok, 0, AUG)
    u8 = TrainSamples(source, pp, tok, 0, AUG, image_dtype="uint8")
    norm = ImageNormalizer.for_preprocess(pp)
    for (a, _), (b, key) in zip(_items(ref, len(source), (0, 1)), _items(u8, len(source), (0, 1))):
        assert b["image"].dtype == torch.uint8 and b["image"].shape == (3, 256, 256)
        x = norm(b["image"])
        assert x.dtype == torch.float32 and x.is_contiguous()
        assert (x - a["image"]).abs().max().item() < 1e-5, key
        assert torch.equal(x, a["image"]), key  # the same float32 operations: equal, not just close
    batch = collate_train([u8[(i, 0)] for i in range(len(source))])
    ref_batch = collate_train([ref[(i, 0)] for i in range(len(source))])
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == ref_batch["image"].shape
    assert torch.equal(normalize_images(batch["image"], CLIP_MEAN, CLIP_STD), ref_batch["image"])
    assert torch.equal(ImageNormalizer(CLIP_MEAN, CLIP_STD)(ref_batch["image"]), ref_batch["image"])  # float: as is


def test_pretokenized_captions_equal_the_per_sample_tokenizer(tmp_path, tok):
    caps = ["a cat!", "a cat!", "A  Dog ,  on a sofa", "émoji 🐱 and ünïcode", "!" * 3,
            " ".join(["very long caption"] * 40), "x"]
    files = {f"{i}.png": None for i in range(len(caps))}
    source, _ = _write(tmp_path, files, {f"{i}.png": c for i, c in enumerate(caps)})
    table = TokenTable(source, tok)
    assert table.precomputed and table.tokens.dtype == np.uint16 and len(table.offsets) == len(set(caps)) + 1
    for i, c in enumerate(caps):
        want = tok([c])[0]
        got = table.get(i, 0, c)
        assert got.dtype == want.dtype and torch.equal(got, want), c
    lines = tmp_path / "texts.txt"
    lines.write_text("\n".join(caps) + "\n")
    texts = TextLines(str(lines))
    t2 = TokenTable(texts, tok)
    assert all(torch.equal(t2.get(i, 0, c), tok([c])[0]) for i, c in enumerate(texts.texts))
    synth = SyntheticPairs("train", 4, 32)  # no captions() without rendering: a memo instead
    ds = TrainSamples(synth, lambda im: torch.zeros(1), tok, 0, AUG, pretokenize=True)
    plain = TrainSamples(synth, lambda im: torch.zeros(1), tok, 0, AUG)
    assert not ds.tokens.precomputed
    for e in range(3):
        for i in range(4):
            assert torch.equal(ds[(i, e)]["tokens"], plain[(i, e)]["tokens"])


def test_stored_token_tables_are_reused_and_checked(tmp_path, tok, monkeypatch):
    """data.token_cache: the first table is built and stored; the next one (another run, rank) is read back equal,
    without tokenizing all captions again; other captions or another tokenizer get their own table; a damaged
    file, or a tokenizer that no longer gives the stored ids, is refused by name."""
    import json

    from mobileclip.distill.cache import CacheError

    caps = ["a cat!", "a cat!", "A  Dog ,  on a sofa", "émoji 🐱 and ünïcode", " ".join(["long caption"] * 40), "x"]
    files = {f"{i}.png": None for i in range(len(caps))}
    source, _ = _write(tmp_path, files, {f"{i}.png": c for i, c in enumerate(caps)})
    store = tmp_path / "tokens"
    built = TokenTable(source, tok, store=str(store))
    assert not built.loaded and len(list(store.glob("tokens-*"))) == 1
    calls = []
    real_tok = tok.__class__.__call__

    def counting(self, texts):
        calls.append(len(texts))
        return real_tok(self, texts)

    same = tmp_path / "same.txt"
    same.write_text("\n".join(caps) + "\n")
    monkeypatch.setattr(tok.__class__, "__call__", counting)
    again = TokenTable(TextLines(str(same)), tok, store=str(store))  # the same captions, another file
    assert again.loaded and sum(calls) == 1 + 5  # a small table: its 5 distinct captions again (+ "" for structure)
    calls.clear()
    monkeypatch.setattr(TokenTable, "FULL_CHECK_MAX", 2)
    monkeypatch.setattr(TokenTable, "SAMPLE", 1)
    assert TokenTable(TextLines(str(same)), tok, store=str(store)).loaded and sum(calls) <= 1 + 3  # a large one:
    monkeypatch.undo()                                                        # the first, the last, a random one
    monkeypatch.setattr(tok.__class__, "__call__", real_tok)
    for i, c in enumerate(caps):
        assert torch.equal(again.get(i, 0, c), tok([c])[0]) and torch.equal(built.get(i, 0, c), tok([c])[0])
    other = tmp_path / "other.txt"
    other.write_text("\n".join(caps[:3]) + "\n")
    assert not TokenTable(TextLines(str(other)), tok, store=str(store)).loaded  # other captions: a new table
    assert len(list(store.glob("tokens-*"))) == 2

    folder = next(f for f in store.glob("tokens-*") if json.loads((f / "table.json").read_text())["samples"] == 6)

    def shifted(self, texts):  # a tokenizer that changed behind the same name and vocabulary
        return real_tok(self, texts) + 1

    monkeypatch.setattr(tok.__class__, "__call__", shifted)
    with pytest.raises(CacheError, match="tokenized differently today"):
        TokenTable(source, tok, store=str(store))
    monkeypatch.setattr(tok.__class__, "__call__", real_tok)
    data = bytearray((folder / "tokens.npy").read_bytes())
    data[-1] ^= 1
    (folder / "tokens.npy").write_bytes(bytes(data))
    with pytest.raises(CacheError, match="tokens.npy does not match its recorded sha256.*delete that folder"):
        TokenTable(source, tok, store=str(store))
    (folder / "table.json").write_text("{not json")
    with pytest.raises(CacheError, match="unreadable"):
        TokenTable(source, tok, store=str(store))


def _resign(folder, edit):
    """Edit a stored table's ids with ``edit(tokens, offsets)`` and re-sign table.json (its sha256 then pass)."""
    import json

    from mobileclip.hashing import sha256_file

    tokens = np.load(folder / "tokens.npy")
    offsets = np.load(folder / "offsets.npy")
    edit(tokens, offsets)
    np.save(folder / "tokens.npy", tokens)
    meta = json.loads((folder / "table.json").read_text())
    meta["sha256"]["tokens.npy"] = sha256_file(folder / "tokens.npy")
    (folder / "table.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("edit, message", [
    (lambda t, o: t.__setitem__(o[2] + 1, t[o[2] + 1] + 1), "caption 'a dog on a sofa' is tokenized differently"),
    (lambda t, o: t.__setitem__(o[3] - 1, 400), "1 caption rows do not end with the end token .first: caption 2"),
    (lambda t, o: t.__setitem__(o[1], 7), "1 caption rows do not start with the start token .first: caption 1"),
    (lambda t, o: t.__setitem__(o[2] + 1, 60000), "it holds id 60000, outside the tokenizer's vocabulary of 49408"),
])
def test_a_resigned_token_table_is_checked_row_by_row(tmp_path, tok, monkeypatch, edit, message):
    """Issue 20, item 3: an edited table whose sha256 were re-signed is refused: a small table has every caption
    tokenized again; a large one (FULL_CHECK_MAX lowered here) has every row's structure checked and a random
    sample re-tokenized."""
    from mobileclip.distill.cache import CacheError

    caps = ["a cat", "a cat on a mat", "a dog on a sofa", "two birds", "a red car", "an old house"]
    path = tmp_path / "caps.txt"
    path.write_text("\n".join(caps) + "\n")
    store = tmp_path / "tokens"
    TokenTable(TextLines(str(path)), tok, store=str(store))
    folder = next(store.glob("tokens-*"))
    _resign(folder, edit)
    with pytest.raises(CacheError, match=message):
        TokenTable(TextLines(str(path)), tok, store=str(store))
    if "tokenized differently" in message:   # the same edit in a large table: only sampled, as its ids are valid
        monkeypatch.setattr(TokenTable, "FULL_CHECK_MAX", 3)
        monkeypatch.setattr(TokenTable, "SAMPLE", 2)
        outcomes = set()
        for _ in range(40):   # 3 of 6 rows checked each time (first, last, 2 random): caught 40% of loads
            try:
                TokenTable(TextLines(str(path)), tok, store=str(store))
                outcomes.add("passed")
            except CacheError:
                outcomes.add("refused")
        assert outcomes == {"passed", "refused"}   # what docs/trust.md says a re-signed large table can do


def test_token_cache_that_is_a_file_is_named(tmp_path, tok):
    """Issue 20, item 4: a file where the store, or one table's folder, belongs is one clear refusal."""
    from mobileclip.distill.cache import CacheError

    path = tmp_path / "caps.txt"
    path.write_text("a cat\na dog\n")
    store = tmp_path / "tokens"
    store.write_text("not a folder")
    with pytest.raises(CacheError, match="data.token_cache .*tokens' is a file, not a folder"):
        TokenTable(TextLines(str(path)), tok, store=str(store))
    store.unlink()
    TokenTable(TextLines(str(path)), tok, store=str(store))
    folder = next(store.glob("tokens-*"))
    shutil.rmtree(folder)
    folder.write_text("")
    with pytest.raises(CacheError, match="the table's folder .*tokens-.* is a file, not a folder"):
        TokenTable(TextLines(str(path)), tok, store=str(store))
    code_err = _cli_distill_token_cache(tmp_path, tmp_path / "caps.txt")
    assert code_err[0] == 2 and "data.token_cache: " in code_err[1] and "is a file; give a folder" in code_err[1]


def _cli_distill_token_cache(tmp_path, file):
    import contextlib
    import io

    from mobileclip.app.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["distill", "progress=false", f"out={tmp_path / 'r'}", f"data.token_cache={file}"])
    return code, err.getvalue().strip()


def test_draft_scale_only_when_the_reduced_crop_still_covers_the_target():
    short = PreprocessConfig(256)
    assert draft_scale((512, 512), short) == 2 and draft_scale((511, 600), short) == 1
    assert draft_scale((2048, 1024), short) == 4 and draft_scale((4096, 3000), short) == 8
    assert draft_scale((500, 375), short) == 1
    squash = PreprocessConfig(256, resize_mode="squash")
    assert draft_scale((2048, 520), squash) == 2


def test_draft_decoding_is_close_to_the_full_decode_in_every_exif_orientation(photos, pp, tok, tmp_path):
    """A 1283x857 photo (sides not multiples of 8) stored in each EXIF orientation: decoded at 1/2 scale
    (crops of 50-100 % of it at 256 px), the student's input differs from the full decode by ~0.5 of 255
    levels on average; a wrong mapping of the reduced image's partial edge blocks would give ~2."""
    photo = photos[1].resize((1283, 857), Image.BICUBIC)
    files, captions = {}, {}
    for o in range(1, 9):
        stored = photo.transpose(INVERSE[o]) if o in INVERSE else photo
        ex = Image.Exif()
        ex[0x0112] = o
        buf = io.BytesIO()
        stored.save(buf, "JPEG", quality=92, exif=ex)
        files[f"o{o}.jpg"], captions[f"o{o}.jpg"] = buf.getvalue(), f"orientation {o}"
    source, _ = _write(tmp_path, files, captions)
    pp8 = ImagePreprocess(PreprocessConfig(256))
    ref = TrainSamples(source, pp8, tok, 0, AUG)
    draft = TrainSamples(source, pp8, tok, 0, AUG, image_dtype="uint8", draft=True)
    diffs = []
    for (a, _), (b, key) in zip(_items(ref, 8, epochs=(0, 1)), _items(draft, 8, epochs=(0, 1))):
        d = (a["image"] * 255 - b["image"].float()).abs()
        diffs.append((d.mean().item(), d.max().item()))
        assert d.mean().item() < 1.0 and d.max().item() <= 32, (key, diffs[-1])
    assert draft.images.reduced == draft.images.decoded == 16  # every image was decoded at a reduced scale
    mean, worst = np.mean([d[0] for d in diffs]), max(d[1] for d in diffs)
    assert 0.1 < mean < 0.8, mean  # measured: 0.5 mean, 11 max (levels of 255)
    print(f"draft vs full decode: mean |diff| {mean:.2f}, max {worst:.0f} of 255 levels")


def test_draft_leaves_images_too_small_for_it_exact(jpegs, pp, tok):
    source = jpegs[0]
    ref = TrainSamples(source, pp, tok, 0, AUG)
    draft = TrainSamples(source, pp, tok, 0, AUG, draft=True)
    for (a, _), (b, key) in zip(_items(ref, len(source)), _items(draft, len(source))):
        assert torch.equal(a["image"], b["image"]), key
    assert draft.images.reduced == 0


@pytest.mark.parametrize("decoder", ["torchvision", "simplejpeg"])
@pytest.mark.parametrize("which", [0, 1], ids=["captions", "webdataset"])
def test_fast_decoders_are_bit_identical_and_torch_resize_within_one_level(jpegs, pp, tok, which, decoder):
    pytest.importorskip(decoder)
    source = jpegs[which]
    ref = TrainSamples(source, pp, tok, 0, AUG, image_dtype="uint8")
    tv = TrainSamples(source, pp, tok, 0, AUG, image_dtype="uint8", decoder=decoder)
    fast = TrainSamples(source, pp, tok, 0, AUG, image_dtype="uint8", decoder=decoder, resize="torch")
    off = 0
    for (a, _), (b, key), (c, _) in zip(_items(ref, len(source)), _items(tv, len(source)), _items(fast, len(source))):
        assert torch.equal(a["image"], b["image"]), key
        d = (a["image"].int() - c["image"].int()).abs()
        assert d.max().item() <= 1, key
        off += (d > 0).float().mean().item()
    assert off / len(source) < 0.01  # measured: 0.2 % of the pixels differ, by one level


def test_simplejpeg_decodes_like_pillow_in_every_chroma_subsampling_and_leaves_grayscale_to_pillow(photos):
    """simplejpeg with Pillow's settings (accurate DCT, fancy upsampling) gives Pillow's pixels for 4:4:4, 4:2:2
    and 4:2:0 JPEGs; a grayscale JPEG is decoded by Pillow (a PIL image comes back, not a tensor)."""
    pytest.importorskip("simplejpeg")
    from mobileclip.transforms import load_image, load_image_scaled

    photo = photos[0].resize((333, 250))
    for subsampling in (0, 1, 2):
        buf = io.BytesIO()
        photo.save(buf, "JPEG", quality=85, subsampling=subsampling)
        fast = load_image_scaled(io.BytesIO(buf.getvalue()), decoder="simplejpeg").image
        assert isinstance(fast, torch.Tensor), subsampling
        ref = np.asarray(load_image(io.BytesIO(buf.getvalue())))
        assert np.array_equal(fast.permute(1, 2, 0).numpy(), ref), subsampling
    buf = io.BytesIO()
    photo.convert("L").save(buf, "JPEG", quality=85)
    gray = load_image_scaled(io.BytesIO(buf.getvalue()), decoder="simplejpeg").image
    assert isinstance(gray, Image.Image) and np.array_equal(np.asarray(gray), np.asarray(load_image(buf)))


def _corrupt_sources(root, photos):
    from mobileclip.benchmarks.data_throughput import make_jpeg

    good = make_jpeg(photos[0], np.random.default_rng(1))
    files = {"good.jpg": good, "truncated.jpg": good[:len(good) // 3], "text.jpg": b"not an image at all",
             "empty.jpg": b"", "missing.jpg": None, "good2.jpg": good}
    return _write(root, files, {n: f"caption {n}" for n in files})


OPTIONS = [{}, {"image_dtype": "uint8", "pretokenize": True}, {"draft": True},
           {"image_dtype": "uint8", "decoder": "torchvision", "resize": "torch", "draft": True},
           {"image_dtype": "uint8", "decoder": "simplejpeg", "resize": "torch"},
           {"image_dtype": "uint8", "decoder": "device"}]


@pytest.mark.parametrize("opts", OPTIONS, ids=["default", "uint8+pretokenize", "draft", "all", "simplejpeg", "device"])
def test_unreadable_images_are_skipped_and_counted_on_every_path(photos, pp, tok, tmp_path, opts):
    csv_source, wds = _corrupt_sources(tmp_path, photos)
    for source in (csv_source, wds):
        ds = TrainSamples(source, pp, tok, 0, AUG, **opts)
        items = [ds[(i, 0)] for i in range(len(source))]
        batch = collate_train(items)
        n_bad = len(source) - 2
        assert len(batch["skipped"]) == n_bad and len(batch["index"]) == 2, type(source).__name__

        class Cache:  # an image-only teacher cache: one augmentation per image, all ok
            modality, augs = "images", 1

            def ok(self, i):
                return True

            def aug(self, i, k):
                return np.array([0.1, 0.1, 0.8, 0.8, 1.0], np.float32)

            def image_embedding(self, i, k):
                return np.zeros(4, np.float16)

        un = UnpairedSamples(source, Cache(), pp, tok, 0, **{k: v for k, v in opts.items() if k != "pretokenize"})
        b2 = collate_train([un[(i, 0)] for i in range(len(source))])
        assert len(b2["skipped"]) == n_bad and len(b2["ui_index"]) == 2
        if opts.get("decoder") == "device":  # the good JPEGs went as bytes, and decode where the batch lands
            from mobileclip.distill.images import decode_deferred
            from mobileclip.distill.samples import pop_deferred

            for b in (batch, b2):
                assert sum(len(g) for g in [v for k, v in b.items() if k.endswith("_jpeg_geom")]) == 2
                for k, entries in pop_deferred(b).items():
                    decode_deferred(b, k, entries, "cpu", pp.cfg.image_size, "bilinear")
            assert b2["ui_image"].float().mean() > 10 and batch["image"].float().mean() > 10
        for b, key in ((batch, "image"), (b2, "ui_image")):
            assert b[key].shape[0] == 2 and b[key].dtype == getattr(torch, opts.get("image_dtype", "float32"))


def test_collate_in_a_worker_goes_through_shared_memory(jpegs, pp, tok):
    source = jpegs[1]
    ds = TrainSamples(source, pp, tok, 0, AUG, image_dtype="uint8", pretokenize=True)
    sampler = StepBatches(len(source), 4, 2, seed=0)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, num_workers=1, collate_fn=collate_train)
    got = list(loader)
    for step, batch in enumerate(got):
        want = collate_train([ds[k] for k in sampler.indices_for_step(step)])
        assert batch["image"].dtype == torch.uint8 and batch["image"].is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(batch["image"], want["image"]) and torch.equal(batch["tokens"], want["tokens"])
        assert torch.equal(batch["image"], torch.stack([ds[k]["image"] for k in sampler.indices_for_step(step)]))


def test_step_batches_draw_each_epoch_once_and_give_the_same_steps(monkeypatch):
    """The sampler keeps the current epoch's permutation (drawing it per step is O(n): ~0.9 s at 10 M samples).
    Reference: every step's slice of a freshly drawn permutation; a resumed sampler and the ranks agree."""
    n, b, steps, world = 50, 8, 20, 2  # 6 steps per epoch: the run crosses 3 epoch boundaries
    want = []
    for step in range(steps):
        epoch, pos = divmod(step, n // b)
        perm = np.random.default_rng([3, 11, epoch]).permutation(n)[pos * b:(pos + 1) * b]
        want.append([(int(i), epoch) for i in perm])
    draws = []
    real = np.random.default_rng

    def counting(seed):
        draws.append(tuple(seed))
        return real(seed)

    monkeypatch.setattr(np.random, "default_rng", counting)
    ranks = [list(StepBatches(n, b, steps, seed=3, rank=r, world=world)) for r in range(world)]
    assert [x + y for x, y in zip(*ranks)] == want
    assert sorted(set(draws)) == [(3, 11, e) for e in range(4)] and len(draws) == 4 * world
    assert list(StepBatches(n, b, steps, seed=3, start_step=13)) == want[13:]


def test_simplejpeg_skips_pillow_only_for_plain_colour_jpegs(photos, monkeypatch):
    """decoder="simplejpeg" reads a plain colour JPEG's header itself (no Pillow); a JPEG with an APP1 segment
    (EXIF or XMP: Pillow reads an orientation from either) or over Pillow's decompression-bomb limit still goes
    through Pillow, so orientation and the bomb refusal are unchanged. Reference: load_image (Pillow)."""
    pytest.importorskip("simplejpeg")
    import mobileclip.transforms as T

    photo = photos[0].resize((333, 250))
    plain, xmp_rot = io.BytesIO(), io.BytesIO()
    photo.save(plain, "JPEG", quality=85)
    xmp = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
           b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>')
    photo.save(xmp_rot, "JPEG", quality=85, xmp=xmp)
    opened = []
    real_open = Image.open
    monkeypatch.setattr(T.Image, "open", lambda *a, **k: opened.append(1) or real_open(*a, **k))
    for blob, pillow in ((plain.getvalue(), False), (xmp_rot.getvalue(), True)):
        opened.clear()
        got = T.load_image_scaled(io.BytesIO(blob), decoder="simplejpeg")
        monkeypatch.setattr(T.Image, "open", real_open)
        ref = np.asarray(T.load_image(io.BytesIO(blob)))
        monkeypatch.setattr(T.Image, "open", lambda *a, **k: opened.append(1) or real_open(*a, **k))
        assert bool(opened) == pillow
        img = got.image.permute(1, 2, 0).numpy() if isinstance(got.image, torch.Tensor) else np.asarray(got.image)
        assert np.array_equal(img, ref) and got.full_size == (ref.shape[1], ref.shape[0])
    assert ref.shape[:2] == (333, 250)  # the XMP orientation (6) was applied: 333 wide stored, 333 tall shown
    monkeypatch.setattr(T.Image, "open", real_open)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 333 * 250 // 3)  # over twice the limit: Pillow refuses
    with pytest.raises(Image.DecompressionBombError):
        T.load_image_scaled(io.BytesIO(plain.getvalue()), decoder="simplejpeg")
    for hostile in (b"", b"\xff\xd8", b"\xff\xd8\xff\xe0\x00", b"\xff\xd8\x00\x00\x00\x00", plain.getvalue()[:40],
                    b"\xff\xd8\xff\xd9", b"GIF89a" + bytes(20)):
        assert T._has_app1(hostile) is None, hostile


def test_packed_strings_round_trip():
    from mobileclip.data.datasets import PackedStrings

    strings = ["a cat", "", "ünïcødé ✓ 猫", "bad \udcff name.jpg", "x" * 1000]
    packed = PackedStrings(iter(strings))
    assert len(packed) == 5 and list(packed) == strings and packed[-1] == strings[-1] and packed[2] == strings[2]
    assert packed.nbytes == len("".join(strings).encode("utf-8", "surrogateescape")) + 6 * 8
    for bad in (5, -6):
        with pytest.raises(IndexError):
            packed[bad]
    assert len(PackedStrings([])) == 0
    built = PackedStrings.building()
    for x in strings:
        built.append(x)
    assert list(built.seal()) == strings
    with pytest.raises(TypeError, match="sealed"):
        built.append("more")


def test_sources_hold_no_python_object_per_sample(tmp_path):
    """Caption files, WebDataset indexes, image folders and text files are packed in numpy arrays, so a forked
    DataLoader worker that reads every sample does not copy them (Python lists would be copied page by page as
    reading touches reference counts: ~450 B per caption-file row per worker, measured). Checked in forked
    processes through the kernel's count of their private dirty memory, side by side with a list."""
    import gc
    import os

    from mobileclip.data.datasets import PackedStrings
    from mobileclip.distill.sources import ImageFiles, WDS_INDEX

    if not os.path.exists("/proc/self/smaps_rollup"):
        pytest.skip("needs Linux's /proc/self/smaps_rollup")
    n = 100_000
    with open(tmp_path / "c.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "caption"])
        w.writerows([f"/abs/{i % 7}.jpg" if i % 3 == 0 else f"im/{i:06d}.jpg", f"caption number {i}"]
                    for i in range(n))
    source = CaptionPairs(str(tmp_path / "c.csv"))
    items = source.ds.items
    assert isinstance(items.paths, PackedStrings) and isinstance(items.captions, PackedStrings)
    assert source.open(3) == ("/abs/3.jpg", ["caption number 3"])
    assert source.open(4) == (str(tmp_path / "im/000004.jpg"), ["caption number 4"])
    assert source.ds.image_paths[4] == str(tmp_path / "im/000004.jpg") and source.ds.captions[5] == "caption number 5"

    def private_dirty():
        with open("/proc/self/smaps_rollup") as f:
            return next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("Private_Dirty"))

    as_list = [(str(p), c) for p, c in items]  # the storage before: a Python list, read side by side

    def grown_by_reading(read):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker: read every sample once
            try:
                gc.freeze()  # as the trainer does before its workers start: no collection touches the parent's objects
                before = private_dirty()
                for i in range(n):
                    read(i)
                os.write(w, str(private_dirty() - before).encode())
            except BaseException as e:  # noqa: BLE001 - reported by the parent
                os.write(w, f"error {e!r}".encode())
            finally:
                os._exit(0)
        os.close(w)
        os.waitpid(pid, 0)
        out = os.read(r, 256).decode()
        os.close(r)
        assert out and not out.startswith("error"), out
        return int(out)

    packed, listed = grown_by_reading(source.open), grown_by_reading(as_list.__getitem__)
    assert 0 <= packed < listed / 10 and listed > 6 * 1024 * 1024, (packed, listed)  # measured: 0.2 vs 9 MB

    (tmp_path / "imgs" / "sub").mkdir(parents=True)
    for name in ("b.jpg", "sub/a.png", ".hidden.jpg", "notes.txt"):
        (tmp_path / "imgs" / name).write_bytes(b"x")
    folder = ImageFiles(str(tmp_path / "imgs"))
    assert [folder.identity(i) for i in range(len(folder))] == ["b.jpg", "sub/a.png"]
    assert folder.open(1) == (str(tmp_path / "imgs" / "sub" / "a.png"), [])
    # a cache's fingerprint names each row as pathlib did (image root / path, relative to the root), on every form
    raws = ["a.jpg", "im/b.jpg", "./c.jpg", "d//e.jpg", "f/./g.jpg", "h/../i.jpg", "j/", str(tmp_path / "k.jpg"),
            "/elsewhere/l.jpg", "m\\n.jpg", "ünï ✓.jpg"]
    with open(tmp_path / "forms.csv", "w", newline="") as f:
        csv.writer(f).writerows([("image", "caption")] + [(r, f"c{j}") for j, r in enumerate(raws)])
    forms = CaptionPairs(str(tmp_path / "forms.csv"))
    for j, raw in enumerate(raws):
        full = tmp_path / raw
        want = full.relative_to(tmp_path).as_posix() if full.is_relative_to(tmp_path) else str(full)
        assert forms.identity(j) == f"{want}\tc{j}", raw
        assert forms.ds.image_paths[j] == str(tmp_path / raw), raw  # the path pathlib would give

    with tarfile.open(tmp_path / "s.tar", "w") as tf:
        for name, data in (("a.jpg", b"img-a"), ("a.json", b'{"caption": "cap a"}'), ("b.jpg", b"img-b"),
                           ("b.txt", "cap b ✓".encode()), ("c.txt", b"no image")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    wds = WebDatasetPairs(str(tmp_path / "s.tar"))
    assert wds.index.dtype == WDS_INDEX and len(wds) == 2 and wds.incomplete == 1
    assert [(wds.open(i)[0].read(), wds.captions(i)) for i in range(2)] == [(b"img-a", ["cap a"]),
                                                                           (b"img-b", ["cap b ✓"])]
    assert wds.identity(1).startswith("s.tar@") and wds.identity(1).endswith("\tcap b ✓")
    (tmp_path / "t.txt").write_text("one\n\n two \n")
    assert list(TextLines(str(tmp_path / "t.txt")).texts) == ["one", "two"]


class _FreezeCount(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        import gc

        return torch.tensor(gc.get_freeze_count())


def test_workers_start_with_the_parents_objects_frozen():
    """The trainer's loader forks its workers with gc.freeze() in force (a worker's collections then leave the
    inherited objects, and their pages, alone); the parent is unfrozen again right after."""
    import gc

    from mobileclip.distill.loader import start_loader

    loader = torch.utils.data.DataLoader(_FreezeCount(), batch_size=2, num_workers=1)
    it = start_loader(loader)
    assert gc.get_freeze_count() == 0
    assert next(it).min().item() > 1000  # the worker inherited the frozen objects
    assert next(iter(torch.utils.data.DataLoader(_FreezeCount(), batch_size=2, num_workers=1))).max().item() == 0


class _ReadBack(torch.utils.data.Dataset):
    def __init__(self, wds):
        self.wds = wds

    def __len__(self):
        return len(self.wds)

    def __getitem__(self, i):
        import hashlib

        src, caps = self.wds.open(i)
        return (hashlib.sha256(src.read()).hexdigest() if src is not None else "unreadable") + " " + caps[0]


def test_webdataset_reads_stay_right_in_workers_forked_after_the_parent_read(tmp_path):
    """The parent reads the shard first (as the trainer does: fingerprints, pre-tokenizing), so forked workers
    inherit its file descriptor and offset; two workers reading at once must still get every sample's own bytes
    (seek + read on a shared offset read other samples' bytes: "Corrupt JPEG data" in the benchmark)."""
    import hashlib

    rng = np.random.default_rng(0)
    n, repeats = 200, 8
    blobs = [rng.integers(0, 256, int(rng.integers(2000, 20000)), dtype=np.uint8).tobytes() for _ in range(n)]
    with tarfile.open(tmp_path / "s.tar", "w") as tf:
        for i, b in enumerate(blobs):
            for name, data in ((f"{i:04d}.jpg", b), (f"{i:04d}.txt", f"caption {i}".encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    wds = WebDatasetPairs(str(tmp_path / "s.tar"))
    want = [hashlib.sha256(b).hexdigest() + f" caption {i}" for i, b in enumerate(blobs)]
    assert [_ReadBack(wds)[i] for i in range(n)] == want  # the parent's descriptor is open now
    loader = torch.utils.data.DataLoader(_ReadBack(wds), batch_size=None, sampler=list(range(n)) * repeats,
                                         num_workers=2)
    got = list(loader)
    wrong = [(g, w) for g, w in zip(got, want * repeats) if g != w]
    assert not wrong, f"{len(wrong)} of {len(got)} samples read wrong, e.g. {wrong[0]}"


@pytest.mark.parametrize("which", [0, 1], ids=["captions", "webdataset"])
def test_device_decoder_defers_plain_jpegs_and_gives_the_workers_images(jpegs, pp, tok, which):
    """decoder="device": plain colour JPEGs travel as bytes (through a worker's shared memory) and are decoded
    where the batch lands (here the CPU: libjpeg-turbo; nvJPEG on CUDA); EXIF-rotated, grayscale, CMYK and PNG
    files are decoded in the worker. Reference: Pillow's decode and resize (the default path), within one level;
    and, on the CPU, exactly torchvision's decoder with torch's resize in the worker."""
    pytest.importorskip("torchvision")
    from mobileclip.distill.images import decode_deferred
    from mobileclip.distill.samples import pop_deferred

    source = jpegs[which]
    dev = TrainSamples(source, pp, tok, 0, AUG, image_dtype="uint8", pretokenize=True, decoder="device")
    tv = TrainSamples(source, pp, tok, 0, AUG, image_dtype="uint8", decoder="torchvision", resize="torch")
    ref = TrainSamples(source, pp, tok, 0, AUG, image_dtype="uint8")
    n = len(source)
    sampler = StepBatches(n, n, 2, seed=0)
    loader = torch.utils.data.DataLoader(dev, batch_sampler=sampler, num_workers=1, collate_fn=collate_train)
    for step, batch in enumerate(loader):
        keys = sampler.indices_for_step(step)
        plain = [j for j, (i, _) in enumerate(keys) if i < N_PHOTOS]  # samples 0..5 are the plain JPEGs
        assert batch["image_jpeg_geom"][:, 0].tolist() == plain and batch["image_jpeg"].dtype == torch.uint8
        assert "image" not in batch and batch["image_cpu"].shape[0] == len(keys) - len(plain)  # the rest
        for k, entries in pop_deferred(batch).items():
            decode_deferred(batch, k, entries, "cpu", pp.cfg.image_size, "bilinear")
        assert "image_jpeg" not in batch and batch["skipped"] == []
        want_tv = collate_train([tv[k] for k in keys])["image"]
        want_pil = collate_train([ref[k] for k in keys])["image"]
        assert torch.equal(batch["image"], want_tv), step
        d = (batch["image"].int() - want_pil.int()).abs()
        assert d.max().item() <= 1 and (d > 0).float().mean().item() < 0.01
        assert torch.equal(batch["tokens"], collate_train([ref[k] for k in keys])["tokens"])


def test_device_decoder_drops_a_sample_the_decoder_refuses(jpegs, pp, tok, monkeypatch):
    """A JPEG the device's decoder refuses takes its sample out of every per-sample key of its group and into
    "skipped", as an unreadable image in a worker would; the other rows keep their own data."""
    import torchvision.io

    from mobileclip.distill.images import decode_deferred
    from mobileclip.distill.samples import pop_deferred

    source = jpegs[0]
    dev = TrainSamples(source, pp, tok, 0, AUG, image_dtype="uint8", pretokenize=True, decoder="device")
    items = [dev[(i, 0)] for i in range(len(source))]
    for j, it in enumerate(items):
        it["t_image"] = torch.full((4,), float(j))
    batch = collate_train(items)
    batch["ui_index"], batch["ui_image"] = torch.tensor([7]), torch.zeros(1, 3, 4, 4, dtype=torch.uint8)
    n = len(batch["index"])
    victim_row = int(batch["image_jpeg_geom"][2, 0])
    victim_len = int(batch["image_jpeg_geom"][2, 2])
    real = torchvision.io.decode_jpeg

    def refusing(data, *a, **k):
        if isinstance(data, list):
            if any(len(d) == victim_len for d in data):
                raise RuntimeError("nvjpeg: bad data")
            return real(data, *a, **k)
        if len(data) == victim_len:
            raise RuntimeError("nvjpeg: bad data")
        return real(data, *a, **k)

    monkeypatch.setattr(torchvision.io, "decode_jpeg", refusing)
    import mobileclip.distill.images as D

    real_check = D._decodes_on_cpu
    monkeypatch.setattr(D, "_decodes_on_cpu", lambda d: len(d) != victim_len and real_check(d))   # truly bad
    victim = int(batch["index"][victim_row])
    for k, entries in pop_deferred(batch).items():
        decode_deferred(batch, k, entries, "cpu", pp.cfg.image_size, "bilinear")
    assert batch["skipped"] == [victim] and batch["device_decode_fallbacks"] == 1   # the retry is counted
    assert len(batch["index"]) == len(batch["image"]) == len(batch["tokens"]) == len(batch["t_image"]) == n - 1
    assert victim not in batch["index"].tolist()
    assert batch["t_image"][:, 0].tolist() == [float(j) for j in range(n) if j != victim_row]
    assert batch["ui_index"].tolist() == [7] and batch["ui_image"].shape[0] == 1  # the other group is untouched


@pytest.mark.parametrize("failure", ["good JPEG refused", "out of memory"])
def test_device_decoder_failures_that_are_not_a_bad_image_raise(jpegs, pp, tok, monkeypatch, failure):
    """Issue 21: a device decoder that fails on a JPEG libjpeg decodes on the CPU (torchvision without nvJPEG, a
    broken driver) stops the run naming the decoder, and an out-of-memory error is re-raised as itself; neither is
    counted as an unreadable image (which would train on nothing)."""
    import torchvision.io

    from mobileclip.distill.images import DeviceDecodeError, decode_deferred
    from mobileclip.distill.samples import pop_deferred

    dev = TrainSamples(jpegs[0], pp, tok, 0, AUG, image_dtype="uint8", pretokenize=True, decoder="device")
    batch = collate_train([dev[(i, 0)] for i in range(len(jpegs[0]))])

    def broken(data, *a, **k):
        if failure == "out of memory":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        raise RuntimeError("nvjpeg: this torchvision was built without nvJPEG support")

    monkeypatch.setattr(torchvision.io, "decode_jpeg", broken)
    want = (DeviceDecodeError, "failed on a JPEG that libjpeg decodes on the CPU .*built without nvJPEG") \
        if failure == "good JPEG refused" else (torch.cuda.OutOfMemoryError, "CUDA out of memory")
    with pytest.raises(want[0], match=want[1]):
        for k, entries in pop_deferred(batch).items():
            decode_deferred(batch, k, entries, "cpu", pp.cfg.image_size, "bilinear")


def test_device_decoder_bounds_the_pixels_decoded_at_once(jpegs, pp, tok, monkeypatch):
    """Deferred JPEGs are decoded in groups of at most max_pixels (one larger image alone), so a batch of large
    images cannot take the device's memory at once; the result does not depend on the grouping. An image that
    decodes to another size than its header's is dropped."""
    import torchvision.io

    from mobileclip.distill.images import decode_deferred
    from mobileclip.distill.samples import pop_deferred

    dev = TrainSamples(jpegs[0], pp, tok, 0, AUG, image_dtype="uint8", pretokenize=True, decoder="device")
    batch = collate_train([dev[(i, 0)] for i in range(N_PHOTOS)])  # the six 500x375 plain JPEGs
    real, calls = torchvision.io.decode_jpeg, []

    def counting(data, *a, **k):
        calls.append(len(data) if isinstance(data, list) else 1)
        out = real(data, *a, **k)
        if isinstance(data, list) and len(data[0]) == victim:  # a JPEG that decodes to another size
            out[0] = out[0][:, :-8]
        return out

    monkeypatch.setattr(torchvision.io, "decode_jpeg", counting)
    results = {}
    for budget in (500 * 375 * 6, 500 * 375 * 2, 1):
        b, victim = dict(batch), -1
        for k, entries in pop_deferred(b).items():
            decode_deferred(b, k, entries, "cpu", pp.cfg.image_size, "bilinear", max_pixels=budget)
        results[budget], calls[:] = (b["image"], list(calls)), []
    assert [results[b][1] for b in results] == [[6], [2, 2, 2], [1] * 6]
    assert torch.equal(results[500 * 375 * 6][0], results[1][0]) and torch.equal(results[1][0],
                                                                                results[500 * 375 * 2][0])
    b, victim = dict(batch), int(batch["image_jpeg_geom"][0, 2])
    for k, entries in pop_deferred(b).items():
        decode_deferred(b, k, entries, "cpu", pp.cfg.image_size, "bilinear", max_pixels=1)
    assert b["skipped"] == [int(batch["index"][0])] and len(b["image"]) == N_PHOTOS - 1


def test_device_decoder_options_are_checked(pp, tok):
    from mobileclip.distill.images import StudentImages

    with pytest.raises(ConfigError, match="image_dtype='uint8'"):
        StudentImages(pp, "float32", decoder="device")
    with pytest.raises(ConfigError, match="draft"):
        StudentImages(pp, "uint8", draft=True, decoder="device")
    assert StudentImages(pp, "uint8", decoder="device").resize == "torch"


def test_training_with_device_decoding_equals_decoding_in_the_workers(photos, tmp_path):
    """Two short CPU runs from the same JPEG caption file, one decoding in its worker (torchvision's decoder,
    torch's resize) and one leaving the JPEGs to the training device (and keeping its pre-tokenized captions in
    data.token_cache): on the CPU the batches are bit-equal, so the losses are too."""
    pytest.importorskip("torchvision")
    losses = _losses_of_short_runs(photos, tmp_path, 3, 1, (
        ("workers", ["data.decoder=torchvision", "data.resize=torch"]),
        ("device", ["data.decoder=device", f"data.token_cache={tmp_path / 'tokens'}"])))
    assert losses["device"] == losses["workers"] and len(losses["device"]) == 2
    assert len(list((tmp_path / "tokens").glob("tokens-*/tokens.npy"))) == 1  # data.token_cache stored the table


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; none on this machine")
def test_device_decoder_on_cuda_is_close_to_the_cpu(jpegs, pp, tok):
    """nvJPEG (decode_jpeg on CUDA) and float resampling against libjpeg-turbo and torch's uint8 resampling on the
    CPU, batch for batch. The decoders' IDCT and chroma upsampling differ, so pixels may differ by a few levels;
    the bounds are a first guess, to be checked on the first GPU run."""
    from mobileclip.distill.images import decode_deferred
    from mobileclip.distill.samples import pop_deferred

    source = jpegs[0]
    dev = TrainSamples(source, pp, tok, 0, AUG, image_dtype="uint8", pretokenize=True, decoder="device")
    batch = collate_train([dev[(i, e)] for e in range(3) for i in range(len(source))])
    out = {}
    for device in ("cpu", "cuda"):
        b = dict(batch)
        for k, entries in pop_deferred(b).items():
            decode_deferred(b, k, entries, device, pp.cfg.image_size, "bilinear")
        out[device] = b["image"].cpu().int()
    d = (out["cpu"] - out["cuda"]).abs().float()
    assert d.mean().item() < 2.0 and (d > 8).float().mean().item() < 0.01, (d.mean().item(), d.max().item())


def test_default_pipeline_is_the_fastest_exact_path(photos, tmp_path):
    """data.* defaults to its fastest exact levers (uint8 batches, pre-tokenized captions, simplejpeg): a short run
    with them gives the same losses as the old path (float32 batches, captions tokenized per sample, Pillow)."""
    from mobileclip.distill.config import DataConfig

    d = DataConfig()
    assert (d.image_dtype, d.pretokenize, d.decoder, d.resize, d.draft) == ("uint8", True, "simplejpeg", "pil", False)
    losses = _losses_of_short_runs(photos, tmp_path, 5, 0, (
        ("default", []), ("old", ["data.image_dtype=float32", "data.pretokenize=false", "data.decoder=pil"])))
    assert losses["default"] == losses["old"] and len(losses["old"]) == 2


def _losses_of_short_runs(photos, tmp_path, seed: int, workers: int, variants) -> dict:
    """``{name: [loss per step]}`` of two-step CPU runs of mobileclip-tiny on one caption file of 8 photo JPEGs,
    one run per ``(name, extra config options)`` in ``variants``; each must run both steps and skip no image."""
    import json

    from mobileclip.benchmarks.data_throughput import make_jpeg
    from mobileclip.distill import load_config, train

    rng = np.random.default_rng(seed)
    rows = ["image,caption"]
    for i in range(8):
        (tmp_path / f"{i}.jpg").write_bytes(make_jpeg(photos[i % len(photos)], rng, size=(160, 120)))
        rows.append(f"{i}.jpg,photo number {i}")
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    base = ["student=mobileclip-tiny", "batch_size=4", "steps=2", "log_every=1", "progress=false", "eval.every=0",
            "data.source=captions", f"data.path={tmp_path / 'pairs.csv'}", f"data.workers={workers}",
            "optim.warmup_steps=1"]
    losses = {}
    for name, opts in variants:
        summary = train(load_config(None, base + list(opts) + [f"out={tmp_path / name}"]))
        assert summary["steps"] == 2 and summary["skipped_images"] == 0
        losses[name] = [json.loads(ln)["loss"] for ln in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    return losses
