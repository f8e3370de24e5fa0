# The course's two commands: `make book` (build the HTML book, executing every notebook in the
# quick profile) and `make test` (run the test suite). Both create .venv on first use.
VENV ?= .venv
PYTHON ?= python3
BIN := $(abspath $(VENV))/bin
# Notebook kernels start `python` from PATH: put the environment's first.
export PATH := $(BIN):$(PATH)
export WANDB_MODE ?= disabled

.PHONY: book test env sync-notebooks colab student clean

env: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[book,test]"
	touch $@

book: env
	ENF_PROFILE=$${ENF_PROFILE:-quick} ENF_PROGRESS=static \
		$(BIN)/jupyter-book build . --warningiserror --keep-going
	@echo "Book written to _build/html/index.html"

# Tests run in TEST_WORKERS processes (pytest-xdist; 1 = in this process). Keep it at 1 on a
# GPU: every process would claim most of the device's memory.
TEST_WORKERS ?= 2
test: env
	$(BIN)/python -m pytest $(if $(filter 1,$(TEST_WORKERS)),,-n $(TEST_WORKERS))

# Rewrite each .ipynb from its MyST text twin (the source), without outputs.
sync-notebooks: env
	$(BIN)/jupytext --sync notebooks/*.md

# Colab copies of the notebooks: plain Markdown instead of MyST, solutions collapsed in colab/,
# removed in colab/student/. `tools/make_colab.py --check` tells whether they are up to date.
colab: env
	$(BIN)/python tools/make_colab.py

# The student copies are part of `make colab`.
student: colab

clean:
	rm -rf _build
