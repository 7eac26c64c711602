# ftatlas: `make serve` runs the app, `make test` runs the tests; both set everything up first.
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export ANONYMIZED_TELEMETRY := False
export GRADIO_ANALYTICS_ENABLED := False
export TOKENIZERS_PARALLELISM := false

.PHONY: install serve test finetune clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, pinned: this exact CPU wheel lies on disk; a looser spec pulls a multi-GB CUDA build.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[test]'
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) || \
		echo "warning: could not install Debian chromium; browser tests will fail"
	touch $@

serve: install
	$(VENV)/bin/ftatlas serve

test: install
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
