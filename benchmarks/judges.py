"""Train (or load from the cache) every judge of the built-in datasets and measure each on real
held-out data it never saw, the ceiling of every coherence number a report prints.

    python benchmarks/judges.py [--retrain] [--split test]

Writes benchmarks/results/judges.json (+ .md): per dataset and modality, the accuracy of each judged
attribute and of all at once, the samples, and the seconds to train (``--retrain`` trains into a
fresh temporary cache, so the time is the training time on this machine).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

from mmgen_lightning.datamodules.digits import DigitsDataModule
from mmgen_lightning.datamodules.shapes import ShapesDataModule
from mmgen_lightning.metrics.judges import JUDGE_VERSION, RECIPES, get_judge, held_out_accuracy, judge_path

ROOT = Path(__file__).resolve().parents[1]
JUDGES = [(DigitsDataModule, "image"), (DigitsDataModule, "audio"), (DigitsDataModule, "video"),
          (ShapesDataModule, "image"), (ShapesDataModule, "audio"), (ShapesDataModule, "video")]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--retrain", action="store_true", help="train every judge into a fresh temporary cache")
    parser.add_argument("--split", default="test", choices=["val", "test"])
    args = parser.parse_args()
    cache = Path(tempfile.mkdtemp(prefix="mmgen_judges_")) if args.retrain else None
    rows = []
    for kind, modality in JUDGES:
        datamodule = kind(modalities=[modality])  # default configuration: the one recipes and reports use
        cached = judge_path(datamodule, modality, cache=cache).is_file()
        started = time.time()
        judge = get_judge(datamodule, modality, cache=cache)
        seconds = round(time.time() - started, 1)
        accuracy = held_out_accuracy(judge, datamodule, args.split)
        rows.append({"dataset": datamodule.name, "modality": modality, "split": args.split,
                     "samples": accuracy.pop("samples"), "accuracy": accuracy,
                     "train_seconds": None if cached else seconds, "recipe": asdict(RECIPES[modality])})
        print(f"{datamodule.name:7s} {modality:6s} " + "  ".join(f"{k} {v:.3f}" for k, v in accuracy.items()) +
              (f"  ({seconds} s)" if not cached else "  (cached)"), flush=True)
    result = {"judge_version": JUDGE_VERSION, "rows": rows, "torch": torch.__version__,
              "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"}
    out = ROOT / "benchmarks" / "results" / "judges.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(table(rows))
    print(table(rows))


def table(rows: list[dict]) -> str:
    lines = ["| dataset | modality | held-out accuracy per attribute | all attributes | samples | train s |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        per = ", ".join(f"{k} {v:.3f}" for k, v in row["accuracy"].items() if k != "all")
        lines.append(f"| {row['dataset']} | {row['modality']} | {per} | {row['accuracy']['all']:.3f} | "
                     f"{row['samples']} | {row['train_seconds'] if row['train_seconds'] is not None else 'cached'} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
