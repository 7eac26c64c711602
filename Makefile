# ftatlas: `make serve` runs the app, `make test` runs the tests; both set everything up first.
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export ANONYMIZED_TELEMETRY := False
export GRADIO_ANALYTICS_ENABLED := False
export TOKENIZERS_PARALLELISM := false

# llama.cpp built portably: an AVX2 floor and nothing else the build host merely advertises. A native build
# compiles in AMX kernels that some VMs forbid, and the first decode dies with SIGILL (issue 9).
LLAMA_CPP_VERSION := 0.3.36
LLAMA_CMAKE_ARGS  := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
                     -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
# pip's wheel cache ignores CMAKE_ARGS, so the wheel lives in a folder keyed by version and flags instead.
LLAMA_KEY    := $(shell printf '%s %s' '$(LLAMA_CPP_VERSION)' '$(LLAMA_CMAKE_ARGS)' | sha256sum | cut -c1-12)
LLAMA_WHEELS := $(HOME)/.cache/ftatlas/llama-wheels/$(LLAMA_KEY)

.PHONY: install serve test finetune clean doctor

# The build check runs on every install: it fails when the installed llama.cpp has AMX compiled in.
install: $(VENV)/.installed
	$(VENV)/bin/ftatlas doctor --build-only

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, pinned: this exact CPU wheel lies on disk; a looser spec pulls a multi-GB CUDA build.
	$(PIP) install -q torch==2.13.0
	ls $(LLAMA_WHEELS)/llama_cpp_python-*.whl >/dev/null 2>&1 || { \
		rm -rf $(LLAMA_WHEELS).tmp && \
		CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) wheel -q --no-cache-dir --no-deps \
			llama-cpp-python==$(LLAMA_CPP_VERSION) -w $(LLAMA_WHEELS).tmp && \
		mv $(LLAMA_WHEELS).tmp $(LLAMA_WHEELS); }
	$(PIP) install -q --force-reinstall --no-deps $(LLAMA_WHEELS)/llama_cpp_python-*.whl
	$(PIP) install -q -e '.[test]'
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) || \
		echo "warning: could not install Debian chromium; browser tests will fail"
	touch $@

# Two malloc arenas instead of one per thread: the server's RSS levels off under concurrent requests (issue 11).
serve: install
	MALLOC_ARENA_MAX=2 $(VENV)/bin/ftatlas serve

test: install
	# The host, first: every CI log records it; a failed engine probe stops here with its one-line reason.
	$(VENV)/bin/ftatlas --profile test doctor
	# pytest exits 5 when it collects nothing: that is a failure here too.
	$(VENV)/bin/pytest -m "not gpu"
	# The retrieval gate: needs no LLM; fails when retrieval regresses below evals/thresholds.json.
	$(VENV)/bin/ftatlas --profile test ingest --quiet
	$(VENV)/bin/ftatlas --profile test eval --gate --quiet


# Not part of `make test`: at most 20 minutes of CPU training, then the evals of plain RAG vs RAG+LoRA.
finetune: install
	$(VENV)/bin/ftatlas ingest --quiet
	$(VENV)/bin/ftatlas finetune data
	$(VENV)/bin/ftatlas finetune train --max-minutes 20 --max-steps 48  # a new runs/<timestamp>/; runs/latest points to it
	# Two configurations only: the report goes to the run's folder, so the committed reports/latest (all six) stays.
	FTATLAS_LLM__ADAPTER=runs/latest/adapter FTATLAS_EVALS__REPORTS_DIR=runs/latest/reports \
		$(VENV)/bin/ftatlas eval --configs atlas-rag,atlas-rag-lora

clean:
	rm -rf data test-artifacts .pytest_cache
