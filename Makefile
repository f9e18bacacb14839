# mtl_bench — two commands on a fresh clone:
#   make train   create .venv if missing, install, run the default experiment (synthetic, MTL, EW, Adam)
#   make test    install if needed, run the test suite
# Extra Hydra overrides go in ARGS, e.g.  make train ARGS="combiner=ew optimizer=sgd trainer.epochs=5"

PYTHON      ?= python3
VENV        ?= .venv
PY          := $(VENV)/bin/python
# Known-good pair for CPU CI (a CUDA build that also runs on CPU); pyproject.toml does not pin torch,
# so users can bring their own CUDA build.
TORCH_PIN   ?= torch==2.14.1 torchvision==0.29.1
ARGS        ?=
PYTEST_ARGS ?=

export HF_HUB_OFFLINE := 1

.PHONY: install train test test-all clean-outputs sync-wandb

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH_PIN)
	$(PY) -m pip install --quiet -e ".[test]"
	@touch $@

train: install
	$(PY) -m mtl_bench.train $(ARGS)

test: install
	WANDB_MODE=disabled $(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-all: install
	WANDB_MODE=disabled $(PY) -m pytest -q $(PYTEST_ARGS)

clean-outputs:
	rm -rf outputs/*/

# Upload offline W&B runs (on a machine with network access and `wandb login`).
sync-wandb: install
	find outputs -type d -name 'offline-run-*' -exec $(VENV)/bin/wandb sync --include-offline {} +
