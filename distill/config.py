"""The trainer's typed config: YAML plus ``key=value`` overrides, validated before any work."""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Sequence

import yaml

from mobileclip.config import from_dict
from mobileclip.errors import ConfigError


@dataclass
class DataConfig:
    source: Literal["synthetic", "captions", "webdataset"] = "synthetic"
    path: str = ""  # caption file (.csv/.tsv/.jsonl) for source=captions; shard pattern for webdataset
    image_root: str = ""
    size: int = 10000  # synthetic: number of training images
    image_size: int = 64  # synthetic: rendered size
    two_object_prob: float = 0.35
    cache: str = ""  # teacher cache directory; when set, teachers are read from it, never run
    # Unpaired data (needs data.cache): teacher caches of images without captions (cache-teacher --images)
    # and of texts without images (cache-teacher --texts), built by the same teachers. Each step adds
    # round(batch_size * ratio) of each to the batch_size paired samples.
    image_cache: str = ""
    text_cache: str = ""
    image_ratio: float = 1.0
    text_ratio: float = 1.0
    workers: int = 2
    # The input pipeline (benchmarks/results/data_throughput.md). The defaults are its fastest exact path: uint8
    # batches normalized on the device (4x less to copy; equal to the float32 CPU preprocess), captions tokenized
    # once at start (same ids), colour JPEGs decoded by simplejpeg (libjpeg-turbo with Pillow's settings: the same
    # pixels; anything else, or no simplejpeg, goes through Pillow). pretokenize=false, decoder=pil: the old path.
    # Faster but not bit-equal to the crops the teacher saw: JPEG draft decoding when the crop is at least twice
    # the input size, torch's resize (within 1 level).
    # decoder=device: plain colour JPEGs go to the training device as bytes and are decoded there (nvJPEG on CUDA),
    # cropped and resized by torch; the workers only read files.
    image_dtype: Literal["uint8", "float32"] = "uint8"
    pretokenize: bool = True
    token_cache: str = ""  # a folder keeping pre-tokenized captions between runs and ranks (implies pretokenize)
    draft: bool = False
    decoder: Literal["pil", "torchvision", "simplejpeg", "device"] = "simplejpeg"
    resize: Literal["pil", "torch"] = "pil"


@dataclass
class AugConfig:
    scale: tuple = (0.5, 1.0)
    ratio: tuple = (0.75, 1.3333333)
    flip_prob: float = 0.5


@dataclass
class LossConfig:
    clip: float = 1.0
    siglip: float = 0.0
    kd: float = 0.0
    feature: float = 0.0
    icl: float = 0.0
    # On unpaired data (data.image_cache / data.text_cache): see mobileclip.distill.losses
    unpaired_feature: float = 0.0
    unpaired_intra_kd: float = 0.0
    unpaired_cross_kd: float = 0.0
    local_loss: bool = False
    # The teachers' similarity multiplier in kd and the unpaired KD terms (0: each teacher's own, from the cache's
    # manifest or the loaded teacher). A multiplier in [1, 100], not its log: MobileCLIP distills at 100.
    kd_teacher_scale: float = 0.0
    # Feature distillation in CLIP-KD's units: alpha x (F.mse_loss(image) + F.mse_loss(text)), the mean over N x D
    # (CLIP-KD uses 2000). Converted at train time to `feature` = 2 alpha / D, D the teacher's embedding size (per
    # teacher in an ensemble); set `feature` or `feature_alpha`, not both.
    feature_alpha: float = 0.0

    def weights(self) -> dict:
        """Each loss's weight; with ``feature_alpha`` the feature loss carries CLIP-KD's alpha itself (weight 1)."""
        w = {k: getattr(self, k) for k in ("clip", "siglip", "kd", "feature", "icl", "unpaired_feature",
                                           "unpaired_intra_kd", "unpaired_cross_kd")}
        if self.feature_alpha:
            w["feature"] = 1.0
        return w


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    warmup_steps: int = 50
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0


@dataclass
class EvalConfig:
    every: int = 0  # steps; 0 = only at the end
    size: int = 360  # synthetic held-out images per split
    data: str = ""  # an image folder for zero-shot instead of the synthetic held-out splits
    captions: str = ""  # a caption file for retrieval


@dataclass
class TrainConfig:
    # A named set of loss settings from the literature (distill/recipes.py: clip-kd, mobileclip, tinyclip), applied
    # under the YAML file and the overrides, which still change any of its keys.
    recipe: str = ""
    student: str = "mobileclip-tiny"  # registered name, checkpoint dir, or open_clip:<MobileCLIP arch>[:<file>]
    # Initial weights for a registered student: our checkpoint (dir or file), Apple's mobileclip_*.pt, or an
    # open_clip MobileCLIP/MobileCLIP2 file. Tensors that do not fit keep their fresh init and are listed.
    student_pretrained: str = ""
    student_embed_dim: int = 0  # 0: the model's own; else a new embedding size (new projections)
    # Smaller inputs for small machines (0: the model's own): the image tower's input size (timm towers
    # take any size) and the text tower's context length. Recorded in the student's config.json.
    student_image_size: int = 0
    student_context_length: int = 0
    teachers: list = field(default_factory=list)  # teacher specs, run online when data.cache is empty
    out: str = "runs/distill"
    steps: int = 200
    batch_size: int = 64  # global, across processes and accumulation
    accum_steps: int = 1
    seed: int = 0
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    compile: bool = False
    device: str = "auto"
    threads: int = 0  # CPU threads for PyTorch (torch.set_num_threads); 0 keeps PyTorch's default
    # Collective timeout with several processes: ranks wait this long for rank 0's evaluation and checkpoints.
    dist_timeout_min: float = 60.0
    log_every: int = 10
    ckpt_every: int = 100
    max_bad_steps: int = 20  # non-finite losses tolerated (each skips its step) before aborting
    progress: bool = True
    data: DataConfig = field(default_factory=DataConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    losses: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _set(d: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        d = d.setdefault(k, {})
        if not isinstance(d, dict):
            raise ConfigError(f"override {dotted!r}: {k!r} is not a section")
    d[keys[-1]] = value


def _yaml(raw: bytes, where: str):
    """Plain YAML data (``yaml.safe_load``: tags such as ``!!python/object`` are refused, never run)."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{where}: not UTF-8 text ({e.reason} at byte {e.start}); save the file as UTF-8") from e
    try:
        return yaml.safe_load(text)
    except yaml.constructor.ConstructorError as e:
        raise ConfigError(f"{where}: YAML tag {e.problem.split()[-1] if e.problem else ''} is not allowed: a config "
                          "holds plain values only (numbers, strings, lists, mappings)") from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{where}: not valid YAML{at} ({getattr(e, 'problem', None) or e})") from e


def load_config(path: Optional[str] = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """YAML file (optional) + ``key=value`` overrides (values parsed as YAML: ``3``, ``1e-3``,
    ``true``, ``[a, b]``). Unknown keys and bad values are errors naming the valid choices."""
    data: dict = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {path!r} " + ("is a directory; give a YAML file" if p.is_dir()
                                                          else "does not exist"))
        data = _yaml(p.read_bytes(), path) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"override {ov!r} is not key=value")
        k, v = ov.split("=", 1)
        _set(data, k.strip(), _yaml(v.encode(), f"override {ov!r}") if v.strip() else "")
    if isinstance(data.get("teachers"), str):
        data["teachers"] = [data["teachers"]]
    if data.get("recipe"):
        from .recipes import apply_recipe

        data = apply_recipe(data["recipe"], data)
    cfg = from_dict(TrainConfig, data)
    _validate(cfg)
    return cfg


def _validate_unpaired(cfg: TrainConfig) -> None:
    from .losses import UNPAIRED_LOSSES

    d, w = cfg.data, cfg.losses.weights()
    unpaired_losses = sorted(k for k in UNPAIRED_LOSSES if w.get(k))
    caches = [k for k in ("image_cache", "text_cache") if getattr(d, k)]
    for key in ("image_ratio", "text_ratio"):
        v = getattr(d, key)
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
            raise ConfigError(f"data.{key}: must be a number >= 0, got {v}")
    if unpaired_losses and not caches:
        raise ConfigError(f"losses {unpaired_losses} train on unpaired data: set data.image_cache=DIR (cache-teacher "
                          "--images) and/or data.text_cache=DIR (cache-teacher --texts)")
    if caches and not unpaired_losses:
        raise ConfigError(f"data.{caches[0]} is set but no unpaired loss has a weight: set one of "
                          f"{sorted(UNPAIRED_LOSSES)} (e.g. losses.unpaired_cross_kd=1.0), or drop data.{caches[0]}")
    if caches and not d.cache:
        raise ConfigError(f"data.{caches[0]} needs data.cache: unpaired data is trained against cached teacher "
                          "embeddings, so the paired data must come from a cache of the same teachers too")
    for key, ratio in (("image_cache", "image_ratio"), ("text_cache", "text_ratio")):
        path = getattr(d, key)
        if not path:
            continue
        if not (Path(path) / "manifest.json").is_file():
            raise ConfigError(f"data.{key}: {path!r} is not a teacher cache (no manifest.json); build one with "
                              f"`mobileclip cache-teacher --{key.split('_')[0]}s ...`")
        n = round(cfg.batch_size * getattr(d, ratio))
        if n < 1:
            raise ConfigError(f"data.{ratio}: {getattr(d, ratio)} x batch_size {cfg.batch_size} gives no unpaired "
                              f"samples per step; raise it or drop data.{key}")


def _validate_scales(cfg: TrainConfig) -> None:
    """The numbers of the loss settings that carry units: a multiplier (not its log), CLIP-KD's alpha."""
    from mobileclip.scales import check_scale

    lc = cfg.losses
    for key in ("clip", "siglip", "kd", "feature", "icl", "unpaired_feature", "unpaired_intra_kd",
                "unpaired_cross_kd", "feature_alpha", "kd_teacher_scale"):
        v = getattr(lc, key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ConfigError(f"losses.{key}: must be a finite number, got {v!r}")
    if lc.kd_teacher_scale < 0:
        raise ConfigError(f"losses.kd_teacher_scale: must be 0 (each teacher's own) or a multiplier in [1, 100], got "
                          f"{lc.kd_teacher_scale}")
    if lc.kd_teacher_scale:
        check_scale(lc.kd_teacher_scale, "losses.kd_teacher_scale")
        if not any(getattr(lc, k) for k in ("kd", "unpaired_intra_kd", "unpaired_cross_kd")):
            raise ConfigError("losses.kd_teacher_scale is set but no loss uses a teacher temperature: it acts on kd, "
                              "unpaired_intra_kd and unpaired_cross_kd; set one of them or drop it")
    if lc.feature_alpha < 0:
        raise ConfigError(f"losses.feature_alpha: must be >= 0, got {lc.feature_alpha}")
    if lc.feature_alpha and lc.feature:
        raise ConfigError(f"losses.feature ({lc.feature}) and losses.feature_alpha ({lc.feature_alpha}) are the same "
                          "loss in two units: set one (feature_alpha is CLIP-KD's alpha, converted to feature = "
                          "2 alpha / D)")
    if lc.feature_alpha > 1e5:
        raise ConfigError(f"losses.feature_alpha {lc.feature_alpha:g} is far above CLIP-KD's 2000: it is alpha on a "
                          "mean over N x D, not a per-sample sum; did you mean losses.feature?")


def _check_step_memory(cfg: TrainConfig) -> None:
    """A process's micro-batch (the global batch over accumulation and WORLD_SIZE) at the student's input size
    must fit this machine's memory (:func:`mobileclip.limits.check_batch_pixels`)."""
    from mobileclip import limits

    size = cfg.student_image_size
    if not size:
        try:
            from mobileclip.zoo import get_model_config

            size = get_model_config(cfg.student).image.image_size
        except Exception:   # not a registered name (a checkpoint, an open_clip arch): known once it is built
            return
    try:
        world = max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        world = 1
    micro = max(1, cfg.batch_size // cfg.accum_steps // world)
    limits.check_batch_pixels(micro, int(size), "batch_size",
                              per=f" per process (batch_size {cfg.batch_size} / accum_steps {cfg.accum_steps}"
                                  + (f" / {world} processes" if world > 1 else "") + ")")


def _validate(cfg: TrainConfig) -> None:
    def bad(key, msg):
        return ConfigError(f"{key}: {msg}")

    for key in ("steps", "batch_size", "accum_steps", "log_every", "ckpt_every"):
        if getattr(cfg, key) <= 0:
            raise bad(key, "must be positive")
    if cfg.batch_size % cfg.accum_steps:
        raise bad("accum_steps", f"must divide batch_size ({cfg.batch_size})")
    from mobileclip import limits

    limits.check_max(cfg.batch_size, limits.BATCH, "batch_size")
    for key, low, high in (("student_embed_dim", 1, limits.EMBED_DIM), ("student_image_size", 16, limits.IMAGE_SIZE),
                           ("student_context_length", 2, limits.CONTEXT_LENGTH)):
        v = getattr(cfg, key)
        if v < 0 or 0 < v < low:
            raise bad(key, f"must be 0 (the model's own) or at least {low}, got {v}")
        limits.check_max(v, high, key)
    if cfg.threads < 0:
        raise bad("threads", f"must be >= 0 (0: PyTorch's default), got {cfg.threads}")
    from mobileclip.factory import resolve_student_name

    resolve_student_name(cfg.student)   # open_clip archs that cannot be students fail here, before any work
    if not all(isinstance(t, str) for t in cfg.teachers):
        raise bad("teachers", "must be a list of teacher specs (open_clip:..., hf:..., a checkpoint dir)")
    w = cfg.losses.weights()
    if any(v < 0 for v in w.values()):
        raise bad("losses", "weights must be >= 0")
    _validate_scales(cfg)
    if not any(w.values()):
        raise bad("losses", "every loss weight is zero")
    from .losses import TEACHER_LOSSES

    needs_teacher = sorted(k for k in TEACHER_LOSSES if w.get(k))
    if needs_teacher and not (cfg.teachers or cfg.data.cache):
        raise bad("losses", f"{needs_teacher} need a teacher: set data.cache=DIR or teachers=[SPEC]")
    if cfg.data.source in ("captions", "webdataset") and not cfg.data.path and not cfg.data.cache:
        raise bad("data.path", f"source={cfg.data.source} needs data.path (a .csv/.tsv/.jsonl file, or a shard "
                               "pattern like shards/{000..099}.tar)")
    if cfg.teachers and cfg.data.cache:
        raise bad("teachers", "set either teachers (run online) or data.cache (read from a cache), not both")
    if cfg.data.source == "captions" and cfg.data.path and not cfg.data.cache and not Path(cfg.data.path).is_file():
        raise bad("data.path", f"{cfg.data.path!r} " + ("is a directory; give the caption file (.csv/.tsv/.jsonl)"
                                                         if Path(cfg.data.path).is_dir() else "does not exist"))
    if cfg.data.cache and not (Path(cfg.data.cache) / "manifest.json").is_file():
        raise bad("data.cache", f"{cfg.data.cache!r} is not a teacher cache (no manifest.json)")
    _validate_unpaired(cfg)
    if not 0 <= cfg.aug.flip_prob <= 1:
        raise bad("aug.flip_prob", "must be within [0, 1]")
    sc, ra = cfg.aug.scale, cfg.aug.ratio
    if (len(sc) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in sc)
            or not 0 < sc[0] <= sc[1] <= 1):
        raise bad("aug.scale", f"is the range of crop areas as fractions of the image: [low, high] with "
                               f"0 < low <= high <= 1, got {list(sc)}")
    if (len(ra) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in ra)
            or not 0 < ra[0] <= ra[1]):
        raise bad("aug.ratio", f"is the crop aspect-ratio range [low, high] with 0 < low <= high, got {list(ra)}")
    o = cfg.optim
    for key, ok, rule in (("lr", o.lr > 0, "> 0"), ("weight_decay", o.weight_decay >= 0, ">= 0"),
                          ("beta1", 0 <= o.beta1 < 1, "within [0, 1)"), ("beta2", 0 <= o.beta2 < 1, "within [0, 1)"),
                          ("eps", o.eps > 0, "> 0"), ("warmup_steps", o.warmup_steps >= 0, ">= 0"),
                          ("min_lr_ratio", 0 <= o.min_lr_ratio <= 1, "within [0, 1]"),
                          ("grad_clip", o.grad_clip >= 0, ">= 0 (0: no clipping)")):
        if not ok:
            raise bad(f"optim.{key}", f"must be {rule}, got {getattr(o, key)}")
    d = cfg.data
    for key, ok, rule in (("size", d.size >= 1, ">= 1"), ("image_size", d.image_size >= 16, ">= 16"),
                          ("two_object_prob", 0 <= d.two_object_prob <= 1, "within [0, 1]"),
                          ("workers", d.workers >= 0, ">= 0")):
        if not ok:
            raise bad(f"data.{key}", f"must be {rule}, got {getattr(d, key)}")
    if d.token_cache and Path(d.token_cache).expanduser().exists() and not Path(d.token_cache).expanduser().is_dir():
        raise bad("data.token_cache", f"{d.token_cache!r} is a file; give a folder (the pre-tokenized captions are "
                                      "kept in it, one sub-folder per caption set)")
    limits.check_max(d.image_size, limits.IMAGE_SIZE, "data.image_size")
    limits.check_max(d.size, limits.SAMPLES, "data.size")
    limits.check_max(cfg.eval.size, limits.SAMPLES, "eval.size")
    _check_step_memory(cfg)
    if cfg.max_bad_steps < 0 or cfg.eval.every < 0 or cfg.eval.size < 1:
        raise bad("max_bad_steps/eval.every/eval.size", "max_bad_steps and eval.every must be >= 0, eval.size >= 1")
    if cfg.eval.data and not Path(cfg.eval.data).is_dir():
        raise bad("eval.data", f"{cfg.eval.data!r} is not a directory")
