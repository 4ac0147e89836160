# stord: `make demo` and `make test` do all set-up on a fresh Debian 12 machine.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
APT_PKGS := clang llvm bpftool libbpf-dev gcc make
STAMP   := $(VENV)/.installed

.PHONY: setup demo test lint bench kernel-test clean

setup: $(STAMP)

# apt only when a package is missing, so repeated runs stay fast and need no network.
$(STAMP): pyproject.toml
	@missing=$$(for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing $$missing"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,bench]'
	touch $(STAMP)

demo: setup
	$(BIN)/python -m stord.cli.demo

test: setup
	$(BIN)/ruff check stord clients tests bench
	$(BIN)/python -m pytest -q --ignore=tests/vm tests  # tests/vm run inside the VM: make kernel-test

lint: setup
	$(BIN)/ruff check stord clients tests bench

bench: setup
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# vagrant: tests/test_hook.py validates vagrant/Vagrantfile with it (the VMs themselves run
# under the qemu harness)
kernel-test: setup
	@missing=$$(for p in qemu-system-x86 busybox-static vagrant; do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing $$missing"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi
	bash kernel_patch/build.sh
	$(BIN)/python -m vagrant.harness test

clean:
	rm -rf $(VENV) .cache build *.egg-info
