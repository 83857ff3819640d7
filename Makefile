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

.PHONY: deps build demo test test-main test-cpu-only install-check lint format bench bench-summary results clean \
	test-gpusim test-gpusim-if-available gpusim-simulator gpusim-programs

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

test: test-main install-check test-cpu-only test-gpusim-if-available

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

# Every CUDA launcher on a simulated GPU (GPGPU-Sim, functional, sm_75 PTX), checked against the CPU
# kernels; see README "CUDA kernels on a simulated GPU". The simulator's source is not in the
# repository: PESC_GPGPUSIM_SRC, default ../shared/gpgpu-sim. It is built once into GPUSIM_HOME.
GPGPUSIM_SRC := $(or $(PESC_GPGPUSIM_SRC),$(CURDIR)/../shared/gpgpu-sim)
GPUSIM_HOME ?= $(HOME)/.cache/pesc_kernels/gpgpu-sim
GPUSIM_REAL_CUDA ?= /usr/local/cuda
GPUSIM_JOBS ?= 2
GPUSIM_OUT := build/gpusim
GPUSIM_SOURCES := $(wildcard csrc/*/*.cu tests/gpusim/runner/*.cu)
GPUSIM_HEADERS := $(wildcard csrc/*.h csrc/*/*.h csrc/*/*.cuh tests/gpusim/runner/*.h)
GPUSIM_OBJECTS := $(patsubst %.cu,$(GPUSIM_OUT)/obj/%.o,$(GPUSIM_SOURCES))
GPUSIM_REPROS := $(patsubst tests/gpusim/repro/%/,$(GPUSIM_OUT)/repro/%,$(sort $(dir $(wildcard tests/gpusim/repro/*/*.cu))))
# The shipped flags (CMakeLists.txt) for sm_75; 177: "declared but never referenced", for the layout
# constants of the bf16/TF32 kernels, whose bodies are compiled out below sm_80.
NVCC_SIM := GPUSIM_REAL_CUDA=$(GPUSIM_REAL_CUDA) scripts/gpusim/with-sim $(GPUSIM_HOME) nvcc-sim
NVCC_SIM_FLAGS := -std=c++20 --expt-relaxed-constexpr -O3 -Icsrc -Itests/gpusim/runner -diag-suppress 177

test-gpusim: build gpusim-programs
	PESC_GPUSIM_HOME=$(GPUSIM_HOME) PESC_GPUSIM_RUNNER=$(CURDIR)/$(GPUSIM_OUT)/runner \
	PESC_GPUSIM_REPROS=$(CURDIR)/$(GPUSIM_OUT)/repro PESC_GPUSIM_JOBS=$(GPUSIM_JOBS) \
		$(RUN) -m pytest tests/gpusim/check_gpusim.py -q -p no:cacheprovider

# Part of `make test`: the simulated-GPU tests where the simulator's source and nvcc are present, else
# one line saying why they were skipped (a fresh clone elsewhere has no simulator source).
test-gpusim-if-available:
	@if [ ! -f "$(GPGPUSIM_SRC)/build.sh" ]; then \
		echo "make test: simulated-GPU tests skipped: no GPGPU-Sim source at $(GPGPUSIM_SRC) (set PESC_GPGPUSIM_SRC)"; \
	elif [ ! -x "$(GPUSIM_REAL_CUDA)/bin/nvcc" ]; then \
		echo "make test: simulated-GPU tests skipped: no nvcc at $(GPUSIM_REAL_CUDA)/bin (set GPUSIM_REAL_CUDA)"; \
	else $(MAKE) --no-print-directory test-gpusim; fi

gpusim-simulator:
	PESC_GPGPUSIM_SRC=$(GPGPUSIM_SRC) GPUSIM_REAL_CUDA=$(GPUSIM_REAL_CUDA) bash scripts/gpusim/build.sh $(GPUSIM_HOME)

# The runner and the simulator reproducers, compiled in parallel once the simulator is built.
gpusim-programs: gpusim-simulator
	@$(MAKE) --no-print-directory -j$(GPUSIM_JOBS) $(GPUSIM_OUT)/runner $(GPUSIM_REPROS)

$(GPUSIM_OUT)/obj/%.o: %.cu $(GPUSIM_HEADERS)
	@mkdir -p $(dir $@)
	$(NVCC_SIM) $(NVCC_SIM_FLAGS) -c $< -o $@

$(GPUSIM_OUT)/runner: $(GPUSIM_OBJECTS)
	$(NVCC_SIM) $^ -o $@

# A simulator reproducer is a folder of .cu files (some need several translation units).
.SECONDEXPANSION:
$(GPUSIM_OUT)/repro/%: $$(wildcard tests/gpusim/repro/%/*.cu)
	@mkdir -p $(dir $@)
	$(NVCC_SIM) -O3 $^ -o $@

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
