"""Teachers behind the student interface: open_clip, Hugging Face, own checkpoints, any module."""
import math

import numpy as np
import pytest
import torch
from PIL import Image

import mobileclip
from mobileclip.teachers import Teacher


@pytest.fixture(scope="module")
def vit_b32():
    return mobileclip.load_teacher("open_clip:ViT-B-32")


def _check_frozen_eval(teacher):
    assert isinstance(teacher, Teacher)
    assert not any(p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not teacher.training and not any(m.training for m in teacher.modules())


def test_open_clip_teacher(vit_b32):
    t = vit_b32
    _check_frozen_eval(t)
    assert t.embed_dim == 512 and t.image_size == 224 and t.context_length == 77
    # The preprocessing of OpenAI's CLIP, written here with torchvision and CLIP's published mean/std:
    # bicubic resize of the short side to 224, centre crop, [0, 1], normalize.
    from torchvision import transforms as T

    ref = T.Compose([T.Resize(224, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224), T.ToTensor(),
                     T.Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))])
    rng = np.random.default_rng(0)
    for size in ((300, 200), (150, 410)):   # upsampled and downsampled sides, wide and tall
        photo = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")
        assert (t.preprocess(photo) - ref(photo)).abs().max() < 1e-5, size
    img = t.preprocess(Image.new("RGB", (300, 200), (200, 30, 30)))
    assert img.shape == (3, 224, 224)
    # CLIP's token ids, written out: start 49406, "a" 320, "photo" 1125, "of" 539, "dog" 1929, "cat" 2368, end
    # 49407, zero padding to 77
    tokens = t.tokenizer(["a photo of a dog", "a cat"])
    want = torch.zeros(2, 77, dtype=torch.long)
    want[0, :7] = torch.tensor([49406, 320, 1125, 539, 320, 1929, 49407])
    want[1, :4] = torch.tensor([49406, 320, 2368, 49407])
    assert torch.equal(tokens, want)
    with torch.no_grad():
        out = t(img[None].repeat(2, 1, 1, 1), tokens)
        ref_img = torch.nn.functional.normalize(t.model.encode_image(img[None]), dim=-1)
    assert out["image_features"].shape == (2, 512) and out["text_features"].shape == (2, 512)
    assert torch.allclose(out["image_features"][0], ref_img[0], atol=1e-6)
    assert out["logit_scale"].item() == pytest.approx(t.model.logit_scale.exp().item(), rel=1e-6)
    # The teacher's embeddings carry no autograd graph.
    assert not out["image_features"].requires_grad


def test_open_clip_teacher_from_local_file(tmp_path, vit_b32):
    from safetensors.torch import save_file

    state = {k: v.clone() + 0.01 for k, v in vit_b32.model.state_dict().items()}
    f = tmp_path / "vitb32.safetensors"
    save_file(state, str(f))
    t = mobileclip.load_teacher(f"open_clip:ViT-B-32:{f}")
    assert torch.equal(t.model.visual.conv1.weight, state["visual.conv1.weight"])
    # The same through create_model(name, pretrained=file).
    m, _, _ = mobileclip.create_model("open_clip:ViT-B-32", pretrained=str(f))
    assert torch.equal(m.model.visual.conv1.weight, state["visual.conv1.weight"])


def test_open_clip_teacher_errors(tmp_path):
    with pytest.raises(mobileclip.TeacherError, match="did you mean"):
        mobileclip.load_teacher("open_clip:ViT-B-33")
    with pytest.raises(mobileclip.TeacherError, match="no pretrained tag 'nope'.*openai"):
        mobileclip.load_teacher("open_clip:ViT-B-32:nope")
    with pytest.raises(mobileclip.TeacherError, match="does not exist"):
        mobileclip.load_teacher(f"open_clip:ViT-B-32:{tmp_path}/missing.pt")


@pytest.fixture(scope="module")
def hf_dir(hf_clip_dir):
    return hf_clip_dir


def test_hf_teacher(hf_dir):
    from transformers import CLIPModel

    t = mobileclip.load_teacher(f"hf:{hf_dir}")
    _check_frozen_eval(t)
    assert t.embed_dim == 48 and t.image_size == 64 and t.context_length == 32
    img = t.preprocess(Image.new("RGB", (80, 64), (10, 120, 200)))
    assert img.shape == (3, 64, 64)
    tokens = t.tokenizer(["a small blue square", "a red circle"])
    assert tokens.shape == (2, 32)
    with torch.no_grad():
        feats = t.encode_image(img[None])
        text = t.encode_text(tokens)
        ref = CLIPModel.from_pretrained(hf_dir).eval()
        ref_img = ref.get_image_features(pixel_values=img[None])
        ref_txt = ref.get_text_features(input_ids=tokens)
    assert torch.allclose(feats, torch.nn.functional.normalize(ref_img, dim=-1), atol=1e-5)
    assert torch.allclose(text, torch.nn.functional.normalize(ref_txt, dim=-1), atol=1e-5)
    assert t.logit_scale.item() == pytest.approx(ref.logit_scale.item())


def test_hf_teacher_missing_dir(tmp_path):
    with pytest.raises(mobileclip.TeacherError, match="could not load"):
        mobileclip.load_teacher(f"hf:{tmp_path}")


def test_own_checkpoint_as_teacher(tmp_path):
    model, _, _ = mobileclip.create_model("mobileclip-tiny")
    mobileclip.save_checkpoint(model, tmp_path / "ck")
    t = mobileclip.load_teacher(str(tmp_path / "ck"))
    _check_frozen_eval(t)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(t.encode_image(x), model.encode_image(x), atol=1e-6)
    assert t.tokenizer.context_length == 16


class _BYO(torch.nn.Module):
    """A user's own teacher: encode_* without a `normalize` argument, no logit_scale."""

    def __init__(self):
        super().__init__()
        self.img = torch.nn.Linear(3, 8)
        self.emb = torch.nn.EmbeddingBag(49408, 8)

    def encode_image(self, x):
        return self.img(x.mean(dim=(2, 3)))

    def encode_text(self, tokens):
        return self.emb(tokens)


def test_bring_your_own_teacher():
    tok = mobileclip.Tokenizer()
    t = mobileclip.load_teacher(_BYO(), preprocess=lambda im: torch.zeros(3, 8, 8), tokenizer=tok)
    _check_frozen_eval(t)
    out = t(torch.rand(2, 3, 8, 8), tok(["a", "b"]))
    assert out["image_features"].shape == (2, 8)
    assert torch.allclose(out["image_features"].norm(dim=-1), torch.ones(2))
    assert out["logit_scale"].item() == pytest.approx(100.0)
    with pytest.raises(mobileclip.TeacherError, match="preprocess and tokenizer"):
        mobileclip.load_teacher(_BYO())
    with pytest.raises(mobileclip.TeacherError, match="no encode_image"):
        mobileclip.wrap_teacher(torch.nn.Linear(2, 2), lambda x: x, tok)


# ------------------------------------------------------------------ the teacher's scale: one spelling, checked

def test_a_teacher_scale_is_the_multiplier_and_out_of_range_values_name_both_readings():
    tok = mobileclip.Tokenizer()
    pp = lambda im: torch.zeros(3, 8, 8)   # noqa: E731
    assert mobileclip.wrap_teacher(_BYO(), pp, tok, scale=100.0).scale == 100.0
    assert mobileclip.wrap_teacher(_BYO(), pp, tok).scale_from.startswith("default")
    # the trap of the 2026-11 benchmark: exp(scale) where the multiplier goes (here exp(exp(2.708)))
    with pytest.raises(mobileclip.TeacherError, match=r"outside \[1, 100\].*did you pass exp\(scale\)\?"):
        mobileclip.wrap_teacher(_BYO(), pp, tok, scale=3.3e6)
    with pytest.raises(mobileclip.TeacherError, match=r"if 0\.5 is the log of the scale, pass exp\(0\.5\) = 1\.649"):
        mobileclip.wrap_teacher(_BYO(), pp, tok, scale=0.5)
    for bad in (float("nan"), float("inf"), "100", True):
        with pytest.raises(mobileclip.TeacherError):
            mobileclip.wrap_teacher(_BYO(), pp, tok, scale=bad)
    with pytest.warns(UserWarning, match=r"if 4\.6 is the log of the scale, pass exp\(4\.6\) = 99\.48"):
        assert mobileclip.wrap_teacher(_BYO(), pp, tok, scale=4.6).scale == 4.6
    # the old, ambiguous keyword is refused, whatever its value
    with pytest.raises(mobileclip.TeacherError, match=r"logit_scale=4\.6\) is no longer accepted.*scale=100"):
        mobileclip.wrap_teacher(_BYO(), pp, tok, logit_scale=4.6)
    with pytest.raises(mobileclip.TeacherError, match="no longer accepted"):
        Teacher(_BYO(), pp, tok, "t", logit_scale=4.6)
    t = mobileclip.wrap_teacher(_BYO(), pp, tok)
    t.set_scale(50)
    assert t.scale == 50 and t.logit_scale.item() == pytest.approx(math.log(50))
    with pytest.raises(mobileclip.TeacherError, match="did you pass exp"):
        t.set_scale(1e9)


def test_a_models_own_log_scale_is_read_and_checked():
    tok = mobileclip.Tokenizer()
    pp = lambda im: torch.zeros(3, 8, 8)   # noqa: E731
    own = _BYO()
    own.logit_scale = torch.nn.Parameter(torch.tensor(math.log(100.0)))
    t = mobileclip.wrap_teacher(own, pp, tok)
    assert t.scale == pytest.approx(100.0) and t.scale_from == "the model's own exp(logit_scale)"
    own.logit_scale = torch.nn.Parameter(torch.tensor(14.2857))   # the multiplier stored where the log belongs
    with pytest.raises(mobileclip.TeacherError, match=r"the model's logit_scale 14\.2857 is the log.*exp\(14\.2857\)"):
        mobileclip.wrap_teacher(own, pp, tok)
    own.logit_scale = torch.nn.Parameter(torch.tensor(4.7637))   # SigLIP's trained exp(4.76) = 117: capped, and said
    own.logit_bias = torch.nn.Parameter(torch.tensor(-12.9))
    t = mobileclip.wrap_teacher(own, pp, tok)
    assert t.scale == 100.0 and "sigmoid-trained), capped at 100" in t.scale_from


def test_a_student_config_with_an_exponentiated_init_scale_is_refused():
    from mobileclip.model import CLIP
    from mobileclip.zoo import get_model_config

    cfg = get_model_config("mobileclip-tiny")
    cfg.init_logit_scale = 1 / 0.07   # the multiplier where its log (2.66) belongs
    with pytest.raises(mobileclip.errors.ConfigError, match=r"init_logit_scale 14\.2857 is the log.*outside"):
        CLIP(cfg)
    cfg.init_logit_scale, cfg.init_logit_bias = 2.66, -1e6
    with pytest.raises(mobileclip.errors.ConfigError, match=r"init_logit_bias -1000000.0 is outside \[-100, 100\]"):
        CLIP(cfg)
