# The two commands a new user needs: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test docs clean

setup: $(VENV)/.installed

# On a machine without an NVIDIA driver, install the CPU build of torch first: a plain `torch`
# requirement would otherwise pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/pip install torch==2.13.0; fi
	$(BIN)/pip install -e '.[test]'
	# DeepSpeed compiles its CPU ops (the offload optimizer, shared-memory collectives) on first use: 2-3
	# minutes on 2 cores. Built once here, into the venv (bonsai.train.distributed.use_environment_op_cache),
	# the first ZeRO run on a CPU machine does not pay for it.
	if ! command -v nvidia-smi >/dev/null 2>&1; then TORCH_EXTENSIONS_DIR=$(abspath $(VENV))/torch_extensions \
	  $(BIN)/python -c "from deepspeed.accelerator import \
	  get_accelerator as a; [a().create_op_builder(n).load(verbose=False) for n in ('CPUAdamBuilder', 'ShareMemCommBuilder')]"; fi
	touch $@

demo: setup
	rm -rf runs/demo
	WANDB_MODE=offline $(BIN)/bonsai train configs/demo.yaml
	$(BIN)/bonsai report runs/demo

# Two test files at a time: a launch keeps ~1.6 of 2 cores busy (imports, rank start-up, checkpoint
# writes are serial), two keep both; a file's tests stay in one worker (module fixtures, ordered steps).
test: setup
	$(BIN)/python -m pytest -n 2 --dist loadfile

# The reference pages are generated from the code (docs/gen_reference.py), then the site is built strictly:
# a broken link, a missing anchor or a page left out of the navigation fails.
docs: setup
	$(BIN)/python docs/gen_reference.py
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

clean:
	rm -rf runs .cache site
