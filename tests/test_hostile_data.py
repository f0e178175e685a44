"""Hostile inputs: images deeper than 8 bits, broken caption files and template files,
paths of the wrong kind. Expected pixels are computed with numpy from the arrays written,
never with the code under test; errors must be typed, one line, and say what to do."""
import io
import json
import struct
import tarfile
import zlib

import numpy as np
import pytest
from PIL import Image

from mobileclip import runtime
from mobileclip.app.cli import main
from mobileclip.config import PreprocessConfig
from mobileclip.data import CaptionDataset, ImageFolderDataset, collate_skip, write_synthetic
from mobileclip.distill.sources import CaptionPairs, WebDatasetPairs
from mobileclip.errors import DatasetError, MobileCLIPError
from mobileclip.runtime.commands import read_templates
from mobileclip.transforms import ImageDecodeError, ImagePreprocess, load_image, to_rgb

RNG = np.random.default_rng(0)
# A 16-bit ramp over the whole range, with the values where rounding v / 257 changes or ends.
GRAY16 = np.concatenate([np.linspace(0, 65535, 60).astype(np.uint16),
                         np.array([0, 1, 128, 129, 256, 257, 385, 386, 32767, 32768, 65407, 65408, 65534, 65535],
                                  np.uint16)]).reshape(2, 37)


def _ref16(v: np.ndarray) -> np.ndarray:
    """The 16-bit rule, independently: v / 257 rounded to nearest (65535 → 255)."""
    return np.round(v.astype(np.float64) / 257.0).astype(np.uint8)


def _rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=2)


def _png(path, arr: np.ndarray, color_type: int, trns: bytes = b"") -> None:
    """A 16-bit PNG written by hand, as the PNG spec says (Pillow cannot write 16-bit RGB)."""
    h, w = arr.shape[:2]
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    head = chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + head + (chunk(b"tRNS", trns) if trns else b"")
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _tiff12(path, v: np.ndarray) -> None:
    """A 12-bit grey TIFF written by hand (two pixels in three bytes, most significant bits first)."""
    h, w = v.shape
    data = b"".join(bytes([a >> 4, ((a & 0xF) << 4) | (b >> 8), b & 0xFF])
                    for row in v.tolist() for a, b in zip(row[0::2], row[1::2]))
    tags = [(256, 3, w), (257, 3, h), (258, 3, 12), (259, 3, 1), (262, 3, 1), (273, 4, 0), (277, 3, 1),
            (278, 3, h), (279, 4, len(data))]
    start = 8 + 2 + 12 * len(tags) + 4
    ifd = struct.pack("<H", len(tags)) + b"".join(
        struct.pack("<HHIHH", t, 3, 1, val, 0) if typ == 3
        else struct.pack("<HHII", t, 4, 1, start if t == 273 else val)
        for t, typ, val in tags)
    path.write_bytes(b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + data)


def _write_deep(kind: str, path):
    """Write one deep image; return (path, expected 8-bit RGB, what Pillow reports)."""
    if kind == "png16-gray":
        Image.fromarray(GRAY16).save(path)
        return _rgb(_ref16(GRAY16))
    if kind == "png16-gray-by-hand":
        _png(path, GRAY16, 0)
        return _rgb(_ref16(GRAY16))
    if kind == "tiff-I;16":
        Image.fromarray(GRAY16).save(path)
        return _rgb(_ref16(GRAY16))
    if kind == "pgm16":
        path.write_bytes(b"P5\n37 2\n65535\n" + GRAY16.astype(">u2").tobytes())
        return _rgb(_ref16(GRAY16))
    if kind == "tiff-int32-16bit-values":
        Image.fromarray(GRAY16.astype(np.int32)).save(path)
        return _rgb(_ref16(GRAY16))
    if kind == "tiff-12bit":
        v = np.concatenate([np.linspace(0, 4095, 66).astype(np.uint16), np.uint16([8, 9, 2047, 2048, 4094, 4095])])
        _tiff12(path, v.reshape(2, 36))
        return _rgb(np.round(v.reshape(2, 36) * 255.0 / 4095).astype(np.uint8))
    if kind == "tiff-float32-unit":
        v = np.concatenate([np.linspace(0, 1, 70, dtype=np.float32), np.float32([0.5 / 255, 1.5 / 255, 0.998, 1])])
        v = v.reshape(2, 37)
        Image.fromarray(v).save(path)
        return _rgb(np.round(v.astype(np.float64) * 255).astype(np.uint8))
    raise AssertionError(kind)


DEEP = [("png16-gray", ".png", "I;16"), ("png16-gray-by-hand", ".png", "I;16"), ("tiff-I;16", ".tif", "I;16"),
        ("pgm16", ".pgm", "I"), ("tiff-int32-16bit-values", ".tif", "I"), ("tiff-float32-unit", ".tif", "F"),
        ("tiff-12bit", ".tif", "I;16")]


@pytest.mark.parametrize("kind,ext,mode", DEEP, ids=[d[0] for d in DEEP])
def test_deep_images_convert_by_their_real_range(tmp_path, kind, ext, mode):
    p = tmp_path / f"img{ext}"
    expected = _write_deep(kind, p)
    with Image.open(p) as raw:
        assert raw.mode == mode  # what Pillow reports for this file (the case being handled)
        raw.load()
        clipped = np.asarray(raw.convert("RGB"))
    assert not np.array_equal(clipped, expected)  # Pillow's own convert("RGB") gets it wrong
    got = load_image(p)
    assert got.mode == "RGB" and np.array_equal(np.asarray(got), expected)
    # The same pixels through every read path: runtime, training data, evaluation data.
    assert np.array_equal(np.asarray(runtime.read_image(p)), expected)
    with Image.open(p) as raw:  # an in-memory PIL image in its own mode
        raw.load()
        assert np.array_equal(np.asarray(runtime.core.to_pil(raw)), expected)
    (tmp_path / "c.csv").write_text(f"image,caption\n{p.name},a ramp\n")
    assert np.array_equal(np.asarray(CaptionPairs(str(tmp_path / "c.csv")).load(0)[0]), expected)
    pp = PreprocessConfig(16, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "nearest", "squash")
    ref = np.asarray(Image.fromarray(expected).resize((16, 16), Image.NEAREST), np.float32).transpose(2, 0, 1) / 255
    assert np.abs(ImagePreprocess(pp)(p).numpy() - ref).max() < 1e-6
    assert np.abs(runtime.Preprocessor(16, (0, 0, 0), (1, 1, 1), "nearest", "squash")(p) - ref).max() < 1e-6


def test_deep_images_in_webdataset_shards(tmp_path):
    files = {}
    for kind, ext, _ in DEEP:
        p = tmp_path / f"{kind}{ext}"
        files[kind] = (p, _write_deep(kind, p))
    shard = tmp_path / "000.tar"
    with tarfile.open(shard, "w") as tf:
        for kind, (p, _) in files.items():
            key = kind.replace(";", "").replace(".", "")
            for name, data in ((f"{key}{p.suffix.replace('.pgm', '.ppm')}", p.read_bytes()), (f"{key}.txt", b"x")):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    src = WebDatasetPairs(str(shard))
    got = [np.asarray(src.load(i)[0]) for i in range(len(src))]
    assert len(got) == len(files)  # samples keep the order of the tar
    for g, (_, expected) in zip(got, files.values()):
        assert np.array_equal(g, expected)


@pytest.mark.parametrize("channels,color_type", [(3, 2), (4, 6)], ids=["rgb48", "rgba64"])
def test_48_and_64_bit_png(tmp_path, channels, color_type):
    v = RNG.integers(0, 65536, (5, 7, channels)).astype(np.uint16)
    v[0, 0], v[0, 1] = 65535, 0
    if channels == 4:
        v[1, :, 3] = 0  # a transparent row, composited on white
        v[2, :, 3] = 65535
    _png(tmp_path / "x.png", v, color_type)
    got = np.asarray(load_image(tmp_path / "x.png")).astype(np.int64)
    # Pillow reduces these itself by the high byte; that is within one level of v / 257.
    if channels == 3:
        assert np.array_equal(got, v >> 8)
        assert np.abs(got - _ref16(v)).max() <= 1
    else:
        rgb, a = (v[..., :3] >> 8).astype(np.float64), (v[..., 3:] >> 8).astype(np.float64) / 255
        expected = rgb * a + 255 * (1 - a)
        assert np.abs(got - expected).max() <= 1
        assert (got[1] == 255).all() and np.array_equal(got[2], v[2, :, :3] >> 8)


def test_16_bit_gray_png_with_a_transparent_value(tmp_path):
    key = int(GRAY16[0, 10])
    _png(tmp_path / "t.png", GRAY16, 0, trns=struct.pack(">H", key))
    expected = _ref16(GRAY16)
    expected[GRAY16 == key] = 255
    assert np.array_equal(np.asarray(load_image(tmp_path / "t.png")), _rgb(expected))


def test_16_bit_png_with_exif_orientation(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise for display
    Image.fromarray(GRAY16).save(tmp_path / "r.png", exif=exif)
    got = np.asarray(load_image(tmp_path / "r.png"))
    assert np.array_equal(got, _rgb(np.rot90(_ref16(GRAY16), k=-1)))


@pytest.mark.parametrize("name,pixels,match", [
    ("int32-beyond-16-bits.tif", np.array([[0, 70000]], np.int32), r"32-bit integer image values span \[0, 70000\]"),
    ("int32-negative.tif", np.array([[-5, 100]], np.int32), r"span \[-5, 100\]"),
    ("float-0-255.tif", np.array([[0.0, 200.0]], np.float32), r"float images must lie in \[0, 1\]"),
    ("float-nan.tif", np.array([[0.5, np.nan]], np.float32), "NaN or infinite"),
], ids=["int32-beyond-16-bits", "int32-negative", "float-0-255", "float-nan"])
def test_deep_images_without_a_defined_range_are_refused_and_skipped(tmp_path, name, pixels, match):
    p = tmp_path / "cls" / name
    p.parent.mkdir()
    Image.fromarray(pixels).save(p)
    with pytest.raises(ImageDecodeError, match=match):
        load_image(p)
    with pytest.raises(runtime.ImageReadError, match=name + ".*" + match) as e:
        runtime.read_image(p)
    assert "\n" not in str(e.value)
    # In a dataset the image is skipped and counted, never a crash.
    Image.fromarray(_ref16(GRAY16)).save(p.parent / "good.png")
    ds = ImageFolderDataset(tmp_path, transform=ImagePreprocess(PreprocessConfig(16)))
    images, _, keys, skipped = collate_skip([ds[i] for i in range(len(ds))])
    assert images.shape[0] == 1 and keys[0].endswith("good.png") and skipped == [str(p)]
    (tmp_path / "c.csv").write_text(f"image,caption\ncls/{name},x\ncls/good.png,y\n")
    pairs = CaptionPairs(str(tmp_path / "c.csv"))
    assert pairs.load(0)[0] is None and pairs.load(1)[0] is not None


@pytest.mark.parametrize("mode,ext", [("RGB", ".png"), ("L", ".png"), ("RGB", ".tif"), ("RGB", ".bmp"),
                                      ("L", ".tif"), ("P", ".png"), ("RGBA-opaque", ".png")])
def test_8_bit_files_are_unchanged_bit_for_bit(tmp_path, mode, ext):
    rgb = RNG.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    p = tmp_path / f"x{ext}"
    if mode == "RGB":
        Image.fromarray(rgb, "RGB").save(p)
        expected = rgb
    elif mode == "L":
        Image.fromarray(rgb[..., 0], "L").save(p)
        expected = _rgb(rgb[..., 0])
    elif mode == "RGBA-opaque":
        Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]), "RGBA").save(p)
        expected = rgb
    else:  # palette: look the indices up in numpy
        palette = RNG.integers(0, 256, (256, 3), dtype=np.uint8)
        im = Image.fromarray(rgb[..., 0], "P")
        im.putpalette(palette.ravel().tolist())
        im.save(p)
        expected = palette[rgb[..., 0]]
    assert np.array_equal(np.asarray(load_image(p)), expected)
    assert np.array_equal(np.asarray(runtime.read_image(p)), expected)


@pytest.mark.parametrize("shape", [(6, 7), (6, 7, 1), (6, 7, 3), (6, 7, 4)])
def test_runtime_accepts_uint16_arrays_by_the_16_bit_rule(shape):
    v = RNG.integers(0, 65536, shape).astype(np.uint16)
    v.reshape(-1)[:4] = (0, 65535, 128, 129)
    if len(shape) == 3 and shape[2] == 4:
        v[..., 3] = 65535  # opaque
    got = np.asarray(runtime.core.to_pil(v))
    ref = _ref16(v)
    expected = _rgb(ref.reshape(shape[:2])) if len(shape) == 2 or shape[2] == 1 else ref[..., :3]
    assert got.dtype == np.uint8 and np.array_equal(got, expected)
    pp = ImagePreprocess(PreprocessConfig(8, (0.0,) * 3, (1.0,) * 3, "nearest", "squash"))
    assert np.abs(pp(v).numpy() - runtime.Preprocessor(8, (0,) * 3, (1,) * 3, "nearest", "squash")(v)).max() == 0


@pytest.mark.parametrize("arr,match", [(np.zeros((4, 4, 3), np.float32), "uint8.*uint16"),
                                       (np.zeros((4, 4), np.int32), "uint8.*uint16"),
                                       (np.zeros((4, 4, 2), np.uint8), "1, 3 or 4 channels"),
                                       (np.zeros((0, 4, 3), np.uint8), "non-empty")])
def test_runtime_rejects_other_arrays(arr, match):
    with pytest.raises(runtime.RuntimeInputError, match=match):
        runtime.core.to_pil(arr)


def test_in_memory_float_image_out_of_range_is_a_runtime_input_error():
    with pytest.raises(runtime.RuntimeInputError, match=r"F PIL image.*\[0, 1\]"):
        runtime.core.to_pil(Image.fromarray(np.full((3, 3), 7.0, np.float32)))
    with pytest.raises(ImageDecodeError):
        to_rgb(Image.fromarray(np.full((3, 3), 7.0, np.float32)))


# ------------------------------------------------------------------ caption files

@pytest.fixture()
def img_dir(tmp_path):
    Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / "a.png")
    return tmp_path


def _caption_file(d, name: str, content) -> str:
    p = d / name
    p.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return p


GOOD = [
    ("bom.csv", "\ufeffimage,caption\na.png,a dark square\n", ["a dark square"]),
    ("bom.tsv", "\ufeffimage\tcaption\na.png\ta dark square\n", ["a dark square"]),
    ("bom.jsonl", "\ufeff" + json.dumps({"image": "a.png", "caption": "a dark square"}) + "\n", ["a dark square"]),
    ("case.csv", " Image , Caption \na.png,a dark square\n", ["a dark square"]),
    ("quoted.csv", 'image,caption\na.png,"a cat, sitting"\na.png,"two\nlines"\n', ["a cat, sitting", "two\nlines"]),
    ("u2028.csv", "image,caption\na.png,one\u2028caption\u0085still one\n", ["one\u2028caption\u0085still one"]),
    ("u2028.jsonl", json.dumps({"image": "a.png", "caption": "one\u2028caption"}, ensure_ascii=False) + "\n",
     ["one\u2028caption"]),
    ("list.jsonl", json.dumps({"image": "a.png", "captions": ["one", "two"]}) + "\n", ["one", "two"]),
    ("crlf-blank.csv", "image,caption\r\na.png,x\r\n\r\na.png,y\r\n", ["x", "y"]),
    ("array.json", json.dumps([{"image": "a.png", "caption": "x"}, {"file": "a.png", "text": "y"}]), ["x", "y"]),
]


@pytest.mark.parametrize("name,content,captions", GOOD, ids=[g[0] for g in GOOD])
def test_caption_files_that_are_fine(img_dir, name, content, captions):
    ds = CaptionDataset(_caption_file(img_dir, name, content))
    assert ds.captions == captions
    assert all(p == str(img_dir / "a.png") for p in ds.image_paths)
    assert ds[0][0] is not None


LATIN1_CSV = "image,caption\na.png,ok\na.png,caf\u00e9 au lait\n".encode("latin-1")
E_ACUTE_AT = LATIN1_CSV.index(bytes([0xE9]))  # counted here, not by the code under test
BAD = [
    ("latin1.csv", LATIN1_CSV,
     rf"not UTF-8 text \(byte 0xe9 on line 3, byte offset {E_ACUTE_AT}\); save it as UTF-8"),
    ("latin1.jsonl", ('{"image": "a.png", "caption": "caf\u00e9"}\n').encode("latin-1"),
     "byte 0xe9 on line 1.*save it as UTF-8"),
    ("utf16.csv", "image,caption\na.png,x\n".encode("utf-16"), "not UTF-8.*line 1.*save it as UTF-8"),
    ("broken.jsonl", '{"image": "a.png", "caption": "x"}\n\n{"image": "a.png", "caption": \n',
     "line 3 is not valid JSON"),
    ("int-image.jsonl", '{"image": "a.png", "caption": "x"}\n{"image": 3, "caption": "x"}\n',
     r"line 2: the image path \('image'\) is 3 \(of type int, not a string\)"),
    ("int-caption.jsonl", '{"image": "a.png", "caption": 5}\n',
     r"line 1: the caption \('caption'\) is 5 \(of type int"),
    ("null-caption.jsonl", '{"image": "a.png", "caption": null}\n', "line 1: the caption.*missing"),
    ("empty-caption.jsonl", '{"image": "a.png", "caption": "  "}\n', "line 1: the caption.*empty"),
    ("empty-in-list.jsonl", '{"image": "a.png", "captions": ["ok", ""]}\n', "line 1: the caption.*empty"),
    ("empty-list.jsonl", '{"image": "a.png", "captions": []}\n', "line 1: the caption.*empty list"),
    ("not-object.jsonl", '["a.png", "x"]\n', "line 1 is a JSON list, not an object"),
    ("no-caption-key.jsonl", '{"image": "a.png", "label": "x"}\n', r"line 1 has keys \['image', 'label'\]"),
    ("empty-caption.csv", "image,caption\na.png,x\na.png,\n", r"line 3: the caption \('caption'\) is empty"),
    ("empty-image.csv", "image,caption\n,x\n", r"line 2: the image path \('image'\) is empty"),
    ("short-row.csv", "image,caption\na.png\n", "line 2: the caption.*missing"),
    ("unquoted-comma.csv", "image,caption\na.png,a cat, sitting\n", "line 2 has 3 fields.*quote captions"),
    ("no-columns.csv", "picture,words\na.png,x\n", "need an image column"),
    ("tabs.csv", "image\tcaption\na.png\tx\n", r"looks tab-separated: name it \.tsv"),
    ("commas.tsv", "image,caption\na.png,x\n", r"looks comma-separated: name it \.csv"),
    ("array-item.json", json.dumps([{"image": "a.png", "caption": "x"}, {"image": "a.png", "caption": ""}]),
     r"item \[1\]: the caption \('caption'\) is empty"),
    ("header-only.csv", "image,caption\n", "has no rows"),
    ("empty.jsonl", "\n\n", "has no rows"),
    ("captions.txt", "a.png x\n", "unsupported caption file type '.txt'"),
]


@pytest.mark.parametrize("name,content,match", BAD, ids=[b[0] for b in BAD])
def test_caption_files_that_are_refused(img_dir, name, content, match):
    p = _caption_file(img_dir, name, content)
    with pytest.raises(DatasetError, match=match) as e:
        CaptionDataset(p)
    assert str(p) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(DatasetError, match=match):  # the training path reads captions the same way
        CaptionPairs(str(p))


def test_caption_paths_of_the_wrong_kind(img_dir):
    with pytest.raises(DatasetError, match="does not exist"):
        CaptionDataset(img_dir / "nope.csv")
    with pytest.raises(DatasetError, match="is a directory"):
        CaptionDataset(img_dir)
    p = _caption_file(img_dir, "c.csv", "image,caption\na.png,x\n")
    with pytest.raises(DatasetError, match="image root .*a.png' is a file, not a folder"):
        CaptionDataset(p, image_root=img_dir / "a.png")
    with pytest.raises(DatasetError, match="image root .* does not exist"):
        CaptionDataset(p, image_root=img_dir / "nope")


def test_image_folder_and_shards_of_the_wrong_kind(img_dir):
    with pytest.raises(DatasetError, match="a.png' is a file, not a folder"):
        ImageFolderDataset(img_dir / "a.png")
    with pytest.raises(DatasetError, match="does not exist"):
        ImageFolderDataset(img_dir / "nope")
    with pytest.raises(runtime.ImageReadError, match="is a directory, not an image file"):
        runtime.read_image(img_dir)
    with pytest.raises(DatasetError, match="is a directory, not a .tar file"):
        WebDatasetPairs(str(img_dir))


@pytest.mark.parametrize("name,payload", [("latin1.txt", "caf\u00e9".encode("latin-1")), ("empty.txt", b"  \n"),
                                          ("bad.json", b"{not json"), ("nocap.json", b'{"label": "x"}'),
                                          ("intcap.json", b'{"caption": 3}')])
def test_webdataset_captions_that_cannot_be_read_skip_the_sample(tmp_path, name, payload):
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, format="PNG")
    key, ext = name.split(".")
    with tarfile.open(tmp_path / "000.tar", "w") as tf:
        for member, data in (("good.png", png.getvalue()), ("good.txt", "fine caption\n".encode()),
                             (f"{key}.png", png.getvalue()), (f"{key}.{ext}", payload)):
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    src = WebDatasetPairs(str(tmp_path / "000.tar"))
    loaded = {src.load(i)[1][0]: src.load(i)[0] for i in range(len(src))}
    assert loaded.keys() == {"fine caption", ""} and loaded[""] is None


# ------------------------------------------------------------------ prompt templates

TEMPLATE_BAD = [
    ("latin1", "a photo of a {}.\nune photo d'un {} \u00e9\n".encode("latin-1"),
     r"not UTF-8 text \(byte 0xe9 on line 2.*save it as UTF-8"),
    ("named-field", b"a photo of a {}.\na photo of {x}\n",
     r"line 2: template 'a photo of \{x\}' has the field '\{x\}'"),
    ("two-fields", b"# comment\n\na {} of a {}\n", r"line 3: .* has 2 '\{\}' fields; use exactly one"),
    ("lone-brace", b"a photo of a {\n", r"line 1: .*unbalanced braces"),
    ("no-field", b"a photo\n", r"line 1: every template needs '\{\}'"),
    ("bad-spec", b"a photo of {:d}\n", r"line 1: .*cannot take a label \(ValueError"),
    ("mixed", b"{} and {0}\n", r"line 1: .*cannot take a label"),
    ("attr", b"a photo of {0.upper}\n", r"has the field '\{0.upper\}'"),
    ("only-comments", b"# nothing\n\n", "has no templates"),
]


@pytest.mark.parametrize("name,content,match", TEMPLATE_BAD, ids=[t[0] for t in TEMPLATE_BAD])
def test_template_files_that_are_refused(tmp_path, name, content, match, capsys):
    p = tmp_path / f"{name}.txt"
    p.write_bytes(content)
    with pytest.raises(runtime.RuntimeInputError, match=match) as e:
        read_templates(str(p))
    assert str(p) in str(e.value) and "\n" not in str(e.value) and isinstance(e.value, MobileCLIPError)
    # On the command line: one line on stderr, exit 2, before any bundle is opened.
    assert main(["classify", str(tmp_path / "no-bundle"), str(tmp_path / "x.png"), "--labels", "cat",
                 "--templates", str(p)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and str(p) in err


def test_template_files_that_are_fine_and_missing_ones(tmp_path):
    p = tmp_path / "t.txt"
    p.write_bytes("\ufeff# prompts\na photo of a {}.\n  {0}, or is it {0}?  \r\n{{literal}} {}\n".encode())
    assert read_templates(str(p)) == ["a photo of a {}.", "{0}, or is it {0}?", "{{literal}} {}"]
    assert read_templates(None) == list(runtime.DEFAULT_TEMPLATES)
    assert read_templates("", default=("x {}",)) == ["x {}"]
    with pytest.raises(runtime.RuntimeInputError, match="does not exist"):
        read_templates(str(tmp_path / "nope.txt"))
    with pytest.raises(runtime.RuntimeInputError, match="is a directory"):
        read_templates(str(tmp_path))


@pytest.mark.parametrize("templates,match", [
    ("a photo of a {}", r"list of strings, got one string.*wrap it in a list"),
    (["a {}", 3], r"template 2 of 2, 3, is a int"),
    (["a {x}"], r"template 'a \{x\}' has the field"),
    (["a {}", "b {} {}"], r"template 2 of 2, 'b \{\} \{\}', has 2"),
    ([], "empty"),
])
def test_check_templates(templates, match):
    from mobileclip.templates import check_templates

    with pytest.raises(runtime.RuntimeInputError, match=match):
        check_templates(templates)


# ------------------------------------------------------------------ synth

def test_synth_never_overwrites_a_different_captions_csv(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "captions.csv").write_text("image,caption\nholiday.jpg,my own caption\n")
    with pytest.raises(DatasetError, match=r"captions.csv' already exists.*choose another --out or delete it"):
        write_synthetic(out, 4)
    assert (out / "captions.csv").read_text() == "image,caption\nholiday.jpg,my own caption\n"
    assert [p.name for p in out.iterdir()] == ["captions.csv"]  # nothing else written either
    assert main(["synth", "--out", str(out), "--n", "4"]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and err.count("\n") == 1
    # Re-running the same command rewrites the same files: allowed. A different one is not.
    fresh = tmp_path / "synth"
    write_synthetic(fresh, 4, seed=1)
    before = (fresh / "captions.csv").read_bytes()
    write_synthetic(fresh, 4, seed=1)
    assert (fresh / "captions.csv").read_bytes() == before
    with pytest.raises(DatasetError, match="already exists"):
        write_synthetic(fresh, 5, seed=1)
    write_synthetic(out, 4, overwrite=True)
    assert len(CaptionDataset(out / "captions.csv")) == 4
    (tmp_path / "file").write_text("x")
    with pytest.raises(DatasetError, match="is a file, not a folder"):
        write_synthetic(tmp_path / "file", 2)
