"""`make bench`: run every benchmark in this folder once and gather the results in RESULTS.md.

Each benchmark is its own script (runnable alone, printing its table and writing
benchmarks/results/<name>.json); this runner executes them in order, then writes
benchmarks/RESULTS.md with the machine, library versions, the exact commands and every table.
Quality benchmarks train within their configs' wall-clock budgets, so the whole run takes about
half an hour on 2 CPU cores.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = [
    ["benchmarks/data_throughput.py"],
    ["benchmarks/vae_quality.py", "--config", "configs/vae/digits.yaml"],
    ["benchmarks/gan_quality.py"],
    ["benchmarks/gan_overhead.py"],
    ["benchmarks/captioner_quality.py"],
    ["benchmarks/captioner_kv_cache.py"],
]


def versions() -> str:
    import lightning
    import torchaudio
    import torchmetrics
    import transformers

    return (f"python {platform.python_version()}, torch {torch.__version__}, torchaudio {torchaudio.__version__}, "
            f"lightning {lightning.__version__}, torchmetrics {torchmetrics.__version__}, "
            f"transformers {transformers.__version__}")


def main() -> None:
    lines = ["# Benchmark results", "", f"- machine: {platform.machine()}, {torch.get_num_threads()} CPU threads, "
             f"{platform.platform()}", f"- libraries: {versions()}", f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", ""]
    for command in BENCHMARKS:
        script = ROOT / command[0]
        if not script.is_file():
            continue
        started = time.time()
        result = subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True, text=True)
        seconds = time.time() - started
        lines += [f"## `python {' '.join(command)}`", "", f"exit {result.returncode}, {seconds:.0f} s", ""]
        table = [line for line in result.stdout.splitlines() if line.startswith("|") or line.startswith("#")]
        lines += table or ["```", result.stdout[-2000:], result.stderr[-2000:], "```"]
        lines.append("")
        print(f"{command[0]}: exit {result.returncode} in {seconds:.0f} s", flush=True)
    (ROOT / "benchmarks" / "RESULTS.md").write_text("\n".join(lines) + "\n")
    print("wrote benchmarks/RESULTS.md")


if __name__ == "__main__":
    main()
