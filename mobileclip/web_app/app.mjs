// mobileclip's web app: a bundle's two towers run with onnxruntime-web (WASM), its tokenizer.json with
// @huggingface/tokenizers, and the manifest's preprocessing in plain JS - all from the bundle's own folder.
//
// Every file it loads is first checked against its sha256 in manifest.json. Preprocessing reproduces
// mobileclip.transforms (Pillow's resampling in its 8-bit fixed-point arithmetic, torchvision's resize and
// center-crop rules, float32 normalization), so a PNG gives the Python runtime's pixels exactly.
// window.mobileclip is the page's API (the browser parity tests drive it through it).

const MAX_FILE_BYTES = 200 * 1024 * 1024;
const $ = (id) => document.getElementById(id);

// ------------------------------------------------------------------ messages

function say(text) { $("status").textContent = text; }

function fail(text) {
  const p = document.createElement("p");
  p.textContent = text;
  $("messages").appendChild(p);
  console.warn(text);
}

function clearMessages() { $("messages").replaceChildren(); }

// ------------------------------------------------------------------ integrity

async function sha256Hex(buffer) {
  const d = new Uint8Array(await crypto.subtle.digest("SHA-256", buffer));
  return Array.from(d, (b) => b.toString(16).padStart(2, "0")).join("");
}

class BundleFault extends Error {}

async function fetchVerified(manifest, rel) {
  const want = manifest.files[rel];
  if (!want) throw new BundleFault(`the bundle file ${rel} has no sha256 in manifest.json; re-export the bundle`);
  let resp;
  try {
    resp = await fetch(rel, { cache: "no-store" });
  } catch (e) {
    throw new BundleFault(`cannot fetch the bundle file ${rel} (${e.message}); serve the bundle folder with ` +
                          "`mobileclip serve BUNDLE`");
  }
  if (!resp.ok) throw new BundleFault(`the bundle file ${rel} is missing (HTTP ${resp.status}); re-export the bundle`);
  const buf = await resp.arrayBuffer();
  const got = await sha256Hex(buf);
  if (got !== want) {
    throw new BundleFault(`the bundle file ${rel} does not match its sha256 in manifest.json (modified or ` +
                          `truncated: ${got.slice(0, 12)}… is not ${want.slice(0, 12)}…); re-export the bundle`);
  }
  return buf;
}

// ------------------------------------------------------------------ preprocessing (mobileclip.transforms)

const PRECISION_BITS = 22;   // Pillow's 8-bit resampling: 32 - 8 - 2
const FILTERS = {
  bilinear: { support: 1.0, f: (x) => { if (x < 0) x = -x; return x < 1.0 ? 1.0 - x : 0.0; } },
  bicubic: {
    support: 2.0,
    f: (x) => {
      const a = -0.5;
      if (x < 0) x = -x;
      if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
      if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
      return 0.0;
    },
  },
};

// Pillow's precompute_coeffs + normalize_coeffs_8bpc: per output pixel, its first input and integer weights.
function coefficients(inSize, outSize, filter) {
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1.0);
  const support = filter.support * filterscale;
  const out = [];
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const ss = 1.0 / filterscale;
    const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
    const xmax = Math.min(Math.trunc(center + support + 0.5), inSize) - xmin;
    const w = new Float64Array(xmax);
    let ww = 0.0;
    for (let x = 0; x < xmax; x++) { w[x] = filter.f((x + xmin - center + 0.5) * ss); ww += w[x]; }
    const k = new Int32Array(xmax);
    for (let x = 0; x < xmax; x++) {
      const v = ww !== 0.0 ? w[x] / ww : w[x];
      k[x] = v < 0 ? Math.trunc(-0.5 + v * (1 << PRECISION_BITS)) : Math.trunc(0.5 + v * (1 << PRECISION_BITS));
    }
    out.push({ min: xmin, k });
  }
  return out;
}

const clip8 = (ss) => Math.min(255, Math.max(0, Math.floor(ss / (1 << PRECISION_BITS))));

// One Pillow pass along `axis` of src (sw x sh, RGB): output pixel i along the axis is the rounded integer-weighted
// sum of the inputs from cs[i].min - off; the other axis is kept.
function pass(src, sw, sh, cs, axis, off) {
  const half = 1 << (PRECISION_BITS - 1), alongX = axis === "x";
  const ow = alongX ? cs.length : sw, oh = alongX ? sh : cs.length, out = new Uint8Array(ow * oh * 3);
  for (let y = 0; y < oh; y++) {
    for (let x = 0; x < ow; x++) {
      const { min, k } = cs[alongX ? x : y];
      let s0 = half, s1 = half, s2 = half;
      for (let t = 0; t < k.length; t++) {
        const p = alongX ? (y * sw + min - off + t) * 3 : ((min - off + t) * sw + x) * 3;
        s0 += src[p] * k[t]; s1 += src[p + 1] * k[t]; s2 += src[p + 2] * k[t];
      }
      const o = (y * ow + x) * 3;
      out[o] = clip8(s0); out[o + 1] = clip8(s1); out[o + 2] = clip8(s2);
    }
  }
  return out;
}

// A pass that keeps its axis: one weight of exactly 1.0 (the rounding then returns each value unchanged).
const identity = (start, n) => Array.from({ length: n }, (_, i) => ({ min: start + i, k: Int32Array.of(1 << PRECISION_BITS) }));

// RGB uint8 (w x h) -> the window [x0, x0+cw) x [y0, y0+ch) of its resize to (nw, nh), as Pillow computes it. Each
// output pixel depends only on its own coefficients, so computing only the crop window gives the full resize's
// values. The pass order matters (each pass rounds to 8 bits): Pillow <= 12 always resamples horizontally first;
// Pillow >= 13 runs the vertical pass first when the height shrinks by more than twice as many pixels as the width.
function resampleWindow(rgb, w, h, nw, nh, interpolation, x0, y0, cw, ch, pillowMajor) {
  if (interpolation === "nearest") return nearestWindow(rgb, w, h, nw, nh, x0, y0, cw, ch);
  const filter = FILTERS[interpolation];
  const cx = nw !== w ? coefficients(w, nw, filter).slice(x0, x0 + cw) : identity(x0, cw);
  const cy = nh !== h ? coefficients(h, nh, filter).slice(y0, y0 + ch) : identity(y0, ch);
  const verticalFirst = pillowMajor >= 13 && h - nh > 0 && h - nh > (w - nw) * 2;
  if (verticalFirst) return pass(pass(rgb, w, h, cy, "y", 0), w, ch, cx, "x", 0);
  const r0 = cy[0].min, r1 = Math.max(...cy.map((c) => c.min + c.k.length));   // the input rows the window reads
  return pass(pass(rgb.subarray(r0 * w * 3, r1 * w * 3), w, r1 - r0, cx, "x", 0), cw, r1 - r0, cy, "y", r0);
}

// Pillow's NEAREST resize (ImagingScaleAffine: a source coordinate accumulated in steps of in/out).
function nearestIndex(inSize, outSize) {
  const a = inSize / outSize, idx = new Int32Array(outSize);
  let v = a * 0.5;
  for (let x = 0; x < outSize; x++) { idx[x] = Math.min(Math.trunc(v), inSize - 1); v += a; }
  return idx;
}

function nearestWindow(rgb, w, h, nw, nh, x0, y0, cw, ch) {
  const xi = nearestIndex(w, nw), yi = nearestIndex(h, nh), out = new Uint8Array(cw * ch * 3);
  for (let j = 0; j < ch; j++) {
    for (let i = 0; i < cw; i++) {
      const s = (yi[y0 + j] * w + xi[x0 + i]) * 3, o = (j * cw + i) * 3;
      out[o] = rgb[s]; out[o + 1] = rgb[s + 1]; out[o + 2] = rgb[s + 2];
    }
  }
  return out;
}

const roundHalfEven = (v) => { const f = Math.floor(v), d = v - f; return d > 0.5 || (d === 0.5 && f % 2 !== 0) ? f + 1 : f; };

// mobileclip.transforms.resize_crop: (x0, y0, nw, nh) of the resize and its center crop.
function resizePlan(w, h, size, mode) {
  if (mode === "squash") return { nw: size, nh: size, x0: 0, y0: 0 };
  // torchvision's Resize(int): the short side becomes `size`, the long side is truncated.
  const [nw, nh] = w <= h ? [size, Math.trunc(size * h / w)] : [Math.trunc(size * w / h), size];
  return { nw, nh, x0: roundHalfEven((nw - size) / 2.0), y0: roundHalfEven((nh - size) / 2.0) };
}

// RGB uint8 -> float32 [3, S, S], normalized with the manifest's mean/std in float32 as numpy does.
function toTensorData(rgb, size, mean, std) {
  const f = Math.fround, plane = size * size, out = new Float32Array(3 * plane);
  const m = mean.map(f), s = std.map(f);
  for (let p = 0; p < plane; p++) {
    for (let c = 0; c < 3; c++) out[c * plane + p] = f(f(f(rgb[p * 3 + c] / 255.0) - m[c]) / s[c]);
  }
  return out;
}

// A File or Blob -> its RGB pixels: EXIF orientation applied, no colour management (Pillow ignores ICC
// profiles), transparency composited on white. Errors say what is wrong with the file.
async function decode(file, maxPixels) {
  if (file.size > MAX_FILE_BYTES) {
    throw new Error(`${file.name} is ${(file.size / 1e6).toFixed(0)} MB; this page reads image files up to ` +
                    `${MAX_FILE_BYTES / 1e6} MB`);
  }
  let bitmap;
  try {
    bitmap = await createImageBitmap(file, { imageOrientation: "from-image", colorSpaceConversion: "none",
                                             premultiplyAlpha: "none" });
  } catch (e) {
    throw new Error(`${file.name} is not an image this browser can decode` +
                    (file.type ? ` (its type is ${file.type})` : "") + "; use a JPEG, PNG, GIF, WebP or BMP file");
  }
  const w = bitmap.width, h = bitmap.height;
  if (w * h > maxPixels) {
    bitmap.close();
    throw new Error(`${file.name} is ${(w * h / 1e6).toFixed(1)} megapixels (${w} x ${h}); this page takes images ` +
                    `up to ${(maxPixels / 1e6).toFixed(1)} megapixels (the largest canvas Safari allows); ` +
                    "downscale it first");
  }
  const canvas = new OffscreenCanvas(w, h);
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, w, h);
  ctx.drawImage(bitmap, 0, 0);
  bitmap.close();
  const rgba = ctx.getImageData(0, 0, w, h).data;
  const rgb = new Uint8Array(w * h * 3);
  for (let i = 0, j = 0; i < rgba.length; i += 4, j += 3) { rgb[j] = rgba[i]; rgb[j + 1] = rgba[i + 1]; rgb[j + 2] = rgba[i + 2]; }
  return { rgb, w, h };
}

function preprocessRGB({ rgb, w, h }, manifest) {
  const size = manifest.image_size, r = manifest.resize;
  const plan = resizePlan(w, h, size, r.mode);
  const px = resampleWindow(rgb, w, h, plan.nw, plan.nh, r.interpolation, plan.x0, plan.y0, size, size,
                            parseInt(state.web.pillow, 10));
  return toTensorData(px, size, manifest.mean, manifest.std);
}

// ------------------------------------------------------------------ the model

const state = { manifest: null, web: null, ort: null, sessions: {}, tokenizer: null, images: [], threads: 1, reads: 0,
                classCache: new Map() };

function pickThreads() {
  const asked = new URLSearchParams(location.search).get("threads");
  if (asked !== null) {
    const n = Number(asked);
    if (!Number.isInteger(n) || n < 1 || n > 64) throw new BundleFault(`?threads=${asked} must be a whole number from 1 to 64`);
    if (n > 1 && !crossOriginIsolated) {
      throw new BundleFault(`?threads=${n} needs a cross-origin isolated page (the COOP/COEP headers that ` +
                            "`mobileclip serve` sends); this server does not send them");
    }
    return n;
  }
  return crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
}

async function load() {
  const resp = await fetch("manifest.json", { cache: "no-store" }).catch(() => null);
  if (!resp || !resp.ok) throw new BundleFault("manifest.json cannot be read: open this page through `mobileclip serve BUNDLE`");
  const manifest = await resp.json().catch(() => { throw new BundleFault("manifest.json is not valid JSON; re-export the bundle"); });
  const web = manifest.artifacts && manifest.artifacts.image && manifest.artifacts.image.web;
  if (!web) throw new BundleFault("this bundle has no web app entry; export it with `mobileclip export --format web`");
  state.manifest = manifest; state.web = web; state.threads = pickThreads();
  $("model").textContent = `${manifest.model} (${manifest.artifacts.image.precision})`;
  const files = [web.ort, web.ort_glue, web.ort_wasm, web.tokenizers, manifest.artifacts.image.file,
                 manifest.artifacts.text.file, manifest.tokenizer.tokenizer_json];
  const bufs = {};
  for (const [i, rel] of files.entries()) {
    say(`Checking ${rel} (${i + 1} of ${files.length})…`);
    bufs[rel] = await fetchVerified(manifest, rel);
  }
  say("Starting ONNX Runtime…");
  const ort = await import(new URL(web.ort, location.href).href);
  ort.env.wasm.wasmPaths = new URL(web.ort_glue.replace(/[^/]*$/, ""), location.href).href;
  ort.env.wasm.wasmBinary = bufs[web.ort_wasm];
  ort.env.wasm.numThreads = state.threads;
  state.ort = ort;
  const opts = { executionProviders: ["wasm"], graphOptimizationLevel: "all" };
  for (const role of ["image", "text"]) {
    state.sessions[role] = await ort.InferenceSession.create(new Uint8Array(bufs[manifest.artifacts[role].file]), opts);
  }
  const { Tokenizer } = await import(new URL(web.tokenizers, location.href).href);
  const tj = JSON.parse(new TextDecoder().decode(bufs[manifest.tokenizer.tokenizer_json]));
  state.tokenizer = new Tokenizer(tj, {});
  state.eot = tj.added_tokens.find((t) => t.content === "<end_of_text>").id;
  say(`Ready: ${manifest.model}, ${manifest.artifacts.image.precision}, onnxruntime-web ${ort.env.versions.web}, ` +
      `${state.threads} thread${state.threads > 1 ? "s" : ""}. Drop images, then classify or search.`);
}

// Token ids as open_clip makes them: start + BPE + end, truncated to the context length keeping the end token,
// padded with pad_id (tokenizers.js applies neither the file's truncation nor its padding).
function tokenize(texts) {
  const tok = state.manifest.tokenizer, C = tok.context_length, pad = tok.pad_id || 0;
  return texts.map((t) => {
    let ids = Array.from(state.tokenizer.encode(t).ids);
    if (ids.length > C) ids = ids.slice(0, C - 1).concat([state.eot]);
    while (ids.length < C) ids.push(pad);
    return ids;
  });
}

function batchOf(role) {
  const d = state.manifest.artifacts[role].inputs[0].shape[0];
  return Number.isInteger(d) && d > 0 ? { size: d, fixed: true } : { size: 8, fixed: false };
}

// Runs one tower over rows (each a typed array of one input), in its batch; returns one Float32Array per row.
async function runTower(role, rows, makeTensor) {
  const entry = state.manifest.artifacts[role], inName = entry.inputs[0].name, outName = entry.outputs[0].name;
  const { size, fixed } = batchOf(role), dim = state.manifest.embed_dim, out = [];
  for (let i = 0; i < rows.length; i += size) {
    const chunk = rows.slice(i, i + size);
    const n = fixed ? size : chunk.length;
    while (chunk.length < n) chunk.push(chunk[chunk.length - 1]);
    const res = await state.sessions[role].run({ [inName]: makeTensor(chunk) });
    const data = res[outName].data;
    for (let j = 0; j < Math.min(size, rows.length - i); j++) out.push(Float32Array.from(data.subarray(j * dim, (j + 1) * dim)));
  }
  return out;
}

function imageTensor(chunk) {
  const s = state.manifest.image_size, flat = new Float32Array(chunk.length * 3 * s * s);
  chunk.forEach((x, j) => flat.set(x, j * x.length));
  return new state.ort.Tensor("float32", flat, [chunk.length, 3, s, s]);
}

function tokenTensor(chunk) {
  const C = state.manifest.tokenizer.context_length;
  const int64 = (state.manifest.tokenizer.token_dtype || "int32") === "int64";
  const flat = int64 ? BigInt64Array.from(chunk.flat(), (v) => BigInt(v)) : Int32Array.from(chunk.flat());
  return new state.ort.Tensor(int64 ? "int64" : "int32", flat, [chunk.length, C]);
}

const normalize = (v) => { let n = 0; for (const x of v) n += x * x; n = Math.sqrt(n) || 1; return v.map((x) => x / n); };
const dot = (a, b) => { let s = 0; for (let i = 0; i < a.length; i++) s += a[i] * b[i]; return s; };

async function encodeTexts(texts) {
  return (await runTower("text", tokenize(texts), tokenTensor)).map(normalize);
}

// One normalized embedding per label: the mean over templates of its prompts' embeddings, renormalized
// (mobileclip.runtime's class_embeddings).
async function classEmbeddings(labels, templates) {
  const key = JSON.stringify([labels, templates]);
  if (!state.classCache.has(key)) {
    const prompts = labels.flatMap((lb) => templates.map((t) => t.replaceAll("{}", lb)));
    const emb = await encodeTexts(prompts), dim = state.manifest.embed_dim;
    state.classCache.set(key, labels.map((_, i) => {
      const m = new Float32Array(dim);
      for (let t = 0; t < templates.length; t++) emb[i * templates.length + t].forEach((v, d) => { m[d] += v; });
      return normalize(m);
    }));
  }
  return state.classCache.get(key);
}

function softmax(logits) {
  const mx = Math.max(...logits), e = logits.map((v) => Math.exp(v - mx)), s = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / s);
}

// ------------------------------------------------------------------ the page

async function addFiles(files) {
  clearMessages();
  const added = [];
  for (const file of files) {
    say(`Reading ${file.name}…`);
    try {
      const decoded = await decode(file, state.web.max_pixels);
      const pixels = preprocessRGB(decoded, state.manifest);
      const [emb] = await runTower("image", [pixels], imageTensor);
      const item = { name: file.name, pixels, raw: emb, embedding: normalize(emb), url: URL.createObjectURL(file) };
      state.images.push(item);
      added.push(item);
      showCard(item);
    } catch (e) {
      fail(e.message);
    }
  }
  say(`${state.images.length} image${state.images.length === 1 ? "" : "s"} loaded` +
      (added.length < files.length ? ` (${files.length - added.length} refused: see above)` : "") + ".");
  state.reads += 1;
  return added.length;
}

function showCard(item) {
  const card = document.createElement("div");
  card.className = "card";
  const img = document.createElement("img");
  img.src = item.url; img.alt = item.name;
  const name = document.createElement("div");
  name.className = "name"; name.textContent = item.name;
  item.list = document.createElement("ol");
  card.append(img, name, item.list);
  item.card = card;
  $("images").appendChild(card);
}

function parseLabels(text) {
  return text.split(/[\n,]/).map((s) => s.trim()).filter((s) => s.length > 0);
}

async function classify(labels, templates) {
  if (!labels.length) throw new Error("type at least one label (one per line or comma-separated) to classify");
  if (!state.images.length) throw new Error("add images first: drop them on the page or choose them");
  const weights = await classEmbeddings(labels, templates);
  const scale = state.manifest.logit_scale;
  return state.images.map((im) => {
    const probs = softmax(weights.map((w) => scale * dot(im.embedding, w)));
    const order = probs.map((p, i) => i).sort((a, b) => probs[b] - probs[a] || a - b);
    return { name: im.name, top1: order[0], probs, order };
  });
}

async function onClassify() {
  clearMessages();
  try {
    const labels = parseLabels($("labels").value);
    const results = await classify(labels, state.web.templates);
    results.forEach((r, i) => {
      const list = state.images[i].list;
      list.replaceChildren(...r.order.slice(0, 5).map((k) => {
        const li = document.createElement("li");
        li.innerHTML = `<span class="label"></span><span class="score"></span>`;
        li.firstChild.textContent = labels[k];
        li.lastChild.textContent = `${(100 * r.probs[k]).toFixed(1)} %`;
        return li;
      }));
    });
    say(`Classified ${results.length} image${results.length === 1 ? "" : "s"} over ${labels.length} labels.`);
  } catch (e) { fail(e.message); }
}

async function rank(query) {
  if (!query.trim()) throw new Error("type a query to rank the images by");
  if (!state.images.length) throw new Error("add images first: drop them on the page or choose them");
  const [q] = await encodeTexts([query]);
  const scores = state.images.map((im) => dot(im.embedding, q));
  return scores.map((s, i) => i).sort((a, b) => scores[b] - scores[a] || a - b).map((i) => ({ name: state.images[i].name, score: scores[i] }));
}

async function onSearch() {
  clearMessages();
  try {
    const query = $("query").value, order = await rank(query);
    order.forEach((r, k) => {
      const im = state.images.find((x) => x.name === r.name);
      const li = document.createElement("li");
      li.className = "rank";
      li.textContent = `#${k + 1} for "${query.trim()}" (cosine ${r.score.toFixed(3)})`;
      im.list.replaceChildren(li);
      $("images").appendChild(im.card);   // cards in ranked order
    });
    say(`Ranked ${order.length} images for "${query.trim()}".`);
  } catch (e) { fail(e.message); }
}

// ------------------------------------------------------------------ API for tests and scripts

const b64 = (typed) => { const u = new Uint8Array(typed.buffer, typed.byteOffset, typed.byteLength); let s = ""; for (let i = 0; i < u.length; i += 0x8000) s += String.fromCharCode(...u.subarray(i, i + 0x8000)); return btoa(s); };
const concat = (arrs) => { const n = arrs.reduce((a, x) => a + x.length, 0), o = new Float32Array(n); let p = 0; for (const a of arrs) { o.set(a, p); p += a.length; } return o; };

async function bench({ runs = 20, warmup = 3 } = {}) {
  const s = state.manifest.image_size, img = new Float32Array(3 * s * s);
  for (let i = 0; i < img.length; i++) img[i] = ((i * 2654435761) % 1000) / 1000 - 0.5;
  const [tokens] = tokenize(["a photo of a dog on a red sofa"]);
  const out = {};
  for (const [role, row, make] of [["image", img, imageTensor], ["text", tokens, tokenTensor]]) {
    const times = [];
    for (let i = 0; i < warmup + runs; i++) {
      const t0 = performance.now();
      await runTower(role, [row], make);
      if (i >= warmup) times.push(performance.now() - t0);
    }
    times.sort((a, b) => a - b);
    out[role] = { p50_ms: times[Math.floor((times.length - 1) / 2)], runs, times_ms: times };
  }
  return out;
}

const ready = load().then(() => {
  for (const id of ["classify", "search"]) $(id).disabled = false;
  return true;
}, (e) => {
  fail(e instanceof BundleFault ? e.message : `the bundle could not be loaded: ${e.message}`);
  say("Not ready: see the message above.");
  return false;
});

window.mobileclip = {
  ready,
  info: () => ({ model: state.manifest.model, threads: state.threads, crossOriginIsolated,
                 onnxruntimeWeb: state.ort && state.ort.env.versions.web }),
  tokenize,
  encodeTexts: async (texts) => b64(concat(await runTower("text", tokenize(texts), tokenTensor))),
  images: () => state.images.map((im) => ({ name: im.name, pixels: b64(im.pixels), embedding: b64(im.raw) })),
  clearImages: () => { state.images.forEach((im) => { URL.revokeObjectURL(im.url); im.card.remove(); }); state.images = []; },
  classify: (labels, templates) => classify(labels, templates || state.web.templates),
  rank,
  bench,
  reads: () => state.reads,
  // The resize and center crop alone, on raw RGB (base64, w x h): base64 RGB of the size x size crop.
  resample: (rgb, w, h, size, mode, interpolation) => {
    const src = Uint8Array.from(atob(rgb), (c) => c.charCodeAt(0)), plan = resizePlan(w, h, size, mode);
    return b64(resampleWindow(src, w, h, plan.nw, plan.nh, interpolation, plan.x0, plan.y0, size, size,
                              parseInt(state.web.pillow, 10)));
  },
  messages: () => Array.from($("messages").children, (p) => p.textContent),
};

$("files").addEventListener("change", async (ev) => { await ready; await addFiles(Array.from(ev.target.files)); ev.target.value = ""; });
const drop = $("drop");
drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", async (ev) => { ev.preventDefault(); drop.classList.remove("over"); await ready; await addFiles(Array.from(ev.dataTransfer.files)); });
$("classify").addEventListener("click", onClassify);
$("search").addEventListener("click", onSearch);
