# Each target creates its own virtualenv; override PYTHON or TORCH (e.g. TORCH="torch>=2.4") as needed.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: demo test test-slow lint clean

$(BIN)/normfree: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

demo: $(BIN)/normfree
	$(BIN)/normfree demo

test: $(BIN)/normfree
	$(BIN)/python -m pytest -q

test-slow: $(BIN)/normfree
	$(BIN)/python -m pytest -q -m slow

lint: $(BIN)/normfree
	$(BIN)/pip install --quiet -e ".[lint]"
	$(BIN)/ruff check normfree tests benchmarks tools

clean:
	rm -rf $(VENV) .pytest_cache *.egg-info
