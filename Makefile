# tvm-mcu: every target sets up what it needs (Debian packages, .venv, the package, the QEMU plugin),
# idempotently, then does its job.  `make demo` and `make test` are the two commands a user needs.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.tvm-mcu-installed

# Debian packages: the Cortex-M cross compiler and C library, the emulator, a host C compiler (for the
# QEMU plugin), venv support for Debian's own python3, Fashion-MNIST (pruning, fine-tuning, benchmarks),
# CMake (the --emit cmake example is built in a test) and Chromium (report.html is rendered in a test).
DEB_PACKAGES := gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm gcc python3-venv dataset-fashion-mnist cmake chromium

.PHONY: all setup system venv plugin demo test bench bench-prune bench-compile fuzz lint clean

all: test

setup: system venv plugin

system:
	@need=""; \
	command -v arm-none-eabi-gcc >/dev/null 2>&1 || need="$$need gcc-arm-none-eabi"; \
	[ -f /usr/lib/arm-none-eabi/newlib/libc.a ] || need="$$need libnewlib-arm-none-eabi"; \
	command -v qemu-system-arm >/dev/null 2>&1 || need="$$need qemu-system-arm"; \
	command -v cc >/dev/null 2>&1 || need="$$need gcc"; \
	$(PYTHON) -c "import ensurepip, venv" >/dev/null 2>&1 || need="$$need python3-venv"; \
	[ -d /usr/share/datasets/fashion-mnist ] || need="$$need dataset-fashion-mnist"; \
	command -v cmake >/dev/null 2>&1 || need="$$need cmake"; \
	command -v chromium >/dev/null 2>&1 || need="$$need chromium"; \
	if [ -n "$$need" ]; then \
	  if [ "$$(id -u)" = 0 ]; then sudo=""; \
	  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo"; \
	  else echo "tvm-mcu: missing Debian packages; run: sudo apt-get install --no-install-recommends$$need" >&2; exit 1; fi; \
	  echo "installing Debian packages:$$need"; \
	  $$sudo apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends $$need >/dev/null; \
	fi

venv: $(STAMP)

$(STAMP): pyproject.toml
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,train,distributed]'
	@touch $@

plugin: venv
	@$(PY) -m tvm_mcu.targets.plugin >/dev/null

demo: setup
	$(VENV)/bin/tvm-mcu demo

# On every core (pytest-xdist: on this 2-core machine 19.5 minutes serially, 13 in two workers);
# a test file's tests stay in one worker (--dist loadfile), so module fixtures are built once.
test: setup
	$(PY) -m pytest -q -n auto --dist loadfile --durations=30

bench: setup
	$(PY) bench/run_bench.py

# The pruning methods comparison, docs/BENCHMARKS_PRUNING.md (trains dozens of models: hours).
bench-prune: setup
	$(PY) bench/run_bench.py --pruning-methods --pruning-curves
	$(PY) bench/run_bench.py --pruning-schedulers
	$(PY) bench/run_bench.py --bits-curves

# Compile time against depth alone (MobileNetV1-style networks of 4 to 32 blocks): rewrites that section
# of docs/BENCHMARKS.md (minutes).
bench-compile: setup
	$(PY) bench/run_bench.py --compile-time

# The random-model fuzzer: N seeded CNNs (KIND=float; int8: each seed quantised by tvm-mcu and by
# onnxruntime; prune: each float seed pruned by tvm-mcu prune), compiled, run on QEMU and compared;
# failures reduced. Summary in out/fuzz/KIND/summary.md.
N    ?= 100
KIND ?= float
JOBS ?= 2
fuzz: setup
	$(PY) -m tvm_mcu.fuzz --n $(N) --kind $(KIND) --jobs $(JOBS) --out out/fuzz/$(KIND)

lint: venv
	$(VENV)/bin/ruff check tvm_mcu passes targets tests bench examples
	$(VENV)/bin/mypy tvm_mcu passes targets

clean:
	rm -rf out build .pytest_cache .mypy_cache .ruff_cache
