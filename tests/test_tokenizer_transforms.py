"""Tokenizer ids equal transformers' CLIP BPE; preprocessing matches torchvision/open_clip's pipeline."""
import numpy as np
import pytest
import torch
from PIL import Image

import mobileclip
from mobileclip.config import OPENAI_MEAN, OPENAI_STD, PreprocessConfig
from mobileclip.transforms import ImagePreprocess

CORPUS = [
    "a photo of a cat",
    "A PHOTO OF A CAT!!!",
    "   lots   of\twhitespace \n here ",
    "naïve café — déjà vu, Zürich",
    "emoji 🐶🚗 and unicode ✓ ☃",
    "don't stop: it's 3.14 o'clock; (really) [sic] {x}",
    "",
    "word " * 100,
]


@pytest.fixture(scope="module")
def hf_clip_tokenizer(tmp_path_factory):
    """transformers' own CLIPTokenizer (its Python BPE, not open_clip's, which mobileclip.Tokenizer wraps) over
    the same vocabulary, written in its file format: the 256 byte symbols, the same with the end-of-word mark,
    one token per merge, then the start and end tokens (CLIP's 49408)."""
    import gzip
    import json

    from open_clip.tokenizer import default_bpe
    from transformers import CLIPTokenizer
    from transformers.models.clip.tokenization_clip import bytes_to_unicode

    with gzip.open(default_bpe(), "rt", encoding="utf-8") as f:
        merges = f.read().split("\n")[1:49152 - 256 - 2 + 1]
    symbols = list(bytes_to_unicode().values())
    vocab = (symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
             + ["<|startoftext|>", "<|endoftext|>"])
    assert len(vocab) == 49408
    d = tmp_path_factory.mktemp("hf_clip")
    (d / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (d / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer(str(d / "vocab.json"), str(d / "merges.txt"))


@pytest.mark.parametrize("context", [77, 16])
def test_tokenizer_ids_equal_an_independent_clip_bpe(context, hf_clip_tokenizer):
    ours = mobileclip.Tokenizer(mobileclip.config.TokenizerConfig("clip-bpe", context))
    ids = ours(CORPUS)
    assert ids.shape == (len(CORPUS), context) and ids.dtype == torch.long
    for row, text in zip(ids.tolist(), CORPUS):
        ref = hf_clip_tokenizer(text)["input_ids"]   # start, ids, end: untruncated, unpadded
        if len(ref) > context:                       # CLIP's rule: cut, and keep the end token last
            ref = ref[:context - 1] + ref[-1:]
        assert row == ref + [0] * (context - len(ref)), text
    # the ids of the canonical prompt: start 49406, "a" 320, "photo" 1125, "of" 539, "cat" 2368, end 49407
    assert ids[0, :8].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407, 0]
    # Truncated text keeps its end token at the last position.
    assert ids[-1, -1].item() == ours.eot_token_id
    assert (ids.argmax(dim=-1) == (ids == ours.eot_token_id).int().argmax(dim=-1)).all()


def test_model_tokenizer_uses_config_context():
    for name in ("mobileclip-tiny", "mobileclip-s0"):
        _, _, tok = mobileclip.create_model(name)
        assert tok("x").shape == (1, mobileclip.get_model_config(name).text.context_length)
    assert mobileclip.Tokenizer().vocab_path.is_file()


def _images():
    rng = np.random.default_rng(0)
    yield Image.fromarray(rng.integers(0, 255, (300, 451, 3), dtype=np.uint8), "RGB")
    yield Image.fromarray(rng.integers(0, 255, (513, 200, 3), dtype=np.uint8), "RGB")
    yield Image.fromarray(rng.integers(0, 255, (97, 97), dtype=np.uint8), "L")
    yield Image.fromarray(rng.integers(0, 255, (120, 80, 4), dtype=np.uint8), "RGBA").convert("RGB")


@pytest.mark.parametrize("interp,mean,std", [("bicubic", OPENAI_MEAN, OPENAI_STD), ("bilinear", (0, 0, 0), (1, 1, 1))])
def test_preprocess_matches_open_clip(interp, mean, std):
    from open_clip.transform import image_transform

    size = 64
    ours = ImagePreprocess(PreprocessConfig(size, tuple(mean), tuple(std), interp, "shortest"))
    ref = image_transform(size, is_train=False, mean=mean, std=std, interpolation=interp, resize_mode="shortest")
    for im in _images():
        a, b = ours(im), ref(im)
        assert a.shape == b.shape == (3, size, size)
        assert (a - b).abs().max() < 1e-5


def test_mobileclip_v1_normalization_is_identity():
    _, pp, _ = mobileclip.create_model("mobileclip-tiny")
    x = pp(Image.new("RGB", (64, 64), (255, 0, 128)))
    assert x[0].min() == pytest.approx(1.0) and x[1].max() == pytest.approx(0.0)
    assert x[2].mean().item() == pytest.approx(128 / 255, abs=1e-6)


def test_preprocess_modes_and_exif(tmp_path):
    pp = ImagePreprocess(PreprocessConfig(32))
    # Transparent pixels composite on white; palette and grayscale become RGB.
    rgba = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    assert torch.allclose(pp(rgba), torch.ones(3, 32, 32))
    assert pp(Image.new("P", (40, 50))).shape == (3, 32, 32)
    # EXIF orientation 6 (rotate 90° clockwise for display) is applied when loading from a file.
    im = Image.new("RGB", (60, 30), (0, 0, 0))
    im.paste((255, 255, 255), (0, 0, 30, 30))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6
    p = tmp_path / "rot.jpg"
    im.save(p, exif=exif, quality=100)
    loaded = mobileclip.load_image(p)
    assert loaded.size == (30, 60)
    arr = np.asarray(loaded).astype(float)
    assert arr[:25].mean() > 200 and arr[35:].mean() < 50  # white half now on top
