"""Samples per second each built-in source delivers, per modality, with 0 and 2 loader workers.

    python benchmarks/data_throughput.py [--batches 30] [--batch-size 64]

Each row is one datamodule carrying one modality (``all`` carries every one) at its default sizes,
read through its own ``train_dataloader`` after one warm-up batch (worker start-up and the Digits
split precompute are timed apart, as ``setup_s``). Rates are wall-clock: on a shared machine, rerun. Prints a Markdown table and writes
benchmarks/results/data_throughput.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import time
from pathlib import Path

import torch

from mmgen_lightning.datamodules import DigitsDataModule, ShapesDataModule

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"shapes": ShapesDataModule, "digits": DigitsDataModule}
MODALITIES = ("image", "text", "audio", "video", "label")


def measure(source: str, modalities: list[str], num_workers: int, batches: int, batch_size: int) -> dict:
    started = time.perf_counter()
    datamodule = SOURCES[source](modalities=modalities, batch_size=batch_size, num_workers=num_workers)
    datamodule.setup("fit")
    loader = iter(datamodule.train_dataloader())
    next(loader)  # warm-up: forks the workers
    setup_s = time.perf_counter() - started
    started, samples = time.perf_counter(), 0
    for _ in range(batches):
        try:
            batch = next(loader)
        except StopIteration:  # an epoch shorter than the measurement: start another
            loader = iter(datamodule.train_dataloader())
            batch = next(loader)
        samples += next(iter(batch.values())).shape[0]
    seconds = time.perf_counter() - started
    del loader, datamodule  # stops this row's persistent workers before the next row is timed
    gc.collect()
    return {"source": source, "modalities": "all" if len(modalities) > 1 else modalities[0],
            "num_workers": num_workers, "samples_per_s": round(samples / seconds, 1), "setup_s": round(setup_s, 2)}


def markdown(rows: list[dict]) -> str:
    lines = ["| source | modality | samples/s, 0 workers | samples/s, 2 workers | setup s (0 / 2 workers) |",
             "|---|---|---:|---:|---:|"]
    keyed = {(r["source"], r["modalities"], r["num_workers"]): r for r in rows}
    for source, modality in dict.fromkeys((r["source"], r["modalities"]) for r in rows):
        zero, two = keyed[(source, modality, 0)], keyed[(source, modality, 2)]
        lines.append(f"| {source} | {modality} | {zero['samples_per_s']:,.0f} | {two['samples_per_s']:,.0f} | "
                     f"{zero['setup_s']} / {two['setup_s']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=30, help="timed batches per row")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)  # a loader worker is one core; keeps the 0-worker rows comparable
    rows = []
    for source in SOURCES:
        for modalities in [[m] for m in MODALITIES] + [list(MODALITIES)]:
            for num_workers in (0, 2):
                rows.append(measure(source, modalities, num_workers, args.batches, args.batch_size))
                print(rows[-1], flush=True)
    table = markdown(rows)
    report = {"rows": rows, "batches": args.batches, "batch_size": args.batch_size,
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "torch": torch.__version__, "defaults": "shapes: image 32, 8 frames, 8 kHz 1 s; "
                                                      "digits: image 16, canvas 32, 8 frames, 8 kHz 1 s"}
    out = ROOT / "benchmarks" / "results" / "data_throughput.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(table)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
