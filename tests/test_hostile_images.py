"""Issue 20, item 6: images that decode to something other than what was photographed are skipped and counted.

* A JPEG whose header claims 960 x 800 over the scan of a 96 x 80 image: libjpeg fills the missing area with
  grey and only warns, so Pillow and torchvision return an image; every decoder path must skip it.
* A real image with an exactly mid-grey corner (what the cheap test looks at) is not refused.
* A dangling symbolic link in an image folder is counted as unreadable, not silently left out.
* Pillow's two-line DecompressionBombWarning becomes one line per process.
"""
import csv
import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mobileclip.config import PreprocessConfig
from mobileclip.data.datasets import ImageFolderDataset
from mobileclip.distill.images import decode_deferred
from mobileclip.distill.samples import TrainSamples, collate_train, pop_deferred
from mobileclip.distill.sources import CaptionPairs, ImageFiles
from mobileclip.transforms import (IMAGE_READ_ERRORS, ImageDecodeError, ImagePreprocess, jpeg_scan_truncated,
                                   load_image, load_image_scaled)

pytest.importorskip("simplejpeg", reason="the train extra (simplejpeg) is not installed")


def _photo(w=96, h=80, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 255, w)[None, :, None] * np.linspace(0.2, 1, h)[:, None, None]
    return (x + rng.normal(0, 25, (h, w, 3))).clip(0, 255).astype(np.uint8)


def _jpeg(a: np.ndarray) -> bytes:
    b = io.BytesIO()
    Image.fromarray(a).save(b, "JPEG", quality=90)
    return b.getvalue()


def truncated_scan_jpeg() -> bytes:
    """A 96 x 80 JPEG whose frame header (SOF0) is edited to say 960 x 800: a complete file (it ends with the
    end-of-image marker) whose scan ends before the image is filled."""
    data = bytearray(_jpeg(_photo()))
    sof = data.find(b"\xff\xc0")
    data[sof + 5:sof + 7] = (800).to_bytes(2, "big")
    data[sof + 7:sof + 9] = (960).to_bytes(2, "big")
    return bytes(data)


def grey_corner_jpeg() -> bytes:
    """A genuine, complete JPEG whose bottom-right 32 x 32 corner is exactly mid-grey (128)."""
    a = _photo(128, 96, seed=1)
    a[-32:, -32:] = 128
    return _jpeg(a)


def test_the_probe_is_what_the_issue_describes(tmp_path):
    """Pillow decodes it without an error, at the claimed size, mostly grey: the silent failure being guarded."""
    from PIL import ImageFile

    assert not ImageFile.LOAD_TRUNCATED_IMAGES
    with Image.open(io.BytesIO(truncated_scan_jpeg())) as im:
        im.load()
        a = np.asarray(im.convert("RGB"))
    assert a.shape == (800, 960, 3) and (a == 128).all(axis=2).mean() > 0.95
    assert jpeg_scan_truncated(truncated_scan_jpeg()) is True
    assert jpeg_scan_truncated(grey_corner_jpeg()) is False


@pytest.mark.parametrize("decoder", ["pil", "torchvision", "simplejpeg"])
@pytest.mark.parametrize("draft", [False, True])
def test_truncated_scan_is_refused_on_every_cpu_decoder(tmp_path, decoder, draft):
    path = tmp_path / "bad.jpg"
    path.write_bytes(truncated_scan_jpeg())
    choose = (lambda w, h: 8) if draft else None
    with pytest.raises(ImageDecodeError, match="the scan ends before the image its header declares is filled"):
        load_image_scaled(str(path), choose, decoder=decoder)
    good = tmp_path / "grey.jpg"
    good.write_bytes(grey_corner_jpeg())
    out = load_image_scaled(str(good), choose, decoder=decoder)
    assert tuple(out.full_size) == (128, 96)   # a real grey corner is not a truncated scan


def test_truncated_scan_is_refused_by_load_image_and_the_image_folder(tmp_path):
    with pytest.raises(ImageDecodeError):
        load_image(io.BytesIO(truncated_scan_jpeg()))
    assert issubclass(ImageDecodeError, IMAGE_READ_ERRORS)
    load_image(io.BytesIO(grey_corner_jpeg()))
    for name, data in (("bad.jpg", truncated_scan_jpeg()), ("good.jpg", grey_corner_jpeg())):
        (tmp_path / "cls").mkdir(exist_ok=True)
        (tmp_path / "cls" / name).write_bytes(data)
    (tmp_path / "cls" / "gone.png").symlink_to(tmp_path / "nowhere.png")   # dangling
    ds = ImageFolderDataset(tmp_path)
    loaded = {p.rsplit("/", 1)[-1]: im is not None for im, _, p in (ds[i] for i in range(len(ds)))}
    assert loaded == {"bad.jpg": False, "gone.png": False, "good.jpg": True}


def _pairs(tmp_path, files: dict) -> CaptionPairs:
    rows = []
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        rows.append((name, f"a photo {name}"))
    with open(tmp_path / "captions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "caption"])
        w.writerows(rows)
    return CaptionPairs(str(tmp_path / "captions.csv"))


def test_truncated_scan_is_dropped_by_the_device_decoder(tmp_path):
    """decoder=device: the worker sends the bytes (the file is complete, so it looks plain), the device decodes
    it grey-filled; the sample is dropped and counted like any unreadable image."""
    from mobileclip.tokenizer import Tokenizer

    source = _pairs(tmp_path, {"a.jpg": _jpeg(_photo(seed=2)), "bad.jpg": truncated_scan_jpeg(),
                               "c.jpg": grey_corner_jpeg()})
    pp = ImagePreprocess(PreprocessConfig(64))
    ds = TrainSamples(source, pp, Tokenizer(), 0, {"scale": (0.9, 1.0), "ratio": (0.75, 1.333), "flip_prob": 0.0},
                      image_dtype="uint8", decoder="device")
    batch = collate_train([ds[(i, 0)] for i in range(3)])
    assert "image_jpeg_geom" in batch and len(batch["image_jpeg_geom"]) == 3   # all three went as bytes
    for k, entries in pop_deferred(batch).items():
        decode_deferred(batch, k, entries, "cpu", 64, "bilinear")
    assert batch["skipped"] == [1] and batch["index"].tolist() == [0, 2]


def test_dangling_symlink_is_counted_as_unreadable(tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(_photo(seed=i)).save(folder / f"{i}.png")
    (folder / "3.png").symlink_to(tmp_path / "deleted.png")
    files = ImageFiles(str(folder))
    assert len(files) == 4 and files.load(3) == (None, [])
    from mobileclip.app.cli import main

    code = main(["cache-teacher", "--teacher", "clip-vit-tiny", "--images", str(folder), "--out",
                 str(tmp_path / "cache"), "--augs", "1", "--workers", "0"])
    out = capsys.readouterr().out
    assert code == 0 and "1 unreadable images skipped" in out


def test_decompression_bomb_warning_is_one_line(tmp_path):
    """Above Pillow's warning limit an image is decoded with one line of ours (once per process), not Pillow's
    two-line warning; above twice the limit it is refused (skipped as unreadable)."""
    Image.fromarray(_photo(60, 50)).save(tmp_path / "big.png")      # 3,000 px
    Image.fromarray(_photo(80, 70)).save(tmp_path / "bigger.png")   # 5,600 px
    code = ("import sys; from PIL import Image; Image.MAX_IMAGE_PIXELS = 2500\n"
            "from mobileclip.transforms import load_image\n"
            f"load_image({str(tmp_path / 'big.png')!r}); load_image({str(tmp_path / 'big.png')!r})\n"
            "try:\n"
            f"    load_image({str(tmp_path / 'bigger.png')!r})\n"
            "except Image.DecompressionBombError as e:\n"
            "    print('refused', file=sys.stderr)\n")
    r = subprocess.run([sys.executable, "-W", "default", "-c", code], capture_output=True, text=True, timeout=120)
    lines = [ln for ln in r.stderr.splitlines() if "Enum" not in ln and "register_constant" not in ln]
    assert r.returncode == 0 and "DecompressionBombWarning" not in r.stderr
    assert len([ln for ln in lines if "decompression-bomb warning limit" in ln]) == 1
    assert lines[-1] == "refused"


def test_dangling_symlink_in_an_index_is_counted_and_retried_once_its_target_exists(tmp_path, tiny_bundle):
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    from mobileclip import runtime

    folder = tmp_path / "pics"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(_photo(seed=i)).save(folder / f"{i}.png")
    (folder / "2.png").symlink_to(tmp_path / "later.png")
    model = runtime.load(tiny_bundle)
    index = runtime.ImageIndex.build(model, folder, progress=False)
    assert len(index) == 2 and [s["path"] for s in index.skipped] == ["2.png"]
    s = index.update(model)
    assert s["embedded"] == 0 and s["unreadable_total"] == 1   # still dangling: not retried
    Image.fromarray(_photo(seed=5)).save(tmp_path / "later.png")
    s = index.update(model)
    assert s["embedded"] == 1 and s["unreadable_total"] == 0 and len(index) == 3


def test_a_run_whose_batches_hold_no_readable_image_stops(tmp_path, capsys):
    """Issue 21: every image unreadable (here: text files named .jpg) is not trained on for the whole run: each
    such step is counted, and more than max_bad_steps of them stop the run naming a sample and what to check."""
    from mobileclip.app.cli import main

    source = _pairs(tmp_path, {f"{i}.jpg": b"not a JPEG at all" for i in range(8)})
    assert source is not None
    code = main(["distill", "student=mobileclip-tiny", "batch_size=4", "data.source=captions",
                 f"data.path={tmp_path / 'captions.csv'}", "data.workers=0", "progress=false", "eval.size=36",
                 "steps=10", "max_bad_steps=2", f"out={tmp_path / 'r'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("mobileclip: error: 3 steps had no readable image")
    assert "limit max_bad_steps=2" in err[-1] and "check the data" in err[-1]
