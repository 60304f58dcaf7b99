# The two set-up commands of the README: `make package` and `make test`.
# Each creates .venv and installs what it needs, once: the stamp is redone only when pyproject.toml changes.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install package test bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[dev]"
	@# the light ExecuTorch runner (no torch in the runner process); optional: without g++ the pybindings run
	-PYTHON=$(BIN)/python sh scripts/build_et_light.sh || echo "light ExecuTorch runner not built (needs g++)"
	@touch $(STAMP)

install: $(STAMP)

## The main job: package the built-in model (all-MiniLM-L6-v2) for an Android phone, then benchmark it here.
package: $(STAMP)
	$(BIN)/edgeopt package --profile arm-mobile --force
	$(BIN)/edgeopt bench dist/all-MiniLM-L6-v2-arm-mobile --device local --runs 50 --min-seconds 2

## The whole test suite, on two workers (one test file per worker at a time: module fixtures stay shared).
test: $(STAMP)
	sh scripts/install-test-deps.sh
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

clean:
	rm -rf dist build *.egg-info .pytest_cache
