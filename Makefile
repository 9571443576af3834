# Two commands: `make demo` runs the main job, `make test` runs the test suite.
# Both create .venv on first use and install the project with pinned versions (constraints.txt).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: demo test venv data bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[engine,operator,test,bench]'
	touch $@

# Fashion-MNIST comes from Debian's dataset-fashion-mnist package (installed when running as root).
data:
	@if [ ! -f $(FMNIST)/train-images-idx3-ubyte.gz ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get install -y -q dataset-fashion-mnist >/dev/null || \
	    (apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null); \
	  else echo "Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist'"; exit 1; fi; \
	fi

test: $(STAMP) data
	$(BIN)/python -m pytest -q

demo: $(STAMP) data
	$(BIN)/gpunet run examples/fashion-mnist.yaml --out runs/fashion-mnist --profiler-runs 20

bench: $(STAMP)
	@echo "see benchmarks/README.md"

clean:
	rm -rf $(VENV) .pytest_cache
