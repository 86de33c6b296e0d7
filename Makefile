# fracture-triage: `make demo` sets everything up and runs the demo; `make test` runs the tests.
VENV ?= .venv
PYTHON ?= python3
# The CPU build (local on the project's machines). A GPU site sets e.g. TORCH_SPEC="torch==2.13.0"
# with its CUDA index, or installs torch first; pyproject keeps the range open (torch>=2.4).
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo serve test lint peers secrets clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first: a bare `torch` requirement would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/fracture-triage demo

serve: install
	$(BIN)/fracture-triage serve

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

test: lint
	$(BIN)/python -m pytest

# The real peers the tests talk to (Debian): dcmtk, Orthanc (+ DICOMweb, web viewer),
# dicom3tools, docker-compose, and chromium with its driver for the browser tests; then the
# OHIF viewer (its built app, the pinned @ohif/app from npm) under var/ohif/ (tests/ohif.py).
peers:
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dcmtk orthanc orthanc-dicomweb orthanc-webviewer dicom3tools \
		docker-compose chromium chromium-driver
	$(PYTHON) -m tests.ohif

# Random passwords for docker-compose.yml's Docker secrets, owner-only, never committed.
secrets:
	mkdir -p -m 700 secrets
	for name in db_owner_password db_node_password prefect_db_password; do \
		test -s secrets/$$name || (umask 077; $(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(24))' > secrets/$$name); \
	done

clean:
	rm -rf var .pytest_cache
