# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create .venv, install what is missing, then run.

PYTHON ?= python3
VENV   ?= .venv
VPY    := $(VENV)/bin/python
# CPU build of torch, installed only when the venv has no torch at all, so a plain
# `torch` requirement does not pull a multi-GB CUDA build. Users with a torch of
# their own keep it: pyproject.toml does not pin torch. Override to taste, e.g.
#   make test CPU_TORCH="torch --index-url <your CPU wheel index>"
CPU_TORCH ?= torch==2.13.0
STAMP  := $(VENV)/.jitterlab-installed

.PHONY: install demo test lint bench clean slurm-deps

$(VPY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(VPY)
	@$(VPY) -c "import torch" 2>/dev/null || { \
	  echo "no torch in $(VENV): installing the CPU build ($(CPU_TORCH))"; \
	  $(VPY) -m pip install -q $(CPU_TORCH); }
	$(VPY) -m pip install -q -e '.[dev,mpi]'
	@touch $@

install: $(STAMP)

demo: install
	$(VENV)/bin/jitterlab run quickstart --out runs/quickstart

test: install
	$(VPY) -m pytest -q -p no:cacheprovider

# Optional: SLURM and munge from Debian, for the test that runs a real two-node SLURM
# cluster in network namespaces (tests/distributed/test_slurm.py; it skips without them).
slurm-deps:
	@command -v slurmd >/dev/null && command -v munged >/dev/null || { \
	  [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null || { \
	    echo "slurm-deps: needs root and apt-get (install slurm-wlm and munge yourself)"; \
	    exit 1; }; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null || { \
	    apt-get update -q >/dev/null && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null; }; }
	@echo "slurm-deps: $$(slurmd -V) and munge are installed"

lint: install
	$(VENV)/bin/ruff check .

bench: install
	$(VPY) benchmarks/bench_jitter_models.py
	$(VPY) benchmarks/bench_inject.py
	$(VPY) benchmarks/bench_harness.py
	$(VPY) benchmarks/bench_analysis.py
	$(VPY) benchmarks/bench_recording.py

clean:
	rm -rf $(VENV) build *.egg-info
