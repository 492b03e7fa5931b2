# Two commands on a fresh machine: `make demo` (embeds the sample catalog) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO ?= demo_out
CHECKPOINT ?=
# bert-large-uncased (directory holding vocab.txt) for the real model's query; without it
# the query fetches it from the hub, and the demo refuses to start when HF_HUB_OFFLINE is set.
TOKENIZER ?=

.PHONY: setup test lint format demo serve bench clean

setup: $(VENV)/.installed

# torch first. It is the CPU build only where pip's config points at local CPU wheels (the
# dev/CI machine); elsewhere PyPI's default (CUDA on Linux) unless .venv already holds the
# wheel from --index-url https://download.pytorch.org/whl/cpu (README). GPU images bring
# their CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

demo: setup
	$(PY) jobs/demo.py --out $(DEMO) $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT)) \
		$(if $(TOKENIZER),--tokenizer $(TOKENIZER))

# The search page and API on the demo table (make demo first): http://127.0.0.1:8080/
serve: setup
	$(PY) jobs/serve.py --db $(DEMO)/lancedb $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT)) \
		$(if $(TOKENIZER),--tokenizer $(TOKENIZER)) $(if $(PORT),--port $(PORT))

bench: setup
	$(PY) benchmarks/encoder_throughput.py --tiny
	$(PY) benchmarks/pipeline_throughput.py
	$(PY) benchmarks/decode_throughput.py
	$(PY) benchmarks/query_latency.py

clean:
	rm -rf $(DEMO) .pytest_cache .ruff_cache
