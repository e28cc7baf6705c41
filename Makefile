# bismarckpy: every target sets up what it needs and is safe to run again.
#   make demo        set up, check the server (bismarck doctor), run the demo
#   make test        set up, ruff, the default test suite
#   make test-slow   the slow tests
# Set-up: apt packages (PostgreSQL 15, PL/Python 3, numpy, venv), .venv with the package,
# the embedded database started and the extension installed.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := demo

PG_MAJOR ?= 15
APT_PACKAGES := postgresql-$(PG_MAJOR) postgresql-plpython3-$(PG_MAJOR) python3-numpy python3-venv \
                libopenblas0-serial
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.bismarckpy-installed

.PHONY: demo test test-slow lint deps venv db install-extension doctor

deps:  ## apt packages, installed only when missing
	@missing=""; \
	for pkg in $(APT_PACKAGES); do \
	  status=$$(dpkg-query -W -f='$${Status}' "$$pkg" 2>/dev/null || true); \
	  [ "$$status" = "install ok installed" ] || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then sudo=""; \
	  elif command -v sudo >/dev/null 2>&1; then sudo="sudo"; \
	  else echo "Missing packages:$$missing. Install them as root with:" \
	    "apt-get update && apt-get install -y$$missing" >&2; exit 1; fi; \
	  echo "Installing$$missing"; \
	  $$sudo apt-get update -qq; \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

venv: deps  ## .venv (re-created if broken) with the package, reinstalled when pyproject.toml changes
	@if ! $(BIN)/python -c 'import sys' >/dev/null 2>&1; then \
	  echo "Creating $(VENV)"; rm -rf $(VENV); $(PYTHON) -m venv $(VENV); fi
	@if [ ! -f $(STAMP) ] || [ pyproject.toml -nt $(STAMP) ] \
	    || ! $(BIN)/python -c 'import bismarck_controller' >/dev/null 2>&1; then \
	  $(BIN)/python -m pip install -q -e '.[test]'; \
	  touch $(STAMP); fi

db: venv  ## start the embedded database and install or upgrade the extension
	@$(BIN)/bismarck db start
	@$(BIN)/bismarck install

doctor: db
	$(BIN)/bismarck doctor

demo: doctor
	@if [ -f controller/bismarck_controller/demo.py ]; then \
	  $(BIN)/python -m bismarck_controller.demo; \
	else echo "No demo yet (controller/bismarck_controller/demo.py)."; fi

lint: venv
	$(BIN)/ruff check .

test: lint db
	$(BIN)/pytest -m 'not slow and not docker' --durations=30

test-slow: db
	$(BIN)/pytest -m 'slow and not docker'

install-extension: venv  ## as root on a server host: write the extension files into its share dir
	$(BIN)/bismarck install --files
