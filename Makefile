# Two commands do all the set-up on a fresh machine:
#   make demo   builds the phantom cache, pre-trains, fine-tunes (pre-trained vs scratch), evaluates
#   make test   runs the test suite
# Both create .venv when it is missing. torch is pinned to the CPU wheel available offline.

VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.ssmtl-installed
TORCH  ?= torch==2.13.0

.PHONY: venv demo test docs clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[test]"
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash examples/demo.sh

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf demo .pytest_cache
