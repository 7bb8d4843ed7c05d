# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BROWSER_STAMP := $(VENV)/.installed-browser
RAY_STAMP := $(VENV)/.installed-ray
EXAMPLE := examples/cloud-migration/plan.yaml
OUT := demo-out
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test lint typecheck unit faults bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,fast]'
	$(BIN)/python -m counterpoint.plan._sgs_kernels  # compile plan's search once (numba cache)
	touch $(STAMP)

# the dashboard's browser tests drive Debian's chromium (Playwright never downloads one);
# `optimize` (OR-Tools) for `plan --optimal`, whose tests must not skip
$(BROWSER_STAMP): $(STAMP)
	@if [ ! -x /usr/bin/chromium ]; then \
		$(SUDO) apt-get update -q && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	fi
	$(BIN)/python -m pip install --quiet -e '.[test,browser,optimize]'
	touch $(BROWSER_STAMP)

# the Ray backend's tests start a local Ray instance (the optional extra `ray`)
$(RAY_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,ray]'
	touch $(RAY_STAMP)

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

unit: $(STAMP) $(BROWSER_STAMP) $(RAY_STAMP)
	CI=$${CI:-1} $(BIN)/pytest  # CI set: the browser tests fail, never skip, without chromium

test: lint typecheck unit

# the fault-injection suite at full size (docs/reliability.md); figures in $(OUT)/fault-figures.json
faults: $(STAMP)
	@mkdir -p $(OUT)
	rm -f $(OUT)/fault-figures.json
	COUNTERPOINT_FAULTS=full COUNTERPOINT_FAULT_FIGURES=$(CURDIR)/$(OUT)/fault-figures.json \
		$(BIN)/pytest tests/faults --timeout 3600 -q
	@$(BIN)/python -c 'import json, sys; d = json.load(open(sys.argv[1])); \
		[print(f"{k:48} {v}") for k, v in sorted(d.items())]' $(OUT)/fault-figures.json

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,bench,ray]'
	$(BIN)/python bench/plan_scale.py
	$(BIN)/python bench/dispatch.py
	$(BIN)/python bench/hub.py
	$(BIN)/python bench/ray_scale.py

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache .mypy_cache .ruff_cache
