# locatlas: `make demo` runs the whole workflow on a simulated atlas; `make test` runs the tests.
# Both create .venv and install everything on first use.

PYTHON ?= python3.11
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
# torch first and explicitly: an implicit resolution pulls the CUDA build and ~3 GB of
# nvidia wheels. On a GPU machine: make TORCH_SPEC="torch==2.13.0 --index-url ..." demo
TORCH_SPEC ?= torch==2.13.0
CORES ?= 2
PYTEST_ARGS ?=
export PATH := $(BIN):$(PATH)
# Threads per process: jobs run in parallel already; oversubscription only slows them.
export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1
export OPENBLAS_NUM_THREADS ?= 1
export NUMBA_CACHE_DIR ?= $(CURDIR)/.venv/numba-cache
export MPLBACKEND ?= Agg

.PHONY: install demo test test-reliability test-all lint format report bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $@

demo: install
	$(BIN)/snakemake --profile profiles/local --cores $(CORES)
	$(BIN)/snakemake --profile profiles/local --cores $(CORES) --report results/snakemake-report.html
	@echo "Atlas: results/atlas/ (report.html, cells.h5ad, proteins.parquet)"
	@# real data: the two labelled HPA v18 fields, localized by the model the demo trained
	if [ -d ../shared/data/hpa_fields/hpa_v18 ]; then \
	  $(BIN)/snakemake --profile profiles/local --cores $(CORES) --configfile config/hpa_v18.yaml && \
	  echo "Real HPA fields: results/hpa_v18/atlas/ (report.html, labels_vs_predictions.csv)"; \
	else echo "../shared/data is absent: the real HPA v18 fields are skipped"; fi

# Unit and real-data tests on 2 workers, then the whole-workflow tests in one process
# (they share one tiny run).
test: install
	$(BIN)/python -m pytest -m "not slow and not gpu and not slurm and not reliability and not workflow" -n 2 $(PYTEST_ARGS)
	$(BIN)/python -m pytest -m "workflow and not slow and not slurm and not reliability" $(PYTEST_ARGS)

# Kill -9 / rerun / shard kills / continuous mode adding a plate: several workflow runs
# (12 min here on 2 cores); CI runs them.
test-reliability: install
	$(BIN)/python -m pytest -m reliability $(PYTEST_ARGS)

test-all: install
	$(BIN)/python -m pytest -m "not gpu and not slurm" $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/snakefmt --check Snakefile workflow
	$(BIN)/snakemake --lint --cores 1

format: install
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/snakefmt Snakefile workflow

clean:
	rm -rf results logs .snakemake
