# Quick start: `make demo` and `make test`. Every target creates and fills .venv itself.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PYTHONUNBUFFERED := 1

.PHONY: install browser synth demo test test-fast bench docs clean

install: $(STAMP)

# Re-runs only when the dependency set changes; constraints.txt pins the tested versions
# (torch 2.14.1, torchvision 0.29.1, torchaudio 2.11.0, ...) so every machine gets the same set.
# pillow is pinned below 13 because Gradio (the serve extra, for `mmgen serve`) requires pillow<13.
$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[dev,pretrained,serve,docs]"
	touch $(STAMP)

# The demo needs only the core dependencies (no test, serve or docs extras): a fresh clone installs less before
# training starts. A full install (the stamp above) serves it too.
CORE_STAMP := $(VENV)/.core-installed
$(CORE_STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	if [ -f $(STAMP) ] && [ $(STAMP) -nt setup.cfg ] && [ $(STAMP) -nt constraints.txt ]; then :; else \
		$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e .; fi
	touch $(CORE_STAMP)

demo: $(CORE_STAMP)
	$(VENV)/bin/mmgen fit --config configs/flow/shapes.yaml
	$(VENV)/bin/mmgen generate --ckpt runs/flow_shapes/checkpoints/last.ckpt --to image \
		--text "a red circle on the left moving up" --text "a large blue square at the top moving down" \
		--num 8 --out outputs/flow_shapes/text_to_image
	@echo "samples in outputs/flow_shapes, dashboards: $(VENV)/bin/tensorboard --logdir runs"

# Debian's Chromium + ChromeDriver for tests/test_serve_browser.py, installed when missing where apt-get runs
# as root (CI's fresh Debian machine); elsewhere that one test is skipped and says why.
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "installing chromium + chromium-driver (apt-get) for the browser test"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) \
			>/dev/null 2>&1 || echo "apt-get could not install chromium; the browser test will be skipped"; \
	fi

# Debian's FluidSynth library, which NotesDataModule plays the General MIDI SoundFont through (pyfluidsynth
# is only its Python binding); where it cannot be installed the note-rendering tests are skipped and say why.
synth:
	@if ldconfig -p 2>/dev/null | grep -q libfluidsynth.so.3; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "installing libfluidsynth3 (apt-get) for the notes data"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libfluidsynth3) >/dev/null 2>&1 \
			|| echo "apt-get could not install libfluidsynth3; the note-rendering tests will be skipped"; \
	fi

test: $(STAMP) browser synth
	$(PY) -m pytest -q -n 2 --dist loadfile

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

# The documentation site (docs/, mkdocs.yml) built into site/; --strict makes a broken link, anchor or API
# reference an error. The docs extra (pinned in constraints.txt) goes into .venv once. Open site/index.html.
DOCS_STAMP := $(VENV)/.docs-installed
$(DOCS_STAMP): $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[docs]"
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

clean:
	rm -rf runs outputs .pytest_cache
