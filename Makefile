# Set-up and everyday commands. Each target installs what it needs into .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install demo test lint typecheck schemas clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Re-run pip only when pyproject.toml changed since the last install.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/stream-detector demo $(ARGS)

test: install
	$(BIN)/python -m pytest $(ARGS)

lint: install
	$(BIN)/ruff check stream_detector trainer schemas deploy tests bench

typecheck: install
	$(BIN)/mypy

schemas: install
	$(BIN)/python -m schemas.export

clean:
	rm -rf $(VENV) .stream-detector .pytest_cache .mypy_cache .ruff_cache
