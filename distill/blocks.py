"""The building blocks of a training step: the device, the data source, parameter groups and the learning-rate
schedule, micro-batch splitting, both towers in one module (for DDP), and BatchNorm statistics kept across
GradCache's graph-free pass."""
from __future__ import annotations

import math

import torch

from mobileclip.errors import ConfigError

from .config import TrainConfig
from .distributed import DistEnv
from .sources import CaptionPairs, SyntheticPairs, WebDatasetPairs


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


def split_batch(batch: dict, n: int) -> list:
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


class KeepRunningStats:
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
