"""CLI start-up (issue #16): `mmgen --help`, `mmgen generate --help` and a bad argument against `import lightning`,
and `mmgen generate` on a small checkpoint until its first (only) file is written and the process exits.

Each command is a fresh process timed from outside (wall clock, `time.perf_counter` around `subprocess.run`),
one torch thread, in alternating rounds; the median of the rounds is reported. Writes
benchmarks/results/cli_startup.json and prints a table.

    .venv/bin/python benchmarks/cli_startup.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MMGEN = str(Path(sys.executable).parent / "mmgen")


def small_checkpoint(folder: Path) -> Path:
    """A MultimodalVAE on Digits (image + text) after a few steps: a real, self-contained checkpoint."""
    import lightning as L
    import torch

    from mmgen_lightning.datamodules.digits import DigitsDataModule
    from mmgen_lightning.models.vae import MultimodalVAE

    torch.manual_seed(0)
    data = DigitsDataModule(modalities=["image", "text"], batch_size=32)
    model = MultimodalVAE(data.data_spec, network={"latent_dim": 8, "width": 16, "text_width": 32})
    trainer = L.Trainer(accelerator="cpu", max_steps=3, logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False, limit_val_batches=0,
                        default_root_dir=folder)
    trainer.fit(model, datamodule=data)
    path = folder / "vae_digits.ckpt"
    trainer.save_checkpoint(path)
    return path


def commands(ckpt: Path, out: Path) -> dict[str, list[str]]:
    return {
        "import torch": [sys.executable, "-c", "import torch"],
        "import lightning": [sys.executable, "-c", "import lightning"],
        "mmgen --help": [MMGEN, "--help"],
        "mmgen generate --help": [MMGEN, "generate", "--help"],
        "mmgen generate --num 0 (bad argument)": [MMGEN, "generate", "--ckpt", str(ckpt), "--to", "image", "--out",
                                                  str(out / "never"), "--num", "0"],
        "mmgen generate (first file, small checkpoint)": [MMGEN, "generate", "--ckpt", str(ckpt), "--to", "image",
                                                          "--text", "a handwritten seven", "--num", "1"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cli_startup.json"))
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ckpt = small_checkpoint(folder)
        runs: dict[str, list[float]] = {name: [] for name in commands(ckpt, folder)}
        expected = {"mmgen generate --num 0 (bad argument)": 2}
        for round_index in range(args.rounds):
            for name, command in commands(ckpt, folder).items():
                if name.startswith("mmgen generate (first"):
                    command = command + ["--out", str(folder / f"samples_{round_index}")]
                started = time.perf_counter()
                result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
                elapsed = time.perf_counter() - started
                if result.returncode != expected.get(name, 0):
                    raise SystemExit(f"{name}: exit {result.returncode}\n{result.stderr[-2000:]}")
                if name.startswith("mmgen generate (first"):
                    assert (folder / f"samples_{round_index}" / "00000_image.png").is_file()
                runs[name].append(round(elapsed, 3))
            print(f"round {round_index + 1}/{args.rounds} done", file=sys.stderr)
    medians = {name: statistics.median(values) for name, values in runs.items()}
    lightning = medians["import lightning"]
    report = {
        "command": f".venv/bin/python benchmarks/cli_startup.py --rounds {args.rounds}",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, OMP_NUM_THREADS=1, "
                   f"load average {os.getloadavg()[0]:.1f} at the end (shared machine)",
        "rounds": args.rounds,
        "median_seconds": {name: round(value, 3) for name, value in medians.items()},
        "ratio_to_import_lightning": {name: round(value / lightning, 3) for name, value in medians.items()},
        "runs_seconds": runs,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"| command | median s ({args.rounds} rounds) | / import lightning |")
    print("|---|---|---|")
    for name, value in medians.items():
        print(f"| `{name}` | {value:.2f} | {value / lightning:.2f} |")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
