"""The unpaired losses against references written out independently: numpy, float64, one row at a
time, with the item's own column deleted (not masked) and KL summed term by term."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mobileclip.distill.losses import LOSSES, StudentOut, TeacherOut, UNPAIRED_LOSSES, build_losses


def _unit(g, *shape):
    return F.normalize(torch.randn(*shape, generator=g), dim=-1)


def _inputs(n=5, m=4, ell=3, d=8, dt=8, teachers=1, seed=0, images=True, texts=True):
    g = torch.Generator().manual_seed(seed)
    s = StudentOut(_unit(g, n, d), _unit(g, n, d), torch.tensor(9.0),
                   image_only=_unit(g, m, d) if images else None, text_only=_unit(g, ell, d) if texts else None)
    t = TeacherOut([_unit(g, n, dt) for _ in range(teachers)], [_unit(g, n, dt) for _ in range(teachers)],
                   torch.tensor([30.0, 50.0][:teachers]),
                   image_only=[_unit(g, m, dt) for _ in range(teachers)] if images else None,
                   text_only=[_unit(g, ell, dt) for _ in range(teachers)] if texts else None)
    return s, t


def _np(x):
    return x.detach().double().numpy()


def _softmax(z):
    z = z - z.max()
    e = np.exp(z)
    return e / e.sum()


def _kl(p, q):
    return sum(pi * (np.log(pi) - np.log(qi)) for pi, qi in zip(p, q) if pi > 0)


def _ref_kd(t_rows, t_cols, t_scales, s_rows, s_cols, s_scale, self_offset=None):
    """Mean over rows of KL(mean over teachers of softmax(teacher row) || softmax(student row))."""
    total = 0.0
    for i in range(s_rows.shape[0]):
        keep = [j for j in range(s_cols.shape[0]) if self_offset is None or j != self_offset + i]
        p = np.mean([_softmax(t_scales[k] * np.array([t_rows[k][i] @ t_cols[k][j] for j in keep]))
                     for k in range(len(t_rows))], axis=0)
        q = _softmax(s_scale * np.array([s_rows[i] @ s_cols[j] for j in keep]))
        total += _kl(p, q)
    return total / s_rows.shape[0]


def _sides_np(s, t):
    """(rows, teacher rows, same-modality columns, teacher ..., other-modality columns, teacher ...)."""
    T = len(t.image_features)
    out = []
    for mine, other in (("image", "text"), ("text", "image")):
        rows = getattr(s, f"{mine}_only")
        if rows is None:
            continue
        so = getattr(s, f"{other}_only")
        to = getattr(t, f"{other}_only")
        out.append((
            _np(rows), [_np(x) for x in getattr(t, f"{mine}_only")],
            np.concatenate([_np(getattr(s, f"{mine}_features")), _np(rows)]),
            [np.concatenate([_np(getattr(t, f"{mine}_features")[k]), _np(getattr(t, f"{mine}_only")[k])])
             for k in range(T)],
            np.concatenate([_np(getattr(s, f"{other}_features"))] + ([_np(so)] if so is not None else [])),
            [np.concatenate([_np(getattr(t, f"{other}_features")[k])] + ([_np(to[k])] if to is not None else []))
             for k in range(T)]))
    return out


@pytest.mark.parametrize("teachers", [1, 2])
@pytest.mark.parametrize("sides", [(True, True), (True, False), (False, True)])
def test_intra_and_cross_kd_equal_the_reference(teachers, sides):
    s, t = _inputs(teachers=teachers, images=sides[0], texts=sides[1], seed=teachers)
    scales = _np(t.scale)
    intra = cross = 0.0
    found = _sides_np(s, t)
    for rows, t_rows, same, t_same, other, t_other in found:
        intra += _ref_kd(t_rows, t_same, scales, rows, same, 9.0, self_offset=same.shape[0] - rows.shape[0])
        cross += _ref_kd(t_rows, t_other, scales, rows, other, 9.0)
    ours_intra = LOSSES["unpaired_intra_kd"]()(s, t)["unpaired_intra_kd_loss"]
    ours_cross = LOSSES["unpaired_cross_kd"]()(s, t)["unpaired_cross_kd_loss"]
    assert ours_intra.item() == pytest.approx(intra / len(found), rel=1e-5)
    assert ours_cross.item() == pytest.approx(cross / len(found), rel=1e-5)


def test_unpaired_feature_equals_the_reference_with_a_projection():
    s, t = _inputs(d=6, dt=10, teachers=2)
    loss = build_losses({"unpaired_feature": 1.0}, 6, [10, 10])["unpaired_feature"]
    ours = loss(s, t)["unpaired_feature_loss"]
    ref = 0.0
    for k in range(2):
        w = _np(loss.proj.maps[k].weight)
        for rows, t_rows in ((s.image_only, t.image_only[k]), (s.text_only, t.text_only[k])):
            per_item = []
            for x, y in zip(_np(rows), _np(t_rows)):
                z = w @ x
                z = z / np.sqrt(z @ z)
                per_item.append(2 - 2 * z @ y)   # unit vectors: |z - y|^2 = 2 - 2 cos
            ref += np.mean(per_item)
    assert ours.item() == pytest.approx(ref / 4, rel=1e-5)


def test_a_student_that_matches_its_teacher_has_zero_unpaired_losses():
    s, t = _inputs(teachers=1)
    t.scale = torch.tensor([9.0])   # the student's temperature
    same = StudentOut(t.image_features[0], t.text_features[0], torch.tensor(9.0), image_only=t.image_only[0],
                      text_only=t.text_only[0])
    for name in sorted(UNPAIRED_LOSSES):
        assert LOSSES[name](student_dim=8, teacher_dims=[8])(same, t)[f"{name}_loss"].item() == pytest.approx(0, abs=1e-5)
        assert LOSSES[name](student_dim=8, teacher_dims=[8])(s, t)[f"{name}_loss"].item() > 1e-3


def test_image_only_rows_train_through_the_bank_of_texts():
    """Images without captions, against the step's texts: the gradient reaches the student's image rows
    and its text columns (cross), but intra-modal KD on images leaves every text untouched."""
    s, t = _inputs(texts=False)
    leaves = [s.image_features, s.text_features, s.image_only]
    for x in leaves:
        x.requires_grad_(True)
    LOSSES["unpaired_cross_kd"]()(s, t)["unpaired_cross_kd_loss"].backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in (s.image_only, s.text_features))
    assert s.image_features.grad is None   # paired images are neither rows nor columns of image->text
    for x in leaves:
        x.grad = None
    LOSSES["unpaired_intra_kd"]()(s, t)["unpaired_intra_kd_loss"].backward()
    assert s.text_features.grad is None and s.image_only.grad.abs().sum() > 0
    assert s.image_features.grad.abs().sum() > 0   # paired images are columns of the image-image distribution


def test_without_unpaired_rows_the_terms_are_zero():
    s, t = _inputs(images=False, texts=False)
    for name in sorted(UNPAIRED_LOSSES):
        assert LOSSES[name](student_dim=8, teacher_dims=[8])(s, t)[f"{name}_loss"].item() == 0.0
