# The two set-up commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
DEMO_DIR ?= runs/demo
# Predictions go beside the run, never inside it (no command writes into a run it reads).
DEMO_OUT ?= $(DEMO_DIR)-predictions
# torch + torchvision for the parity tests and the benchmarks' peer, in a virtualenv of their own.
TORCH_VENV := .venv-torch
TORCH_STAMP := $(TORCH_VENV)/.installed-$(shell cat requirements-torch.txt | cksum | cut -d' ' -f1)
# Label Studio for the ML backend's end-to-end test, in a virtualenv of its own (tests/test_labelstudio_live.py).
LS_VENV := .venv-labelstudio
LS_STAMP := $(LS_VENV)/.installed-$(shell cat requirements-labelstudio.txt | cksum | cut -d' ' -f1)

.PHONY: venv torch-venv labelstudio-venv demo test test-slow test-all lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)

# torch's CPU-only wheels (about 0.7 GB instead of PyPI's 5.5 GB CUDA build) where that index is
# reachable; elsewhere (machines that reach only PyPI) the PyPI build.
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu

$(TORCH_STAMP): requirements-torch.txt
	test -x $(TORCH_VENV)/bin/python || $(PYTHON) -m venv $(TORCH_VENV)
	if [ "$$(uname -m)" = aarch64 ]; then \
	  $(TORCH_VENV)/bin/python -m pip install -q torch==2.9.1 torchvision==0.24.1; \
	else \
	  $(TORCH_VENV)/bin/python -m pip install -q --isolated --timeout 10 --retries 1 \
	    --index-url $(TORCH_CPU_INDEX) -r requirements-torch.txt 2>/dev/null \
	  || $(TORCH_VENV)/bin/python -m pip install -q -r requirements-torch.txt; \
	fi
	rm -f $(TORCH_VENV)/.installed-* && touch $@

torch-venv: $(TORCH_STAMP)

# A failed install is a warning: the Label Studio tests then skip, saying why.
$(LS_STAMP): requirements-labelstudio.txt
	(test -x $(LS_VENV)/bin/python || $(PYTHON) -m venv $(LS_VENV)) \
	  && $(LS_VENV)/bin/python -m pip install -q -r requirements-labelstudio.txt \
	  && rm -f $(LS_VENV)/.installed-* && touch $@ \
	  || echo "warning: could not install label-studio; the Label Studio tests will be skipped"

labelstudio-venv: $(LS_STAMP)

## Train on the built-in shapes dataset (training ends with the validation evaluation), predict
## and draw boxes.
demo: venv
	rm -rf $(DEMO_DIR) $(DEMO_OUT)
	$(BIN)/kdetect train recipes/shapes.yaml --run-dir $(DEMO_DIR)
	$(BIN)/kdetect predict $(DEMO_DIR) $(DEMO_DIR)/samples --output $(DEMO_OUT)/predictions.jsonl --save-images $(DEMO_OUT)/drawn

## Run the test suite on two workers: every test but the slow ones (tests/conftest.py marks
## them: training to accuracy, torchvision parity on real photos, live servers and worker
## processes); the torchvision tests use .venv-torch, the Label Studio tests .venv-labelstudio.
TEST_ENV = KDETECT_TORCH_PYTHON=$(CURDIR)/$(TORCH_VENV)/bin/python \
	KDETECT_LABEL_STUDIO=$(CURDIR)/$(LS_VENV)/bin/label-studio
PYTEST = $(BIN)/python -m pytest -q -n 2 --dist loadfile

test: venv torch-venv labelstudio-venv
	$(TEST_ENV) $(PYTEST) -m "not slow"

## Only the slow tests; and everything (both, about 40 minutes on two cores).
test-slow: venv torch-venv labelstudio-venv
	$(TEST_ENV) $(PYTEST) -m slow

test-all: venv torch-venv labelstudio-venv
	$(TEST_ENV) $(PYTEST)

lint: venv
	$(BIN)/ruff check kdetect tests benchmarks

bench: venv
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) $(TORCH_VENV) $(LS_VENV) runs .pytest_cache
