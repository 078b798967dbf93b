# Each target creates its own virtualenv; override PYTHON or TORCH (e.g. TORCH="torch>=2.4") as needed.
# The timm tests run in a second venv: timm imports torchvision, and torchvision needs the torch it was
# built for (TIMM_TORCH), which is not the CPU torch of the main venv.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
TIMM_VENV ?= .venv-timm
TIMM_TORCH ?= torch==2.14.1 torchvision==0.29.1
BIN := $(VENV)/bin
TIMM_BIN := $(TIMM_VENV)/bin

.PHONY: demo test test-main test-timm test-slow lint mutants clean

$(BIN)/normfree: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[test,demo]"
	touch $@

$(TIMM_BIN)/normfree: pyproject.toml
	$(PYTHON) -m venv $(TIMM_VENV)
	$(TIMM_BIN)/pip install --quiet $(TIMM_TORCH)
	$(TIMM_BIN)/pip install --quiet -e ".[test-timm]"
	touch $@

demo: $(BIN)/normfree
	$(BIN)/normfree demo

# lint, the default suite, then the timm tests in their own venv (docs/testing.md)
test: lint test-main test-timm

test-main: $(BIN)/normfree
	$(BIN)/python -m pytest -q -rs --durations=15 -m "not slow and not timm"

test-timm: $(TIMM_BIN)/normfree
	$(TIMM_BIN)/python -m pytest -q -rs -m "timm and not slow"

test-slow: $(BIN)/normfree
	$(BIN)/python -m pytest -q -rs -m "slow and not timm"

lint: $(BIN)/normfree
	$(BIN)/ruff check normfree tests benchmarks tools

mutants: $(BIN)/normfree
	OMP_NUM_THREADS=1 $(BIN)/python tools/mutants.py

clean:
	rm -rf $(VENV) $(TIMM_VENV) .pytest_cache *.egg-info
