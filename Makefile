# mtl_bench — two commands on a fresh clone:
#   make train   create .venv if missing, install, run the default experiment (synthetic, MTL, EW, Adam)
#   make test    install if needed, run the test suite
#   make lint    ruff check (configured rules + C901 complexity <= 15) and no mtl_bench function over 60 lines
# Extra Hydra overrides go in ARGS, e.g.  make train ARGS="combiner=ew optimizer=sgd trainer.epochs=5"
# Studies (docs/sweeps.md):
#   make quick-studies            every study's `_quick` preset (minutes on 2 CPU cores)
#   make study-dibs_transforms    one study's full grid; study-elich_optimizers also runs its STL baselines first
#   LAUNCHER=joblib_local | submitit_slurm picks the Hydra launcher of a study target
#   make report                   tables, verdicts + plots of the newest multirun (STUDY=<experiment name>: of that
#                                 study; or DIRS="<multirun dir> ..."); make quick-reports: every quick study's,
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
# Hydra overrides written as make command-line words (`make study-<name> paths.data_dir=/data`): make takes every
# NAME=VALUE word for a variable, so the words whose NAME has a dot or a slash (paths.data_dir=..., hydra/launcher=...)
# are forwarded to Hydra from $(MAKEOVERRIDES), each single-quoted for the shell (spaces and quotes kept; their order
# is make's: give each key once).  Choices without a dot (combiner=ew) are make variables: put them in ARGS.
HYDRA_OVERRIDES = $(strip $(foreach w,$(subst \ ,@mtl_sp@,$(MAKEOVERRIDES)),$(if $(findstring .,$(firstword $(subst =, ,$(w))))$(findstring /,$(firstword $(subst =, ,$(w)))),'$(subst @mtl_sp@, ,$(subst ','\'',$(w)))')))
DIRS        ?=
REPORT_ARGS ?=
STUDIES     := elich_optimizers adatask_dominance adatask_dominance_digits elich_conflicts dibs_transforms forkmerge_synthetic elich_corruptions loss_scale elich_optimizers_scenes adatask_dominance_scenes

export HF_HUB_OFFLINE := 1

.PHONY: install train test lint test-all clean-outputs sync-wandb quick-studies quick-reports study-elich_optimizers report check-docs

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

lint: install
	$(PY) -m ruff check mtl_bench tests scripts hydra_plugins
	$(PY) scripts/check_function_size.py mtl_bench

test-all: install
	WANDB_MODE=disabled $(PY) -m pytest -q -n $(TEST_WORKERS) $(PYTEST_ARGS)

quick-studies: install
	@set -e; for s in $(STUDIES); do \
		echo "== experiment=$${s}_quick"; $(PY) -m mtl_bench.train experiment=$${s}_quick $(LAUNCH) $(ARGS); \
	done

# Elich et al.'s grid selects on validation Δm against the STL baselines, and AdaTask (Adam only) is its own row.
study-elich_optimizers: install
	$(PY) -m mtl_bench.train experiment=synthetic_stl_baselines $(LAUNCH) $(ARGS) $(HYDRA_OVERRIDES)
	$(PY) -m mtl_bench.train experiment=elich_optimizers $(LAUNCH) $(ARGS) $(HYDRA_OVERRIDES)
	$(PY) -m mtl_bench.train experiment=elich_optimizers optimizer=adatask_adam combiner=ew $(LAUNCH) $(ARGS) $(HYDRA_OVERRIDES)

# The paper presets on the real data (docs/paper_protocols.md), e.g. make study-dibs_nyuv2 paths.data_dir=/data;
# the single-command ones (elich_conflicts_*) run through study-% below.
ELICH_OPTIMIZER_STUDIES := elich_optimizers_nyuv2_segnet elich_optimizers_nyuv2_deeplab elich_optimizers_cityscapes_segnet elich_optimizers_cityscapes_deeplab
ELICH_CORRUPTION_STUDIES := elich_corruptions_nyuv2 elich_corruptions_nyuv2_deeplab elich_corruptions_cityscapes elich_corruptions_cityscapes_deeplab elich_corruptions_celeba
.PHONY: $(addprefix study-,$(ELICH_OPTIMIZER_STUDIES) $(ELICH_CORRUPTION_STUDIES) adatask_cityscapes forkmerge_nyuv2 dibs_nyuv2 dibs_cityscapes)

# Elich et al.: the STL baselines (Δm reference, a fixed folder), the optimizer x method x lr grid, the AdaTask row.
# The grid's largest learning rates diverge by design (status diverged, the sweep exits 1): `-` runs the AdaTask row anyway.
$(addprefix study-,$(ELICH_OPTIMIZER_STUDIES)): study-%: install
	$(PY) -m mtl_bench.train experiment=$*_stl $(LAUNCH) $(ARGS) $(HYDRA_OVERRIDES)
	-$(PY) -m mtl_bench.train experiment=$* $(LAUNCH) $(ARGS) $(HYDRA_OVERRIDES)
	$(PY) -m mtl_bench.train experiment=$* optimizer=adatask_adam combiner=ew $(LAUNCH) $(ARGS) $(HYDRA_OVERRIDES)

# Elich et al. App. A6: the EW and STL backbones, then the backbones of the other methods of Tables A8/A9.
$(addprefix study-,$(ELICH_CORRUPTION_STUDIES)): study-%: install
	$(PY) -m mtl_bench.train experiment=$* $(LAUNCH) $(ARGS) $(HYDRA_OVERRIDES)
	$(PY) -m mtl_bench.train experiment=$* mode.source=mtl combiner=uw,rlw,imtl_g,pcgrad,cagrad $(LAUNCH) $(ARGS) $(HYDRA_OVERRIDES)

# AdaTask: Adam vs AdaTask-Adam (EW), then the GradNorm + Adam row of Table 1.
study-adatask_cityscapes: install
	$(PY) -m mtl_bench.train experiment=adatask_cityscapes $(LAUNCH) $(ARGS) $(HYDRA_OVERRIDES)
	$(PY) -m mtl_bench.train experiment=adatask_cityscapes optimizer=adam combiner=gradnorm $(LAUNCH) $(ARGS) $(HYDRA_OVERRIDES)

# ForkMerge: the ForkMerge runs, then the baselines (other modes, another preset).
study-forkmerge_nyuv2: install
	$(PY) -m mtl_bench.train experiment=forkmerge_nyuv2 $(LAUNCH) $(ARGS) $(HYDRA_OVERRIDES)
	$(PY) -m mtl_bench.train experiment=forkmerge_nyuv2_baselines $(LAUNCH) $(ARGS) $(HYDRA_OVERRIDES)

# DiBS-MTL: the method grid, then CAGrad with the official code's c = 0.4.
study-dibs_nyuv2 study-dibs_cityscapes: study-%: install
	$(PY) -m mtl_bench.train experiment=$* $(LAUNCH) $(ARGS) $(HYDRA_OVERRIDES)
	$(PY) -m mtl_bench.train experiment=$* combiner=cagrad combiner.c=0.4 $(LAUNCH) $(ARGS) $(HYDRA_OVERRIDES)

study-%: install
	$(PY) -m mtl_bench.train experiment=$* $(LAUNCH) $(ARGS) $(HYDRA_OVERRIDES)

report: install
	$(PY) -m mtl_bench.report $(or $(DIRS),$(shell ls -dt outputs/$(or $(STUDY),*)/multiruns/*/ 2>/dev/null | head -1)) $(REPORT_ARGS)

# The report (with its verdict table) of the newest multirun of every `_quick` study, one after the other.
quick-reports: install
	@set -e; for s in $(STUDIES); do d=$$(ls -dt outputs/$${s}_quick/multiruns/*/ 2>/dev/null | head -1); \
		if [ -z "$$d" ]; then echo "== $${s}_quick: no multirun yet (make quick-studies)"; continue; fi; \
		echo "== $${s}_quick: $$d"; $(PY) -m mtl_bench.report $$d $(REPORT_ARGS); \
	done

# Run every command README.md and docs/*.md show, in a temporary folder (tens of minutes on 2 cores); markers and
# options (--list, -k TEXT) in scripts/check_docs_commands.py, e.g. make check-docs DOCS_ARGS="--list".
check-docs: install
	$(PY) scripts/check_docs_commands.py $(DOCS_ARGS)

clean-outputs:
	rm -rf outputs/*/

# Upload offline W&B runs, then push the studies' W&B workspace/report specifications (docs/report.md), on a machine
# with network access and `wandb login`.
sync-wandb: install
	find outputs -type d -name 'offline-run-*' -exec $(VENV)/bin/wandb sync --include-offline {} +
	find outputs \( -name wandb_workspace.json -o -name wandb_report.json \) -exec $(PY) -m mtl_bench.report.wandb_views push {} +
