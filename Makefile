# The two commands a fresh machine needs (see README):
#   make serve   create .venv, then serve the default model on 127.0.0.1:3000
#   make test    create .venv, then run the whole test suite
# Both build the environment themselves; nothing else has to be installed first.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

export BENTOML_DO_NOT_TRACK := true

.PHONY: serve test lint format browser venv clean wheel bento audit

venv: $(STAMP)

# pip (not uv/poetry): torch==2.14.1 and torchvision==0.29.1 come from this machine's disk.
# The 2.14.1 build on that disk is PyTorch's CUDA build, which brings NVIDIA's libraries along: a nearly
# full disk is named before pip fails half-way with "No space left on device".
$(STAMP): pyproject.toml clients/pyproject.toml
	@free=$$(df -Pk . | awk 'NR == 2 { print int($$4 / 1048576) }'); \
	  [ "$$free" -ge 9 ] || echo "make: warning: $$free GB free on this disk; the environment needs about 8 GB" >&2
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[train,ray,dev]' -e ./clients
	touch $@

serve: $(STAMP)
	$(BIN)/clsloc serve --host 127.0.0.1 --port 3000

# Browser tests use Debian's Chromium; Playwright's own browser download cannot work offline.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the browser tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# ruff, configured in pyproject.toml: the formatter's check and the linter (CI runs it).
lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: $(STAMP) browser
	$(BIN)/python -m pytest

# pip-audit over the serving install (the wheel's base dependencies and all they pull in, as pinned
# here); says SKIPPED where no vulnerability service can be reached.
audit: $(STAMP)
	$(BIN)/python .ci/audit.py

# The torch-free wheel the Bento installs (offline: setuptools comes from .venv).
wheel: $(STAMP)
	$(BIN)/pip wheel --quiet --no-deps --no-build-isolation --wheel-dir dist .

# A Bento of the service and one model, packed and recorded in it (docs/deploy.md):
#   make bento MODEL=NAME:VERSION   (default: the newest clsloc-default in the store, pinned at build)
MODEL ?= clsloc-default
bento: wheel
	CLSLOC_MODEL=$(MODEL) $(BIN)/bentoml build

clean:
	rm -rf $(VENV) .pytest_cache dist build
