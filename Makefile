# The two commands of the README: `make dev` runs the product, `make test` runs the tests.
# Both create .venv and install the package (with its pinned dependencies) when missing.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTHON ?= python3

.PHONY: dev test lint install system-packages clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

# The Debian packages the tests use (tests/system-packages.sh lists them): installed when missing, or one
# sentence saying how, before any test runs.
system-packages:
	@bash tests/system-packages.sh

dev: $(STAMP)
	$(VENV)/bin/callpulse dev

lint: $(STAMP)
	$(VENV)/bin/ruff check app streams tests bench
	$(VENV)/bin/ruff format --check app streams tests bench
	$(VENV)/bin/mypy

test: system-packages $(STAMP) lint
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
