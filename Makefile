# Two set-up commands: `make run` and `make test`. Both create or update .venv and are idempotent.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
# Django 6 needs Python 3.12+: the second test leg uses this interpreter, in its own venv.
CHECK312 := import sys; assert sys.version_info >= (3, 12); print(sys.executable)
# Python 3.12 (the leg CI runs) on PATH or installed by pyenv; failing that, a newer one.
PYTHON312 ?= $(shell for c in python3.12 python3.13; do $$c -c '$(CHECK312)' 2>/dev/null && exit; done; \
	for p in '3\.12' '3\.1[3-9]'; do \
	v=$$(pyenv versions --bare 2>/dev/null | grep -E "^$$p(\.[0-9]+)?$$" | tail -n 1); \
	[ -n "$$v" ] && PYENV_VERSION=$$v python -c '$(CHECK312)' 2>/dev/null && exit; done)
VENV6 ?= .venv-django6
# Prefect's own client, for the wire-compatibility test: a venv of its own (it pins websockets < 17).
VENVP ?= .venv-prefect
PREFECT ?= prefect==3.9.1
PYTEST_ARGS ?=

.PHONY: install run run-redis migrate test test-postgres test-django6 test-prefect lint format bench wheel clean print-python312

$(BIN)/.installed: requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $@

install: $(BIN)/.installed

migrate: install
	$(BIN)/python manage.py migrate --noinput

# The admin's address comes first, before the install and migrate steps print theirs. collectstatic
# fills STATIC_ROOT, which the project serves from when run with DJANGO_DEBUG=0.
run:
	@echo "The admin will be at http://$(HOST):$(PORT)/admin/" \
		"(create a user with $(BIN)/python manage.py createsuperuser)"
	@echo "Workers: TASKQUEUE_SERVER_URL=http://$(HOST):$(PORT)/api $(BIN)/python manage.py taskworker"
	@$(MAKE) --no-print-directory migrate
	$(BIN)/python manage.py collectstatic --noinput -v 0
	TASKQUEUE_SERVER_URL=http://$(HOST):$(PORT)/api $(BIN)/daphne -b $(HOST) -p $(PORT) project.asgi:application

# Two server processes and a Redis of their own, on ports PORT and PORT+1; Ctrl-C stops all.
run-redis: install
	HOST=$(HOST) PORT=$(PORT) $(BIN)/python -m project.run_redis

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The whole suite on PostgreSQL: the tests start a throwaway server of their own (initdb into a
# temporary directory, a unix socket there); it skips, or fails under CI, without PostgreSQL.
test-postgres: install
	TASKQUEUE_DATABASE=postgres $(BIN)/python -m pytest $(PYTEST_ARGS)

$(VENV6)/bin/.installed: requirements.txt pyproject.toml
	@test -n "$(PYTHON312)" || { echo "no Python 3.12 interpreter found"; exit 1; }
	test -x $(VENV6)/bin/python || $(PYTHON312) -m venv $(VENV6)
	$(VENV6)/bin/python -m pip install --quiet --upgrade pip
	$(VENV6)/bin/python -m pip install --quiet -r requirements.txt
	touch $@

test-django6: $(VENV6)/bin/.installed
	$(VENV6)/bin/python -m pytest $(PYTEST_ARGS)

$(VENVP)/bin/.installed: requirements.txt pyproject.toml
	test -x $(VENVP)/bin/python || $(PYTHON) -m venv $(VENVP)
	$(VENVP)/bin/python -m pip install --quiet --upgrade pip
	grep -v '^websockets==' requirements.txt > $(VENVP)/requirements.txt
	$(VENVP)/bin/python -m pip install --quiet -r $(VENVP)/requirements.txt "$(PREFECT)"
	touch $@

# Prefect's Subscription client against our server; fails (not skips) when Prefect is missing.
test-prefect: $(VENVP)/bin/.installed
	TASKQUEUE_REQUIRE_PREFECT=1 $(VENVP)/bin/python -m pytest tests/test_prefect_client.py $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install
	$(BIN)/python -m bench $(if $(QUICK),--quick,)

wheel: install
	$(BIN)/python -m build --wheel --no-isolation --outdir dist .

clean:
	rm -rf $(VENV) $(VENV6) $(VENVP) dist build *.egg-info .pytest_cache

print-python312:
	@echo $(PYTHON312)
