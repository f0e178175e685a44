"""The trainer: loss goes down, exact resume, accumulation = big batch, DDP = one process,
the teacher cache round trip, mismatched teacher/student inputs, corrupt images, config errors."""
import json
import os
import shutil
import socket

import numpy as np
import pytest
import torch
from PIL import Image

import mobileclip
from mobileclip.distill import TeacherCache, Trainer, build_cache, load_config, train
from mobileclip.distill.augment import apply_aug, sample_aug
from mobileclip.distill.sources import SyntheticPairs
from mobileclip.distill.cache import CacheError
from mobileclip.errors import TrainingError
from mobileclip.errors import ConfigError
from mobileclip.views import teacher_view

BASE = ["student=mobileclip-tiny", "batch_size=16", "data.size=256", "data.workers=0", "log_every=1",
        "progress=false", "eval.size=36", "aug.flip_prob=0.0", "optim.warmup_steps=2"]


def _cfg(tmp_path, *extra):
    return load_config(None, BASE + [f"out={tmp_path}"] + list(extra))


def _metrics(path):
    return [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines()]


def test_short_cpu_run_loss_goes_down(tmp_path):
    summary = train(_cfg(tmp_path, "steps=30", "optim.lr=2e-3", "batch_size=32", "data.size=1024"))
    rows = _metrics(tmp_path)
    first, last = np.mean([r["loss"] for r in rows[:5]]), np.mean([r["loss"] for r in rows[-5:]])
    assert last < first - 0.1, (first, last)
    assert summary["bad_steps"] == 0 and (tmp_path / "student" / "model.safetensors").is_file()
    assert {"zeroshot_top1", "zeroshot_novel_top1", "retrieval_R@1"} <= set(summary["eval"])
    m, _, _ = mobileclip.create_model(str(tmp_path / "student"))  # a core checkpoint
    assert m.cfg.name == "mobileclip-tiny"


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    train(_cfg(a, "steps=6"))
    # The same run, killed during step 5 (its last checkpoint is from step 3).
    killed = Trainer(_cfg(b, "steps=6", "ckpt_every=3"))
    orig = killed.train_step

    def dies_at_step_5(batch):
        if killed.step == 4:
            raise KeyboardInterrupt("killed")
        return orig(batch)

    killed.train_step = dies_at_step_5
    with pytest.raises(KeyboardInterrupt):
        killed.fit()
    assert len(_metrics(b)) == 4
    (b / "metrics.jsonl").write_text("".join(x + "\n" for x in (b / "metrics.jsonl").read_text().splitlines()[:3]))
    Trainer(_cfg(b, "steps=6", "ckpt_every=3"), resume=str(b)).fit()
    la = [r["loss"] for r in _metrics(a)]
    lb = [r["loss"] for r in _metrics(b)]
    assert len(lb) == 6 and np.allclose(la, lb, rtol=1e-5, atol=1e-6), (la, lb)
    sa = mobileclip.load_checkpoint(a / "student").state_dict()
    sb = mobileclip.load_checkpoint(b / "student").state_dict()
    assert all(torch.allclose(sa[k], sb[k], atol=1e-6) for k in sa)


def _grads_after_one_step(tmp_path, accum, extra=()):
    cfg = load_config(None, ["student=clip-vit-tiny", "batch_size=16", "data.size=64", "data.workers=0",
                             "progress=false", "aug.flip_prob=0.0", f"accum_steps={accum}", "steps=1",
                             f"out={tmp_path}", "losses.clip=1.0", *extra])
    tr = Trainer(cfg)
    from mobileclip.distill.samples import StepBatches, collate_train

    batch = collate_train([tr.dataset[k] for k in StepBatches(64, 16, 1, cfg.seed).indices_for_step(0)])
    tr.opt.step = lambda *a, **k: None  # keep the gradients, skip the update
    tr.train_step(batch)
    return {n: p.grad.clone() for n, p in tr.student.named_parameters() if p.grad is not None}


def test_accumulation_gives_the_big_batch_gradients(tmp_path):
    # clip-vit-tiny has LayerNorm only: micro-batches cannot differ through BatchNorm statistics.
    g1 = _grads_after_one_step(tmp_path / "one", 1)
    g4 = _grads_after_one_step(tmp_path / "four", 4)
    assert g1.keys() == g4.keys() and "logit_scale" in g1
    for k in g1:
        assert torch.allclose(g1[k], g4[k], rtol=1e-4, atol=1e-6), k


def test_accumulation_updates_batchnorm_statistics_once_per_micro_batch(tmp_path):
    """GradCache's graph-free first pass leaves BatchNorm's running statistics alone: with 2 micro-batches
    each BatchNorm counts 2 batches per step (the recomputed pass), not 4."""
    from mobileclip.distill.samples import StepBatches, collate_train

    cfg = _cfg(tmp_path, "steps=1", "accum_steps=2", "batch_size=8", "data.size=16", "data.image_size=32")
    tr = Trainer(cfg)
    bns = [m for m in tr.student.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert bns, "mobileclip-tiny's image tower has BatchNorm layers"
    before = [int(m.num_batches_tracked) for m in bns]
    tr.train_step(collate_train([tr.dataset[k] for k in StepBatches(16, 8, 1, cfg.seed).indices_for_step(0)]))
    assert [int(m.num_batches_tracked) - b for m, b in zip(bns, before)] == [2] * len(bns)


def test_each_rank_resumes_its_own_random_state(tmp_path, capsys):
    """A training state holds every rank's random state; a rank restores its own, and resuming on another
    number of processes says that dropout's draws will differ."""
    tr = Trainer(_cfg(tmp_path / "a", "steps=1"))
    states = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        states.append({"torch": torch.get_rng_state(), "cuda": None})
    tr.rank_rng = states
    tr.out.mkdir(parents=True)
    tr.save_state()
    tr.env.world, tr.env.rank = 2, 1   # as rank 1 of 2 would load it (load_state runs no collective)
    tr.load_state(tr.out / "last")
    assert torch.equal(torch.get_rng_state(), states[1]["torch"])
    tr.env.world, tr.env.rank = 1, 0
    tr.load_state(tr.out / "last")
    assert "a run saved by 2" in capsys.readouterr().out
    # A damaged rank_rng is refused, not half-restored.
    state = torch.load(tr.out / "last" / "train_state.pt", weights_only=True)
    state["rank_rng"] = [{"cuda": None}, 3]
    torch.save(state, tr.out / "last" / "train_state.pt")
    with pytest.raises(TrainingError, match="per-rank random states .* are damaged"):
        tr.load_state(tr.out / "last")


def test_device_and_precision_resolution():
    """``cuda`` means the rank's own GPU; a missing GPU and compile+bf16 on the CPU are clear errors."""
    from mobileclip.distill.blocks import resolve_device
    from mobileclip.distill.distributed import DistEnv
    from mobileclip.precision import resolve_precision

    env = DistEnv()
    env.local_rank = 3
    assert resolve_device(load_config(None, ["device=cpu"]), env) == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU is visible"):
            resolve_device(load_config(None, ["device=cuda"]), env)
    elif torch.cuda.device_count() > 3:
        assert resolve_device(load_config(None, ["device=cuda"]), env) == torch.device("cuda", 3)
    with pytest.raises(ConfigError, match=r"data.image_dtype: 'int8' is not one of \['uint8', 'float32'\]"):
        load_config(None, ["data.image_dtype=int8"])
    with pytest.raises(ConfigError, match="compile=true with precision=bf16 is not supported on CPU"):
        resolve_precision("bf16", torch.device("cpu"), compile=True)
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    with pytest.raises(ConfigError, match="precision 'fp64' is not one of auto, fp32, bf16, fp16"):
        resolve_precision("fp64", torch.device("cpu"))


def test_teacher_cache_round_trip(tmp_path):
    teacher = mobileclip.load_teacher("clip-vit-tiny")
    source = SyntheticPairs("train", size=10, image_size=48, seed=0)
    build_cache([teacher], source, tmp_path / "c", augs=3, shard_size=4, batch_size=6, seed=5,
                scale=(0.5, 1.0), flip_prob=0.5, progress=False)
    cache = TeacherCache(tmp_path / "c")
    assert cache.manifest["num_shards"] == 3 and cache.augs == 3 and cache.manifest["captions"] == 3
    assert cache.manifest["teachers"][0]["name"] == "clip-vit-tiny"
    i, k = 6, 2
    params = cache.aug(i, k)
    im, caps = source.load(i)
    assert np.allclose(params, sample_aug(5, i, k, (0.5, 1.0), (3 / 4, 4 / 3), 0.5, 1.0))
    with torch.no_grad():
        # the student's view of the crop (its centre square) at the teacher's size: tests/test_views.py checks it
        ref = teacher.encode_image(teacher_view(teacher.preprocess)(apply_aug(im, params), "center")[None])[0].numpy()
        ref_t = teacher.encode_text(teacher.tokenizer([caps[1]]))[0].numpy()
    assert np.abs(cache.image_embedding(i, k) - ref).max() < 2e-3  # fp16 storage
    assert np.abs(cache.text_embedding(i, 1) - ref_t).max() < 2e-3
    # Resume: a killed run left shard 1 missing; rebuilding makes only that one.
    import shutil

    shutil.rmtree(tmp_path / "c" / "shard_00001")
    before = os.stat(tmp_path / "c" / "shard_00000" / "img_0.npy").st_mtime_ns
    with pytest.raises(CacheError, match=r"is incomplete: 1 of 3 "):
        TeacherCache(tmp_path / "c")
    build_cache([teacher], source, tmp_path / "c", augs=3, shard_size=4, batch_size=6, seed=5, progress=False)
    assert os.stat(tmp_path / "c" / "shard_00000" / "img_0.npy").st_mtime_ns == before
    assert np.allclose(TeacherCache(tmp_path / "c").aug(i, k), params)
    with pytest.raises(CacheError, match="built from something else: augs: 3 in the cache, 2 now"):
        build_cache([teacher], source, tmp_path / "c", augs=2, shard_size=4, progress=False)
    # The teachers' precision is recorded (fp32 on the CPU by default); finishing the build in bf16 is refused.
    assert cache.manifest["teacher_precision"] == "fp32"
    with pytest.raises(CacheError, match='built from something else: teacher_precision: "fp32" in the cache, '
                                         '"bf16" now'):
        build_cache([teacher], source, tmp_path / "c", augs=3, shard_size=4, batch_size=6, seed=5, progress=False,
                    precision="bf16")


def test_training_from_cache_never_runs_the_teacher(tmp_path, monkeypatch):
    teacher = mobileclip.load_teacher("clip-vit-tiny")
    build_cache([teacher], SyntheticPairs("train", size=64, image_size=64), tmp_path / "c", augs=2,
                shard_size=32, progress=False, flip_prob=0.0)

    def forbidden(*a, **k):
        raise AssertionError("a teacher was loaded while training from a cache")

    monkeypatch.setattr("mobileclip.factory.load_teacher", forbidden)
    summary = train(_cfg(tmp_path / "run", "steps=3", f"data.cache={tmp_path / 'c'}", "losses.kd=1.0",
                         "losses.feature=0.5", "losses.icl=0.5", "losses.clip=0.25"))
    rows = _metrics(tmp_path / "run")
    assert {"kd_loss", "feature_loss", "icl_loss", "clip_loss", "agreement"} <= set(rows[-1])
    assert summary["bad_steps"] == 0


def test_online_teacher_with_other_tokenizer_and_image_size(tmp_path):
    """open_clip ViT-B-32 (224 px, 77 tokens, OpenAI mean/std) teaching a 64 px / 16-token student."""
    cfg = _cfg(tmp_path, "steps=2", "batch_size=4", "teachers=[open_clip:ViT-B-32]", "losses.kd=1.0",
               "losses.feature=1.0")
    tr = Trainer(cfg)
    item = tr.dataset[(0, 0)]
    assert item["image"].shape == (3, 64, 64) and item["tokens"].shape == (16,)
    assert item["image"].dtype == torch.uint8   # the student's view, normalized on the device (data.image_dtype)
    assert item["t_inputs_0"].shape == (3, 224, 224) and item["t_tokens_0"].shape == (77,)
    # Same crop, each through its own preprocessing: the teacher's 224 px view, its normalization undone with
    # CLIP's published constants and area-resampled to 64 px, is the student's 64 px image to within resampling
    # error (~0.004 mean absolute difference), while another crop of the same picture (the next epoch's) is
    # several times further away (~0.06).
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1)
    teacher_px = torch.nn.functional.interpolate((item["t_inputs_0"] * std + mean)[None], size=(64, 64),
                                                 mode="bilinear", antialias=True)[0]
    same = (teacher_px - item["image"].float() / 255).abs().mean().item()
    other = (teacher_px - tr.dataset[(0, 1)]["image"].float() / 255).abs().mean().item()
    assert same < 0.01 and other > 3 * same, (same, other)
    summary = tr.fit()
    rows = _metrics(tmp_path)
    assert "kd_loss" in rows[-1] and summary["bad_steps"] == 0


def test_corrupt_images_are_skipped_and_counted(tmp_path):
    rows = ["image,caption"]
    for i in range(20):
        Image.fromarray(np.full((32, 32, 3), i * 10, np.uint8)).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,grey level {i}")
    (tmp_path / "3.png").write_bytes(b"not a png at all")
    (tmp_path / "7.png").unlink()  # missing
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    cfg = load_config(None, BASE + [f"out={tmp_path / 'run'}", "data.source=captions",
                                    f"data.path={tmp_path / 'pairs.csv'}", "batch_size=10", "steps=4"])
    summary = train(cfg)
    # 4 steps x 10 = 2 epochs over 20 rows: each bad image is met twice.
    assert summary["skipped_images"] == 4 and set(summary["skipped_examples"]) == {3, 7}
    assert summary["bad_steps"] == 0


def test_nan_loss_skips_then_aborts(tmp_path, monkeypatch):
    from mobileclip.errors import TrainingError

    cfg = _cfg(tmp_path, "steps=5", "max_bad_steps=2")
    tr = Trainer(cfg)
    orig = tr.loss_terms

    def nan_terms(*a):
        total, terms, extra = orig(*a)
        return total * float("nan"), terms, extra

    tr.loss_terms = nan_terms
    before = {k: v.clone() for k, v in tr.student.state_dict().items()}
    with pytest.raises(TrainingError, match="non-finite.*max_bad_steps=2"):
        tr.fit()
    assert tr.bad_steps == 3
    after = tr.student.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if "running" not in k and "num_batches" not in k)


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \['losses.kdd'\]"):
        load_config(None, ["losses.kdd=1"])
    with pytest.raises(ConfigError, match="'sgd' is not one of"):
        load_config(None, ["precision=sgd"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(None, ["data.source=captions", "data.path=/no/such/file.csv"])
    with pytest.raises(ConfigError, match="need a teacher"):
        load_config(None, ["losses.kd=1.0"])
    with pytest.raises(ConfigError, match="not a teacher cache"):
        load_config(None, [f"data.cache={tmp_path}"])
    with pytest.raises(ConfigError, match="not both"):
        load_config(None, ["teachers=[open_clip:ViT-B-32]", f"data.cache={tmp_path}"])
    with pytest.raises(ConfigError, match="must divide"):
        load_config(None, ["batch_size=10", "accum_steps=3"])
    (tmp_path / "c.yaml").write_text("steps: 5\noptim:\n  lr: 3e-4\n")
    cfg = load_config(str(tmp_path / "c.yaml"), ["optim.lr=1e-3"])
    assert cfg.steps == 5 and cfg.optim.lr == 1e-3


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, out, result, extra=()):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from mobileclip.distill.samples import StepBatches, collate_train

    cfg = load_config(None, ["student=clip-vit-tiny", "batch_size=16", "data.size=64", "data.workers=0",
                             "progress=false", "aug.flip_prob=0.0", "steps=1", f"out={out}", "device=cpu",
                             *extra])
    tr = Trainer(cfg)
    keys = StepBatches(64, 16, 1, cfg.seed, rank=rank, world=world).indices_for_step(0)
    assert len(keys) == 8
    tr.opt.step = lambda *a, **k: None  # keep the (all-reduced) gradients
    assert type(tr.towers).__name__ == "DistributedDataParallel"
    tr.train_step(collate_train([tr.dataset[k] for k in keys]))
    torch.save(torch.get_rng_state(), f"{result}.rng{rank}")
    tr.gather_rng()   # every rank's random state, collected on rank 0 for its checkpoint
    if rank == 0:
        torch.save({"grads": {n: p.grad.clone() for n, p in tr.student.named_parameters() if p.grad is not None},
                    "rank_rng": [r["torch"] for r in tr.rank_rng]}, result)
    tr.env.teardown()


@pytest.mark.timeout(600)
@pytest.mark.parametrize("local_loss,accum", [(False, 1), (True, 2)])
def test_two_process_gloo_equals_one_process(tmp_path, local_loss, accum):
    """Two ranks with 8 samples each, their towers in DistributedDataParallel, give the gradients of one
    process with all 16.

    With ``local_loss`` each rank scores only its own rows against everything gathered, so
    the gathered rows' gradients must come back from the other rank's loss too. With accumulation the
    first micro-batch runs under DDP's ``no_sync`` and the reduction happens once, after the last.
    Rank 0 also collects every rank's random state for exact resume.
    """
    import torch.multiprocessing as mp

    port = _free_port()
    extra = (f"losses.local_loss={str(local_loss).lower()}", f"accum_steps={accum}")
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path / "ddp"), str(tmp_path / "ddp.pt"), extra), nprocs=2,
             join=True)
    saved = torch.load(tmp_path / "ddp.pt", weights_only=True)
    ddp = saved["grads"]
    own = [torch.load(tmp_path / f"ddp.pt.rng{r}", weights_only=True) for r in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(saved["rank_rng"], own)) and not torch.equal(*own)
    one = _grads_after_one_step(tmp_path / "one", 1)
    assert ddp.keys() == one.keys() and "logit_scale" in one
    for k in one:
        assert torch.allclose(one[k], ddp[k], rtol=1e-4, atol=1e-7), k


def test_demo_pipeline_quick(tmp_path):
    """The demo end to end (teacher -> cache -> distilled and clip-only students -> report), few steps."""
    from mobileclip.app.demo import run_demo

    report = run_demo(tmp_path, quick=True)
    assert [r["model"] for r in report["rows"]] == ["teacher", "student, distilled", "student, distilled + unpaired",
                                                    "student, clip loss only"]
    assert (tmp_path / "cache_images" / "manifest.json").is_file() and (tmp_path / "unpaired" / "student").is_dir()
    assert (tmp_path / "report.md").is_file() and json.loads((tmp_path / "report.json").read_text())["rows"]
    assert (tmp_path / "cache" / "manifest.json").is_file()
    cfg = (tmp_path / "distilled" / "train_config.yaml").read_text()
    assert "cache:" in cfg and str(tmp_path / "cache") in cfg
    rows = _metrics(tmp_path / "distilled")
    assert "kd_loss" in rows[-1] and "kd_loss" not in _metrics(tmp_path / "clip_only")[-1]
    ex = {(r["format"], r["precision"]): r for r in report["exports"]}
    assert ex[("ONNX", "fp32")]["passed"] and ex[("ONNX", "fp32")]["image_min_cosine"] >= 0.99999
    assert ex[("ONNX", "int8")]["image_min_cosine"] >= 0.99 and ex[("ONNX", "int8")]["mb"] < ex[("ONNX", "fp32")]["mb"]
    assert (tmp_path / "bundles" / "onnx-int8" / "manifest.json").is_file()
    md = (tmp_path / "report.md").read_text()
    from mobileclip.backends.web_browser import browser_unavailable

    if ("Web", "fp32") in ex:   # exported where the web app's JS libraries are installed
        web = ex[("Web", "fp32")]
        assert web["passed"] and "## In the browser (web bundle)" in md
        if browser_unavailable() is None:
            assert not web["browser"]["misses"] and "| image |" in md and "Parity passed." in md
    assert "## The distilled student, exported" in md and "## The torch-free runtime" in md and "## Latency" in md
    assert "clip-only student on zero-shot and retrieval**" in md
    rt = report["runtime"]
    assert len(rt["classified"]) == 4 and all(0 < c["probability"] <= 1 for c in rt["classified"])
    assert len(rt["hits"]) == 5 and rt["hits"][0]["score"] >= rt["hits"][-1]["score"]
    bench = json.loads((tmp_path / "bench" / "bench.json").read_text())
    assert {r["runtime"] for r in bench["rows"] if r["status"] == "ok"} == {"torch", "onnxruntime"}


def test_demo_says_plainly_whether_distillation_is_ahead():
    from mobileclip.app.demo import distillation_verdict

    row = lambda m, z, n, r: {"model": m, "zeroshot_top1": z, "zeroshot_novel_top1": n, "retrieval_R@1": r}  # noqa
    rows = [row("teacher", .3, .25, .36), row("student, distilled", .26, .22, .286),
            row("student, distilled + unpaired", .27, .23, .32), row("student, clip loss only", .244, .189, .297)]
    text = distillation_verdict(rows)
    assert "**The distilled student is not ahead of the clip-only student on zero-shot and retrieval**: it is level " \
           "or behind on retrieval R@1 (-1.1 points)" in text
    assert "**The distilled + unpaired student is ahead of the clip-only student on zero-shot and retrieval** " \
           "(zero-shot top-1 on held-out images +2.6, on held-out colour-shape pairs +4.1, retrieval R@1 +2.3" in text


def _write_shards(root, n_shards=2, per_shard=6, corrupt=(), no_caption=()):
    import io
    import tarfile

    root.mkdir(parents=True, exist_ok=True)
    k = 0
    for s in range(n_shards):
        with tarfile.open(root / f"{s:03d}.tar", "w") as tf:
            for _ in range(per_shard):
                buf = io.BytesIO()
                Image.fromarray(np.full((24, 32, 3), 10 * k, np.uint8)).save(buf, "PNG")
                data = b"garbage" if k in corrupt else buf.getvalue()
                files = [(f"s{k:04d}.png", data)]
                if k not in no_caption:
                    files.append((f"s{k:04d}.txt", f"grey image number {k}".encode()))
                for name, payload in files:
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tf.addfile(info, io.BytesIO(payload))
                k += 1
    return str(root) + "/{000..%03d}.tar" % (n_shards - 1)


def test_webdataset_shards_as_a_source(tmp_path):
    from mobileclip.distill.sources import WebDatasetPairs

    pattern = _write_shards(tmp_path / "shards", corrupt={4}, no_caption={9})
    src = WebDatasetPairs(pattern)
    assert len(src) == 11 and src.incomplete == 1  # the sample without a caption is left out
    im, caps = src.load(0)
    assert im.size == (32, 24) and caps == ["grey image number 0"]
    assert src.load(4)[0] is None  # undecodable image: skipped by the trainer
    with pytest.raises(mobileclip.DatasetError, match="do not exist"):
        WebDatasetPairs(str(tmp_path / "shards" / "{000..005}.tar"))
    # Cache over the shards, then train from the cache: the corrupt image is skipped and counted.
    teacher = mobileclip.load_teacher("clip-vit-tiny")
    build_cache([teacher], src, tmp_path / "c", augs=1, shard_size=8, progress=False, flip_prob=0.0)
    cache = TeacherCache(tmp_path / "c")
    assert cache.manifest["dataset"] == {"kind": "webdataset", "shards": pattern} and not cache.ok(4)
    summary = train(load_config(None, BASE + [f"out={tmp_path / 'run'}", f"data.cache={tmp_path / 'c'}",
                                              "batch_size=11", "steps=2", "losses.kd=1.0"]))
    assert summary["skipped_images"] == 2 and summary["skipped_examples"] == [4, 4]
    # A cache of shards built before members were read by position (racing workers) is refused, and not resumed.
    assert cache.manifest["shard_reads"] == "positional"
    old = tmp_path / "old"
    shutil.copytree(tmp_path / "c", old)
    m = json.loads((old / "manifest.json").read_text())
    del m["shard_reads"]
    (old / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(CacheError, match="before their members were read by position.*rebuild"):
        TeacherCache(old)
    with pytest.raises(CacheError, match="before their members were read by position"):
        build_cache([teacher], src, old, augs=1, shard_size=8, progress=False, flip_prob=0.0)
    # And online, straight from the shards.
    summary = train(load_config(None, BASE + [f"out={tmp_path / 'run2'}", "data.source=webdataset",
                                              f"data.path={pattern}", "batch_size=11", "steps=1"]))
    assert summary["skipped_images"] == 1


def test_data_is_deterministic_across_workers_and_ranks(tmp_path):
    from mobileclip.distill.samples import StepBatches, collate_train

    tr = Trainer(_cfg(tmp_path, "steps=3"))

    def batches(workers):
        loader = torch.utils.data.DataLoader(tr.dataset, batch_sampler=StepBatches(256, 16, 3, 0),
                                             num_workers=workers, collate_fn=collate_train)
        return list(loader)

    a, b = batches(0), batches(2)
    for x, y in zip(a, b):
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["tokens"], y["tokens"])
    glob = StepBatches(256, 16, 3, 0).indices_for_step(2)
    parts = [StepBatches(256, 16, 3, 0, rank=r, world=4).indices_for_step(2) for r in range(4)]
    assert sum(parts, []) == glob and len({i for p in parts for i, _ in p}) == 16
    # A new epoch is a new permutation, and augmentation choices change with it.
    e0, e1 = StepBatches(256, 16, 32, 0).indices_for_step(0), StepBatches(256, 16, 32, 0).indices_for_step(16)
    assert e1[0][1] == 1 and [i for i, _ in e0] != [i for i, _ in e1]


@pytest.mark.slow
def test_compiled_student_trains(tmp_path):
    """compile=true (torch.compile of the encoders) trains and saves a plain checkpoint. Slow on CPU."""
    summary = train(_cfg(tmp_path, "steps=2", "compile=true", "batch_size=8"))
    assert summary["bad_steps"] == 0
    sd = mobileclip.load_checkpoint(tmp_path / "student").state_dict()
    assert not any("_orig_mod" in k for k in sd)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; none on this machine")
def test_bf16_training_on_gpu(tmp_path):
    cfg = _cfg(tmp_path, "steps=5", "precision=auto", "batch_size=32", "optim.lr=1e-3")
    tr = Trainer(cfg)
    assert tr.precision == "bf16" and tr.device.type == "cuda"
    summary = tr.fit()
    assert summary["bad_steps"] == 0
    assert all(np.isfinite(r["loss"]) for r in _metrics(tmp_path))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; none on this machine")
def test_compiled_bf16_step_matches_eager_on_gpu(tmp_path):
    """One bf16 step of mobileclip-s0, torch.compile'd and eager, from the same weights and batch: the loss and
    gradient norm agree to bf16 accuracy and are finite (on CPU this combination is refused: it aborts)."""
    from mobileclip.distill.samples import StepBatches, collate_train

    rows = {}
    for compiled in (False, True):
        torch.manual_seed(0)
        tr = Trainer(_cfg(tmp_path / str(compiled), "student=mobileclip-s0", "steps=1", "batch_size=16",
                          "data.size=32", "data.image_size=64", "precision=bf16", f"compile={str(compiled).lower()}"))
        tr.opt.step = lambda *a, **k: None
        batch = collate_train([tr.dataset[k] for k in StepBatches(32, 16, 1, tr.cfg.seed).indices_for_step(0)])
        rows[compiled] = tr.train_step(tr.to_device(batch))
    assert all(r["finite"] and np.isfinite(r["grad_norm"]) for r in rows.values())
    assert rows[True]["loss"] == pytest.approx(rows[False]["loss"], rel=2e-2)
    assert rows[True]["grad_norm"] == pytest.approx(rows[False]["grad_norm"], rel=5e-2)


def test_ensemble_cache_built_by_two_ranks(tmp_path):
    """Two teachers of different sizes in one cache; ranks 0 and 1 build disjoint shards."""
    t1 = mobileclip.load_teacher("clip-vit-tiny")
    t2 = mobileclip.load_teacher("open_clip:ViT-B-32")
    src = SyntheticPairs("train", size=12, image_size=64, seed=0)
    kw = dict(augs=1, shard_size=4, batch_size=8, flip_prob=0.0, progress=False)
    build_cache([t1, t2], src, tmp_path / "c", rank=1, world=2, **kw)
    assert sorted(p.name for p in (tmp_path / "c").glob("shard_*")) == ["shard_00001"]
    build_cache([t1, t2], src, tmp_path / "c", rank=0, world=2, **kw)
    cache = TeacherCache(tmp_path / "c")
    assert cache.teacher_dims == [256, 512] and cache.num_teachers == 2
    emb = cache.image_embedding(5, 0)  # both teachers, concatenated
    assert emb.shape == (768,)
    assert np.linalg.norm(emb[:256].astype(np.float32)) == pytest.approx(1.0, abs=1e-2)
    assert np.linalg.norm(emb[256:].astype(np.float32)) == pytest.approx(1.0, abs=1e-2)
    summary = train(_cfg(tmp_path / "run", "steps=2", "batch_size=6", f"data.cache={tmp_path / 'c'}",
                         "losses.kd=1.0", "losses.feature=1.0"))
    assert summary["bad_steps"] == 0 and "feature_loss" in _metrics(tmp_path / "run")[-1]


def _gather_worker(rank, world, port, result):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import torch.distributed as dist

    from mobileclip.distill.distributed import gather

    dist.init_process_group("gloo", rank=rank, world_size=world)
    x = torch.full((2 + rank, 3), float(rank + 1), requires_grad=True)  # rank 0: 2 rows, rank 1: 3 rows
    g = gather(x, world, with_grad=True)
    (g * torch.arange(g.shape[0]).float()[:, None]).sum().backward()
    if rank == 0:
        torch.save({"g": g.detach(), "grad": x.grad}, result)
    del g, x
    dist.barrier()
    dist.destroy_process_group()


def test_gather_handles_ranks_with_different_batch_sizes(tmp_path):
    """After an unreadable image is dropped on one rank, the ranks' batches differ in size."""
    import torch.multiprocessing as mp

    mp.spawn(_gather_worker, args=(2, _free_port(), str(tmp_path / "g.pt")), nprocs=2, join=True)
    out = torch.load(tmp_path / "g.pt", weights_only=True)
    assert out["g"][:, 0].tolist() == [1, 1, 2, 2, 2]
    # d/dx of sum(row_index * g) summed over both ranks' identical losses: 2 x row index.
    assert out["grad"][:, 0].tolist() == [0.0, 2.0]


def test_fp32_on_cuda_means_ieee_fp32_in_cache_teacher_and_the_trainer(tf32_everywhere):
    """Issue 21: cache-teacher's (and the trainer's) fp32 on CUDA runs convolutions and matmuls in IEEE fp32 —
    cuDNN's default would run fp32 convolutions in TF32 — and restores the settings after; bf16 is autocast, and
    the CPU is left alone."""
    from mobileclip.precision import autocast

    conv, matmul = tf32_everywhere
    with autocast("fp32", torch.device("cuda")):
        assert (conv.fp32_precision, matmul.fp32_precision) == ("ieee", "ieee")
    assert (conv.fp32_precision, matmul.fp32_precision) == ("tf32", "tf32")
    with autocast("fp32", torch.device("cpu")):
        assert (conv.fp32_precision, matmul.fp32_precision) == ("tf32", "tf32")
    assert isinstance(autocast("bf16", torch.device("cpu")), torch.autocast)


def test_worker_batches_are_sized_to_the_shared_memory(monkeypatch):
    """Issue 21: DataLoader workers pass batches through /dev/shm (a container's default is 64 MB: "Bus error"
    mid-run); the prefetch factor is lowered until workers x prefetch batches fit in half of it, and a batch too
    large for even one per worker is refused before training, naming the fix."""
    from mobileclip.distill.loader import shm_free, shm_prefetch

    mb = 1_000_000
    assert shm_prefetch(10 * mb, workers=2, free=1000 * mb) == 4          # 2 x 4 x 12.5 MB in 500 MB: all 4
    assert shm_prefetch(10 * mb, workers=8, free=400 * mb) == 2           # 8 x 2 x 12.5 MB = 200 MB
    with pytest.raises(ConfigError, match=r"data.workers=8: each worker passes batches of about 62 MB through "
                                          r"/dev/shm, which has 64 MB free; .*--shm-size"):
        shm_prefetch(50 * mb, workers=8, free=64 * mb)
    import mobileclip.distill.loader as loader

    monkeypatch.setattr(loader, "shm_free", lambda path="/dev/shm": None)   # no /dev/shm (macOS): as asked
    assert shm_prefetch(50 * mb, workers=8) == 4
    monkeypatch.undo()
    assert shm_free() is None or shm_free() > 0
