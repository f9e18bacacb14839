# mtl_bench — two commands on a fresh clone:
#   make train   create .venv if missing, install, run the default experiment (synthetic, MTL, EW, Adam)
#   make test    install if needed, run the test suite
# Extra Hydra overrides go in ARGS, e.g.  make train ARGS="combiner=ew optimizer=sgd trainer.epochs=5"
# Studies (docs/sweeps.md):
#   make quick-studies            every study's `_quick` preset (minutes on 2 CPU cores)
#   make study-dibs_transforms    one study's full grid; study-elich_optimizers also runs its STL baselines first
#   LAUNCHER=joblib_local | submitit_slurm picks the Hydra launcher of a study target
#   make report                   tables + plots of the newest multirun (or DIRS="<multirun dir> ..."),
#                                 options in REPORT_ARGS, e.g. REPORT_ARGS="--pareto-ref optimizer=adam"

PYTHON      ?= python3
VENV        ?= .venv
PY          := $(VENV)/bin/python
# Known-good pair for CPU CI (a CUDA build that also runs on CPU); pyproject.toml does not pin torch,
# so users can bring their own CUDA build.
TORCH_PIN   ?= torch==2.14.1 torchvision==0.29.1
ARGS        ?=
PYTEST_ARGS ?=
TEST_WORKERS ?= 2   # pytest-xdist processes (the CI machine has 2 cores)
LAUNCHER    ?=
LAUNCH      := $(if $(LAUNCHER),hydra/launcher=$(LAUNCHER),)
DIRS        ?=
REPORT_ARGS ?=
STUDIES     := elich_optimizers adatask_dominance elich_conflicts dibs_transforms forkmerge_synthetic elich_corruptions

export HF_HUB_OFFLINE := 1

.PHONY: install train test test-all clean-outputs sync-wandb quick-studies study-elich_optimizers report check-docs

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH_PIN)
	$(PY) -m pip install --quiet -e ".[test,hpo]"
	@touch $@

train: install
	$(PY) -m mtl_bench.train $(ARGS)

test: install
	WANDB_MODE=disabled $(PY) -m pytest -q -m "not slow" -n $(TEST_WORKERS) $(PYTEST_ARGS)

test-all: install
	WANDB_MODE=disabled $(PY) -m pytest -q -n $(TEST_WORKERS) $(PYTEST_ARGS)

quick-studies: install
	@set -e; for s in $(STUDIES); do \
		echo "== experiment=$${s}_quick"; $(PY) -m mtl_bench.train experiment=$${s}_quick $(LAUNCH) $(ARGS); \
	done

# Elich et al.'s grid selects on validation Δm against the STL baselines, and AdaTask (Adam only) is its own row.
study-elich_optimizers: install
	$(PY) -m mtl_bench.train experiment=synthetic_stl_baselines $(LAUNCH) $(ARGS)
	$(PY) -m mtl_bench.train experiment=elich_optimizers $(LAUNCH) $(ARGS)
	$(PY) -m mtl_bench.train experiment=elich_optimizers optimizer=adatask_adam combiner=ew $(LAUNCH) $(ARGS)

study-%: install
	$(PY) -m mtl_bench.train experiment=$* $(LAUNCH) $(ARGS)

report: install
	$(PY) -m mtl_bench.report $(or $(DIRS),$(shell ls -dt outputs/*/multiruns/*/ 2>/dev/null | head -1)) $(REPORT_ARGS)

# Run every command README.md and docs/*.md show, in a temporary folder (tens of minutes on 2 cores); markers and
# options (--list, -k TEXT) in scripts/check_docs_commands.py, e.g. make check-docs DOCS_ARGS="--list".
check-docs: install
	$(PY) scripts/check_docs_commands.py $(DOCS_ARGS)

clean-outputs:
	rm -rf outputs/*/

# Upload offline W&B runs (on a machine with network access and `wandb login`).
sync-wandb: install
	find outputs -type d -name 'offline-run-*' -exec $(VENV)/bin/wandb sync --include-offline {} +
