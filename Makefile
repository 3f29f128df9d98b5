# The two commands: `make demo` and `make test`.  Each creates .venv on first
# use and installs the project into it, so a fresh machine needs only python3.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint clean

demo: $(VENV)/.installed-plot
	$(BIN)/adamax demo

test: $(VENV)/.installed-dev lint
	$(BIN)/python -m pytest src tests

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples

# One stamp per extra; `dev` includes `plot`, so it satisfies `demo` as well.
$(VENV)/.installed-%: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e ".[$*]"
	touch $@
	if [ "$*" = dev ]; then touch $(VENV)/.installed-plot; fi

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache .hypothesis
