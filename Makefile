# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PY      ?= python3
VENV    ?= .venv
VPY     := $(VENV)/bin/python
PIP     := $(VPY) -m pip
# The torch/torchvision pair that installs from local disk on this project's machines
# (a newer unpinned torch would pull a multi-GB CUDA build). Override: make TORCH_PINS=
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: demo test test-slow install clean

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
EXTRAS ?= dev,train,onnx,coreml,runtime,bench,litert,executorch

install: $(VENV)/.installed-$(EXTRAS)

demo: $(VENV)/.installed-$(EXTRAS)
	$(VENV)/bin/mobileclip demo

test: $(VENV)/.installed-$(EXTRAS)
	$(VPY) -m pytest -q

test-slow: $(VENV)/.installed-$(EXTRAS)
	$(VPY) -m pytest -q -m slow

clean:
	rm -rf $(VENV) build *.egg-info
