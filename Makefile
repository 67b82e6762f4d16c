# One entry point. `make book` builds the site (the light set: Jupyter Book and MathJax, no torch);
# `make test` runs every test (the whole pinned stack). Both create $(VENV) first.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --quiet --disable-pip-version-check
PIP_VERSION := 26.3
BOOK_STAMP := $(VENV)/.installed-book
STAMP := $(VENV)/.installed
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.py))
AXE_VERSION := 4.14.1
AXE := $(VENV)/axe-core/axe.min.js
NBVAL := --nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg
# Debian packages the tests use: a browser (skipped when CHROME_BIN names one: GitHub's ubuntu-24.04 image
# ships Google Chrome, and its apt chromium is only a stub for a snap) and Fashion-MNIST for the lessons
# (normlib.lab.data reads it there, so CI downloads nothing; tests/test_data.py serves its files locally).
FASHION_MNIST := /usr/share/datasets/fashion-mnist

.PHONY: book test notebooks lab lint clean system-packages chromium

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install pip==$(PIP_VERSION)

$(BOOK_STAMP): requirements-book.txt | $(PY)
	$(PIP) install -r requirements-book.txt
	touch $@

$(STAMP): requirements.txt requirements-book.txt pyproject.toml | $(PY)
	$(PIP) install -r requirements.txt
	$(PIP) install --no-deps -e .
	touch $@ $(BOOK_STAMP)

## book: build the site into _build/html from the notebooks' stored outputs (light set: no torch)
book: $(BOOK_STAMP)
	$(VENV)/bin/jupyter-book build . -W -n --keep-going

# The browser test needs a Chromium-family browser and axe-core (npm).
$(AXE):
	mkdir -p $(VENV)/axe-core
	cd $(VENV)/axe-core && npm pack --silent axe-core@$(AXE_VERSION) >/dev/null && \
		tar -xzf axe-core-$(AXE_VERSION).tgz --strip-components=1 package/axe.min.js

## system-packages: Debian's chromium and dataset-fashion-mnist, installed with apt when run as root
system-packages:
	@need=""; \
	if [ -n "$$CHROME_BIN" ]; then \
		[ -x "$$CHROME_BIN" ] || echo "*** CHROME_BIN=$$CHROME_BIN is not an executable: the browser tests will FAIL ***"; \
	elif ! command -v chromium >/dev/null 2>&1; then need="$$need chromium"; fi; \
	[ -d $(FASHION_MNIST) ] || need="$$need dataset-fashion-mnist"; \
	if [ -n "$$need" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "apt-get install$$need"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$need >/dev/null; \
		else \
			echo "*** Debian packages missing:$$need, and they cannot be installed here (not root, or no apt-get)."; \
			echo "*** Install them as root: apt-get install$$need   (or set CHROME_BIN to a Chrome or Chromium)."; \
			echo "*** Without chromium the browser tests FAIL; without dataset-fashion-mnist the lessons"; \
			echo "*** download Fashion-MNIST (30 MB) into \$$NORMLIB_DATA or ~/.cache/normlib once, and"; \
			echo "*** the data tests FAIL (they serve the package's files from a local server)."; \
		fi; \
	fi

chromium: system-packages

## test: unit tests, nbval over every lesson (twice: as stored, then with ATEN_CPU_CAPABILITY=default, a
## second floating-point configuration), pair sync, requirements resolution, the book build with -W, and
## the site in a browser. Both passes always run; the target fails if either does.
# The second pass runs beside the first (lessons use one thread each, the machine has two cores); its log
# is printed when both are done. Each pass has its own compile cache: inductor's on-disk cache does not key
# on the ATen capability, and code compiled for AVX2 fails to build under the default one.
test: $(STAMP) $(AXE) system-packages
	@status=0; log=$(VENV)/nbval-aten-default.log; \
	echo "== nbval over every notebook with ATEN_CPU_CAPABILITY=default: started beside the main pass"; \
	( ATEN_CPU_CAPABILITY=default TORCHINDUCTOR_CACHE_DIR=$(abspath $(VENV))/inductor-aten-default \
	  $(PY) -m pytest -ra -p no:cacheprovider $(NBVAL) notebooks > $$log 2>&1 ) & \
	second=$$!; \
	echo "== pytest: tests/ and nbval over every notebook"; \
	TORCHINDUCTOR_CACHE_DIR=$(abspath $(VENV))/inductor $(PY) -m pytest -ra $(NBVAL) || status=1; \
	wait $$second || status=1; \
	echo "== nbval over every notebook with ATEN_CPU_CAPABILITY=default (second floating-point configuration)"; \
	cat $$log; \
	exit $$status

## notebooks: write each .py lesson into its .ipynb and execute it in place on the CPU
notebooks: $(STAMP)
	$(PY) tools/execute_notebooks.py $(NOTEBOOKS)

## lab: open the lessons in JupyterLab, from the whole pinned stack. jupytext pairs each lesson's .ipynb
## with its .py (jupytext.toml): saving either one in JupyterLab writes both.
# LAB_FLAGS: more options for `jupyter lab` (the test: --no-browser, a port, a token). As root (a container,
# CI), JupyterLab needs --allow-root.
LAB_FLAGS ?=
lab: $(STAMP)
	$(VENV)/bin/jupyter lab --ServerApp.ip=127.0.0.1 --ServerApp.root_dir="$(CURDIR)" \
		--LabApp.default_url=/lab/tree/notebooks $$([ "$$(id -u)" = 0 ] && echo --allow-root) $(LAB_FLAGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check normlib tests notebooks tools book/_ext

clean:
	rm -rf _build
