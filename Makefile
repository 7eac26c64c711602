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

.PHONY: install serve test finetune finetune-dpo clean doctor

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


# Not part of `make test`. The short run: at most 20 minutes of CPU training of the shipped base (Gemma 3 270M),
# then atlas-rag vs its adapter on the dev set. FULL=1 repeats the shipped adapters/gemma3's config and 399 steps
# (3 epochs; about 100 minutes on 2 quiet cores) on data from today's retrieval (README: its hash differs from the
# shipped adapter's since issue 12's retrieval changes), then both question sets. Reports go to the run's
# folder, so the committed reports/latest stays.
FINETUNE_BASE := gemma3
ifeq ($(FULL),1)
FINETUNE_RUN   := full-$(FINETUNE_BASE)
FINETUNE_TRAIN := --max-steps 399 --run-id $(FINETUNE_RUN)
FINETUNE_SETS  := all
else
FINETUNE_RUN   := short-$(FINETUNE_BASE)
FINETUNE_TRAIN := --max-minutes 20 --max-steps 64 --run-id $(FINETUNE_RUN)
FINETUNE_SETS  := dev
endif

finetune: install
	$(VENV)/bin/ftatlas ingest --quiet
	$(VENV)/bin/ftatlas finetune data
	rm -rf runs/$(FINETUNE_RUN)  # a fresh run, not a resumed one
	$(VENV)/bin/ftatlas finetune train --base $(FINETUNE_BASE) $(FINETUNE_TRAIN)
	FTATLAS_LLM__ADAPTERS__$(shell echo $(FINETUNE_BASE) | tr a-z A-Z)=runs/$(FINETUNE_RUN)/adapter \
	FTATLAS_EVALS__REPORTS_DIR=runs/$(FINETUNE_RUN)/reports \
		$(VENV)/bin/ftatlas eval --set $(FINETUNE_SETS) --configs atlas-rag,atlas-rag-lora-$(FINETUNE_BASE)

# Not part of `make test`. The preference loop on the served Gemma adapter, in under 60 minutes on 2 CPU cores:
# pairs from the answer log's ratings and corrections plus self-supplied pairs (4 samples each for 60 training
# questions, sorted by the grounding check), DPO from the SFT adapter, then the gate against it on dev + held-out.
# A refused promotion is an outcome, not a failure: the gate's table is in runs/dpo-<base>/gate/gate.md.
DPO_RUN   := dpo-$(FINETUNE_BASE)
DPO_STEPS := 39  # one epoch of the 39 pairs measured on 2026-12-02 (2 corrections + 37 self-supplied), ~31 s/step
finetune-dpo: install
	$(VENV)/bin/ftatlas ingest --quiet
	$(VENV)/bin/ftatlas feedback export --base $(FINETUNE_BASE) --questions 60 --samples 4 --out runs/$(DPO_RUN)-pairs/pairs.jsonl
	rm -rf runs/$(DPO_RUN)
	$(VENV)/bin/ftatlas finetune dpo --base $(FINETUNE_BASE) --pairs runs/$(DPO_RUN)-pairs/pairs.jsonl --run-id $(DPO_RUN) \
		--steps $(DPO_STEPS) --quiet
	$(VENV)/bin/ftatlas adapters promote runs/$(DPO_RUN) --quiet || echo "not promoted: see runs/$(DPO_RUN)/gate/gate.md"

clean:
	rm -rf data test-artifacts .pytest_cache
