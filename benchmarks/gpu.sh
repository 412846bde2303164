#!/usr/bin/env bash
# One prepared GPU run (an H200): bf16-mixed, torch.compile, channels_last, batch 512:
# training images/s of the ConditionalGAN and the MultimodalVAE, sampling tokens/s of the Captioner.
#   bash benchmarks/gpu.sh          on a machine with a GPU (under 8 minutes including install)
#   bash benchmarks/gpu.sh --cpu    smoke mode: the same script on the CPU, tiny, about a minute
# Uses .venv when it has the package, else any python3 that imports torch and lightning, else
# installs the package into .venv from the pinned constraints. Writes benchmarks/results/gpu.json
# (gpu_cpu_smoke.json with --cpu).
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)

pick_python() {
  for candidate in .venv/bin/python python3; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c "import torch, lightning, mmgen_lightning" 2>/dev/null; then
      echo "$candidate"; return
    fi
  done
  for candidate in .venv/bin/python python3; do  # torch and lightning are there: the package itself goes in -e
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c "import torch, lightning" 2>/dev/null; then
      "$candidate" -m pip install -q --no-deps -e . >&2 && echo "$candidate" && return
    fi
  done
  test -x .venv/bin/python || python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -c constraints.txt -e . >&2
  echo .venv/bin/python
}

PY=$(pick_python)
echo "python: $PY ($("$PY" -c 'import torch; print(torch.__version__, "cuda", torch.cuda.is_available())'))"
if [ "${1:-}" != "--cpu" ]; then
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
fi
timeout 420 "$PY" benchmarks/gpu_throughput.py "$@"
echo "gpu.sh finished in $(( $(date +%s) - started )) s"
