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
	@echo "==> creating the virtual environment in $(VENV) (once; make clean removes it)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@echo "==> installing PyTorch ($(TORCH_PINS)): the largest step, about a minute"
	$(BIN)/python -m pip install -q --progress-bar on $(TORCH_PINS)
	@echo "==> installing pathbench and its dependencies (timm, transformers, FAISS, ...): about a minute"
	$(BIN)/python -m pip install -q --progress-bar on -e ".[cpu,dev]"
	@echo "==> environment ready"
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
