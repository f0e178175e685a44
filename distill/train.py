"""The distillation trainer: ``mobileclip distill`` and ``mobileclip.distill.train(config)``.

Straight-line code in sections. One optimizer step:

1. the rank's share of the global batch arrives (data depends only on the step number);
2. student features for every micro-batch; teacher features from the cache (or, online,
   from the frozen teachers);
3. the losses over the *whole* accumulated, all-rank batch; with accumulation this is
   GradCache (Gao et al. 2021): features first without a graph, the loss and its gradient
   w.r.t. the features once, then each micro-batch is recomputed with a graph and
   back-propagated with its slice of that gradient. The gradients equal those of one big
   batch, so contrastive negatives and distillation targets span the accumulated batch;
4. gradients averaged across ranks, clipped, AdamW step, cosine schedule, logit scale
   clamped to ln(100). A non-finite loss or gradient skips the step and is counted.

With several processes the towers run inside ``torch.nn.parallel.DistributedDataParallel``
(one forward for both towers, :class:`Towers`): its bucketed all-reduce overlaps the
backward pass and writes into the gradients in place (``gradient_as_bucket_view``). Under
GradCache every recomputed micro-batch but the last runs in ``no_sync()``, so the gradients
are reduced once per step. The few parameters used only by the losses (the logit scale and
bias, the losses' own heads) are left out of DDP and averaged with one small all-reduce.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from tqdm.auto import tqdm

from mobileclip.checkpoint import save_checkpoint, unwrap
from mobileclip.errors import ConfigError, MobileCLIPError, TrainingError
from mobileclip.files import atomic_write_json
from mobileclip.precision import autocast, resolve_precision

from .blocks import (HEAD_PARAMS, KeepRunningStats, Towers, build_source, lr_factor, param_groups, resolve_device,
                     split_batch)
from .cache import CacheError, TeacherCache, teacher_differences, teacher_dim
from .config import TrainConfig
from .distributed import DistEnv, all_reduce_grads, any_rank, gather
from .images import ImageNormalizer, decode_deferred
from .loader import shm_prefetch, start_loader
from .losses import StudentOut, TeacherOut, build_losses, max_logit_scale
from .rundir import RUN_MARKERS, check_run_dir, drop_rows_after, find_resume_dir
from .samples import (MixedSamples, MixedStepBatches, StepBatches, TrainSamples, UnpairedSamples, collate_train,
                      pop_deferred)
from .sources import source_from_spec
from .state import TrainerState


class Trainer(TrainerState):
    def __init__(self, cfg: TrainConfig, resume: Optional[str] = None, overwrite: bool = False) -> None:
        from mobileclip.factory import load_teacher

        self.cfg = cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        check_run_dir(Path(cfg.out), resume, overwrite, main=int(os.environ.get("RANK", "0")) == 0)
        if resume:
            find_resume_dir(Path(resume))   # a clear error before any model is built
        self.env = DistEnv()
        self.device = resolve_device(cfg, self.env)
        self.precision = resolve_precision(cfg.precision, self.device, compile=cfg.compile)
        self.env.setup(self.device, cfg.dist_timeout_min)
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank

        # --- models and data
        self.student, self.preprocess, self.tokenizer, self.init_report = self._build_student(resume)
        self.student.to(self.device).train()
        if self.init_report is not None and self.env.main and not resume:
            print(f"student {cfg.student}: {self.init_report.summary()}")
            if not self.init_report.complete:
                print(f"student layers not loaded (trained from their fresh init): "
                      f"{', '.join(self.init_report.not_loaded_layers())}")
        self.cache = TeacherCache(cfg.data.cache) if cfg.data.cache else None
        if self.cache is not None:
            self.source = source_from_spec(self.cache.manifest["dataset"])
            self.cache.check_source(self.source, progress=cfg.progress and self.env.main)
            check_view(self.cache, self.preprocess, "data.cache")
            self.teachers = []  # a trainer reading a cache never runs the teacher
            teacher_dims = self.cache.teacher_dims
            own_scales = self.cache.teacher_scales
        else:
            self.source = build_source(cfg)
            self.teachers = [load_teacher(s, device=self.device) for s in cfg.teachers]
            teacher_dims = [teacher_dim(t, self.device) for t in self.teachers]
            own_scales = [float(t.scale) for t in self.teachers]
        # The teachers' multipliers in the KD terms: their own, or losses.kd_teacher_scale for all of them.
        kd_scale = cfg.losses.kd_teacher_scale
        self.teacher_scale_report = {"own": own_scales, "used": [kd_scale] * len(own_scales) if kd_scale
                                     else own_scales, "from": "losses.kd_teacher_scale" if kd_scale else
                                     "each teacher's own"}
        self.teacher_scales = torch.tensor(self.teacher_scale_report["used"], dtype=torch.float32, device=self.device)
        self.losses = build_losses(cfg.losses.weights(), self.student.embed_dim, teacher_dims or [0],
                                   cfg.losses.local_loss, cfg.losses.feature_alpha).to(self.device)
        self.weights = cfg.losses.weights()
        if cfg.losses.feature_alpha and teacher_dims:
            self.teacher_scale_report["feature_per_teacher"] = self.losses["feature"].teacher_weights
        if self.env.world > 1:  # as DDP does: every rank starts from rank 0's weights
            for t in [*self.student.state_dict().values(), *self.losses.state_dict().values()]:
                dist.broadcast(t, src=0)
        torch.manual_seed(cfg.seed + self.env.rank)  # rank-specific randomness from here on
        self.dataset = TrainSamples(self.source, self.preprocess, self.tokenizer, cfg.seed, dataclass_dict(cfg.aug),
                                    cache=self.cache, teachers=self.teachers, **self._pipeline())
        self.normalize = ImageNormalizer.for_preprocess(self.preprocess, self.device)   # uint8 batches, on device
        pcfg = getattr(self.preprocess, "cfg", None)  # for JPEGs decoded on the device (data.decoder=device)
        self.images_interpolation = getattr(pcfg, "interpolation", "bilinear")
        self.image_size = getattr(pcfg, "image_size", 0)
        self.unpaired = self._unpaired_parts()
        if self.unpaired:
            self.dataset = MixedSamples([self.dataset] + [p["dataset"] for p in self.unpaired])

        # --- optimisation
        self.params = [p for m in (self.student, self.losses) for p in m.parameters() if p.requires_grad]
        self.towers = Towers(self.student, cfg.compile)
        # what DDP does not reduce: the student's head parameters and the losses' (averaged by all_reduce_grads)
        self.head_params = [p for n, p in self.student.named_parameters() if n in HEAD_PARAMS and p.requires_grad]
        self.head_params += [p for p in self.losses.parameters() if p.requires_grad]
        if self.env.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            DDP._set_params_and_buffers_to_ignore_for_model(self.towers, [f"student.{n}" for n in HEAD_PARAMS])
            # No buffer sync in forward: every rank keeps its own BatchNorm statistics (rank 0's are saved), as
            # without DDP (newer PyTorch spells it forward_sync_buffers); the weights were broadcast above.
            import inspect

            no_sync_buffers = ({"forward_sync_buffers": False}
                               if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters
                               else {"broadcast_buffers": False})
            self.towers = DDP(self.towers, device_ids=[self.device] if self.device.type == "cuda" else None,
                              gradient_as_bucket_view=True, init_sync=False, **no_sync_buffers)
        self.opt = torch.optim.AdamW(param_groups([self.student, self.losses], cfg.optim.weight_decay),
                                     lr=cfg.optim.lr, betas=(cfg.optim.beta1, cfg.optim.beta2), eps=cfg.optim.eps)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: lr_factor(s, cfg))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")

        self.out = Path(cfg.out)
        self.rank_rng: Optional[list] = None   # every rank's random state at the last gather_rng()
        self.step = 0
        self.bad_steps = 0
        self.empty_steps = 0   # steps whose every image was unreadable (nothing to train on)
        self.skipped_images: list = []
        self.decode_fallbacks = 0   # data.decoder=device: batched decodes retried one image at a time (this process)
        if resume:
            self.load_state(Path(resume))

    def _pipeline(self) -> dict:
        d = self.cfg.data
        return dict(image_dtype=d.image_dtype, pretokenize=d.pretokenize, token_cache=d.token_cache, draft=d.draft,
                    decoder=d.decoder, resize=d.resize)

    def _unpaired_parts(self) -> list:
        """The image-only and text-only caches, checked against the paired cache's teachers and their data."""
        parts = []
        for key, kind, ratio in (("image_cache", "images", "image_ratio"), ("text_cache", "texts", "text_ratio")):
            path = getattr(self.cfg.data, key)
            if not path:
                continue
            cache = TeacherCache(path)
            if cache.modality != kind:
                raise ConfigError(f"data.{key}: {path!r} is a cache of {cache.modality}, not of {kind} without "
                                  f"{'captions' if kind == 'images' else 'images'}; build one with "
                                  f"`mobileclip cache-teacher --{kind} ...`")
            diff = teacher_differences(self.cache.manifest["teachers"], cache.manifest["teachers"],
                                       "in data.cache", f"in data.{key}")
            if diff:
                raise CacheError(f"data.{key} ({path!r}) was built by other teachers than data.cache: "
                                 f"{'; '.join(diff)}. Its embeddings would not be comparable; rebuild it with the "
                                 "same --teacher")
            source = source_from_spec(cache.manifest["dataset"])
            cache.check_source(source, progress=self.cfg.progress and self.env.main)
            check_view(cache, self.preprocess, f"data.{key}")
            parts.append({"kind": kind, "cache": cache, "source": source,
                          "per_step": round(self.cfg.batch_size * getattr(self.cfg.data, ratio)),
                          "dataset": UnpairedSamples(source, cache, self.preprocess, self.tokenizer, self.cfg.seed,
                                                     **self._pipeline())})
        return parts

    def _build_student(self, resume: Optional[str]) -> tuple:
        """The student: on resume the run's own network (from its last/student/config.json, whatever the
        registered model has become since), else from the config, with its initial weights."""
        from mobileclip.checkpoint import CONFIG_NAME, read_config
        from mobileclip.config import architecture_differences
        from mobileclip.factory import create_model, create_student, resolve_student_name, student_config
        from mobileclip.zoo import list_models

        saved = find_resume_dir(Path(resume)) / "student" if resume else None
        if saved is None or not (saved / CONFIG_NAME).is_file():
            return create_student(self.cfg.student, self.cfg.student_pretrained or None, self.cfg.student_embed_dim,
                                  image_size=self.cfg.student_image_size,
                                  context_length=self.cfg.student_context_length)
        arch = read_config(saved).get("architecture", {})
        name = resolve_student_name(self.cfg.student)[0]
        want = name if name in list_models() else read_config(Path(name)).get("architecture", {}).get("name")
        if arch.get("name") != want:
            raise TrainingError(f"cannot resume: the run in {str(saved.parent)!r} trained {arch.get('name')!r}, "
                                f"this config's student is {self.cfg.student!r}")
        model, preprocess, tokenizer = create_model(str(saved))   # weights replaced by train_state.pt's below
        if name in list_models() and self.env.main:
            want_cfg = student_config(name, self.cfg.student_embed_dim, self.cfg.student_image_size,
                                      self.cfg.student_context_length)[0]
            diff = architecture_differences(arch, want_cfg)
            if diff:
                print(f"resuming on the run's own {name} network, which differs from today's registered one "
                      f"({'; '.join(diff[:3])})")
        return model, preprocess, tokenizer, None

    # ------------------------------------------------------------ state
    # ------------------------------------------------------------ one step
    def autocast(self):
        return autocast(self.precision, self.device)

    def to_device(self, batch: dict) -> dict:
        """A collated batch on the training device (tensors only; copies from pinned memory are asynchronous).
        JPEGs left for the device (``data.decoder=device``) are decoded there; one it refuses drops its sample,
        which then appears in the batch's ``skipped``."""
        deferred = pop_deferred(batch)
        out = {k: (v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v)
               for k, v in batch.items()}
        for key, entries in deferred.items():
            decode_deferred(out, key, entries, self.device, self.image_size, self.images_interpolation)
        self.decode_fallbacks += out.pop("device_decode_fallbacks", 0)
        return out

    def _no_sync(self):
        return self.towers.no_sync() if hasattr(self.towers, "no_sync") else nullcontext()

    def student_features(self, chunk: dict) -> dict:
        """Student embeddings by group: ``img``/``txt`` (paired), ``uimg`` (image-only), ``utxt`` (text-only).
        Unpaired inputs go through the tower in the same call as the paired ones."""
        images, tokens = self.normalize(chunk["image"]), chunk["tokens"]
        if "ui_image" in chunk:
            images = torch.cat([images, self.normalize(chunk["ui_image"])])
        if "ut_tokens" in chunk:
            tokens = torch.cat([tokens, chunk["ut_tokens"]])
        with self.autocast():
            img, txt = self.towers(images, tokens)
        img, txt = img.float(), txt.float()
        n, m = chunk["image"].shape[0], chunk["tokens"].shape[0]
        out = {"img": img[:n], "txt": txt[:m]}
        if "ui_image" in chunk:
            out["uimg"] = img[n:]
        if "ut_tokens" in chunk:
            out["utxt"] = txt[m:]
        return out

    @torch.no_grad()
    def teacher_features(self, chunk: dict) -> Optional[dict]:
        """Teacher embeddings by group (as :meth:`student_features`), one ``[b, D_t]`` tensor per teacher."""
        if self.cache is not None:  # [b, sum of teacher dims] -> one [b, D_t] per teacher
            dims = self.cache.teacher_dims
            out = {}
            for group, key in (("img", "t_image"), ("txt", "t_text"), ("uimg", "ui_t_image"), ("utxt", "ut_t_text")):
                if key in chunk:
                    out[group] = [F.normalize(x.float(), dim=-1) for x in chunk[key].split(dims, dim=1)]
            return out
        if not self.teachers:
            return None
        imgs, txts = [], []
        for t, teacher in enumerate(self.teachers):
            with self.autocast():
                imgs.append(teacher.encode_image(chunk[f"t_inputs_{t}"], normalize=True).float())
                txts.append(teacher.encode_text(chunk[f"t_tokens_{t}"], normalize=True).float())
        return {"img": imgs, "txt": txts}

    def loss_terms(self, feats: dict, teacher: Optional[dict]) -> tuple:
        w = self.env.world
        img = feats["img"]

        def opt(group, grad):
            return gather(feats[group], w, grad) if group in feats else None

        s = StudentOut(gather(img, w, True), gather(feats["txt"], w, True), self.student.logit_scale.exp(),
                       self.student.logit_bias, image_only=opt("uimg", True), text_only=opt("utxt", True))
        t = None
        if teacher is not None:
            def per_teacher(group):
                return [gather(x, w, False) for x in teacher[group]] if group in teacher else None

            t = TeacherOut(per_teacher("img"), per_teacher("txt"), self.teacher_scales,
                           image_only=per_teacher("uimg"), text_only=per_teacher("utxt"))
        terms = {}
        for name, mod in self.losses.items():
            kwargs = {}
            if name == "clip" and self.cfg.losses.local_loss and w > 1:
                # this rank's rows: every rank's count, in rank order, from the gathered sizes
                sizes = gather(torch.tensor([img.shape[0]], device=img.device), w, False).tolist()
                start = sum(sizes[:self.env.rank])
                kwargs["rows"] = slice(start, start + sizes[self.env.rank])
            terms.update(mod(s, t, **kwargs))
        total = sum(self.weights[k.removesuffix("_loss")] * v for k, v in terms.items())
        extra = {}
        if t is not None:
            with torch.no_grad():  # student-teacher agreement: same image->text argmax within the batch
                s_arg = (s.image_features @ s.text_features.T).argmax(1)
                t_arg = (t.image_features[0] @ t.text_features[0].T).argmax(1)
                extra["agreement"] = float((s_arg == t_arg).float().mean())
        return total, terms, extra

    def train_step(self, batch: dict) -> dict:
        A = self.cfg.accum_steps
        chunks = split_batch(batch, A)
        self.opt.zero_grad(set_to_none=True)
        teacher = [self.teacher_features(c) for c in chunks]
        t_all = None
        if teacher[0] is not None:  # per group and teacher, the micro-batches concatenated
            t_all = {g: [torch.cat([c[g][k] for c in teacher]) for k in range(len(teacher[0][g]))]
                     for g in teacher[0]}
        if len(chunks) == 1:
            total, terms, extra = self.loss_terms(self.student_features(chunks[0]), t_all)
            finite = not any_rank(not torch.isfinite(total).item(), self.env.world, self.device)
            if finite:
                self.scaler.scale(total).backward()
        else:
            # GradCache: features without a graph, the loss once, then per-chunk backward.
            rng = []
            parts = []
            cuda = self.device.type == "cuda"
            with torch.no_grad(), KeepRunningStats(self.student):
                for c in chunks:
                    rng.append((torch.get_rng_state(), torch.cuda.get_rng_state(self.device) if cuda else None))
                    parts.append(self.student_features(c))
            feats = {g: torch.cat([p[g] for p in parts]).requires_grad_() for g in parts[0]}
            total, terms, extra = self.loss_terms(feats, t_all)
            finite = not any_rank(not torch.isfinite(total).item(), self.env.world, self.device)
            if finite:
                self.scaler.scale(total).backward()
                off = dict.fromkeys(feats, 0)
                for i, (c, (state, cuda_state), p) in enumerate(zip(chunks, rng, parts)):
                    torch.set_rng_state(state)  # replay dropout / drop-path exactly
                    if cuda_state is not None:
                        torch.cuda.set_rng_state(cuda_state, self.device)
                    # DDP reduces once per step: after the last micro-batch's backward
                    with self._no_sync() if i < len(chunks) - 1 else nullcontext():
                        f = self.student_features(c)
                        outs, grads = [], []
                        for g, x in feats.items():
                            n = p[g].shape[0]
                            if x.grad is not None and n:
                                outs.append(f[g])
                                grads.append(x.grad[off[g]:off[g] + n])
                            off[g] += n
                        torch.autograd.backward(outs, grads)
        grad_norm = float("nan")
        if finite:
            all_reduce_grads(self.head_params, self.env.world)   # the towers' gradients were reduced by DDP
            self.scaler.unscale_(self.opt)
            max_norm = self.cfg.optim.grad_clip or math.inf   # 0: no clipping (the norm is still measured)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, max_norm))
            finite = math.isfinite(grad_norm) or self.precision == "fp16"  # the scaler handles fp16 overflow
        if finite:
            self.scaler.step(self.opt)
            self.scaler.update()
            with torch.no_grad():
                self.student.logit_scale.clamp_(0, max_logit_scale())
        else:
            self.opt.zero_grad(set_to_none=True)
            self.bad_steps += 1
            if self.bad_steps > self.cfg.max_bad_steps:
                raise TrainingError(
                    f"{self.bad_steps} steps had a non-finite loss or gradient (limit max_bad_steps="
                    f"{self.cfg.max_bad_steps}); lower optim.lr, raise optim.warmup_steps, or use precision=fp32")
        self.sched.step()
        row = {k: float(v.detach()) for k, v in terms.items()}
        row.update(loss=float(total.detach()), finite=finite, grad_norm=grad_norm, **extra)
        return row

    # ------------------------------------------------------------ evaluation
    def evaluate(self) -> dict:
        from .evaluate import evaluate_student

        was = self.student.training
        self.student.eval()
        try:
            return evaluate_student(unwrap(self.student), self.preprocess, self.tokenizer, self.cfg, self.source,
                                    self.device)
        finally:
            self.student.train(was)

    # ------------------------------------------------------------ the loop
    def fit(self) -> dict:
        """Train; a fresh run refused (a :class:`MobileCLIPError`) before its first step removes what it wrote,
        so the corrected command just runs again (a run that trained keeps its logs and checkpoints)."""
        fresh = self.step == 0 and self.env.main
        existed = self.out.exists()
        before = {p.name for p in self.out.iterdir()} if existed and fresh else set()
        try:
            return self._fit()
        except MobileCLIPError:
            if fresh and self.step == 0 and not (self.out / "last").exists():
                if not existed:
                    shutil.rmtree(self.out, ignore_errors=True)
                elif self.out.is_dir():
                    for p in self.out.iterdir():
                        if p.name not in before and p.name in RUN_MARKERS:
                            shutil.rmtree(p) if p.is_dir() else p.unlink()
            raise

    def _fit(self) -> dict:
        cfg, env = self.cfg, self.env
        if env.main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "train_config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
            if self.init_report is not None and self.step == 0:
                atomic_write_json(self.out / "student_init.json", self.init_report.to_dict())
        if env.main and self.step:   # resumed: the logs hold no step twice
            for name in ("metrics.jsonl", "eval.jsonl"):
                drop_rows_after(self.out / name, self.step)
        if self.unpaired:
            sampler = MixedStepBatches([(len(self.source), cfg.batch_size, "the paired dataset")]
                                       + [(len(p["source"]), p["per_step"], f"the {p['kind']} without "
                                           f"{'captions' if p['kind'] == 'images' else 'images'} (data."
                                           f"{'image' if p['kind'] == 'images' else 'text'}_ratio x batch_size)")
                                          for p in self.unpaired],
                                       cfg.steps, cfg.seed, env.rank, env.world, self.step)
        else:
            sampler = StepBatches(len(self.source), cfg.batch_size, cfg.steps, cfg.seed, env.rank, env.world,
                                  self.step)
        prefetch = None
        if cfg.data.workers:   # worker batches travel through /dev/shm: as many in flight as it holds, up to 4
            per_step = cfg.batch_size // env.world + sum(p["per_step"] for p in self.unpaired)
            prefetch = shm_prefetch(per_step * 3 * self.image_size ** 2
                                    * (1 if cfg.data.image_dtype == "uint8" else 4), cfg.data.workers)
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=sampler, num_workers=cfg.data.workers, collate_fn=collate_train,
            pin_memory=self.device.type == "cuda", prefetch_factor=prefetch)
        metrics_path = self.out / "metrics.jsonl"
        bar = tqdm(total=cfg.steps, initial=self.step, desc="distill", disable=not (cfg.progress and env.main),
                   dynamic_ncols=True)
        t_last, n_last = time.time(), 0
        data_time = 0.0
        t_data = time.time()
        eval_rows = []
        for batch in start_loader(loader):
            data_time += time.time() - t_data
            batch = self.to_device(batch)
            self.skipped_images.extend(batch["skipped"])
            if "image" not in batch:  # every image of this batch was unreadable: the step is skipped and counted
                self.empty_steps += 1
                if self.empty_steps > cfg.max_bad_steps:
                    raise TrainingError(
                        f"{self.empty_steps} steps had no readable image (every sample of the batch was skipped; "
                        f"limit max_bad_steps={cfg.max_bad_steps}), e.g. sample {self.skipped_images[-1]}: check the "
                        "data (paths, permissions, formats) or the image decoder")
                self.step += 1
                self.sched.step()   # the schedule follows the step number, as a resumed run's does
                continue
            row = self.train_step(batch)
            self.step += 1
            n_last += cfg.batch_size
            if env.main and (self.step % cfg.log_every == 0 or self.step == cfg.steps):
                now = time.time()
                row.update(step=self.step, lr=self.opt.param_groups[0]["lr"],
                           logit_scale=float(self.student.logit_scale.detach().exp()),
                           samples_per_s=n_last / (now - t_last), data_wait_s=data_time,
                           skipped_images=len(self.skipped_images), bad_steps=self.bad_steps)
                t_last, n_last, data_time = now, 0, 0.0
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(row) + "\n")
                bar.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{row['lr']:.1e}",
                                sps=f"{row['samples_per_s']:.0f}")
            bar.update(1)
            if env.main and cfg.eval.every and self.step % cfg.eval.every == 0 and self.step < cfg.steps:
                ev = {"step": self.step, **self.evaluate()}
                eval_rows.append(ev)
                with open(self.out / "eval.jsonl", "a") as f:
                    f.write(json.dumps(ev) + "\n")
            if self.step % cfg.ckpt_every == 0 and self.step < cfg.steps:
                self.gather_rng()
                if env.main:
                    self.save_state()
            t_data = time.time()
        bar.close()
        summary = {"steps": self.step, "bad_steps": self.bad_steps, "empty_steps": self.empty_steps,
                   "skipped_images": len(self.skipped_images),
                   "skipped_examples": self.skipped_images[:20], "recipe": cfg.recipe or None,
                   "loss_weights": self.weights}
        if cfg.data.decoder == "device":
            summary["device_decode_fallbacks"] = self.decode_fallbacks
        if self.teacher_scales.numel():
            summary["teacher_scales"] = self.teacher_scale_report
        if self.init_report is not None:
            summary["student_init"] = {"source": self.init_report.source, "layout": self.init_report.layout,
                                       "loaded": self.init_report.loaded,
                                       "not_loaded_layers": self.init_report.not_loaded_layers()}
        self.gather_rng()
        if env.main:
            self.save_state()
            final = save_checkpoint(self.student, self.out / "student",
                                    extra={"train_config": cfg.to_dict()})
            ev = {"step": self.step, **self.evaluate()}
            with open(self.out / "eval.jsonl", "a") as f:
                f.write(json.dumps(ev) + "\n")
            summary.update(eval=ev, student=str(final))
            atomic_write_json(self.out / "summary.json", summary)
            if self.skipped_images:
                print(f"distill: {len(self.skipped_images)} unreadable images were skipped "
                      f"(e.g. sample {self.skipped_images[0]})")
        env.teardown()
        return summary


def check_view(cache: TeacherCache, preprocess, key: str) -> None:
    """Refuse a cache whose teachers embedded another view of each crop than the student sees."""
    from mobileclip.views import region_for

    if cache.modality == "texts":
        return
    mode = getattr(getattr(preprocess, "cfg", None), "resize_mode", "shortest")
    want, have = region_for(mode), cache.manifest.get("view")
    if have != want:
        seen = {"center": "each crop's centre square", "squash": "each whole crop, squashed"}
        raise CacheError(f"{key} ({str(cache.root)!r}): its teachers embedded {seen.get(have, have)} (view {have}), but "
                         f"this student (resize_mode {mode}) sees {seen[want]}; rebuild the cache with "
                         f"`mobileclip cache-teacher --view {want}`")


def dataclass_dict(x) -> dict:
    import dataclasses

    return dataclasses.asdict(x)


def train(cfg: TrainConfig, resume: Optional[str] = None, overwrite: bool = False) -> dict:
    """Run a distillation (or plain CLIP) training job; returns its summary.

    ``cfg.out`` must be new or empty, unless ``resume`` continues the run there or ``overwrite``
    replaces it (:func:`check_run_dir`).
    """
    return Trainer(cfg, resume, overwrite).fit()
