PYTHON ?= python3

.PHONY: install test demo bench

install:
	$(PYTHON) -m pip install -e ".[test,eval]"

test:
	$(PYTHON) -m pytest -q tests

# Installs the package (and the CPU build of torch where no torch is installed), then runs the demo.
demo:
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install --quiet "torch==2.13.0"
	$(PYTHON) -m pip install --quiet -e .
	$(PYTHON) -m scripts.demo

# PAG step cost: the released width 256 on a GPU, width 64 on a CPU.
bench:
	$(PYTHON) benchmarks/guidance_cost.py
