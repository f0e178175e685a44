"""Every registered model: shapes, finiteness, gradients, parameter counts, reparameterization."""
import copy

import pytest
import torch

import mobileclip
from mobileclip.model import CLIP
from mobileclip.reparam import unfolded_branches

from conftest import randomize_batchnorm

MODELS = mobileclip.list_models()
# MobileCLIP2's towers are v1's (MCi0/MCi2, the 12-layer text transformer, vit_base_mci_224) or large
# (S3/S4/L-14: 250-450M parameters, minutes on a 2-core CPU): their forward/backward and folding run in
# `make test-slow`; their layouts and conversions are checked in test_convert.py.
HEAVY = [pytest.param(n, marks=pytest.mark.slow) if n.startswith("mobileclip2-") else n for n in MODELS]


@pytest.fixture(scope="module", params=HEAVY)
def created(request):
    """Each model built once for the tests below (pytest runs them model by model; the large ones take seconds to
    build); each test changes its own deep copy."""
    return (request.param, *mobileclip.create_model(request.param))


@pytest.fixture
def fresh(created):
    name, model, preprocess, tokenizer = created
    return name, copy.deepcopy(model), preprocess, tokenizer


def _inputs(model, tokenizer, batch=2):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 3, model.image_size, model.image_size, generator=g)
    texts = ["a red circle on the left", "a photo of two blue squares on a striped background, seen from above"]
    return images, tokenizer(texts[:batch])


def test_registry_has_the_published_students():
    assert {"mobileclip-s0", "mobileclip-s1", "mobileclip-s2", "mobileclip-b", "mobileclip-tiny"} <= set(MODELS)


def test_forward_backward(fresh):
    _, model, _, tokenizer = fresh
    model.train()
    images, tokens = _inputs(model, tokenizer)
    assert tokens.shape == (2, model.context_length)
    out = model(images, tokens)
    d = model.embed_dim
    assert out["image_features"].shape == (2, d) and out["text_features"].shape == (2, d)
    for k in ("image_features", "text_features"):
        assert torch.isfinite(out[k]).all()
        assert torch.allclose(out[k].norm(dim=-1), torch.ones(2), atol=1e-5)
    assert out["logit_scale"].item() == pytest.approx(1 / 0.07, rel=1e-4)
    logits = out["logit_scale"] * out["image_features"] @ out["text_features"].T
    loss = torch.nn.functional.cross_entropy(logits, torch.arange(2))
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert model.logit_scale.grad is not None
    assert grads["text.token_embedding.weight"] is not None
    assert torch.isfinite(model.text.projection.grad).all() and model.text.projection.grad.abs().sum() > 0
    first_image_param = next(p for n, p in model.visual.named_parameters())
    assert first_image_param.grad is not None and torch.isfinite(first_image_param.grad).all()
    # Unnormalized features are what normalize=True normalizes.
    model.eval()
    with torch.no_grad():
        raw = model.encode_text(tokens, normalize=False)
        assert torch.allclose(torch.nn.functional.normalize(raw, dim=-1), model.encode_text(tokens), atol=1e-6)


@pytest.mark.parametrize("name", [n for n in MODELS if mobileclip.zoo.get_entry(n).published_params_m])
def test_parameter_counts_match_published(name):
    image_m, text_m = mobileclip.zoo.get_entry(name).published_params_m
    with torch.device("meta"):
        counts = CLIP(mobileclip.get_model_config(name)).num_params()
    assert counts["image"] / 1e6 == pytest.approx(image_m, rel=0.02)
    assert counts["text"] / 1e6 == pytest.approx(text_m, rel=0.02)


def test_reparameterize_keeps_embeddings(fresh):
    _, model, _, tokenizer = fresh
    randomize_batchnorm(model)
    model.eval()
    images, tokens = _inputs(model, tokenizer)
    with torch.no_grad():
        before = (model.encode_image(images), model.encode_text(tokens))
    fast = mobileclip.reparameterize(model)
    assert fast is not model and not getattr(model, "reparameterized", False), "inplace=False must copy"
    assert unfolded_branches(fast) == []
    if any(hasattr(m, "reparameterize") for m in model.modules()):
        assert unfolded_branches(model), "the original keeps its train-time branches"
        assert sum(p.numel() for p in fast.parameters()) < sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        after = (fast.encode_image(images), fast.encode_text(tokens))
    assert (before[0] - after[0]).abs().max() < 1e-4
    assert (before[1] - after[1]).abs().max() < 1e-4
    again = mobileclip.reparameterize(fast, inplace=True)  # idempotent
    assert again is fast
    with torch.no_grad():
        assert torch.equal(again.encode_image(images), after[0])


def test_mct_text_tower_folds_to_depthwise_convs():
    from mobileclip.text import RepMixerBlock

    model, _, _ = mobileclip.create_model("mobileclip-s0")
    blocks = [m for m in model.text.blocks if isinstance(m, RepMixerBlock)]
    assert len(blocks) == 2 and len(model.text.blocks) == 6  # RepMixer, 4 transformer layers, RepMixer
    fast = mobileclip.reparameterize(model)
    for b in (m for m in fast.text.blocks if isinstance(m, RepMixerBlock)):
        conv = b.token_mixer.reparam_conv
        assert conv.groups == conv.in_channels == 512 and conv.kernel_size == (11,)
        assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in b.modules())


def test_unknown_model_lists_known_names():
    with pytest.raises(mobileclip.UnknownModelError) as e:
        mobileclip.create_model("mobileclip-s9")
    msg = str(e.value)
    assert "mobileclip-s9" in msg and "mobileclip-s0" in msg and "open_clip:" in msg


def test_create_model_returns_preprocess_and_tokenizer_of_the_config():
    model, preprocess, tokenizer = mobileclip.create_model("mobileclip-s0")
    assert preprocess.cfg.image_size == 256 and preprocess.cfg.mean == (0.0, 0.0, 0.0)
    assert preprocess.cfg.std == (1.0, 1.0, 1.0)
    assert tokenizer.context_length == 77
    _, pp_tiny, tok_tiny = mobileclip.create_model("mobileclip-tiny")
    assert pp_tiny.cfg.image_size == 64 and tok_tiny.context_length == 16
    _, pp_vit, _ = mobileclip.create_model("clip-vit-tiny")
    assert pp_vit.cfg.mean != (0.0, 0.0, 0.0)  # OpenAI normalization


def test_config_rejects_unknown_keys_and_bad_values():
    cfg = mobileclip.get_model_config("mobileclip-s0").to_dict()
    cfg["text"]["wdith"] = 3
    with pytest.raises(mobileclip.ConfigError, match=r"text\.wdith.*valid keys"):
        mobileclip.ModelConfig.from_dict(cfg)
    cfg = mobileclip.get_model_config("mobileclip-s0").to_dict()
    cfg["text"]["variant"] = "lstm"
    with pytest.raises(mobileclip.ConfigError, match=r"'lstm' is not one of \['base', 'mct'\]"):
        mobileclip.ModelConfig.from_dict(cfg)
    cfg = mobileclip.get_model_config("mobileclip-s0").to_dict()
    cfg["text"]["heads"] = 7
    with pytest.raises(mobileclip.ConfigError, match="not divisible"):
        mobileclip.ModelConfig.from_dict(cfg)


def test_import_is_lazy_and_light():
    import subprocess
    import sys

    code = "import sys, mobileclip; assert 'torch' not in sys.modules, 'torch imported'; print(mobileclip.__version__)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_registry_name_wins_over_a_same_named_folder_without_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mobileclip-tiny").mkdir()  # e.g. an output folder named after the model
    model, _, _ = mobileclip.create_model("mobileclip-tiny")
    assert model.cfg.name == "mobileclip-tiny"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; none on this machine")
@pytest.mark.parametrize("name", MODELS)
def test_cuda_bf16_autocast_matches_fp32(name):
    model, _, tokenizer = mobileclip.create_model(name, device="cuda")
    images, tokens = _inputs(model, tokenizer)
    images, tokens = images.cuda(), tokens.cuda()
    with torch.no_grad():
        ref = model(images, tokens)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            low = model(images, tokens)
    for k in ("image_features", "text_features"):
        cos = torch.nn.functional.cosine_similarity(ref[k].float(), low[k].float(), dim=-1)
        assert torch.isfinite(low[k]).all() and cos.min() > 0.99
