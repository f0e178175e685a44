"""Named recipes (distill/recipes.py), CLIP-KD's units, and the teacher temperature as a setting."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

import mobileclip
from mobileclip.distill import build_cache, load_config, train
from mobileclip.distill.sources import SyntheticPairs
from mobileclip.distill.losses import FeatureLoss, StudentOut, TeacherOut, clip_kd_feature_weight
from mobileclip.distill.recipes import RECIPES
from mobileclip.errors import ConfigError


def _weights(cfg):
    lc = cfg.losses
    return {k: getattr(lc, k) for k in ("clip", "siglip", "kd", "feature", "icl", "feature_alpha", "kd_teacher_scale",
                                        "unpaired_feature", "unpaired_intra_kd", "unpaired_cross_kd")}


@pytest.mark.parametrize("name, want", [
    # CLIP-KD (winycg/CLIP-KD script/ViT_B_16_KD/ViT_T_16_kd.sh): task 1, ckd 1, icl 1, fd 2000
    ("clip-kd", {"clip": 1.0, "kd": 1.0, "icl": 1.0, "feature_alpha": 2000.0, "kd_teacher_scale": 0.0}),
    # MobileCLIP (apple/ml-mobileclip run_datacompdr1b.sh): --distill-loss-weights 0.25 0.75 --distill-logit-scale 100
    ("mobileclip", {"clip": 0.25, "kd": 0.75, "kd_teacher_scale": 100.0}),
    # TinyCLIP (microsoft/Cream TinyCLIP): soft loss only (distillation-alpha 1), --logit-scale 50
    ("tinyclip", {"clip": 0.0, "kd": 1.0, "kd_teacher_scale": 50.0}),
    # ours, chosen on the real-teacher benchmark's val split
    ("kd-unpaired", {"clip": 0.25, "kd": 1.0, "feature": 1.0, "unpaired_feature": 1.0, "unpaired_intra_kd": 0.5,
                     "unpaired_cross_kd": 1.0}),
])
def test_recipes_pin_their_weights(name, want, small_cache):
    cache, _ = small_cache   # a real cache: the unpaired losses need image/text caches, checked at load
    extra = [f"data.image_cache={cache}", f"data.text_cache={cache}"] if name == "kd-unpaired" else []
    cfg = load_config(None, [f"recipe={name}", f"data.cache={cache}", *extra])
    got = _weights(cfg)
    for k, v in want.items():
        assert got[k] == v, (k, got)
    for k in set(got) - set(want):   # every other term off
        assert got[k] == 0.0, (k, got)
    assert cfg.recipe == name
    assert "#" not in json.dumps(RECIPES[name])   # the sources live in comments beside each entry


def test_overrides_apply_on_top_of_a_recipe(tmp_path):
    cfg = load_config(None, ["recipe=clip-kd", "losses.icl=0", "losses.kd_teacher_scale=100", "teachers=[a]"])
    assert (cfg.losses.clip, cfg.losses.kd, cfg.losses.icl, cfg.losses.feature_alpha, cfg.losses.kd_teacher_scale) \
        == (1.0, 1.0, 0.0, 2000.0, 100.0)
    # the same loss in the other unit replaces the recipe's
    cfg = load_config(None, ["recipe=clip-kd", "losses.feature=4", "teachers=[a]"])
    assert cfg.losses.feature == 4 and cfg.losses.feature_alpha == 0
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("recipe: mobileclip\nlosses:\n  clip: 0.0\n  kd: 1.0\nteachers: [a]\n")
    cfg = load_config(str(yaml_file), ["losses.kd=0.5"])   # the S variants' 0 / 1, then an override
    assert (cfg.losses.clip, cfg.losses.kd, cfg.losses.kd_teacher_scale) == (0.0, 0.5, 100.0)
    with pytest.raises(ConfigError, match="unknown recipe 'clipkd'; known recipes: clip-kd, kd-unpaired, mobileclip, "
                                          "tinyclip"):
        load_config(None, ["recipe=clipkd"])


def test_clip_kd_feature_weight_matches_f_mse_loss():
    """CLIP-KD: alpha * (F.mse_loss(img_s, img_t) + F.mse_loss(txt_s, txt_t)), each a mean over N x D."""
    g = torch.Generator().manual_seed(0)
    n, d = 16, 256
    s = StudentOut(*(F.normalize(torch.randn(n, d, generator=g), dim=-1) for _ in range(2)), torch.tensor(14.0))
    t = TeacherOut([F.normalize(torch.randn(n, d, generator=g), dim=-1)],
                   [F.normalize(torch.randn(n, d, generator=g), dim=-1)], torch.tensor([15.0]))
    alpha = 2000.0
    clip_kd = alpha * (F.mse_loss(s.image_features, t.image_features[0]) + F.mse_loss(s.text_features, t.text_features[0]))
    ours = clip_kd_feature_weight(alpha, d) * FeatureLoss(d, [d])(s, t)["feature_loss"]
    assert float(ours) == pytest.approx(float(clip_kd), rel=1e-5)
    assert clip_kd_feature_weight(2000, 256) == pytest.approx(15.625)
    # feature_alpha inside the loss: the same, per teacher of an ensemble with different sizes
    t2 = TeacherOut([t.image_features[0], F.normalize(torch.randn(n, 128, generator=g), dim=-1)],
                    [t.text_features[0], F.normalize(torch.randn(n, 128, generator=g), dim=-1)], torch.tensor([15., 15.]))
    loss = FeatureLoss(d, [d, 128], feature_alpha=alpha)
    si, st = loss.proj(s.image_features, 1), loss.proj(s.text_features, 1)
    second = alpha * (F.mse_loss(si, t2.image_features[1]) + F.mse_loss(st, t2.text_features[1]))
    with torch.no_grad():
        assert float(loss(s, t2)["feature_loss"]) == pytest.approx(float(clip_kd + second) / 2, rel=1e-5)


@pytest.mark.parametrize("override, message", [
    ("losses.kd_teacher_scale=3269017.4", r"did you pass exp\(scale\)\? log\(3\.26902e\+06\) = 15"),
    ("losses.kd_teacher_scale=0.5", r"if 0\.5 is the log of the scale, pass exp\(0\.5\) = 1\.649"),
    ("losses.kd_teacher_scale=-2", "must be 0 .each teacher's own. or a multiplier in"),
    ("losses.feature_alpha=1e9", "far above CLIP-KD's 2000"),
    ("losses.feature_alpha=-1", "losses.feature_alpha: must be >= 0"),
])
def test_hostile_loss_numbers_are_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["losses.kd=1", "teachers=[clip-vit-tiny]", override])


def test_a_teacher_scale_for_no_kd_term_and_two_units_of_one_loss_are_refused():
    with pytest.raises(ConfigError, match="no loss uses a teacher temperature"):
        load_config(None, ["losses.feature=1", "teachers=[a]", "losses.kd_teacher_scale=100"])
    with pytest.raises(ConfigError, match="the same loss in two units"):
        load_config(None, ["losses.feature=1", "losses.feature_alpha=2000", "teachers=[a]"])


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("kdscale")
    teacher = mobileclip.load_teacher("clip-vit-tiny")
    build_cache([teacher], SyntheticPairs("train", size=16, image_size=48, seed=0), root / "c", augs=1,
                shard_size=16, batch_size=16, progress=False)
    return root / "c", teacher.scale


def test_kd_teacher_scale_replaces_the_cached_one_and_is_recorded(small_cache, tmp_path):
    cache, own = small_cache
    assert own == pytest.approx(1 / 0.07, rel=1e-5)   # the registry teacher's own (random init) multiplier
    base = ["student=mobileclip-tiny", "batch_size=8", "steps=2", "data.workers=0", "progress=false", "eval.size=36",
            f"data.cache={cache}", "recipe=mobileclip", "log_every=1"]
    s = train(load_config(None, base + [f"out={tmp_path / 'a'}"]))
    assert s["recipe"] == "mobileclip" and s["loss_weights"]["kd"] == 0.75 and s["loss_weights"]["clip"] == 0.25
    assert s["teacher_scales"] == {"own": [pytest.approx(own)], "used": [100.0], "from": "losses.kd_teacher_scale"}
    s = train(load_config(None, base + [f"out={tmp_path / 'b'}", "losses.kd_teacher_scale=0"]))
    assert s["teacher_scales"]["used"] == [pytest.approx(own)] and s["teacher_scales"]["from"] == "each teacher's own"
    cfg = (tmp_path / "a" / "train_config.yaml").read_text()
    assert "recipe: mobileclip" in cfg and "kd_teacher_scale: 100.0" in cfg
    # clip-kd's alpha becomes 2 x 2000 / D per teacher, recorded
    s = train(load_config(None, base[:-2] + ["recipe=clip-kd", f"out={tmp_path / 'c'}", "log_every=1"]))
    assert s["teacher_scales"]["feature_per_teacher"] == [pytest.approx(2 * 2000 / 256)]   # clip-vit-tiny: D = 256


def test_kd_temperature_changes_the_targets():
    """The scale is the multiplier: at 100 the teacher's distribution is sharper than at its own 15, and the loss sees
    it; a one-hot teacher (the old exp(exp()) trap) would be sharper still."""
    from mobileclip.distill.losses import KDLoss

    g = torch.Generator().manual_seed(1)
    n, d = 12, 32
    s = StudentOut(*(F.normalize(torch.randn(n, d, generator=g), dim=-1) for _ in range(2)), torch.tensor(14.0))
    ti, tt = (F.normalize(torch.randn(n, d, generator=g), dim=-1) for _ in range(2))
    losses = [float(KDLoss()(s, TeacherOut([ti], [tt], torch.tensor([v])))["kd_loss"]) for v in (15.0, 100.0)]
    assert losses[0] != pytest.approx(losses[1])
    ent = [float(-(p * p.clamp_min(1e-30).log()).sum(1).mean()) for p in
           ((v * ti @ tt.T).softmax(1) for v in (15.0, 100.0, math.exp(15.0)))]
    assert ent[0] > ent[1] > ent[2] and ent[2] < 1e-3
