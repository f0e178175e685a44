"""The web backend (issue 24): the bundle and its pinned JS libraries, `mobileclip serve`, and the bundle's own app in
a real headless Chromium - token ids against open_clip, JS preprocessing against Pillow, embeddings against
PyTorch, hostile input in the page, and a screenshot of a classification.

The browser tests skip, saying why, where Chromium, ChromeDriver or selenium is missing (`make web-deps` installs
them); the export tests skip where the JS libraries cannot be installed (no npm)."""
import base64
import json
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mobileclip.backends import BackendUnavailable
from mobileclip.backends import web as W
from mobileclip.backends import web_browser as WB
from mobileclip.backends.bundle import BundleError, load_manifest
from mobileclip.errors import ConfigError

sys.path.insert(0, str(Path(__file__).parent))
from tokenizer_corpus import CORPUS, EXTRA, JSON_GAPS, fuzz_texts, gap_explained  # noqa: E402

NO_BROWSER = WB.browser_unavailable()
needs_browser = pytest.mark.skipif(NO_BROWSER is not None, reason=f"no browser here: {NO_BROWSER}")


@pytest.fixture(scope="module")
def bundle(backend_bundle):
    """The session's fp32 web bundle of mobileclip-tiny (the registry tests export it)."""
    try:
        return backend_bundle("web")
    except BackendUnavailable as e:
        pytest.skip(f"web bundles cannot be exported here: {e}")


@pytest.fixture(scope="module")
def page(bundle):
    """The bundle's app open in headless Chromium with 2 threads: ``(browser, server)``."""
    if NO_BROWSER:
        pytest.skip(f"no browser here: {NO_BROWSER}")
    with WB.BundleServer(bundle) as server, WB.Browser() as browser:
        assert browser.open(server.url + "?threads=2"), browser.call("mobileclip.messages()")
        yield browser, server


# ------------------------------------------------------------------ the bundle

def test_bundle_holds_the_app_and_the_pinned_libraries(bundle):
    m = load_manifest(bundle)   # every file checksummed, nothing unlisted
    web = m["artifacts"]["image"]["web"]
    assert m["artifacts"]["text"]["web"] == web and m["artifacts"]["image"]["backend"] == "web"
    for rel in [*web["app"], web["ort"], web["ort_glue"], web["ort_wasm"], web["tokenizers"], "tokenizer.json"]:
        assert rel in m["files"], rel
    for rel, (_, digest) in W.VENDOR.items():
        assert m["files"][rel] == digest, rel          # exactly the pinned bytes
    for f in W.APP_FILES:
        assert (bundle / f).read_bytes() == (W.APP_DIR / f).read_bytes()
    assert {k: v["version"] for k, v in web["dependencies"].items()} == W.js_packages()
    assert web["max_pixels"] == 4096 * 4096 and web["pillow"] == Image.__version__


def test_package_json_pins_exact_versions_and_the_lock_agrees():
    lock = json.loads((W.APP_DIR / "package-lock.json").read_text())
    for name, version in W.js_packages().items():
        assert version.count(".") == 2 and version[0].isdigit(), f"{name}: {version} is a range, not a pin"
        entry = lock["packages"][f"node_modules/{name}"]
        assert entry["version"] == version and entry["integrity"].startswith("sha512-")
    for rel, (path, _) in W.VENDOR.items():
        assert path.split("/")[0] in {n.split("/")[0] for n in W.js_packages()}, rel


def _fake_deps(tmp_path, bundle) -> Path:
    """A node_modules holding exactly the vendored files (copied from the bundle)."""
    root = tmp_path / "deps"
    for rel, (path, _) in W.VENDOR.items():
        (root / "node_modules" / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(bundle / rel, root / "node_modules" / path)
    return root


def test_a_modified_or_missing_library_is_refused(bundle, tmp_path, monkeypatch):
    root = _fake_deps(tmp_path, bundle)
    monkeypatch.setenv("MOBILECLIP_WEB_DEPS", str(root))
    assert W.ensure_js_deps(install=False) == root / "node_modules"
    glue = root / "node_modules" / W.VENDOR["vendor/onnxruntime-web/ort-wasm-simd-threaded.mjs"][0]
    glue.write_bytes(glue.read_bytes() + b"\n// changed")
    with pytest.raises(BackendUnavailable, match="ort-wasm-simd-threaded.mjs does not match its pinned sha256"):
        W.ensure_js_deps(install=False)
    monkeypatch.setattr(W.shutil, "which", lambda name: None)   # no npm to reinstall them with
    with pytest.raises(BackendUnavailable, match="npm is not installed"):
        W.ensure_js_deps()
    glue.unlink()
    with pytest.raises(BackendUnavailable, match="ort-wasm-simd-threaded.mjs is missing"):
        W.ensure_js_deps(install=False)


def test_web_export_refuses_a_tokenizer_the_app_cannot_read(tmp_path):
    """A source with a Hugging Face tokenizer (its own tokenizer files): the app reads CLIP's BPE tokenizer.json only."""
    from types import SimpleNamespace

    from mobileclip.backends import ExportOptions

    src = SimpleNamespace(name="hf:siglip", tokenizer_info={"name": "hf", "files": ["tokenizer.json"]})
    with pytest.raises(BundleError, match="tokenizes with CLIP's BPE .* uses a 'hf' tokenizer"):
        W.export_web(src, tmp_path, ExportOptions())
    assert not any(tmp_path.iterdir())          # refused before writing anything


# ------------------------------------------------------------------ mobileclip serve

def _get(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, b""


def test_server_sends_isolation_headers_and_mime_types_and_lists_nothing(bundle):
    with WB.BundleServer(bundle) as s:
        status, headers, body = _get(s.url)
        assert status == 200 and b'src="app.mjs"' in body and headers["Content-Type"].startswith("text/html")
        assert headers["Cross-Origin-Opener-Policy"] == "same-origin"
        assert headers["Cross-Origin-Embedder-Policy"] == "require-corp"
        assert _get(s.url + "app.mjs")[1]["Content-Type"] == "text/javascript"
        assert _get(s.url + "vendor/onnxruntime-web/ort-wasm-simd-threaded.wasm")[1]["Content-Type"] == "application/wasm"
        assert _get(s.url + "vendor/")[0] == 404                 # no directory listing
        assert _get(s.url + "../../../etc/passwd")[0] == 404     # nothing outside the folder
        assert s.url.startswith("http://127.0.0.1:")


def test_server_refuses_what_is_not_an_intact_web_bundle(bundle, tiny_bundle, tmp_path):
    with pytest.raises(BundleError, match="not a web bundle"):
        WB.BundleServer(tiny_bundle)
    bad = tmp_path / "bad"
    shutil.copytree(bundle, bad)
    with open(bad / "app.mjs", "a") as f:
        f.write("// changed\n")
    with pytest.raises(BundleError, match="app.mjs.*does not match its checksum"):
        WB.BundleServer(bad)
    for port in (-1, 70000, True):
        with pytest.raises(ConfigError, match="not a TCP port"):
            WB.BundleServer(bundle, port=port)


def test_server_serves_a_plain_folder_only_when_asked(tiny_bundle, tmp_path):
    """``bundle=False`` (benchmarks' own pages): any folder, the same isolation headers, no manifest; not a file."""
    (tmp_path / "page.html").write_text("<p>x</p>")
    with pytest.raises(BundleError):
        WB.BundleServer(tmp_path)            # a folder with no manifest is not a bundle
    with WB.BundleServer(tmp_path, bundle=False) as s:
        status, headers, body = _get(s.url + "page.html")
        assert status == 200 and body == b"<p>x</p>" and headers["Cross-Origin-Embedder-Policy"] == "require-corp"
        assert _get(s.url)[0] == 404          # still no listing
    with pytest.raises(ConfigError, match="not a folder"):
        WB.BundleServer(tmp_path / "page.html", bundle=False)


def test_serve_cli_errors_are_one_line_with_status_2(tiny_bundle):
    for args, msg in (([str(tiny_bundle)], "not a web bundle"), ([str(tiny_bundle), "--port", "99999"], "not a TCP port")):
        r = subprocess.run([sys.executable, "-m", "mobileclip", "serve", *args], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 2 and msg in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


# ------------------------------------------------------------------ in Chromium

@needs_browser
def test_export_ran_browser_parity(bundle):
    b = json.loads((bundle / "parity.json").read_text())["browser"]
    assert "skipped" not in b and not b["misses"]
    assert b["tokens_equal"] and b["top1_agreement"] == 1.0
    assert b["image"]["min_cosine"] >= 0.99999 and b["text"]["min_cosine"] >= 0.99999
    assert b["pixels"]["png_exact"] == b["pixels"]["png"] >= 7     # PNGs: the runtime's pixels, bit for bit
    assert b["requests"]["outside_bundle"] == [] and b["requests"]["count"] >= 8
    assert set(b["latency"]) == {"browser", "native_onnxruntime"}
    assert load_manifest(bundle)["parity"]["browser"]["tokens_equal"] is True


@needs_browser
def test_token_ids_equal_open_clip_on_the_hard_corpus(page):
    from open_clip.tokenizer import SimpleTokenizer

    browser, _ = page
    C = browser.call("mobileclip.tokenize(['x'])[0].length")
    texts = CORPUS + EXTRA + fuzz_texts()
    got = np.asarray(browser.call("mobileclip.tokenize(args[0])", texts))
    want = SimpleTokenizer(context_length=C)(texts, context_length=C).numpy()
    assert got.shape == want.shape == (len(texts), C)
    bad = [t for t, g, w in zip(texts, got, want) if not np.array_equal(g, w)]
    fixed = set(CORPUS + EXTRA)
    assert {t for t in bad if t in fixed} == JSON_GAPS        # only the documented gap, and it is real
    assert all(gap_explained(t) for t in bad if t not in fixed), [t for t in bad if not gap_explained(t)][:5]
    long = texts.index("word " * 100)
    assert got[long, 0] == 49406 and got[long, -1] == 49407   # truncated, end token kept


@needs_browser
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear", "nearest"])
def test_js_resampling_equals_pillow(page, interpolation):
    """The page's resize + center crop against mobileclip.transforms (Pillow) on odd sizes, both resize modes."""
    from mobileclip.config import PreprocessConfig
    from mobileclip.transforms import resize_crop

    browser, _ = page
    rng = np.random.default_rng(len(interpolation))
    shapes = [(1, 1), (3, 500), (500, 3), (257, 256), (640, 480), (480, 640), (200, 410), (64, 64), (63, 65)]
    shapes += [tuple(int(v) for v in rng.integers(2, 600, 2)) for _ in range(8)]
    for i, (w, h) in enumerate(shapes):
        size, mode = (224, 256, 64)[i % 3], ("shortest", "squash")[i % 2]
        a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        got = browser.call("mobileclip.resample(args[0], args[1], args[2], args[3], args[4], args[5])",
                           base64.b64encode(a.tobytes()).decode(), w, h, size, mode, interpolation)
        got = np.frombuffer(base64.b64decode(got), np.uint8).reshape(size, size, 3)
        want = np.asarray(resize_crop(Image.fromarray(a), PreprocessConfig(size, (0, 0, 0), (1, 1, 1), interpolation,
                                                                           mode)))
        assert np.array_equal(got, want), (w, h, size, mode, int((got != want).sum()))


def _image_files(folder: Path) -> list:
    """Image files of every kind the runtime reads: RGB, grayscale, palette with transparency, RGBA, JPEG with each
    EXIF orientation, CMYK JPEG, 16-bit grey and RGB PNG, odd sizes."""
    rng = np.random.default_rng(7)
    base = np.asarray(Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).resize((200, 150),
                                                                                             Image.BICUBIC))
    out = []

    def save(im, name, **kw):
        im.save(folder / name, **kw)
        out.append(folder / name)

    save(Image.fromarray(base), "rgb.png")
    save(Image.fromarray(base).convert("L"), "gray.png")
    save(Image.fromarray(base[:, :7]), "thin.png")
    pal = Image.fromarray(base).convert("P", palette=Image.ADAPTIVE, colors=16)
    save(pal, "palette.png", transparency=3)
    rgba = Image.fromarray(np.dstack([base, np.tile(np.linspace(0, 255, 200, dtype=np.uint8), (150, 1))]), "RGBA")
    save(rgba, "alpha.png")
    for o in (1, 3, 6, 8):
        exif = Image.Exif()
        exif[0x0112] = o
        save(Image.fromarray(base), f"exif{o}.jpg", quality=92, exif=exif)
    save(Image.fromarray(base).convert("CMYK"), "cmyk.jpg", quality=92)   # print workflows' JPEGs
    wide = base.astype(np.uint16) * 257 + rng.integers(0, 257, base.shape, dtype=np.uint16)   # 16 bits per sample
    save(Image.fromarray(wide[..., 0]), "gray16.png")
    (folder / "rgb16.png").write_bytes(png16(wide))   # Pillow cannot write 48-bit PNGs
    out.append(folder / "rgb16.png")
    return out


def png16(rgb: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG (colour type 2, bit depth 16), written by hand from the PNG specification."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    h, w, _ = rgb.shape
    rows = b"".join(b"\x00" + rgb[y].astype(">u2").tobytes() for y in range(h))   # filter type 0 on each row
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


@needs_browser
def test_js_preprocessing_equals_the_python_runtime_on_real_files(page, tmp_path):
    from mobileclip.runtime.core import Preprocessor

    browser, server = page
    browser.call("mobileclip.clearImages()")
    files = _image_files(tmp_path)
    browser.choose_files(files)
    assert browser.call("mobileclip.messages()") == []
    shown = browser.call("mobileclip.images()")
    m = load_manifest(server.directory)
    pre, S = Preprocessor.from_manifest(m), m["image_size"]
    std = np.asarray(m["std"], np.float32)[:, None, None]
    for f, im in zip(files, shown):
        assert im["name"] == f.name
        js = WB.floats(im["pixels"], 3 * S * S).reshape(3, S, S)
        levels = np.abs(js - pre(f)) * std * 255           # in 8-bit levels
        if f.name == "gray16.png":   # the browser keeps the high byte (v >> 8), the runtime rounds v / 257
            assert 0.5 < levels.max() <= 1 + 1e-3, float(levels.max())
        elif f.suffix == ".png" and f.name != "alpha.png":   # rgb16.png too: Pillow also keeps the high byte there
            assert levels.max() < 1e-3, f.name                # lossless: exactly the runtime's pixels
        else:   # JPEG (the browser's decoder) and semi-transparent pixels (the canvas composites premultiplied)
            assert levels.max() <= 2.0 + 1e-3, (f.name, float(levels.max()))


@needs_browser
def test_hostile_input_gets_a_visible_message(page, tmp_path):
    from selenium.webdriver.common.by import By

    browser, _ = page
    browser.call("mobileclip.clearImages()")
    (tmp_path / "notes.png").write_text("not an image at all\n")
    Image.new("RGB", (8000, 6250), (200, 30, 30)).save(tmp_path / "huge.png")   # 50 megapixels, a small file
    Image.new("RGB", (40, 30), (0, 90, 200)).save(tmp_path / "ok.png")
    browser.choose_files([tmp_path / "notes.png", tmp_path / "huge.png", tmp_path / "ok.png"])
    msgs = browser.call("mobileclip.messages()")
    assert any("notes.png is not an image this browser can decode" in m for m in msgs), msgs
    assert any("huge.png is 50.0 megapixels (8000 x 6250)" in m and "16.8 megapixels" in m for m in msgs), msgs
    assert [im["name"] for im in browser.call("mobileclip.images()")] == ["ok.png"]   # the good one still loads
    assert "2 refused" in browser.text("status")
    assert browser.driver.find_element(By.ID, "messages").is_displayed()
    d = browser.driver
    for query in ("", "   "):
        d.find_element(By.ID, "query").clear()
        d.find_element(By.ID, "query").send_keys(query)
        d.find_element(By.ID, "search").click()
        assert browser.call("mobileclip.messages()") == ["type a query to rank the images by"]
    d.find_element(By.ID, "labels").clear()
    d.find_element(By.ID, "labels").send_keys(" , \n ,")
    d.find_element(By.ID, "classify").click()
    assert browser.call("mobileclip.messages()")[0].startswith("type at least one label")
    assert browser.driver.find_element(By.ID, "messages").is_displayed()


@needs_browser
@pytest.mark.parametrize("damage", ["text.onnx", "vendor/tokenizers/tokenizers.min.mjs", "tokenizer.json"])
def test_a_damaged_bundle_is_refused_in_the_page(bundle, tmp_path, damage):
    bad = tmp_path / "bad"
    shutil.copytree(bundle, bad)
    if damage == "tokenizer.json":
        (bad / damage).unlink()
        want = "the bundle file tokenizer.json is missing (HTTP 404)"
    else:
        data = bytearray((bad / damage).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (bad / damage).write_bytes(bytes(data))
        want = f"the bundle file {damage} does not match its sha256 in manifest.json"
    with WB.BundleServer(bad, verify=False) as s, WB.Browser() as browser:   # as any static host would serve it
        assert browser.open(s.url) is False
        msgs = browser.call("mobileclip.messages()")
        assert len(msgs) == 1 and msgs[0].startswith(want), msgs
        assert "Not ready" in browser.text("status")


@needs_browser
def test_threads_need_isolation_and_a_sane_count(bundle):
    with WB.BundleServer(bundle) as s, WB.Browser() as browser:
        assert browser.open(s.url + "?threads=0") is False
        assert "?threads=0 must be a whole number from 1 to 64" in browser.call("mobileclip.messages()")[0]
        assert browser.open(s.url + "?threads=1")
        assert browser.call("mobileclip.info()")["threads"] == 1


def _type_and_click(browser, field: str, text: str, button: str, done: str) -> None:
    """Type ``text`` into the page's ``field``, click ``button`` and wait until the status line starts with ``done``."""
    from selenium.webdriver.common.by import By

    browser.driver.find_element(By.ID, field).clear()
    browser.driver.find_element(By.ID, field).send_keys(text)
    browser.driver.find_element(By.ID, button).click()
    browser.call("new Promise((ok) => { const t = setInterval(() => { if (document.getElementById('status')"
                 ".textContent.startsWith(args[0])) { clearInterval(t); ok(true); } }, 20); })", done)


@needs_browser
def test_classify_and_search_through_the_page_with_a_screenshot(page, tmp_path):
    from selenium.webdriver.common.by import By

    from mobileclip.export.parity import synthetic_images

    browser, _ = page
    browser.call("mobileclip.clearImages()")
    files = []
    for i, im in enumerate(synthetic_images(4, 96)):
        im.save(tmp_path / f"pic{i}.png")
        files.append(tmp_path / f"pic{i}.png")
    browser.choose_files(files)
    d = browser.driver
    _type_and_click(browser, "labels", "red circle\nblue square\ngreen star", "classify", "Classified")
    api = browser.call("mobileclip.classify(['red circle', 'blue square', 'green star'])")
    cards = d.find_elements(By.CSS_SELECTOR, "#images .card")
    assert len(cards) == 4
    for card, res in zip(cards, api):
        rows = card.find_elements(By.CSS_SELECTOR, "ol li")
        assert len(rows) == 3
        shown = [r.find_element(By.CLASS_NAME, "label").text for r in rows]
        assert shown == [["red circle", "blue square", "green star"][k] for k in res["order"]]
        pct = [float(r.find_element(By.CLASS_NAME, "score").text.rstrip(" %")) for r in rows]
        assert pct == sorted(pct, reverse=True) and abs(sum(pct) - 100) < 0.5
    shot = np.asarray(Image.open(browser.screenshot(tmp_path / "classified.png")).convert("RGB")).astype(int)
    r = cards[0].rect
    crop = shot[int(r["y"]):int(r["y"] + r["height"]), int(r["x"]):int(r["x"] + r["width"])]
    assert crop.size and crop.std() > 20                    # the thumbnail and its scores are drawn there
    _type_and_click(browser, "query", "a red circle", "search", "Ranked")
    ranked = browser.call("mobileclip.rank('a red circle')")
    names = [c.find_element(By.CLASS_NAME, "name").text for c in d.find_elements(By.CSS_SELECTOR, "#images .card")]
    assert names == [r["name"] for r in ranked]               # the cards are shown in ranked order


@needs_browser
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_fp16_and_int8_web_bundles_pass_browser_parity(tmp_path, precision):
    from mobileclip.export import export

    try:
        m = export("mobileclip-tiny", tmp_path / precision, fmt="web", precision=precision, max_batch=2,
                   accept_int8_loss=True, allow_mismatch=precision == "int8")
    except BackendUnavailable as e:
        pytest.skip(str(e))
    b = json.loads((tmp_path / precision / "parity.json").read_text())["browser"]
    # random weights: int8's class scores are near-ties, so only top-1 agreement may miss (the cosines may not)
    assert [x for x in b["misses"] if "top-1 agreement" not in x or precision != "int8"] == [] and b["tokens_equal"]
    th = {"fp16": 0.999, "int8": 0.99}[precision]
    assert b["image"]["min_cosine"] >= th and b["text"]["min_cosine"] >= th
    assert m["parity"]["browser"]["image_min_cosine"] == b["image"]["min_cosine"]


@needs_browser
def test_static_int8_web_bundle_runs_in_the_browser_as_natively(tmp_path, synth_folder):
    """Static int8 (QDQ, its GELUs rewritten to run in int8: QLinearSigmoid/QLinearMul once fused) in onnxruntime-web
    gives native ONNX Runtime's embeddings on the same pixels and tokens: the browser's int8 kernels, not the recipe,
    are what this checks (against PyTorch, random weights' int8 error is the recipe's: docs/web.md)."""
    from mobileclip.backends import runner_for
    from mobileclip.export import export
    from mobileclip.runtime.core import Preprocessor

    out = tmp_path / "st"
    try:
        m = export("mobileclip-tiny", out, fmt="web", precision="int8", calib=str(synth_folder), calib_size=16,
                   max_batch=2, accept_int8_loss=True, allow_mismatch=True)
    except BackendUnavailable as e:
        pytest.skip(str(e))
    q = m["artifacts"]["image"]["quantization"]
    assert q["method"] == "static" and q["gelus_in_int8"] > 0
    files = sorted(synth_folder.rglob("*.png"))[:6]
    prompts = ["a red circle", "a photo of a small blue square on a striped background", ""]
    with WB.BundleServer(out) as server, WB.Browser() as browser:
        assert browser.open(f"{server.url}?threads=1"), browser.call("mobileclip.messages()")
        browser.choose_files(files)
        shown = browser.call("mobileclip.images()")
        ids = np.asarray(browser.call("mobileclip.tokenize(args[0])", prompts))
        text = WB.floats(browser.call("mobileclip.encodeTexts(args[0])", prompts), m["embed_dim"])
    img = np.concatenate([WB.floats(im["embedding"], m["embed_dim"]) for im in shown])
    pre = Preprocessor.from_manifest(m)
    runners = {t: runner_for(out, m["artifacts"][t], threads=1) for t in ("image", "text")}
    with runners["image"], runners["text"]:
        want_img = runners["image"].infer(np.stack([pre(f) for f in files]))
        want_txt = runners["text"].infer(ids.astype(m["artifacts"]["text"]["inputs"][0]["dtype"]))

    def cos(a, b):
        return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))

    assert cos(img, want_img).min() > 0.9999 and cos(text.reshape(len(prompts), -1), want_txt).min() > 0.9999


@pytest.mark.slow
@needs_browser
def test_mobileclip_s0_web_bundle_passes_browser_parity(tmp_path):
    """MobileCLIP-S0 (Apple's network, random weights) in Chromium: parity, and at its context length of 77 the page's
    token ids on the hard corpus differ from open_clip's exactly where the tokenizer.json gaps say."""
    from open_clip.tokenizer import SimpleTokenizer

    from mobileclip.export import export

    try:
        export("mobileclip-s0", tmp_path / "s0", fmt="web", max_batch=2)
    except BackendUnavailable as e:
        pytest.skip(str(e))
    b = json.loads((tmp_path / "s0" / "parity.json").read_text())["browser"]
    assert not b["misses"] and b["tokens_equal"] and b["top1_agreement"] == 1.0
    assert b["image"]["min_cosine"] >= 0.99999 and b["text"]["min_cosine"] >= 0.99999
    assert b["pixels"]["png_exact"] == b["pixels"]["png"]
    texts = CORPUS + EXTRA
    with WB.BundleServer(tmp_path / "s0") as s, WB.Browser() as browser:
        assert browser.open(s.url)
        got = np.asarray(browser.call("mobileclip.tokenize(args[0])", texts))
    want = SimpleTokenizer(context_length=77)(texts, context_length=77).numpy()
    assert {t for t, g, w in zip(texts, got, want) if not np.array_equal(g, w)} == JSON_GAPS


@needs_browser
def test_any_static_host_works_single_threaded_and_a_broken_manifest_is_a_message(bundle, tmp_path):
    """A plain static server (no isolation headers, no checks of its own): the page runs on 1 thread, and a
    manifest that is not JSON, or not a web bundle's, is a visible message."""
    import functools
    import http.server
    import threading

    site = tmp_path / "site"
    shutil.copytree(bundle, site)

    def serve():
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
        handler.log_message = lambda *a: None
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        return httpd

    httpd = serve()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/"
    manifest = json.loads((site / "manifest.json").read_text())
    try:
        with WB.Browser() as browser:
            assert browser.open(url)
            info = browser.call("mobileclip.info()")
            assert info["threads"] == 1 and info["crossOriginIsolated"] is False
            assert browser.open(url + "?threads=2") is False
            assert "needs a cross-origin isolated page" in browser.call("mobileclip.messages()")[0]
            (site / "manifest.json").write_text('{"format_version": 1, "artifacts": ')
            assert browser.open(url) is False
            assert browser.call("mobileclip.messages()") == ["manifest.json is not valid JSON; re-export the bundle"]
            for role in ("image", "text"):
                del manifest["artifacts"][role]["web"]
            (site / "manifest.json").write_text(json.dumps(manifest))
            assert browser.open(url) is False
            assert "has no web app entry" in browser.call("mobileclip.messages()")[0]
    finally:
        httpd.shutdown()
        httpd.server_close()
