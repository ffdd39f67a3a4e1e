# Thin aliases of `python -m devstack <command>` (which also works without make).
PYTHON ?= python3

.PHONY: demo test up down status bench lint chaos

demo:  ## the end-to-end demo on the local stack (installs what is missing, starts and stops it)
	$(PYTHON) -m devstack demo

test:  ## every test: unit, integration (local stack started by fixtures), e2e, linters
	$(PYTHON) -m devstack test

up:    ## start the local stack in the background; settings in .devstack/env
	$(PYTHON) -m devstack up

down:  ## stop it
	$(PYTHON) -m devstack down

status:
	$(PYTHON) -m devstack status

bench: ## benchmarks: one table, bench/results/latest.json (QUICK=1: reduced sizes; ONLY=bench_burst,...)
	$(PYTHON) -m devstack bench $(if $(QUICK),--quick) $(if $(ONLY),--only $(ONLY))

chaos: ## a fault at every port call of every flow, plus a larger random multi-fault budget; prints the summary
	$(PYTHON) -m devstack chaos
