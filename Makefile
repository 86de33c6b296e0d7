# fracture-triage: `make demo` sets everything up and runs the demo; `make test` runs the tests.
VENV ?= .venv
PYTHON ?= python3
# The CPU build (local on the project's machines). A GPU site sets e.g. TORCH_SPEC="torch==2.13.0"
# with its CUDA index, or installs torch first; pyproject keeps the range open (torch>=2.4).
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

SECRETS_DIR ?= secrets

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

# The real peers first: as root the missing ones are installed (`peers`); otherwise one line
# names them and the command that installs them.
# Then the OHIF viewer's app (fetched once) and the demo bundle (trained once per version of
# the training code, outside any test's timeout; the model-quality tests use it).
test: lint
	@deploy/peers.sh ensure
	$(BIN)/python -m tests.ohif
	$(BIN)/python -m models.training.demo var/bundles/demo --if-stale
	$(BIN)/python -m pytest

# The real peers the tests talk to (Debian): dcmtk, Orthanc (+ DICOMweb, web viewer),
# dicom3tools, docker-compose, chromium with its driver for the browser tests, PostgreSQL
# (deploy/peers.sh); then the OHIF viewer's built app (the pinned @ohif/app from npm) under
# var/ohif/ (tests/ohif.py; nothing is downloaded while the tests run).
peers:
	deploy/peers.sh install
	$(PYTHON) -m tests.ohif

# Random passwords for docker-compose.yml's Docker secrets, never committed. The folder is
# the owner's alone (0700); each file is readable (0444) so that the services read it as
# the users they run as inside their containers (docs/operations.md, "Secrets").
secrets:
	mkdir -p -m 700 $(SECRETS_DIR)
	chmod 700 $(SECRETS_DIR)
	for name in db_owner_password db_node_password prefect_db_password; do \
		test -s $(SECRETS_DIR)/$$name || (umask 077; $(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(24))' > $(SECRETS_DIR)/$$name); \
		chmod 444 $(SECRETS_DIR)/$$name; \
	done

clean:
	rm -rf var .pytest_cache
