# Two commands do all the set-up on a fresh machine:
#   make demo   builds the phantom cache, pre-trains, fine-tunes (pre-trained vs scratch), evaluates
#   make test   runs the test suite
#   make docs   regenerates the reference pages and builds the docs site (warnings are errors)
# Both create .venv when it is missing. torch is pinned to the CPU wheel available offline.

VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.ssmtl-installed
DOCS_STAMP := $(VENV)/.ssmtl-docs-installed
TORCH  ?= torch==2.13.0

.PHONY: venv demo test docs clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[test]"
	# the example third-party plugin: installed before pytest starts, so every test
	# process (and in-process CLI run) can import it through its entry point
	$(PY) -m pip install --quiet --no-deps -e examples/ssmtl-rotation
	@touch $(STAMP)

venv: $(STAMP)

# one torch thread unless the caller chose: the demo's models are tiny, and a fixed thread
# count makes its numbers the same on every machine (the README's transcript)
demo: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash examples/demo.sh

# One pytest worker per core (TEST_WORKERS=1: one process), each with one intra-op thread
# unless the caller chose: the test models are tiny, and two threads per process on two shared
# cores ran the suite about 1.6x slower (tests/test_benchmark.py and tests/test_finetune.py:
# 46 s against 28 s). Tests marked `installs` change the environment's entry points, which
# every other test reads, so they run afterwards on their own. At most 4 workers: each holds
# torch and its own copy of the session fixtures, and a few tests start 2 processes of their own.
TEST_WORKERS ?= auto
PYTEST := OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -q
test: $(STAMP)
	$(PYTEST) -n $(TEST_WORKERS) --maxprocesses 4 -m "not installs"
	$(PYTEST) -m installs

$(DOCS_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e ".[test,docs]"
	@touch $(DOCS_STAMP)

# cli.md, config.md and the `ssmtl plugins` block of hooks.md are generated from the code
docs: $(DOCS_STAMP)
	$(PY) scripts/gen_docs.py
	$(PY) -m mkdocs build --strict

clean:
	rm -rf demo .pytest_cache site
