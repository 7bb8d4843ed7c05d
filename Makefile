# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXAMPLE := examples/cloud-migration/plan.yaml
OUT := demo-out

.PHONY: demo test lint typecheck unit bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/counterpoint check $(EXAMPLE)
	@mkdir -p $(OUT)
	$(BIN)/counterpoint plan $(EXAMPLE) --gantt $(OUT)/cloud-migration-gantt.html
	$(BIN)/counterpoint plan $(EXAMPLE) --json > $(OUT)/cloud-migration-plan.json
	rm -rf $(OUT)/state
	$(BIN)/counterpoint run $(EXAMPLE) --state $(OUT)/state --time-scale 0.000005 --approve-as demo
	$(BIN)/counterpoint report --state $(OUT)/state -o $(OUT)/cloud-migration-report.html
	@echo "Gantt chart: $(OUT)/cloud-migration-gantt.html; plan JSON: $(OUT)/cloud-migration-plan.json"
	@echo "Run report: $(OUT)/cloud-migration-report.html"
	@echo "Run journal: $(OUT)/state (try: $(BIN)/counterpoint status --state $(OUT)/state)"

lint: $(STAMP)
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest

test: lint typecheck unit

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	$(BIN)/python bench/plan_scale.py
	$(BIN)/python bench/dispatch.py
	$(BIN)/python bench/hub.py

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache .mypy_cache .ruff_cache
