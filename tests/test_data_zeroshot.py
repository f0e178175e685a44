"""Synthetic data, datasets, zero-shot and retrieval with answers known by construction."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import mobileclip
from mobileclip.data import (
    HELDOUT_COMBOS, CaptionDataset, ImageFolderDataset, SyntheticDataset, SyntheticGenerator, heldout_classnames,
)
from mobileclip.zeroshot import TEMPLATES, build_classifier, evaluate_retrieval, evaluate_zeroshot, recall_at_k, \
    topk_correct


# ------------------------------------------------------------------ synthetic generator

def test_synthetic_is_deterministic_and_seeded():
    a, b = SyntheticGenerator("train", 64, seed=7), SyntheticGenerator("train", 64, seed=7)
    for i in (0, 5, 999):
        assert np.array_equal(a[i].image, b[i].image) and a[i].captions == b[i].captions
    c = SyntheticGenerator("train", 64, seed=8)
    assert not np.array_equal(a[0].image, c[0].image)
    assert not np.array_equal(a[0].image, SyntheticGenerator("val", 64, seed=7)[0].image)
    s = a[3]
    assert s.image.shape == (64, 64, 3) and s.image.dtype == np.uint8
    assert SyntheticGenerator("train", 128, seed=7)[3].image.shape == (128, 128, 3)


def test_heldout_combos_never_in_train_or_val():
    held = set(HELDOUT_COMBOS)
    for split in ("train", "val"):
        gen = SyntheticGenerator(split, 32, seed=0, two_object_prob=0.5)
        for i in range(1500):
            s = gen[i]
            for o in s.objects:
                assert (o["color"], o["shape"]) not in held
    novel = SyntheticGenerator("novel", 32, seed=0)
    names = {novel[i].classname for i in range(300)}
    assert names == set(heldout_classnames())
    # Every colour and every shape is still seen in training.
    train = SyntheticGenerator("train", 32, seed=0, two_object_prob=0.0)
    seen = {(train[i].objects[0]["color"], train[i].objects[0]["shape"]) for i in range(2000)}
    assert {c for c, _ in seen} == {c for c, _ in HELDOUT_COMBOS}
    assert {s for _, s in seen} == {s for _, s in HELDOUT_COMBOS}


def test_captions_describe_the_image():
    gen = SyntheticGenerator("train", 64, seed=1, two_object_prob=0.5)
    n_two = 0
    for i in range(200):
        s = gen[i]
        assert len(set(s.captions)) == len(s.captions) == 3  # varied wording
        for cap in s.captions:
            assert s.classname in cap
        if len(s.objects) == 2:
            n_two += 1
            o = s.objects[1]
            assert any(f"{o['color']} {o['shape']}" in c for c in s.captions)
        # The main object's colour is really drawn at its centre.
        o = s.objects[0]
        px = s.image[int(o["cy"] * 64), int(o["cx"] * 64)].astype(int)
        if o["shape"] not in ("ring", "cross", "star"):  # centre pixel is inside for solid shapes
            ref = np.array(mobileclip.data.synthetic.COLORS[o["color"]])
            assert np.abs(px - ref * 0.92).max() < 30
    assert 60 < n_two < 140


def test_synthetic_dataset_with_preprocess():
    _, pp, _ = mobileclip.create_model("mobileclip-tiny")
    ds = SyntheticDataset("val", size=10, image_size=64, transform=pp)
    x, cap, label = ds[4]
    assert x.shape == (3, 64, 64) and isinstance(cap, str) and ds.classnames[label] in cap
    with pytest.raises(IndexError):
        ds[10]


# ------------------------------------------------------------------ datasets

def test_image_folder_errors(tmp_path):
    with pytest.raises(mobileclip.DatasetError, match="does not exist"):
        ImageFolderDataset(tmp_path / "nope")
    with pytest.raises(mobileclip.DatasetError, match="no class sub-folders"):
        ImageFolderDataset(tmp_path)
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "notes.txt").write_text("hi")
    with pytest.raises(mobileclip.DatasetError, match="no images"):
        ImageFolderDataset(tmp_path)


def test_caption_file_formats(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "c.csv").write_text("image,caption\na.png,a black square\na.png,darkness\n")
    (tmp_path / "c.tsv").write_text("filepath\ttext\na.png\ta black square\n")
    (tmp_path / "c.jsonl").write_text(json.dumps({"image": "a.png", "caption": "a black square"}) + "\n")
    for f, n in (("c.csv", 2), ("c.tsv", 1), ("c.jsonl", 1)):
        ds = CaptionDataset(tmp_path / f)
        assert len(ds) == n and ds[0][1] == "a black square" and ds[0][0] is not None
    (tmp_path / "bad.csv").write_text("picture,words\na.png,x\n")
    with pytest.raises(mobileclip.DatasetError, match="need an image column"):
        CaptionDataset(tmp_path / "bad.csv")
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(mobileclip.DatasetError, match="line 1 is not valid JSON"):
        CaptionDataset(tmp_path / "bad.jsonl")


# ------------------------------------------------------------------ metrics on known inputs

def test_topk_and_recall_arithmetic():
    logits = torch.tensor([[0.9, 0.1, 0.0], [0.5, 0.1, 0.4], [0.1, 0.8, 0.7]])
    targets = torch.tensor([0, 1, 2])
    assert topk_correct(logits, targets, (1, 2, 5)) == {1: 1, 2: 2, 5: 3}
    sim = torch.tensor([[0.9, 0.1, 0.0, 0.2], [0.1, 0.2, 0.9, 0.8]])
    pos = torch.tensor([[False, True, False, False], [False, False, False, True]])
    r = recall_at_k(sim, pos, (1, 2, 3))
    assert r == {1: 0.0, 2: 0.5, 3: 1.0}


# ------------------------------------------------------------------ known-answer zero-shot

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


class ColourCLIP(torch.nn.Module):
    """Image → mean RGB; text → one-hot of the colour word it contains. Answers are known."""

    def __init__(self, tokenizer):
        super().__init__()
        self.ids = [tokenizer._tok.encode(c)[0] for c in COLOURS]
        self.logit_scale = torch.nn.Parameter(torch.tensor(4.0))

    def encode_image(self, x):
        return x.mean(dim=(2, 3))

    def encode_text(self, tokens):
        return torch.stack([(tokens == i).any(dim=1).float() for i in self.ids], dim=1) + 1e-3


@pytest.fixture()
def colour_teacher():
    tok = mobileclip.Tokenizer()
    from mobileclip.config import PreprocessConfig

    pp = mobileclip.ImagePreprocess(PreprocessConfig(16))
    return mobileclip.wrap_teacher(ColourCLIP(tok), pp, tok, name="colours")


def _colour_folder(root, per_class=4, corrupt=0):
    rng = np.random.default_rng(0)
    for name, rgb in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            noise = rng.integers(-20, 20, (20, 24, 3))
            arr = np.clip(np.array(rgb) + noise, 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / name / f"{i}.png")
    for i in range(corrupt):
        (root / "red" / f"broken{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    return root


def test_zeroshot_known_answer(tmp_path, colour_teacher):
    root = _colour_folder(tmp_path / "imgs", corrupt=2)
    ds = ImageFolderDataset(root, colour_teacher.preprocess)
    # The folder order (blue, green, red) differs from the model's colour order: labels must follow names.
    assert ds.classnames == ["blue", "green", "red"]
    res = evaluate_zeroshot(colour_teacher, colour_teacher.tokenizer, ds, batch_size=5, progress=False)
    assert res["top1"] == 1.0 and res["n"] == 12 and res["skipped"] == 2
    assert all(f.endswith(".jpg") for f in res["skipped_files"])
    # A classifier with wrong class names must do badly: the metric can fail.
    bad = evaluate_zeroshot(colour_teacher, colour_teacher.tokenizer, ds, classnames=["red", "blue", "green"],
                            progress=False)
    assert bad["top1"] == 0.0 and bad["top5"] == 1.0


def test_classifier_is_mean_of_normalized_prompts(colour_teacher):
    tok = colour_teacher.tokenizer
    w = build_classifier(colour_teacher, tok, ["red", "blue"], templates=["a {}.", "a photo of a {}."])
    e = colour_teacher.encode_text(tok(["a red.", "a photo of a red."]))
    assert torch.allclose(w[0], F.normalize(e.mean(0), dim=-1))
    assert torch.allclose(w.norm(dim=-1), torch.ones(2))
    with pytest.raises(ValueError, match="'{}'"):
        build_classifier(colour_teacher, tok, ["red"], templates=["no slot"])
    with pytest.raises(ValueError, match="at least one class"):
        build_classifier(colour_teacher, tok, [], templates=TEMPLATES)


def test_retrieval_known_answer(tmp_path, colour_teacher):
    root = _colour_folder(tmp_path / "imgs", per_class=1)
    rows = ["image,caption"]
    for name in COLOURS:
        rows += [f"{name}/0.png,a {name} picture", f"{name}/0.png,something {name}"]
    rows.append("missing.png,a red thing that is not there")
    (root / "caps.csv").write_text("\n".join(rows) + "\n")
    ds = CaptionDataset(root / "caps.csv", transform=colour_teacher.preprocess)
    res = evaluate_retrieval(colour_teacher, colour_teacher.tokenizer, ds, batch_size=2, progress=False)
    assert res["images"] == 3 and res["texts"] == 6 and res["skipped"] == 1
    assert res["image_to_text_R@1"] == 1.0 and res["text_to_image_R@1"] == 1.0


def test_retrieval_counts_duplicate_captions_as_hits(tmp_path, colour_teacher):
    """Two images with the same caption: either is correct for it (as caption benchmarks score it)."""
    root = _colour_folder(tmp_path / "imgs", per_class=2)
    rows = ["image,caption", "red/0.png,a red picture", "red/1.png,A  red Picture", "blue/0.png,a blue picture",
            "green/0.png,a green picture"]
    (root / "caps.csv").write_text("\n".join(rows) + "\n")
    ds = CaptionDataset(root / "caps.csv", transform=colour_teacher.preprocess)
    res = evaluate_retrieval(colour_teacher, colour_teacher.tokenizer, ds, batch_size=2, progress=False)
    assert res["duplicate_captions"] == 2 and res["texts"] == 4
    # The two red captions embed identically, so at most one of them could rank "its own" image first
    # if duplicates were not counted (3/4); counted, both are hits.
    assert res["text_to_image_R@1"] == 1.0 and res["image_to_text_R@1"] == 1.0


def test_balanced_top1_is_the_mean_over_classes_with_images():
    from mobileclip.distill.evaluate import balanced_top1

    # always answering the big class: 80 % top-1, but 1 of 2 classes right, and a class with no image ignored
    z = {"top1": 0.8, "per_class_top1": {"big": 1.0, "small": 0.0, "absent": None}}
    assert balanced_top1(z) == 0.5
    assert balanced_top1({"per_class_top1": {}}) == 0.0
