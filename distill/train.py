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

import gc
import json
import math
import os
import pickle
import shutil
import time
from contextlib import nullcontext
from datetime import timedelta
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from tqdm.auto import tqdm

from mobileclip.checkpoint import save_checkpoint, unwrap
from mobileclip.files import atomic_write, atomic_write_json, disk_full, old_dir_for, replace_dir, temp_dir_for
from mobileclip.errors import ConfigError, MobileCLIPError

from .cache import CacheError, TeacherCache, autocast, teacher_differences, teacher_dim
from .cache import resolve_precision as resolve_precision_name
from .config import TrainConfig
from .images import ImageNormalizer, decode_deferred
from .samples import (MixedSamples, MixedStepBatches, StepBatches, TrainSamples, UnpairedSamples, collate_train,
                      pop_deferred)
from .sources import CaptionPairs, SyntheticPairs, WebDatasetPairs, source_from_spec
from .losses import StudentOut, TeacherOut, build_losses, max_logit_scale


class TrainingError(MobileCLIPError):
    """Training cannot go on (too many non-finite steps, ...)."""


# ------------------------------------------------------------------ distributed helpers

class DistEnv:
    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.initialized_here = False

    def setup(self, device: torch.device, timeout_min: float = 60.0) -> None:
        """Join the process group. On CUDA the rank's GPU becomes the current device first (the
        pin-memory thread, NCCL's communicator and the barriers use it) and is bound to the group
        (``device_id``), so no rank touches GPU 0 by accident."""
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if self.world > 1 and not dist.is_initialized():
            cuda = device.type == "cuda"
            dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(minutes=timeout_min),
                                    device_id=device if cuda else None)
            self.initialized_here = True

    def teardown(self) -> None:
        if self.initialized_here and dist.is_initialized():
            dist.barrier()  # no rank tears down while another is still in a collective
            dist.destroy_process_group()

    @property
    def main(self) -> bool:
        return self.rank == 0


def gather(x: torch.Tensor, world: int, with_grad: bool) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0 (rank order).

    Ranks may hold different numbers of rows (an unreadable image dropped on one rank):
    rows are padded to the largest count for the collective and trimmed afterwards.
    """
    if world == 1:
        return x
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    sizes = [int(v.item()) for v in sizes]
    longest = max(sizes)
    padded = F.pad(x, (0, 0) * (x.dim() - 1) + (0, longest - x.shape[0])) if x.shape[0] < longest else x
    if with_grad:
        parts = _GatherWithGrad.apply(padded.contiguous()).split(longest)
    else:
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[:k] for p, k in zip(parts, sizes)], dim=0)


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward sums every rank's gradient for this rank's rows.

    Needed when the ranks' losses differ (``local_loss``): this rank's rows are negatives in
    the other ranks' losses. Unlike ``torch.distributed.nn.all_gather`` the graph holds no
    reference to the process group (the default group is used when backward runs), and the
    backward is one all-reduce, which every backend supports (gloo has no reduce-scatter).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x)
        ctx.rows = (dist.get_rank() * x.shape[0], x.shape[0])
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        start, n = ctx.rows
        return grad[start:start + n]


def all_reduce_grads(params: list, world: int) -> None:
    """Average gradients over ranks with one flat all-reduce (the few parameters outside DDP)."""
    if world == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


def any_rank(flag: bool, world: int, device: torch.device) -> bool:
    if world == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


# ------------------------------------------------------------------ building blocks

def resolve_device(cfg: TrainConfig, env: DistEnv) -> torch.device:
    """``auto``: the rank's GPU (``cuda:LOCAL_RANK``) when CUDA is available, else the CPU. ``cuda``
    without an index is the rank's GPU too; ``cuda:N`` is taken as given."""
    device = torch.device(cfg.device if cfg.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device={cfg.device}: no CUDA GPU is visible to PyTorch (torch "
                              f"{torch.__version__}, torch.cuda.is_available() is False); use device=cpu or auto")
        if device.index is None:
            if env.local_rank >= torch.cuda.device_count():
                raise ConfigError(f"LOCAL_RANK={env.local_rank} but only {torch.cuda.device_count()} GPU(s) are "
                                  "visible; start at most one process per GPU (torchrun --nproc-per-node)")
            device = torch.device("cuda", env.local_rank)
    return device


def resolve_precision(cfg: TrainConfig, device: torch.device) -> str:
    precision = resolve_precision_name(cfg.precision, device)
    if precision == "bf16" and cfg.compile and device.type == "cpu":
        # Measured with torch 2.14.1 on x86-64: one compiled bf16-autocast step of mobileclip-s0 aborts the
        # process ("free(): invalid next size", SIGABRT) in Inductor's generated CPU code; an earlier torch gave
        # NaN gradients on mobileclip-tiny. Eager bf16 and compiled fp32 are right. On CUDA the combination is
        # allowed and compared with eager by tests/test_distill.py::test_compiled_bf16_step_matches_eager_on_gpu.
        raise ConfigError("compile=true with precision=bf16 is not supported on CPU (torch.compile's CPU code "
                          "for bf16 autocast aborts on mobileclip-s0 and gave NaN gradients on mobileclip-tiny); "
                          "use precision=fp32 with compile, or compile=false with bf16")
    return precision


def build_source(cfg: TrainConfig):
    d = cfg.data
    if d.source == "synthetic":
        return SyntheticPairs("train", d.size, d.image_size, cfg.seed, d.two_object_prob)
    if d.source == "webdataset":
        return WebDatasetPairs(d.path)
    return CaptionPairs(d.path, d.image_root or None)


def param_groups(modules: list, weight_decay: float) -> list:
    """AdamW groups: no weight decay on norms, biases, scales and the logit scale (1-D params)."""
    decay, no_decay = [], []
    for m in modules:
        for name, p in m.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim < 2 or "logit_scale" in name or "logit_bias" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine decay to ``min_lr_ratio``."""
    w = cfg.optim.warmup_steps
    if step < w:
        return (step + 1) / w
    progress = (step - w) / max(1, cfg.steps - w)
    cos = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.optim.min_lr_ratio + (1 - cfg.optim.min_lr_ratio) * cos


UNPAIRED_PREFIXES = ("ui_", "ut_")   # image-only and text-only items in a batch (see data.UnpairedSamples)


def _split(batch: dict, n: int) -> list:
    """``n`` micro-batches; the paired rows and each unpaired part are split separately, in order."""
    keys = [k for k in batch if k != "skipped"]
    groups: dict = {}
    for k in keys:
        groups.setdefault(next((p for p in UNPAIRED_PREFIXES if k.startswith(p)), ""), []).append(k)
    bounds = {g: [round(i * batch[ks[0]].shape[0] / n) for i in range(n + 1)] for g, ks in groups.items()}
    chunks = []
    for i in range(n):
        if all(b[i + 1] == b[i] for b in bounds.values()):
            continue
        chunks.append({k: batch[k][bounds[g][i]:bounds[g][i + 1]] for g, ks in groups.items() for k in ks})
    return chunks


class Towers(torch.nn.Module):
    """The student's image and text towers behind one ``forward``, the unit DDP wraps (DDP hooks the
    module's ``forward``; the student itself is called through ``encode_image`` / ``encode_text``)."""

    def __init__(self, student: torch.nn.Module, compile: bool = False) -> None:
        super().__init__()
        self.student = student
        self._image = torch.compile(student.encode_image) if compile else student.encode_image
        self._text = torch.compile(student.encode_text) if compile else student.encode_text

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple:
        return self._image(images, normalize=True), self._text(tokens, normalize=True)


# Student parameters used by the losses only, never in the towers' forward: kept out of DDP.
HEAD_PARAMS = ("logit_scale", "logit_bias")


class _KeepRunningStats:
    """Restore BatchNorm running statistics on exit: GradCache's first, graph-free pass over the micro-batches
    must not update them, or every micro-batch would count twice (the recomputed pass updates them)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.buffers = [b for m in model.modules()
                        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats
                        for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]

    def __enter__(self):
        self.saved = [b.clone() for b in self.buffers]
        return self

    def __exit__(self, *exc) -> None:
        for b, v in zip(self.buffers, self.saved):
            b.copy_(v)


RUN_MARKERS = ("train_config.yaml", "metrics.jsonl", "summary.json", "last", "student", "eval.jsonl",
               "student_init.json")
NOT_STARTED = {"train_config.yaml", "student_init.json"}   # what a run writes before its first step


def check_run_dir(out: Path, resume: Optional[str], overwrite: bool, main: bool = True) -> None:
    """Refuse to write a run into a directory that holds another one, unless resuming it or replacing it.

    ``overwrite`` removes an existing *run* directory (one holding a run's files) before training; any
    other non-empty directory is refused either way, so nothing that is not a run can be deleted.
    """
    if resume and overwrite:
        raise ConfigError("--resume continues a run and --overwrite replaces it: pass one of them")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out={str(out)!r} is a file; give a directory for the run")
    if resume or not out.is_dir() or not any(out.iterdir()):
        return
    if {p.name for p in out.iterdir()} <= NOT_STARTED:   # a run that never reached its first step: nothing to resume
        if main:
            for name in NOT_STARTED:
                (out / name).unlink(missing_ok=True)
        return
    markers = [m for m in RUN_MARKERS if (out / m).exists()]
    if not markers:
        raise ConfigError(f"out={str(out)!r} is a non-empty directory that holds no run; choose another out= "
                          "(a run directory is never mixed with other files)")
    if not overwrite:
        raise ConfigError(f"out={str(out)!r} already holds a run ({', '.join(markers[:3])}); pass --resume "
                          f"{out} to continue it, --overwrite to replace it, or choose another out=")
    if main:
        import shutil

        shutil.rmtree(out)


def _drop_rows_after(path: Path, step: int) -> None:
    """Keep the rows of a JSONL log up to ``step`` (a resumed run rewrites what came after its checkpoint)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:   # a line cut by a crash
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
            keep.append(line)
    with atomic_write(path, "w") as f:
        f.write("".join(ln + "\n" for ln in keep))


def shm_free(path: str = "/dev/shm") -> Optional[int]:
    """Bytes free in the shared-memory filesystem DataLoader workers pass batches through (None: none there)."""
    try:
        st = os.statvfs(path)
    except (OSError, AttributeError):
        return None
    return st.f_bavail * st.f_frsize


def shm_prefetch(batch_bytes: int, workers: int, want: int = 4, free: Optional[int] = None) -> int:
    """The DataLoader prefetch factor whose batches in flight (``workers x prefetch``, each ``batch_bytes``, with
    room for the rest of a sample) fit in half of ``/dev/shm``: ``want`` when they fit, fewer when not, and a
    :class:`ConfigError` when not even one batch per worker does (a container's default 64 MB: "Bus error")."""
    free = shm_free() if free is None else free
    if free is None or batch_bytes <= 0:
        return want
    need = int(batch_bytes * 1.25)
    fits = int(free / 2 // (need * workers)) if workers else want
    if fits >= 1:
        return min(want, fits)
    raise ConfigError(f"data.workers={workers}: each worker passes batches of about {need / 1e6:.0f} MB through "
                      f"/dev/shm, which has {free / 1e6:.0f} MB free; lower data.workers or batch_size, or give the "
                      "container more shared memory (docker run --shm-size=8g)")


def start_loader(loader):
    """``iter(loader)``, with the interpreter's objects frozen while the workers fork (:func:`gc.freeze`, as
    Python's documentation advises before a fork): a collection in a worker would otherwise write to every
    object it inherited, and the kernel copy their pages into each worker."""
    if not loader.num_workers:
        return iter(loader)
    gc.collect()
    gc.freeze()
    try:
        return iter(loader)
    finally:
        gc.unfreeze()


class Trainer:
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
        self.precision = resolve_precision(cfg, self.device)
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
    def state_dict(self) -> dict:
        return {
            "step": self.step, "bad_steps": self.bad_steps, "skipped_images": self.skipped_images,
            "empty_steps": self.empty_steps, "model": unwrap(self.student).state_dict(), "losses": self.losses.state_dict(),
            "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
            "scaler": self.scaler.state_dict(), "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "rank_rng": self.rank_rng if self.rank_rng is not None else [self._rng_state()],
        }

    def _rng_state(self) -> dict:
        """This rank's random state: the CPU generator and its own GPU's."""
        cuda = self.device.type == "cuda"
        return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(self.device) if cuda else None}

    def gather_rng(self) -> None:
        """Every rank's random state, collected on rank 0 for the next :meth:`save_state` (a collective: all
        ranks call it). Dropout and drop-path draw from each rank's own generator, so exact resume needs all."""
        state = self._rng_state()
        if self.env.world == 1:
            self.rank_rng = [state]
            return
        cpu = {k: (v.cpu() if v is not None else None) for k, v in state.items()}
        states = [None] * self.env.world
        dist.all_gather_object(states, cpu)
        self.rank_rng = states

    def save_state(self, name: str = "last") -> Path:
        """Atomically replace ``out/<name>/`` with the full training state."""
        tmp = temp_dir_for(self.out / name)
        try:
            torch.save(self.state_dict(), tmp / "train_state.pt")
            save_checkpoint(self.student, tmp / "student")
            (tmp / "train_config.yaml").write_text(yaml.safe_dump(self.cfg.to_dict(), sort_keys=False))
            return replace_dir(tmp, self.out / name)
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)   # a full disk or an interrupt leaves no temporary
            err = disk_full(e, self.out / name)
            if err is not e:
                raise err from e
            raise

    def load_state(self, path: Path) -> None:
        path = find_resume_dir(path)
        f = path / "train_state.pt"
        try:
            state = torch.load(f, map_location=self.device, weights_only=True)
        except pickle.UnpicklingError as e:
            raise TrainingError(f"cannot resume: {str(f)!r} holds Python objects other than tensors and numbers, "
                                "so it was not loaded (it was not written by this trainer)") from e
        except (RuntimeError, EOFError, OSError, ValueError) as e:
            raise TrainingError(f"cannot resume: {str(f)!r} is truncated or damaged ({str(e).splitlines()[0][:120]}); "
                                "resume from an intact copy or start a new run") from e
        keys = ("step", "bad_steps", "skipped_images", "model", "losses", "optimizer", "scheduler", "scaler",
                "torch_rng", "cuda_rng")
        if not isinstance(state, dict) or any(k not in state for k in keys):
            raise TrainingError(f"cannot resume: {str(f)!r} is not a training state of this trainer (missing "
                                f"{[k for k in keys if not isinstance(state, dict) or k not in state][:4]})")
        try:
            unwrap(self.student).load_state_dict(state["model"])
            self.losses.load_state_dict(state["losses"])
            self.opt.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise TrainingError(f"cannot resume: the state in {str(f)!r} does not fit this run's student, losses or "
                                f"optimizer ({str(e).splitlines()[0][:160]}); resume with the run's own config") from e
        self.sched.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        ranks = state.get("rank_rng")   # absent in states saved before per-rank random states were kept
        if isinstance(ranks, list) and not all(isinstance(r, dict) and isinstance(r.get("torch"), torch.Tensor)
                                               for r in ranks):
            raise TrainingError(f"cannot resume: the per-rank random states in {str(f)!r} are damaged (rank_rng "
                                "holds something other than each rank's generator state); resume from an intact copy")
        if isinstance(ranks, list) and len(ranks) == self.env.world:
            mine = ranks[self.env.rank]
            torch.set_rng_state(mine["torch"].cpu())
            if mine.get("cuda") is not None and self.device.type == "cuda":
                torch.cuda.set_rng_state(mine["cuda"].cpu(), self.device)
        elif self.env.world == 1 or not isinstance(ranks, list):
            torch.set_rng_state(state["torch_rng"].cpu())
            if state["cuda_rng"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
        if isinstance(ranks, list) and len(ranks) != self.env.world and self.env.main:
            # the data of every step is the same whatever the number of processes; dropout's draws are not
            print(f"resuming on {self.env.world} process(es) a run saved by {len(ranks)}: every step sees the same "
                  "data, but dropout and drop-path draw from other random streams than the run would have "
                  "(resume on the same number of processes for an exact replay)")
        self.step, self.bad_steps = int(state["step"]), int(state["bad_steps"])
        # The learning rate follows this config's schedule (it may extend the run's `steps`).
        for group, base in zip(self.opt.param_groups, self.sched.base_lrs):
            group["lr"] = base * lr_factor(self.step, self.cfg)
        self.skipped_images = list(state["skipped_images"])
        self.empty_steps = int(state.get("empty_steps", 0))   # absent in states saved before it was counted
        if self.env.main:
            print(f"resumed from {path} at step {self.step}")

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
        chunks = _split(batch, A)
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
            with torch.no_grad(), _KeepRunningStats(self.student):
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
                _drop_rows_after(self.out / name, self.step)
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


def find_resume_dir(path: Path) -> Path:
    """The directory holding a run's ``train_state.pt``: the run's out dir, its ``last/``, or what a crash
    between the two renames of ``save_state`` left behind."""
    path = Path(path)
    if path.is_dir() and not (path / "train_state.pt").is_file() and (path / "last").is_dir():
        path = path / "last"
    if not (path / "train_state.pt").is_file():
        old = old_dir_for(path)
        if (old / "train_state.pt").is_file():
            return old
        raise TrainingError(f"cannot resume: {str(path)!r} holds no train_state.pt "
                            "(pass a run's out dir or its last/ checkpoint)")
    return path


def dataclass_dict(x) -> dict:
    import dataclasses

    return dataclasses.asdict(x)


def train(cfg: TrainConfig, resume: Optional[str] = None, overwrite: bool = False) -> dict:
    """Run a distillation (or plain CLIP) training job; returns its summary.

    ``cfg.out`` must be new or empty, unless ``resume`` continues the run there or ``overwrite``
    replaces it (:func:`check_run_dir`).
    """
    return Trainer(cfg, resume, overwrite).fit()
