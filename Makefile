# The two set-up commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
DEMO_DIR ?= runs/demo

.PHONY: venv demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)

## Train on the built-in shapes dataset, evaluate, predict and draw boxes.
demo: venv
	rm -rf $(DEMO_DIR)
	$(BIN)/kdetect train recipes/shapes.yaml --run-dir $(DEMO_DIR)
	$(BIN)/kdetect evaluate $(DEMO_DIR)
	$(BIN)/kdetect predict $(DEMO_DIR) $(DEMO_DIR)/samples --output $(DEMO_DIR)/predictions.jsonl --save-images $(DEMO_DIR)/drawn

## Run the test suite.
test: venv
	$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check kdetect tests benchmarks

bench: venv
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
