# Set-up and everyday commands. `make demo` and `make test` install what is missing first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# This machine kind serves a CPU build of this torch from local disk. With a CUDA torch already in the
# venv (install it first, from pytorch.org's instructions), this step is skipped and torch is kept.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.broadclass-installed
export HF_HUB_OFFLINE ?= 1

.PHONY: install festival demo demo-accent demo-pretrained test test-slow test-all lint ui bench gpu-check lock clean \
	slurm-up slurm-down

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

# Festival and the three voices of the Festival corpus (broadclass/data/festival.py), which its tests synthesize:
# installed with apt-get where they are missing and we are root on Debian/Ubuntu; elsewhere a hint (the tests skip).
FESTIVAL_PACKAGES := festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts
festival:
	@if command -v dpkg >/dev/null && ! dpkg -s $(FESTIVAL_PACKAGES) >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(FESTIVAL_PACKAGES); \
	elif ! command -v festival >/dev/null; then \
	  echo "Festival is not installed; its tests skip. To install: sudo apt-get install -y $(FESTIVAL_PACKAGES)"; \
	fi

demo: install
	$(PY) -m broadclass.train +experiment=demo

demo-accent: install
	$(PY) -m broadclass.train +experiment=demo_accent

# The users' path on the demo: pretrain the tiny encoder on the demo corpus's audio without labels, then fine-tune
# it on 320 labeled sentences, beside the same fine-tuning from scratch. The encoder is kept in $(DEMO_ENCODER)
# and made again only when its recipe changes (make compares the files' times).
DEMO_ENCODER := models/demo_pretrain/encoder
$(DEMO_ENCODER)/config.json: $(STAMP) broadclass/conf/pretrain.yaml broadclass/conf/pretraining/tiny.yaml \
		$(wildcard broadclass/conf/pretraining_task/*.yaml broadclass/conf/pretraining_from_scratch/*.yaml) \
		broadclass/conf/encoder/tiny.yaml broadclass/conf/experiment/demo_pretrain.yaml \
		broadclass/model/pretraining.py broadclass/model/cluster_targets.py
	$(PY) -m broadclass.pretrain +experiment=demo_pretrain encoder_dir=$(CURDIR)/$(DEMO_ENCODER)

# The small labeled set: the first 320 of the 3,200 training sentences, 80 per voice type, fine-tuned for 2,000
# steps (from scratch the best comes by step 1,600-1,800; experiments/pretraining/README.md).
DEMO_SMALL := data.manifests_from.n_labeled=320 trainer.max_steps=2000
demo-pretrained: $(DEMO_ENCODER)/config.json
	$(PY) -m broadclass.train +experiment=demo_pretrained model.pretrained=$(CURDIR)/$(DEMO_ENCODER) $(DEMO_SMALL)
	$(PY) -m broadclass.train +experiment=demo $(DEMO_SMALL)

test: install festival
	$(PY) -m pytest

# The benchmark's smoke test runs the HF Trainer baseline: the bench extra comes first.
test-slow: install
	$(PY) -c "import accelerate" 2>/dev/null || $(PY) -m pip install -q -e ".[bench]"
	$(PY) -m pytest -m slow

test-all: test test-slow

# A real one-node SLURM cluster on this machine (root, Debian/Ubuntu): for trying hydra/launcher=slurm on a
# workstation and for the SLURM tests of `make test-slow`. Installs slurm-wlm and munge with apt when missing.
slurm-up:
	scripts/local-slurm.sh up

slurm-down:
	scripts/local-slurm.sh down

lint: install
	$(VENV)/bin/ruff check broadclass tests benchmarks
	$(VENV)/bin/ruff format --check broadclass tests benchmarks

# Ours against the HF Trainer recipe (needs the `bench` extra: accelerate). BENCH_ARGS="--model xlsr53" on a GPU.
bench: install
	$(PY) -c "import accelerate" 2>/dev/null || $(PY) -m pip install -q -e ".[bench]"
	$(PY) -m benchmarks.throughput $(BENCH_ARGS)

# The reference recipe at XLSR-53's full size on a CUDA GPU, ours and the HF Trainer side by side, offline
# (benchmarks/README.md). GPU_CHECK_ARGS="--smoke" runs the same pipeline on a CPU.
gpu-check: install
	$(PY) -c "import accelerate" 2>/dev/null || $(PY) -m pip install -q -e ".[bench]"
	$(PY) -m benchmarks.gpu $(GPU_CHECK_ARGS)

UI_PORT ?= 5000
# Prints each experiment's training-runs page, then serves the UI there.
ui: install
	$(PY) -m broadclass.ui sqlite:///$(CURDIR)/mlflow.db http://127.0.0.1:$(UI_PORT)
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --workers 1 --port $(UI_PORT)

# Regenerate the pinned lock from the current venv (torch excluded: it is the user's choice of build).
lock:
	$(PY) -m pip freeze --exclude-editable | grep -viE '^(torch|nvidia-|triton|broadclass)' > requirements.lock

clean:
	rm -rf outputs multirun cache models .pytest_cache
