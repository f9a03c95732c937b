PYTHON ?= python3

.PHONY: install test demo bench

install:
	$(PYTHON) -m pip install -e ".[test,eval]"

test:
	$(PYTHON) -m pytest -q tests

bench:
	$(PYTHON) benchmarks/guidance_cost.py
