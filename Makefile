# pathbench: `make demo` and `make test` each create .venv if it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch and torchvision are pinned to releases that import together on CPU-only machines.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: venv demo test lint leaderboards clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PINS)
	$(BIN)/python -m pip install -q -e ".[cpu,dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m pathbench.demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The published tables merged with the contributed runs, one Markdown file per benchmark.
leaderboards: $(STAMP)
	$(BIN)/pathbench leaderboard --all --results leaderboards/runs --out-dir leaderboards

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) pathbench-results
