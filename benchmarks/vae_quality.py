"""Train a MultimodalVAE recipe within its wall-clock budget, then score it with `mmgen evaluate`.

    python benchmarks/vae_quality.py [--config configs/vae/digits.yaml] [--skip-fit]

Writes benchmarks/results/vae_<name>.json (+ .md) with the training time, steps and the
coherence of every direction, each read by a judge trained only on the real training split.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from mmgen_lightning.metrics.report import evaluate, markdown

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="configs/vae/digits.yaml")
    parser.add_argument("--skip-fit", action="store_true", help="evaluate the existing last.ckpt")
    args = parser.parse_args()
    config = yaml.safe_load((ROOT / args.config).read_text())
    ckpt_dir = Path(config["trainer"]["callbacks"][0]["init_args"]["dirpath"])
    name = Path(args.config).stem
    train_seconds = None
    if not args.skip_fit:
        started = time.time()
        subprocess.run([sys.executable, "-m", "mmgen_lightning.cli", "fit", "--config", args.config,
                        "--trainer.enable_progress_bar", "false"], check=True, cwd=ROOT)
        train_seconds = round(time.time() - started, 1)
    ckpt = ROOT / ckpt_dir / "last.ckpt"
    steps = torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"]
    report = evaluate(ckpt)
    report.update({"config": args.config, "train_seconds_including_startup": train_seconds, "steps": steps,
                   "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
                   "torch": torch.__version__})
    out = ROOT / "benchmarks" / "results" / f"vae_{name}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    print(f"trained {steps} steps in {train_seconds} s; wrote {out}")


if __name__ == "__main__":
    main()
