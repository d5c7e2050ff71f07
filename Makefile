# finetox: `make demo` runs the whole workflow on the embedded demo; `make test` runs the tests.
# Both build the virtual environment .venv first (CPU only, no conda needed). The finetox package is
# not installed into it: jobs and tests import it from workflow/ (see workflow/scripts/_workflow_path.py).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORES ?= 2
# vLLM's CPU backend reserves this many GiB of KV cache per engine; the demo's models need little.
export VLLM_CPU_KVCACHE_SPACE ?= 1

.PHONY: demo test lint env clean

env: $(VENV)/.installed

# torch goes first and pinned: with it in place pip keeps the CPU build instead of pulling CUDA.
$(VENV)/.installed: envs/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -r envs/requirements.txt
	$(BIN)/pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $@

demo: env
	$(BIN)/snakemake --cores $(CORES)
	@echo "Report: results/report/report.html  Tables: results/tables/"

test: env
	$(BIN)/pytest tests

lint: env
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check Snakefile workflow/rules

clean:
	rm -rf results logs .snakemake
