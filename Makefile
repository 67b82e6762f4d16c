# One entry point. `make book` builds the site, `make test` runs every test; both create .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.py))
AXE_VERSION := 4.14.1
AXE := $(VENV)/axe-core/axe.min.js

.PHONY: book test notebooks lint clean chromium

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

## book: build the site into _build/html from the notebooks' stored outputs
book: $(STAMP)
	$(VENV)/bin/jupyter-book build . -W -n --keep-going

# The browser test needs Debian's Chromium (installed here when we are root, as in CI) and axe-core (npm).
$(AXE):
	mkdir -p $(VENV)/axe-core
	cd $(VENV)/axe-core && npm pack --silent axe-core@$(AXE_VERSION) >/dev/null && \
		tar -xzf axe-core-$(AXE_VERSION).tgz --strip-components=1 package/axe.min.js

chromium:
	@command -v chromium >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
		else echo "*** chromium is not installed and cannot be installed here: the browser tests will FAIL ***"; fi; }

## test: unit tests, nbval over every lesson, pair sync, the book build with -W, and the site in a browser
test: $(STAMP) $(AXE) chromium
	$(PY) -m pytest -ra --nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg

## notebooks: write each .py lesson into its .ipynb and execute it in place on the CPU
notebooks: $(STAMP)
	$(PY) tools/execute_notebooks.py $(NOTEBOOKS)

lint: $(STAMP)
	$(VENV)/bin/ruff check normlib tests notebooks tools book/_ext

clean:
	rm -rf _build
