# Two user-facing targets: `make demo` (the main job) and `make test`. Both create .venv on first use.
PY      ?= python3
TORCH   ?= torch==2.13.0
VENV    := .venv
STAMP   := $(VENV)/.installed-stamp

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q "$(TORCH)"
	$(VENV)/bin/pip install -q -e ".[test]"
	touch $(STAMP)

.PHONY: install demo test
install: $(STAMP)

# The main job: the CPU demo search. Each run gets its own name, so `make demo` can be repeated.
demo: $(STAMP)
	$(VENV)/bin/python -m hpo.search search_spaces/demo.yaml --name demo-$$(date +%Y%m%d-%H%M%S)

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q tests
