"""The teacher embeds exactly the student's view of each crop (mobileclip.views): no second crop by its own transform."""
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

import mobileclip
from mobileclip.distill import TeacherCache, build_cache
from mobileclip.distill.cache import CacheError
from mobileclip.distill.augment import apply_aug
from mobileclip.distill.sources import SyntheticPairs
from mobileclip.distill.train import check_view
from mobileclip.views import OwnPreprocessView, measure_view, teacher_view, view_box


def _timm_style(size=32, crop_pct=0.875):
    """A timm eval transform: Resize(size / crop_pct) + CenterCrop(size): it keeps crop_pct^2 of a square view."""
    return T.Compose([T.Resize(int(size / crop_pct), interpolation=T.InterpolationMode.BICUBIC),
                      T.CenterCrop(size), T.ToTensor(), T.Normalize((0.5, 0.4, 0.3), (0.2, 0.25, 0.3))])


def _crop(w=90, h=60, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def test_a_centre_cropping_transform_is_read_and_sees_the_whole_view():
    pp = _timm_style()
    view = teacher_view(pp)
    assert view.exact and view.size == 32 and view.interpolation == "bicubic"
    # Measured: the teacher's own transform covers 32/36 of the view per side, the exact view all of it.
    own = measure_view(OwnPreprocessView(pp))
    assert own == pytest.approx([32 / 36, 32 / 36], abs=0.01)   # Resize(36) + CenterCrop(32)
    assert measure_view(view) == pytest.approx([1.0, 1.0], abs=0.01)
    # Independent reference: torchvision resizes the crop's short side to 32 and cuts the centre square (as the
    # student's own preprocess does, at its size): the view, resampled once, with no second crop.
    crop = _crop()
    ref = T.Compose([T.Resize(32, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(32), T.ToTensor(),
                     T.Normalize((0.5, 0.4, 0.3), (0.2, 0.25, 0.3))])(crop)
    assert torch.allclose(view(crop, "center"), ref, atol=1e-5)
    # squash: the whole crop, resized without keeping its aspect
    ref = T.Compose([T.Resize((32, 32), interpolation=T.InterpolationMode.BICUBIC), T.ToTensor(),
                     T.Normalize((0.5, 0.4, 0.3), (0.2, 0.25, 0.3))])(crop)
    assert torch.allclose(view(crop, "squash"), ref, atol=1e-6)


def test_open_clip_and_our_own_transforms_are_read():
    import open_clip

    _, _, pp = open_clip.create_model_and_transforms("ViT-B-32")
    view = teacher_view(pp)
    assert view.exact and view.size == 224
    sq = _crop(250, 250)
    assert torch.equal(view(sq), pp(sq))   # a square view: open_clip's resize + centre crop keep all of it
    teacher = mobileclip.load_teacher("clip-vit-tiny")
    assert teacher_view(teacher.preprocess).exact
    assert view_box((90, 60), "center") == (15.0, 0.0, 75.0, 60.0)
    assert view_box((60, 90), "squash") == (0.0, 0.0, 60.0, 90.0)


def test_an_unreadable_transform_gets_the_view_and_its_coverage_is_recorded(tmp_path):
    seen = []

    def mine(im):   # a py: teacher's own function: crops the centre half of whatever it gets
        seen.append(im.size)
        w, h = im.size
        return T.ToTensor()(im.crop((w // 4, h // 4, w // 4 + w // 2, h // 4 + h // 2)).resize((32, 32)))

    view = teacher_view(mine)
    assert not view.exact
    view(_crop(90, 60))
    assert seen == [(60, 60)]   # it was given the student's view, the centre square
    assert measure_view(view) == pytest.approx([0.5, 0.5], abs=0.02)


def test_the_cache_embeds_the_view_not_the_teachers_own_centre_crop(tmp_path):
    base = mobileclip.load_teacher("clip-vit-tiny")   # 64 px ViT
    timm_pp = _timm_style(size=64)
    teacher = mobileclip.teachers.Teacher(base.model, timm_pp, base.tokenizer, "timm-style", embed_dim=base.embed_dim,
                                          image_size=64)
    source = SyntheticPairs("train", size=6, image_size=80, seed=0)
    # square crops (ratio 1): the view is the whole crop, which the reference below resizes
    build_cache([teacher], source, tmp_path / "c", augs=2, shard_size=6, batch_size=4, seed=3, ratio=(1.0, 1.0),
                progress=False)
    cache = TeacherCache(tmp_path / "c")
    rec = cache.manifest["teachers"][0]
    assert cache.manifest["view"] == "center" and rec["view"]["exact"]
    assert rec["view"]["covers"] == pytest.approx([1.0, 1.0], abs=0.01)
    ref_pp = T.Compose([T.Resize((64, 64), interpolation=T.InterpolationMode.BICUBIC), T.ToTensor(),
                        T.Normalize((0.5, 0.4, 0.3), (0.2, 0.25, 0.3))])
    square, far_from_own = 0, 0.0
    for i in range(6):
        for k in range(2):
            im, _ = source.load(i)
            crop = apply_aug(im, cache.aug(i, k))
            if crop.size[0] != crop.size[1]:
                continue   # rounding to whole pixels left it a pixel off square
            square += 1
            with torch.no_grad():
                want = teacher.encode_image(ref_pp(crop)[None])[0].numpy()
                own = teacher.encode_image(timm_pp(crop)[None])[0].numpy()
            got = cache.image_embedding(i, k).astype(np.float32)
            assert np.abs(got - want).max() < 2e-3   # fp16 storage
            far_from_own = max(far_from_own, float(np.abs(got - own).max()))
    assert square >= 4
    assert far_from_own > 0.02   # what the teacher's own transform would have cached is another embedding


def test_a_student_that_sees_another_view_is_refused(tmp_path):
    teacher = mobileclip.load_teacher("clip-vit-tiny")
    source = SyntheticPairs("train", size=4, image_size=48, seed=0)
    build_cache([teacher], source, tmp_path / "c", augs=1, shard_size=4, batch_size=4, progress=False)
    cache = TeacherCache(tmp_path / "c")
    _, pp, _ = mobileclip.create_model("mobileclip-tiny")
    check_view(cache, pp, "data.cache")   # shortest: the centre square, as cached
    pp.cfg.resize_mode = "squash"
    with pytest.raises(CacheError, match="cache-teacher --view squash"):
        check_view(cache, pp, "data.cache")
    with pytest.raises(mobileclip.errors.ConfigError, match="view must be one of"):
        build_cache([teacher], source, tmp_path / "d", augs=1, view="whole", progress=False)
