"""What each artifact costs in the user's metrics: zero-shot top-1, text->image and image->text R@1 on an
evaluation folder, and zero-shot top-1 agreement with the fp32 PyTorch source (``mobileclip bench --eval DIR``).

The evaluation folder is an image folder (``DIR/<class>/<image>``: zero-shot over its sub-folders) with, for
retrieval, ``DIR/captions.csv`` (``image,caption``, paths relative to ``DIR``: what ``mobileclip synth`` and
``write_synthetic`` write). A bundle is evaluated as users run it: its manifest's preprocessing and its own
tokenizer (:func:`mobileclip.runtime.open_bundle`), each tower through its backend's runner; the PyTorch source
through its own transform and tokenizer. Both sides then go through the same evaluators
(:mod:`mobileclip.zeroshot`), so a difference is the artifact's.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from mobileclip.errors import ConfigError

CAPTIONS = "captions.csv"
METRICS = ("zeroshot_top1", "text_to_image_R@1", "image_to_text_R@1")


def check_eval_dir(folder: Optional[str]) -> Optional[Path]:
    """``--eval DIR`` checked where it enters: a folder of class sub-folders."""
    if folder is None:
        return None
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise ConfigError(f"--eval {folder!r} is not a folder; give an image folder (DIR/<class>/<image>, with "
                          f"DIR/{CAPTIONS} for retrieval)")
    if not any(d.is_dir() and not d.name.startswith(".") for d in path.iterdir()):
        raise ConfigError(f"--eval {folder!r} has no class sub-folders; zero-shot needs DIR/<class>/<image>")
    return path


class BundleTowers:
    """A bundle's two runners behind the ``encode_image`` / ``encode_text`` calls the evaluators make, batched to
    what each artifact takes (a fixed batch is padded, a largest batch respected)."""

    def __init__(self, opened) -> None:
        self.opened = opened
        for runner in opened.runners.values():
            if not runner.active:
                runner.activate()

    def eval(self):   # the evaluators switch their model to eval mode
        return self

    def parameters(self):   # no parameters: the evaluators then run on the CPU
        return iter(())

    def _run(self, tower: str, x: np.ndarray):
        import torch

        runner = self.opened.runners[tower]
        step = runner.fixed_batch or min(16, runner.max_batch or 16)
        outs = []
        for i in range(0, len(x), step):
            chunk = x[i:i + step]
            n = len(chunk)
            if runner.fixed_batch and n < step:   # pad a short last batch with copies of its first row
                chunk = np.concatenate([chunk, np.repeat(chunk[:1], step - n, axis=0)])
            outs.append(np.asarray(runner.infer(np.ascontiguousarray(chunk)), dtype=np.float32)[:n])
        y = torch.from_numpy(np.concatenate(outs))
        return torch.nn.functional.normalize(y, dim=-1)

    def encode_image(self, images, normalize: bool = True):
        return self._run("image", images.numpy().astype(np.float32))

    def encode_text(self, tokens, normalize: bool = True):
        return self._run("text", np.asarray(tokens).astype(self.opened.token_dtype))


def _bundle_parts(opened):
    import torch

    def preprocess(image):
        return torch.from_numpy(np.asarray(opened.preprocess(image), dtype=np.float32))

    def tokenizer(texts):
        return torch.from_numpy(opened.tokens(list(texts)).astype(np.int64))

    return BundleTowers(opened), preprocess, tokenizer


def evaluate(model, preprocess, tokenizer, folder: Path) -> dict:
    """Zero-shot top-1 (with each image's prediction) and, when ``folder`` has captions, R@1 both ways."""
    from mobileclip.data import CaptionDataset, ImageFolderDataset
    from mobileclip.zeroshot import evaluate_retrieval, evaluate_zeroshot

    z = evaluate_zeroshot(model, tokenizer, ImageFolderDataset(folder, transform=preprocess), batch_size=32,
                          progress=False)
    out = {"zeroshot_top1": z["top1"], "images": z["n"], "classes": z["classes"], "skipped": z["skipped"],
           "predictions": z["predictions"]}
    if (folder / CAPTIONS).is_file():
        r = evaluate_retrieval(model, tokenizer, CaptionDataset(folder / CAPTIONS, transform=preprocess),
                               batch_size=32, progress=False, ks=(1,))
        out.update({k: r[k] for k in ("text_to_image_R@1", "image_to_text_R@1")}, captions=r["texts"], hits=r["hits"])
    return out


def evaluate_source(src, folder: Path) -> dict:
    """The fp32 PyTorch source (an :class:`~mobileclip.export.source.ExportSource`) on ``folder``."""
    import torch

    src.model.eval()
    with torch.inference_mode():
        return evaluate(src.model, src.preprocess, src.tokenizer, folder)


def evaluate_bundle(opened, folder: Path) -> dict:
    """A bundle, opened by :func:`mobileclip.runtime.open_bundle`, on ``folder``."""
    model, preprocess, tokenizer = _bundle_parts(opened)
    return evaluate(model, preprocess, tokenizer, folder)


def against(reference: dict, got: dict) -> dict:
    """``got``'s metrics with their change from ``reference`` (points of %) and the top-1 agreement."""
    out = {k: got[k] for k in METRICS if k in got}
    out.update({f"delta_{k}": 100 * (got[k] - reference[k]) for k in METRICS if k in got and k in reference})
    shared = [k for k in reference["predictions"] if k in got["predictions"]]
    out["top1_agreement"] = (sum(reference["predictions"][k] == got["predictions"][k] for k in shared) / len(shared)
                             if shared else None)
    for way in ("text_to_image", "image_to_text"):   # paired: which queries the change moved, each way
        ref_hits, got_hits = (reference.get("hits") or {}).get(f"{way}@1"), (got.get("hits") or {}).get(f"{way}@1")
        if ref_hits is not None and got_hits is not None and len(ref_hits) == len(got_hits):
            out[f"{way}_lost"] = sum(r and not g for r, g in zip(ref_hits, got_hits))
            out[f"{way}_gained"] = sum(g and not r for r, g in zip(ref_hits, got_hits))
    out["images"], out["captions"] = got["images"], got.get("captions")
    return out
