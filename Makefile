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

.PHONY: deps build test test-main test-cpu-only bench bench-summary clean

deps:
	@if [ "$(PYTHON)" = ".venv/bin/python" ] && [ ! -x .venv/bin/python ]; then \
		python3 -m venv --system-site-packages .venv; fi
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install torch
	$(PYTHON) -m pip install -q -r requirements-dev.txt

build: deps
	$(PYTHON) setup.py -q build_ext --inplace

test: test-main test-cpu-only

test-main: build
	$(PYTHON) -m pesc_kernels info
	$(PYTHON) -m pytest tests -q

# The same sources with the CUDA backend compiled out, imported from a separate directory.
test-cpu-only: deps
	rm -rf $(CPU_ONLY_DIR)/pkg && mkdir -p $(CPU_ONLY_DIR)/pkg
	cp -r python/pesc_kernels $(CPU_ONLY_DIR)/pkg/ && rm -f $(CPU_ONLY_DIR)/pkg/pesc_kernels/_C*.so
	PESC_WITH_CUDA=0 PESC_BUILD_DIR=$(CPU_ONLY_DIR)/cmake $(PYTHON) setup.py -q build_ext --build-lib $(CPU_ONLY_DIR)/pkg
	PYTHONPATH=$(CPU_ONLY_DIR)/pkg $(PYTHON) -m pesc_kernels info | tee $(CPU_ONLY_DIR)/info.txt
	grep -q "CUDA kernels     not compiled" $(CPU_ONLY_DIR)/info.txt
	PYTHONPATH=$(CPU_ONLY_DIR)/pkg $(PYTHON) -m pytest tests -q -p no:cacheprovider -o pythonpath=$(CPU_ONLY_DIR)/pkg

bench: build
	$(PYTHON) -m pytest benchmarks -q --benchmark-json build/bench.json
	$(PYTHON) benchmarks/summarize.py build/bench.json

# The quick size set of every benchmark and its ratio table (part of the demo).
bench-summary: build
	$(PYTHON) -m pytest benchmarks -q --bench-size quick --benchmark-json build/bench-quick.json
	$(PYTHON) benchmarks/summarize.py build/bench-quick.json

clean:
	rm -rf build python/pesc_kernels/_C*.so
