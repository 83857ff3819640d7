# Two commands do all the set-up on a fresh machine:
#   make demo   the demo fine-tune (PESC vs LoRA) plus the benchmark summary
#   make test   build (CUDA kernels too when torch is a CUDA build and nvcc is found), run the tests,
#               then rebuild with PESC_WITH_CUDA=0 and run the tests against that CPU-only build
#
# PYTHON defaults to the active virtualenv's python, else to .venv/bin/python, creating .venv with
# --system-site-packages so an existing torch is reused rather than reinstalled.
ifdef VIRTUAL_ENV
PYTHON ?= python
else
PYTHON ?= .venv/bin/python
endif
PESC_WITH_CUDA ?= auto
export PESC_WITH_CUDA
CPU_ONLY_DIR := build/cpu-only
# Run against the in-place build in python/ (the package is not installed into the environment).
RUN := PYTHONPATH=$(CURDIR)/python $(PYTHON)

.PHONY: deps build demo test test-main test-cpu-only install-check lint format bench bench-summary results clean

deps:
	@if [ "$(PYTHON)" = ".venv/bin/python" ] && [ ! -x .venv/bin/python ]; then \
		python3 -m venv --system-site-packages .venv; fi
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install torch
	$(PYTHON) -m pip install -q -r requirements-dev.txt

build: deps
	$(PYTHON) setup.py -q build_ext --inplace

# The demo: pre-train the embedded tiny Llama, tune it with PESC and with a LoRA baseline of about the
# same trainable size, print the comparison table, then the benchmark summary (about 12 min on 2 CPU cores).
DEMO_OUT ?= outputs/demo
DEMO_ARGS ?=
demo: build
	$(RUN) examples/finetune.py --method pesc --baseline lora --out $(DEMO_OUT) $(DEMO_ARGS)
	$(MAKE) --no-print-directory bench-summary
	@echo
	@echo "demo outputs:"
	@echo "  fine-tuning  $(DEMO_OUT)/results.md (table), summary.json, loss_curves.png,"
	@echo "               $(DEMO_OUT)/{pesc,lora}/{metrics.json,loss.png,checkpoint/}, $(DEMO_OUT)/dense/ (the dense model)"
	@echo "  benchmarks   outputs/bench/"
	@printf '%s\n' "  try it:      $(RUN) examples/generate.py --checkpoint $(DEMO_OUT)/pesc/checkpoint --prompt 'Add the numbers.\n12 + 30'"

test: test-main install-check test-cpu-only

test-main: build
	$(RUN) -m pesc_kernels info
	$(PYTHON) -m pytest tests -q

# The same sources with the CUDA backend compiled out, imported from a separate directory.
test-cpu-only: deps
	rm -rf $(CPU_ONLY_DIR)/pkg && mkdir -p $(CPU_ONLY_DIR)/pkg
	cp -r python/pesc_kernels $(CPU_ONLY_DIR)/pkg/ && rm -f $(CPU_ONLY_DIR)/pkg/pesc_kernels/_C*.so
	PESC_WITH_CUDA=0 PESC_BUILD_DIR=$(CPU_ONLY_DIR)/cmake $(PYTHON) setup.py -q build_ext --build-lib $(CPU_ONLY_DIR)/pkg
	PYTHONPATH=$(CPU_ONLY_DIR)/pkg $(PYTHON) -m pesc_kernels info | tee $(CPU_ONLY_DIR)/info.txt
	grep -q "CUDA kernels     not compiled" $(CPU_ONLY_DIR)/info.txt
	PYTHONPATH=$(CPU_ONLY_DIR)/pkg $(PYTHON) -m pytest tests -q -p no:cacheprovider -o pythonpath="$(CPU_ONLY_DIR)/pkg examples"

# ruff (Python) and clang-format (C++/CUDA), with the versions pinned in requirements-dev.txt.
CXX_SOURCES = $(shell git ls-files 'csrc/*.cpp' 'csrc/*.h' 'csrc/*.cu' 'csrc/*.cuh')
lint: deps
	$(PYTHON) -m ruff check .
	$(dir $(PYTHON))clang-format --dry-run --Werror $(CXX_SOURCES)

# Rewrite the C++/CUDA sources in the clang-format style and apply ruff's safe fixes.
format: deps
	$(PYTHON) -m ruff check --fix .
	$(dir $(PYTHON))clang-format -i $(CXX_SOURCES)

bench: build
	$(RUN) -m pytest benchmarks -q --benchmark-json build/bench.json
	$(PYTHON) benchmarks/summarize.py build/bench.json

# `pip install .` into a scratch target (not the venv) and run its pesc-bench console script.
install-check: build
	rm -rf build/install-check
	$(PYTHON) -m pip install -q --no-build-isolation --no-deps --target build/install-check .
	PYTHONPATH=build/install-check build/install-check/bin/pesc-bench --tiny --no-memory --out build/bench-tiny

# The benchmark runner's quick size set: table + chart (part of the demo; a few minutes).
bench-summary: build
	$(RUN) -m pesc_kernels.bench --quick --out outputs/bench

# The full CPU run recorded in benchmarks/results/, then RESULTS.md regenerated from it.
results: build
	$(RUN) -m pesc_kernels.bench --full --out build/bench-full
	mkdir -p benchmarks/results && cp build/bench-full/results.json benchmarks/results/cpu-float32-full.json
	$(PYTHON) benchmarks/make_results.py

clean:
	rm -rf build python/pesc_kernels/_C*.so
