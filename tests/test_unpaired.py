"""Unpaired data end to end: caches of images without captions and texts without images, the trainer
mixing them with pairs (exact accumulation and resume), the refusals, and the student-size overrides."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import mobileclip
from mobileclip.distill import TeacherCache, Trainer, build_cache, load_config, train
from mobileclip.distill.cache import CacheError
from mobileclip.distill.augment import apply_aug
from mobileclip.distill.samples import MixedStepBatches, collate_train
from mobileclip.distill.sources import ImageFiles, SyntheticImages, SyntheticPairs, SyntheticTexts, TextLines
from mobileclip.errors import ConfigError, DatasetError
from mobileclip.views import teacher_view

UNPAIRED = ["losses.unpaired_feature=0.5", "losses.unpaired_intra_kd=0.5", "losses.unpaired_cross_kd=1.0"]


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    """A paired cache, an image-only cache (held-out colour-shape pairs) and a text-only cache, one teacher."""
    root = tmp_path_factory.mktemp("unpaired")
    teacher = mobileclip.load_teacher("clip-vit-tiny")
    build_cache([teacher], SyntheticPairs("train", 64, 64), root / "pairs", augs=2, shard_size=32, flip_prob=0.0,
                progress=False)
    build_cache([teacher], SyntheticImages("novel", 40, 64, 1), root / "images", augs=2, shard_size=16,
                flip_prob=0.0, progress=False)
    build_cache([teacher], SyntheticTexts("novel", 36, 64, 2), root / "texts", augs=3, shard_size=16,
                progress=False)
    return {"root": root, "teacher": teacher, "pairs": root / "pairs", "images": root / "images",
            "texts": root / "texts"}


def _cfg(out, caches, *extra):
    return load_config(None, ["student=clip-vit-tiny", "batch_size=16", "data.workers=0", "log_every=1",
                              "progress=false", "eval.size=36", "optim.warmup_steps=2", f"out={out}",
                              f"data.cache={caches['pairs']}", f"data.image_cache={caches['images']}",
                              f"data.text_cache={caches['texts']}", "losses.kd=1.0", *UNPAIRED, *extra])


def test_unpaired_caches_hold_what_the_teacher_gives(caches):
    teacher = caches["teacher"]
    images, texts = TeacherCache(caches["images"]), TeacherCache(caches["texts"])
    assert (images.modality, images.manifest["captions"], images.augs) == ("images", 0, 2)
    assert (texts.modality, texts.augs) == ("texts", 1)   # texts have no augmentations: --augs is ignored
    assert sorted(p.name for p in (caches["images"] / "shard_00000").glob("*.npy")) == ["aug.npy", "img_0.npy", "ok.npy"]
    assert sorted(p.name for p in (caches["texts"] / "shard_00000").glob("*.npy")) == ["ok.npy", "txt_0.npy"]
    src = SyntheticImages("novel", 40, 64, 1)
    i, k = 21, 1
    with torch.no_grad():
        # the student's view of the crop at the teacher's size (mobileclip.views; tests/test_views.py checks it)
        view = teacher_view(teacher.preprocess)(apply_aug(src.load(i)[0], images.aug(i, k)), "center")
        ref = teacher.encode_image(view[None])[0].numpy()
        text = SyntheticTexts("novel", 36, 64, 2).load(7)[1][0]
        ref_t = teacher.encode_text(teacher.tokenizer([text]))[0].numpy()
    assert np.abs(images.image_embedding(i, k) - ref).max() < 2e-3
    assert np.abs(texts.text_embedding(7, 0) - ref_t).max() < 2e-3
    assert SyntheticImages("novel", 40, 64, 1).load(0)[1] == [] and src.gen[0].captions   # captions not used


def test_each_step_mixes_pairs_images_and_texts_and_depends_only_on_its_number():
    parts = [(64, 16, "pairs"), (40, 8, "images"), (36, 24, "texts")]
    a = MixedStepBatches(parts, steps=10, seed=3)
    step = a.indices_for_step(6)
    assert [sum(1 for p, _, _ in step if p == part) for part in range(3)] == [16, 8, 24]
    assert step == MixedStepBatches(parts, steps=10, seed=3, start_step=6).indices_for_step(6)
    ranks = [MixedStepBatches(parts, 10, 3, rank=r, world=2).indices_for_step(6) for r in range(2)]
    assert sorted(ranks[0] + ranks[1]) == sorted(step)
    with pytest.raises(ConfigError, match="larger than images"):
        MixedStepBatches([(64, 16, "pairs"), (4, 8, "images")], 10, 3)


def test_training_with_unpaired_data_logs_every_term(caches, tmp_path):
    summary = train(_cfg(tmp_path, caches, "steps=3", "data.image_ratio=0.5", "data.text_ratio=1.5"))
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {"unpaired_feature_loss", "unpaired_intra_kd_loss", "unpaired_cross_kd_loss", "kd_loss"} <= set(rows[-1])
    assert all(r["finite"] for r in rows) and summary["bad_steps"] == 0
    assert all(r["unpaired_cross_kd_loss"] > 0 for r in rows)


def _grads(out, caches, accum):
    tr = Trainer(_cfg(out, caches, "steps=1", f"accum_steps={accum}", "data.image_ratio=0.5", "data.text_ratio=1.0"))
    sampler = MixedStepBatches([(64, 16, "p"), (40, 8, "i"), (36, 16, "t")], 1, tr.cfg.seed)
    batch = collate_train([tr.dataset[k] for k in sampler.indices_for_step(0)])
    assert batch["ui_image"].shape[0] == 8 and batch["ut_tokens"].shape[0] == 16
    tr.opt.step = lambda *a, **k: None   # keep the gradients, skip the update
    tr.train_step(batch)
    return {n: p.grad.clone() for n, p in tr.student.named_parameters() if p.grad is not None}


def test_accumulation_with_unpaired_data_gives_the_big_batch_gradients(caches, tmp_path):
    g1, g4 = _grads(tmp_path / "one", caches, 1), _grads(tmp_path / "four", caches, 4)
    assert g1.keys() == g4.keys() and "logit_scale" in g1
    for k in g1:
        assert torch.allclose(g1[k], g4[k], rtol=1e-4, atol=1e-6), k


def test_resume_with_unpaired_data_reproduces_the_uninterrupted_run(caches, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    train(_cfg(a, caches, "steps=4", "eval.size=2"))
    killed = Trainer(_cfg(b, caches, "steps=4", "ckpt_every=2", "eval.size=2"))
    orig = killed.train_step

    def dies_at_step_4(batch):
        if killed.step == 3:   # the last checkpoint is from step 2
            raise KeyboardInterrupt("killed")
        return orig(batch)

    killed.train_step = dies_at_step_4
    with pytest.raises(KeyboardInterrupt):
        killed.fit()
    Trainer(_cfg(b, caches, "steps=4", "ckpt_every=2", "eval.size=2"), resume=str(b)).fit()
    la = [json.loads(x)["loss"] for x in (a / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x)["loss"] for x in (b / "metrics.jsonl").read_text().splitlines()]
    assert len(lb) == 4 and np.allclose(la, lb, rtol=1e-5, atol=1e-6), (la, lb)


def test_unpaired_caches_of_another_teacher_or_kind_are_refused(caches, tmp_path):
    other = mobileclip.load_teacher("clip-vit-tiny")
    with torch.no_grad():
        next(other.parameters()).add_(0.01)   # the same architecture, other weights
    build_cache([other], SyntheticImages("novel", 40, 64, 1), tmp_path / "other", augs=2, shard_size=16,
                flip_prob=0.0, progress=False)
    with pytest.raises(CacheError, match=r"other teachers than data.cache: teacher 0 weights"):
        Trainer(_cfg(tmp_path / "r1", caches, f"data.image_cache={tmp_path / 'other'}"))
    with pytest.raises(ConfigError, match="is a cache of texts, not of images"):
        Trainer(_cfg(tmp_path / "r2", caches, f"data.image_cache={caches['texts']}"))
    # Resuming the build of a cache with other images (an edited folder) names what differs.
    with pytest.raises(CacheError, match="dataset seed: 1 in the cache, 9 now"):
        build_cache([caches["teacher"]], SyntheticImages("novel", 40, 64, 9), caches["images"], augs=2,
                    shard_size=16, flip_prob=0.0, progress=False)


@pytest.mark.parametrize("extra, match", [
    (["data.image_cache=", "data.text_cache="], r"train on unpaired data: set data.image_cache"),
    ([*(f"{x.split('=')[0]}=0" for x in UNPAIRED)], "no unpaired loss has a weight"),
    (["data.image_ratio=0.01"], "gives no unpaired samples per step"),
    (["data.text_ratio=-1"], "data.text_ratio: must be a number >= 0"),
    (["data.cache=", "teachers=[clip-vit-tiny]"], "needs data.cache"),
    (["student_image_size=8"], "student_image_size: must be 0"),
    (["threads=-1"], "threads: must be >= 0"),
])
def test_unpaired_config_errors(caches, tmp_path, extra, match):
    with pytest.raises(ConfigError, match=match):
        _cfg(tmp_path, caches, *extra)


def test_more_unpaired_samples_per_step_than_the_cache_holds_is_refused(caches, tmp_path):
    tr = Trainer(_cfg(tmp_path, caches, "steps=1", "data.image_ratio=3.0"))   # 48 of 40 images per step
    with pytest.raises(ConfigError, match=r"larger than the images without captions \(data.image_ratio"):
        tr.fit()


def test_cache_teacher_cli_images_and_texts(tmp_path, capsys):
    from mobileclip.app.cli import main

    folder = tmp_path / "photos" / "sub"
    folder.mkdir(parents=True)
    for i in range(5):
        Image.fromarray(np.full((40, 50, 3), 40 * i, np.uint8)).save(folder / f"{i}.png")
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "photos" / ".hidden.png").write_bytes(b"x")
    assert len(ImageFiles(str(tmp_path / "photos"))) == 6   # the hidden file is left out
    (tmp_path / "texts.txt").write_text("a red circle\n\n  a blue square  \n")
    assert list(TextLines(str(tmp_path / "texts.txt")).texts) == ["a red circle", "a blue square"]
    cli = ["cache-teacher", "--teacher", "clip-vit-tiny", "--workers", "0"]
    assert main(cli + ["--images", str(tmp_path / "photos"), "--out", str(tmp_path / "ci")]) == 0
    assert "1 unreadable images skipped" in capsys.readouterr().out
    ok = TeacherCache(tmp_path / "ci")
    assert ok.modality == "images" and [ok.ok(i) for i in range(6)].count(False) == 1
    assert main(cli + ["--texts", str(tmp_path / "texts.txt"), "--out", str(tmp_path / "ct")]) == 0
    assert TeacherCache(tmp_path / "ct").manifest["num_samples"] == 2
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    capsys.readouterr()
    for args, msg in ((["--texts", str(tmp_path / "latin1.txt")], "is not UTF-8 text"),
                      (["--images", str(tmp_path / "texts.txt")], "is a file; give the folder"),
                      (["--images", str(tmp_path / "photos"), "--data", "synthetic"], "exactly one of --data"),
                      ([], "exactly one of --data")):
        assert main(cli + args + ["--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err
        assert msg in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x").exists()
    with pytest.raises(DatasetError, match="holds no text"):
        (tmp_path / "empty.txt").write_text("\n \n")
        TextLines(str(tmp_path / "empty.txt"))
    # The CLI entry point itself (a subprocess): the same one-line error and exit status 2.
    r = subprocess.run([sys.executable, "-m", "mobileclip", *cli, "--out", str(tmp_path / "x")], capture_output=True,
                       text=True)
    assert r.returncode == 2 and "exactly one of --data" in r.stderr


def test_student_size_overrides_are_recorded_and_threads_applied(tmp_path):
    before = torch.get_num_threads()
    want = 2 if before == 1 else 1   # a change the run must make (the suite runs 1 thread per xdist worker)
    try:
        cfg = load_config(None, ["student=mobileclip-tiny", "batch_size=8", "data.size=32", "data.workers=0",
                                 "progress=false", "eval.size=36", "steps=1", f"out={tmp_path}", f"threads={want}",
                                 "student_image_size=48", "student_context_length=12"])
        train(cfg)
        assert torch.get_num_threads() == want
    finally:
        torch.set_num_threads(before)
    model, preprocess, tokenizer = mobileclip.create_model(str(tmp_path / "student"))
    assert (model.image_size, model.context_length) == (48, 12)
    assert tuple(model.text.positional_embedding.shape) == (12, model.cfg.text.width)
    assert tokenizer(["a red circle"]).shape == (1, 12)
    assert preprocess(Image.new("RGB", (80, 60))).shape == (3, 48, 48)
    # Released weights for the registered network load into the smaller student, except the tensors the
    # override reshapes, which are listed.
    full = tmp_path / "full"
    mobileclip.save_checkpoint(mobileclip.create_model("mobileclip-tiny")[0], full)
    from mobileclip.factory import create_student

    small, _, _, report = create_student("mobileclip-tiny", str(full), context_length=12)
    width = small.cfg.text.width
    assert report.not_loaded_layers() == ["text.positional_embedding"]
    assert [(k, tuple(a), tuple(b)) for k, a, b in report.mismatched] == [
        ("text.positional_embedding", (16, width), (12, width))]
    assert report.missing == [] and report.unexpected == []
    from safetensors.torch import load_file

    saved = load_file(str(full / "model.safetensors"))
    got = small.state_dict()
    assert set(got) == set(saved) and report.loaded == len(saved) - 1
    for k, v in saved.items():   # every other tensor is the checkpoint's
        assert k == "text.positional_embedding" or torch.equal(got[k], v), k


def _ddp_unpaired_worker(rank, world, port, out, result, caches):
    import os

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    tr = Trainer(_cfg(out, caches, "steps=1", "data.image_ratio=0.5", "data.text_ratio=1.0", "device=cpu"))
    keys = MixedStepBatches([(64, 16, "p"), (40, 8, "i"), (36, 16, "t")], 1, tr.cfg.seed, rank=rank,
                            world=world).indices_for_step(0)
    batch = collate_train([tr.dataset[k] for k in keys])
    assert batch["image"].shape[0] == 8 and batch["ui_image"].shape[0] == 4 and batch["ut_tokens"].shape[0] == 8
    tr.opt.step = lambda *a, **k: None  # keep the (all-reduced) gradients
    tr.train_step(batch)
    if rank == 0:
        torch.save({n: p.grad.clone() for n, p in tr.student.named_parameters() if p.grad is not None}, result)
    tr.env.teardown()


@pytest.mark.timeout(600)
def test_two_process_gloo_with_unpaired_data_equals_one_process(caches, tmp_path):
    """Two ranks, each with half the step's pairs, image-only and text-only samples, give the gradients of one
    process with all of them: every unpaired loss sees the whole step's samples, whichever rank holds them."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    plain = {k: (str(v) if not hasattr(v, "encode_image") else None) for k, v in caches.items()}
    mp.spawn(_ddp_unpaired_worker, args=(2, port, str(tmp_path / "ddp"), str(tmp_path / "ddp.pt"), plain), nprocs=2,
             join=True)
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)
    one = _grads(tmp_path / "one", caches, 1)
    assert ddp.keys() == one.keys() and "logit_scale" in one
    bad = [k for k in one if not torch.allclose(one[k], ddp[k], rtol=1e-4, atol=1e-6)]
    assert not bad, f"{len(bad)} of {len(one)} gradients differ, e.g. {bad[:3]}"
