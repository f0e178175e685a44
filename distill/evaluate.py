"""Evaluation during and after training: zero-shot top-1 and retrieval R@1."""
from __future__ import annotations

import torch

from mobileclip.data import ImageFolderDataset


class _SynthZeroShot(torch.utils.data.Dataset):
    def __init__(self, split, size, image_size, seed, preprocess):
        from mobileclip.data.synthetic import SyntheticGenerator, classnames

        self.gen = SyntheticGenerator(split, image_size, seed, two_object_prob=0.0)
        self.size, self.pp, self.classnames = size, preprocess, classnames()

    def __len__(self):
        return self.size

    def __getitem__(self, i):
        from PIL import Image

        s = self.gen[i]
        return self.pp(Image.fromarray(s.image)), s.label, str(i)


class _SynthCaptions(torch.utils.data.Dataset):
    def __init__(self, size, image_size, seed, preprocess):
        from mobileclip.data.synthetic import SyntheticGenerator

        self.gen = SyntheticGenerator("val", image_size, seed, two_object_prob=0.5)
        self.pp = preprocess
        self.samples = [self.gen[i] for i in range(size)]
        self.image_paths = [str(i) for i in range(size)]
        self.captions = [s.caption for s in self.samples]

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        from PIL import Image

        return self.pp(Image.fromarray(self.samples[i].image)), self.captions[i], str(i)


def balanced_top1(z: dict) -> float:
    """The mean of the per-class top-1 accuracies (classes with images): on a folder whose classes differ in size,
    a classifier that always answers the largest class scores its share in top-1, and 1/classes here."""
    per = [v for v in z["per_class_top1"].values() if v is not None]
    return float(sum(per) / len(per)) if per else 0.0


@torch.no_grad()
def evaluate_student(model, preprocess, tokenizer, cfg, source, device) -> dict:
    """Zero-shot top-1 (held-out images; held-out colour-shape pairs) and retrieval R@1."""
    from mobileclip.zeroshot import evaluate_retrieval, evaluate_zeroshot

    out = {}
    kw = dict(batch_size=128, device=device, progress=False)
    synth = getattr(source, "spec", lambda: {})().get("kind") == "synthetic"
    if cfg.eval.data:
        z = evaluate_zeroshot(model, tokenizer, ImageFolderDataset(cfg.eval.data, preprocess), **kw)
        out["zeroshot_top1"] = z["top1"]
        out["zeroshot_balanced_top1"] = balanced_top1(z)
    elif synth:
        size = source.args["image_size"]
        # Held-out seeds: never the training images.
        val = _SynthZeroShot("val", cfg.eval.size, size, 10_000 + cfg.seed, preprocess)
        novel = _SynthZeroShot("novel", cfg.eval.size // 2, size, 10_000 + cfg.seed, preprocess)
        out["zeroshot_top1"] = evaluate_zeroshot(model, tokenizer, val, **kw)["top1"]
        out["zeroshot_novel_top1"] = evaluate_zeroshot(model, tokenizer, novel, classnames=val.classnames,
                                                       **kw)["top1"]
    if cfg.eval.captions:
        from mobileclip.data import CaptionDataset

        r = evaluate_retrieval(model, tokenizer, CaptionDataset(cfg.eval.captions, transform=preprocess), **kw)
        out["retrieval_R@1"] = r["mean_R@1"]
    elif synth:
        r = evaluate_retrieval(model, tokenizer, _SynthCaptions(cfg.eval.size // 2, source.args["image_size"],
                                                                20_000 + cfg.seed, preprocess), **kw)
        out["retrieval_R@1"] = r["mean_R@1"]
    return out
