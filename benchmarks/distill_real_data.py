"""The real-teacher benchmark's data: Openclipart and emoji pictures with their captions, split by item into test,
val, teacher, paired, image-only and text-only sets (a split never depends on the others), the icon pool, and the
zero-shot folders (run by :mod:`mobileclip.benchmarks.distill_real`)."""
from __future__ import annotations

import csv
import glob
import hashlib
import json
import os
import re
import shutil
from pathlib import Path


OPENCLIPART = Path("/usr/share/openclipart")
# More images without captions, from Debian's icon themes (oxygen-icon-theme LGPL-3, tango-icon-theme public domain,
# mate-icon-theme GPL-2+/LGPL-3/CC-BY-SA-3, gnome-icon-theme GPL-3/CC-BY-SA-3, lxde-icon-theme (nuoveXT2) LGPL-3,
# elementary-xfce-icon-theme GPL-2+, faenza-icon-theme GPL-3): read as unlabeled images only, never in val or test.
ICON_PACKAGES = ("oxygen-icon-theme", "tango-icon-theme", "mate-icon-theme", "gnome-icon-theme", "lxde-icon-theme",
                 "elementary-xfce-icon-theme", "faenza-icon-theme")
ICON_THEMES = tuple(Path("/usr/share/icons") / t for t in ("oxygen", "Tango", "mate", "gnome", "nuoveXT2",
                                                            "elementary-xfce", "Faenza"))
EMOJI_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
SPLITS = (("test", 0.20), ("val", 0.10), ("teacher", 0.25), ("paired", 0.09), ("images", 0.18), ("texts", 0.18))
EMBED = 256
CONTEXT = 64   # MiniLM tokens (the captions are short)
GENERIC_KEYWORDS = {"hash", "icon", "icons", "svg", "clipart", "clip art", "image", "media", "theme", "png",
                    "openclipart"}
# The student configurations compared (on top of the common settings in student_overrides). Configs with an
# unpaired_* loss also train on the image-only and text-only caches. FD = 15.625 is CLIP-KD's alpha 2000 at the
# teacher's D = 256 (2 alpha / D, distill/losses.py: clip_kd_feature_weight); the unpaired feature term uses it too.
UNPAIRED_KD = ["losses.unpaired_feature=15.625", "losses.unpaired_intra_kd=1.0", "losses.unpaired_cross_kd=1.0"]
ICONS = "+icons"   # a marker, not an override: the image-only cache is the pool (the image-only split + the icons)
CONFIGS = {
    "clip": ["losses.clip=1.0"],
    # The README's recipe until 2026-12: kd 1 + feature 1 + clip 0.25, alone and with the unpaired losses
    "readme": ["losses.kd=1.0", "losses.feature=1.0", "losses.clip=0.25"],
    "readme+unpaired": ["losses.kd=1.0", "losses.feature=1.0", "losses.clip=0.25", "losses.unpaired_feature=1.0",
                        "losses.unpaired_intra_kd=0.5", "losses.unpaired_cross_kd=1.0"],
    # The literature's recipes (distill/recipes.py), on the pairs and with the unpaired losses
    "clip-kd": ["recipe=clip-kd"],
    "clip-kd+unpaired": ["recipe=clip-kd", *UNPAIRED_KD],
    "clip-kd@100+unpaired": ["recipe=clip-kd", "losses.kd_teacher_scale=100", *UNPAIRED_KD],
    "mobileclip": ["recipe=mobileclip"],
    "mobileclip+unpaired": ["recipe=mobileclip", "losses.unpaired_intra_kd=1.0", "losses.unpaired_cross_kd=1.0"],
    "tinyclip": ["recipe=tinyclip"],
    # CLIP-KD's single best term, feature distillation, with the CLIP loss
    "fd": ["losses.clip=1.0", "losses.feature_alpha=2000"],
    "fd+unpaired": ["losses.clip=1.0", "losses.feature_alpha=2000", "losses.unpaired_feature=15.625"],
    # the same with 4,415 icons as more images without captions
    "readme+unpaired+icons": ["losses.kd=1.0", "losses.feature=1.0", "losses.clip=0.25", "losses.unpaired_feature=1.0",
                              "losses.unpaired_intra_kd=0.5", "losses.unpaired_cross_kd=1.0", ICONS],
    "fd+unpaired+icons": ["losses.clip=1.0", "losses.feature_alpha=2000", "losses.unpaired_feature=15.625", ICONS],
    "clip-kd+unpaired+icons": ["recipe=clip-kd", *UNPAIRED_KD, ICONS],
}


class MissingPart(RuntimeError):
    """A package or file the benchmark needs (data, teacher weights) is not installed here."""


def _clean(s: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[_\-]+", " ", s)).strip()


def clipart_items() -> list:
    """Openclipart items with a distinctive title: ``{id, png, caption, category}``."""
    from xml.etree import ElementTree as ET

    if not (OPENCLIPART / "svg").is_dir() or not (OPENCLIPART / "png").is_dir():
        raise MissingPart("Openclipart is not installed: apt-get install openclipart-png openclipart-svg "
                          "(or make distill-real-deps)")
    ns = {"dc": "http://purl.org/dc/elements/1.1/", "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
          "cc": "http://web.resource.org/cc/"}
    rows, seen = [], set()
    for f in sorted(glob.glob(str(OPENCLIPART / "svg" / "**" / "*.svg"), recursive=True)):
        png = f.replace("/svg/", "/png/")[:-4] + ".png"
        if not os.path.isfile(png) or os.path.getsize(f) == 0:
            continue
        digest = hashlib.sha256(Path(png).read_bytes()).hexdigest()
        if digest in seen:
            continue
        seen.add(digest)
        try:
            work = ET.parse(f).getroot().find(".//cc:Work", ns)
        except ET.ParseError:
            continue
        if work is None:
            continue
        t = work.find("dc:title", ns)
        title = _clean(t.text).lower() if t is not None and t.text else ""
        kws = [_clean(e.text).lower() for e in work.findall("dc:subject/rdf:Bag/rdf:li", ns) if e.text]
        kws = [k for k in dict.fromkeys(kws) if k and k not in GENERIC_KEYWORDS and k not in title][:3]
        category = Path(png).relative_to(OPENCLIPART / "png").parts[0]
        rows.append({"id": f"clipart:{digest[:16]}", "png": png, "title": title, "category": category,
                     "caption": title + (f" ({', '.join(kws)})" if kws else "")})
    titles: dict = {}
    for r in rows:
        titles[r["title"]] = titles.get(r["title"], 0) + 1
    captions: dict = {}
    for r in rows:
        captions[r["caption"]] = captions.get(r["caption"], 0) + 1
    return [r for r in rows if r["title"] and titles[r["title"]] <= 20 and captions[r["caption"]] == 1
            and r["category"] not in ("special", "unsorted")]


def emoji_items() -> list:
    """Every single-code-point emoji of Noto Color Emoji with a Unicode name: ``{id, char, caption}``."""
    import unicodedata

    if not EMOJI_FONT.is_file():
        raise MissingPart(f"{EMOJI_FONT} is missing: apt-get install fonts-noto-color-emoji (or make distill-real-deps)")
    from fontTools.ttLib import TTFont

    cmap = TTFont(str(EMOJI_FONT))["cmap"].getBestCmap()
    out = []
    for c in sorted(cmap):
        name = unicodedata.name(chr(c), "")
        if c > 0x2000 and name:
            out.append({"id": f"emoji:{c:x}", "char": chr(c), "caption": name.lower(), "category": "emoji"})
    return out


def split_of(item_id: str) -> str:
    """The split an item belongs to: a fixed function of its identity (sha256), set before any run."""
    u = int(hashlib.sha256(f"distill_real/{item_id}".encode()).hexdigest()[:12], 16) / 16 ** 12
    acc = 0.0
    for name, frac in SPLITS:
        acc += frac
        if u < acc:
            return name
    return SPLITS[-1][0]


def prepare_data(work: Path) -> dict:
    """Write each split: ``<split>.csv`` (filepath, caption) with images under ``images/``, the image-only
    folder ``unpaired_images/`` and ``unpaired_texts.txt``; ``zeroshot/<category>/`` for the test clip-art."""
    from PIL import Image, ImageDraw, ImageFont

    done = work / "data" / "splits.json"
    if done.is_file():
        return json.loads(done.read_text())
    root = work / "data"
    shutil.rmtree(root, ignore_errors=True)
    Image.MAX_IMAGE_PIXELS = None   # Debian's clip-art, trusted; its largest PNGs are 170 Mpx
    (root / "images").mkdir(parents=True)
    items = clipart_items() + emoji_items()
    font = ImageFont.truetype(str(EMOJI_FONT), 109)
    by_split: dict = {name: [] for name, _ in SPLITS}
    for it in items:
        by_split[split_of(it["id"])].append(it)
    for it in items:
        dst = root / "images" / (it["id"].replace(":", "_") + ".png")
        it["file"] = str(dst)
        if "png" in it:   # some clip-art PNGs are 13,000 px wide: stored at most 384 px, alpha kept
            with Image.open(it["png"]) as im:
                im.thumbnail((384, 384), Image.LANCZOS)
                im.save(dst)
        else:
            im = Image.new("RGB", (136, 128), "white")
            ImageDraw.Draw(im).text((0, 0), it["char"], font=font, embedded_color=True)
            im.save(dst)
    for name in ("test", "val", "teacher", "paired"):
        with open(root / f"{name}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["filepath", "caption"])
            for it in by_split[name]:
                w.writerow([os.path.relpath(it["file"], root), it["caption"]])
    (root / "unpaired_images").mkdir()
    for it in by_split["images"]:
        os.link(it["file"], root / "unpaired_images" / Path(it["file"]).name)
    imagenet = _imagenet_names()
    texts = [it["caption"] for it in by_split["texts"]] + imagenet
    (root / "unpaired_texts.txt").write_text("\n".join(texts) + "\n")
    zs = _zeroshot_folder(root / "zeroshot", by_split["test"])
    _zeroshot_folder(root / "zeroshot_val", by_split["val"])
    info = {"counts": {k: len(v) for k, v in by_split.items()}, "imagenet_texts": len(imagenet),
            "clipart": sum(1 for it in items if it["category"] != "emoji"),
            "emoji": sum(1 for it in items if it["category"] == "emoji"),
            "zeroshot_classes": sorted(d.name for d in zs.iterdir())}
    done.write_text(json.dumps(info, indent=2))
    return info


def _zeroshot_folder(zs: Path, items: list) -> Path:
    """``zs/<clip-art category>/`` holding the split's clip-art images; categories need 5 images at least."""
    for it in items:
        if it["category"] != "emoji":
            (zs / it["category"]).mkdir(parents=True, exist_ok=True)
            os.link(it["file"], zs / it["category"] / Path(it["file"]).name)
    for d in list(zs.iterdir()):
        if len(list(d.iterdir())) < 5:
            shutil.rmtree(d)
    return zs


def ensure_val_zeroshot(work: Path) -> None:
    """``data/zeroshot_val/`` for a work folder prepared before it existed (the splits themselves unchanged)."""
    root = work / "data"
    if (root / "zeroshot_val").is_dir():
        return
    val = [dict(it, file=str(root / "images" / (it["id"].replace(":", "_") + ".png"))) for it in clipart_items()
           if split_of(it["id"]) == "val"]
    tmp = root / "zeroshot_val.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    _zeroshot_folder(tmp, val)
    tmp.rename(root / "zeroshot_val")


def icon_files() -> list:
    """The largest PNG of each icon name of each theme in :data:`ICON_THEMES`, identical files kept once."""
    missing = [str(t) for t in ICON_THEMES if not t.is_dir()]
    if missing:
        raise MissingPart(f"{', '.join(missing)} missing: apt-get install {' '.join(ICON_PACKAGES)} "
                          "(or make distill-real-deps)")
    best: dict = {}
    for theme in ICON_THEMES:
        for f in sorted(theme.rglob("*.png")):
            if f.is_symlink():
                continue
            key = (theme.name, f.stem)
            if key not in best or f.stat().st_size > best[key].stat().st_size:
                best[key] = f
    seen, out = set(), []
    for key in sorted(best):
        digest = hashlib.sha256(best[key].read_bytes()).hexdigest()
        if digest not in seen:
            seen.add(digest)
            out.append((f"{key[0]}_{key[1]}", best[key]))
    return out


def prepare_icons(work: Path) -> dict:
    """``data/unpaired_icons/`` (the icons, at most 256 px) and ``data/unpaired_pool/``: the image-only split's images
    and the icons together, for one image-only cache."""
    from PIL import Image

    root = work / "data"
    done = root / "icons.json"
    if done.is_file():
        return json.loads(done.read_text())
    files = icon_files()
    for d in ("unpaired_icons", "unpaired_pool"):
        shutil.rmtree(root / d, ignore_errors=True)
        (root / d).mkdir()
    for name, f in files:
        with Image.open(f) as im:
            im.thumbnail((256, 256), Image.LANCZOS)
            im.save(root / "unpaired_icons" / f"{name}.png")
    for d in ("unpaired_images", "unpaired_icons"):
        for f in (root / d).iterdir():
            os.link(f, root / "unpaired_pool" / f"{d}_{f.name}")
    info = {"icons": len(files), "themes": [t.name for t in ICON_THEMES],
            "pool": len(list((root / "unpaired_pool").iterdir()))}
    done.write_text(json.dumps(info, indent=2))
    return info


def _imagenet_names() -> list:
    import timm

    info = Path(timm.__file__).parent / "data" / "_info"
    lemmas = dict(line.split("\t", 1) for line in (info / "imagenet_synset_to_lemma.txt").read_text().splitlines()
                  if "\t" in line)
    return [lemmas[s].strip() for s in (info / "imagenet_synsets.txt").read_text().split() if s in lemmas]
