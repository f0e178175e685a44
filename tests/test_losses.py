"""Each loss equals a direct reference computation; clip and kd equal open_clip's."""
import math

import pytest
import torch
import torch.nn.functional as F

from mobileclip.distill.losses import LOSSES, StudentOut, TeacherOut, build_losses


def _inputs(n=6, d=8, dt=8, teachers=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = StudentOut(F.normalize(torch.randn(n, d, generator=g), dim=-1),
                   F.normalize(torch.randn(n, d, generator=g), dim=-1), torch.tensor(12.0))
    t = TeacherOut(F.normalize(torch.randn(teachers, n, dt, generator=g), dim=-1),
                   F.normalize(torch.randn(teachers, n, dt, generator=g), dim=-1),
                   torch.tensor([30.0, 50.0][:teachers]))
    return s, t


def test_clip_equals_reference_and_open_clip():
    from open_clip.loss import ClipLoss

    s, _ = _inputs()
    ours = LOSSES["clip"]()(s)["clip_loss"]
    logits = s.scale * s.image_features @ s.text_features.T
    ref = 0.0
    for i in range(6):  # written out: -log softmax of the matching pair, both directions
        ref += -torch.log(logits[i].exp()[i] / logits[i].exp().sum()) / 12
        ref += -torch.log(logits[:, i].exp()[i] / logits[:, i].exp().sum()) / 12
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)
    oc = ClipLoss()(s.image_features, s.text_features, s.scale)
    assert ours.item() == pytest.approx(oc.item(), rel=1e-6)


def test_clip_local_loss_rows():
    s, _ = _inputs(n=8)
    loss = LOSSES["clip"](local_loss=True)
    full = loss(s)["clip_loss"]
    halves = (loss(s, rows=slice(0, 4))["clip_loss"] + loss(s, rows=slice(4, 8))["clip_loss"]) / 2
    assert halves.item() == pytest.approx(full.item(), rel=1e-5)


def test_siglip_equals_reference():
    s, _ = _inputs()
    s.logit_bias = torch.tensor(-2.0)
    ours = LOSSES["siglip"]()(s)["siglip_loss"]
    logits = s.scale * s.image_features @ s.text_features.T - 2.0
    ref = 0.0
    for i in range(6):
        for j in range(6):
            z = 1.0 if i == j else -1.0
            ref += -math.log(1 / (1 + math.exp(-z * logits[i, j].item())))
    assert ours.item() == pytest.approx(ref / 6, rel=1e-5)
    # Without a student bias, the loss's own learnable bias (-10) is used and receives gradient.
    s.logit_bias = None
    mod = LOSSES["siglip"]()
    mod(s)["siglip_loss"].backward()
    assert mod.logit_bias.grad is not None


@pytest.mark.parametrize("teachers", [1, 2])
def test_kd_equals_reference_and_open_clip(teachers):
    from open_clip.loss import DistillClipLoss

    s, t = _inputs(teachers=teachers)
    ours = LOSSES["kd"]()(s, t)["kd_loss"]
    # Reference: KL(p || q) row by row, p the (mean) teacher distribution.
    tl = [t.scale[k] * t.image_features[k] @ t.text_features[k].T for k in range(teachers)]
    sl = s.scale * s.image_features @ s.text_features.T
    p_i = sum(x.softmax(1) for x in tl) / teachers
    p_t = sum(x.T.softmax(1) for x in tl) / teachers
    kl = lambda p, logits: (p * (p.log() - logits.log_softmax(1))).sum(1).mean()  # noqa: E731
    ref = (kl(p_i, sl) + kl(p_t, sl.T)) / 2
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)
    assert ours.item() >= 0
    if teachers == 1:
        # open_clip's distill term is the cross-entropy, which is KL plus the teacher's entropy.
        _, oc = DistillClipLoss()(s.image_features, s.text_features, s.scale,
                                  t.image_features[0], t.text_features[0], t.scale[0])
        entropy = (-(p_i * p_i.log()).sum(1).mean() - (p_t * p_t.log()).sum(1).mean()) / 2
        assert (ours + entropy).item() == pytest.approx(oc.item(), rel=1e-5)
        # Student == teacher → zero.
        same = StudentOut(t.image_features[0], t.text_features[0], t.scale[0])
        assert LOSSES["kd"]()(same, t)["kd_loss"].item() == pytest.approx(0.0, abs=1e-6)


def test_feature_and_icl_equal_reference_with_projection():
    s, t = _inputs(d=8, dt=12, teachers=1)
    feat = LOSSES["feature"](student_dim=8, teacher_dims=[12])
    W = feat.proj.maps[0].weight
    pi = F.normalize(s.image_features @ W.T, dim=-1)
    pt = F.normalize(s.text_features @ W.T, dim=-1)
    ref = (((pi - t.image_features[0]) ** 2).sum(1).mean() + ((pt - t.text_features[0]) ** 2).sum(1).mean()) / 2
    assert feat(s, t)["feature_loss"].item() == pytest.approx(ref.item(), rel=1e-5)
    cos = ((pi * t.image_features[0]).sum(1).mean() + (pt * t.text_features[0]).sum(1).mean()) / 2
    assert ref.item() == pytest.approx(2 - 2 * cos.item(), rel=1e-5)

    icl = LOSSES["icl"](student_dim=8, teacher_dims=[12])
    with torch.no_grad():
        icl.proj.maps[0].weight.copy_(W)
    labels = torch.arange(6)
    a = s.scale * pi @ t.text_features[0].T
    b = s.scale * pt @ t.image_features[0].T
    ref = (F.cross_entropy(a, labels) + F.cross_entropy(b, labels)) / 2
    assert icl(s, t)["icl_loss"].item() == pytest.approx(ref.item(), rel=1e-5)


def test_same_dims_use_no_projection():
    s, t = _inputs(d=8, dt=8)
    feat = LOSSES["feature"](student_dim=8, teacher_dims=[8])
    assert sum(p.numel() for p in feat.parameters()) == 0
    assert feat(s, t)["feature_loss"].item() == pytest.approx(
        (((s.image_features - t.image_features[0]) ** 2).sum(1).mean()
         + ((s.text_features - t.text_features[0]) ** 2).sum(1).mean()).item() / 2, rel=1e-5)


def test_build_losses_validates():
    from mobileclip.errors import ConfigError

    mods = build_losses({"clip": 0.25, "kd": 0.75, "feature": 0.0}, 8, [8])
    assert set(mods) == {"clip", "kd"}
    with pytest.raises(ConfigError, match="unknown loss 'kdd'"):
        build_losses({"kdd": 1.0}, 8, [8])
    with pytest.raises(ConfigError, match="every loss weight is zero"):
        build_losses({"clip": 0.0}, 8, [8])


def test_ensemble_of_different_sizes():
    s, t1 = _inputs(d=8, dt=8, teachers=1, seed=1)
    _, t2 = _inputs(d=8, dt=12, teachers=1, seed=2)
    t = TeacherOut([t1.image_features[0], t2.image_features[0]], [t1.text_features[0], t2.text_features[0]],
                   torch.tensor([30.0, 50.0]))
    kd = LOSSES["kd"]()(s, t)["kd_loss"]
    l1 = t.scale[0] * t.image_features[0] @ t.text_features[0].T
    l2 = t.scale[1] * t.image_features[1] @ t.text_features[1].T
    p = (l1.softmax(1) + l2.softmax(1)) / 2
    q = (l1.T.softmax(1) + l2.T.softmax(1)) / 2
    sl = s.scale * s.image_features @ s.text_features.T
    ref = ((p * (p.log() - sl.log_softmax(1))).sum(1).mean() + (q * (q.log() - sl.T.log_softmax(1))).sum(1).mean()) / 2
    assert kd.item() == pytest.approx(ref.item(), rel=1e-5)
    feat = LOSSES["feature"](student_dim=8, teacher_dims=[8, 12])
    assert feat(s, t)["feature_loss"].item() > 0
