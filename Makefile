# One entry point. `make book` builds the site, `make test` runs every test; both create .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.py))

.PHONY: book test notebooks lint clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

## book: build the site into _build/html from the notebooks' stored outputs
book: $(STAMP)
	$(VENV)/bin/jupyter-book build . -W -n --keep-going

## test: unit tests, nbval over every lesson, pair sync, and the book build with warnings as errors
test: $(STAMP)
	$(PY) -m pytest -ra --nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg

## notebooks: write each .py lesson into its .ipynb and execute it in place on the CPU
notebooks: $(STAMP)
	$(PY) tools/execute_notebooks.py $(NOTEBOOKS)

lint: $(STAMP)
	$(VENV)/bin/ruff check normlib tests notebooks

clean:
	rm -rf _build
