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

# Re-install when pyproject.toml changes; one stamp per set of extras.
$(VENV)/.installed-%: pyproject.toml | $(VPY)
	$(PIP) install $(TORCH_PINS)
	$(PIP) install -e ".[$*]"
	touch $@

# The extras `make demo` and `make test` install (tensorrt never: it is not on PyPI).
EXTRAS ?= dev,onnx,coreml,runtime,bench

install: $(VENV)/.installed-$(EXTRAS)

demo: $(VENV)/.installed-$(EXTRAS)
	$(VENV)/bin/mobileclip demo

test: $(VENV)/.installed-$(EXTRAS)
	$(VPY) -m pytest -q

test-slow: $(VENV)/.installed-$(EXTRAS)
	$(VPY) -m pytest -q -m slow

clean:
	rm -rf $(VENV) build *.egg-info
