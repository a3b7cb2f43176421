# The commands every README section, CI and benchmark uses. `make help` lists them.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch first, pinned to the CPU wheel: an open range with nothing installed pulls a CUDA build.
TORCH_PIN := torch==2.13.0
STAMP := $(VENV)/.installed
# Every package's version, tested together: installs (here, CI, the images) take these, never what
# PyPI published this morning. `make lock` re-resolves it.
LOCK := deploy/constraints.txt

.PHONY: help setup test bench load protos lint typecheck run clean deploy-test figures lock

help: ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

setup: $(STAMP) ## create .venv with torch (CPU) and driftlm[all,dev], editable, at the locked versions

$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_PIN)
	$(BIN)/python -m pip install --quiet -c $(LOCK) -e '.[all,dev]'
	touch $(STAMP)

# uv resolves the newest versions pyproject.toml admits for Python 3.11 on Linux x86_64; the torch pin
# stays build-neutral (2.13.0 matches the CPU and the CUDA wheels). Then run make test before committing.
lock: setup ## re-resolve deploy/constraints.txt to the newest versions pyproject.toml admits
	printf '%s\n' '$(TORCH_PIN)' > $(VENV)/torch-pin.txt
	$(BIN)/uv pip compile pyproject.toml --extra all --extra dev --upgrade --quiet \
		--python-version 3.11 --python-platform x86_64-manylinux_2_28 \
		$(if $(PIP_FIND_LINKS),--find-links $(PIP_FIND_LINKS)) --constraint $(VENV)/torch-pin.txt -o $(LOCK)
	sed -i 's/^torch==\([0-9.]*\)+cpu$$/torch==\1/' $(LOCK)

test: setup ## run the test suite
	$(BIN)/python -m pytest

bench: setup ## run benchmarks/, write benchmarks/results/*.json, print the tables
	$(BIN)/python -m benchmarks

load: setup ## 16 clients for 30 s against sampling and vocab processes; write benchmarks/results/load.json
	$(BIN)/python -m benchmarks.load

protos: setup ## regenerate the Python stubs from protos/
	$(BIN)/python protos/generate.py

# mypy cannot follow setuptools' editable import hook, so it reads a tree of links that
# mirrors the installed `driftlm` package (pyproject.toml's package-dir mapping).
typecheck: setup ## mypy --strict over the driftlm package
	rm -rf build/typecheck && mkdir -p build/typecheck/driftlm
	ln -s $(CURDIR)/driftlm/* build/typecheck/driftlm/
	ln -s $(CURDIR)/services build/typecheck/driftlm/services
	ln -s $(CURDIR)/kernels build/typecheck/driftlm/kernels
	ln -s $(CURDIR)/protos/driftlm/v1 build/typecheck/driftlm/v1
	$(BIN)/mypy -p driftlm
	MYPYPATH=build/typecheck $(BIN)/mypy deploy/stack_test.py

lint: setup typecheck ## ruff, mypy, buf lint and buf format
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/buf lint protos
	$(BIN)/buf format --diff --exit-code protos

deploy-test: setup ## build the five images, start the stack (docker or podman), smoke-test it, a short loop, tear down (TLS=1: mutual TLS and tokens)
	$(BIN)/python deploy/stack_test.py $(if $(TLS),--tls)

figures: setup ## write the README's figures and docs/images from the committed results (docs/figures.py)
	$(BIN)/python docs/figures.py

run: setup ## the main job on the embedded default
	$(BIN)/driftlm run --threads 2

clean: ## remove the virtual environment and build outputs
	rm -rf $(VENV) build *.egg-info
