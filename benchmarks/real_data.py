"""Rendering and cache figures of the real-data sources: emoji at 64 and 128 px, the notes set.

For each, in a fresh cache folder: the full render (``setup()`` of a new datamodule: catalogue,
render, cache write, tokenizer, every split), the cache file's size, then the same ``setup()`` of a
second datamodule that loads the cache (median of ``--loads``). For emoji at 64 px it also compares the
cache format against litdata shards of the same pixels: loading every image from the ``.npz`` vs
streaming every image from the shards. Writes ``benchmarks/results/real_data.json``.

    .venv/bin/python benchmarks/real_data.py [--loads 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from mmgen_lightning.datamodules import EmojiDataModule, NotesDataModule

COMMAND = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/real_data.py"


def timed_setup(make) -> tuple[float, object]:
    start = time.perf_counter()
    datamodule = make()
    datamodule.setup()
    return time.perf_counter() - start, datamodule


def measure(name: str, make, loads: int) -> dict:
    render_seconds, datamodule = timed_setup(make)
    load_seconds = [timed_setup(make)[0] for _ in range(loads)]
    path = datamodule.cache_path()
    sizes = {split: len(datamodule.dataset(split)) for split in ("train", "val", "test", "heldout")}
    row = {"name": name, "items": sum(sizes.values()), "splits": sizes, "render_and_setup_s": round(render_seconds, 2),
           "cache_file": path.name, "cache_mb": round(path.stat().st_size / 1e6, 1),
           "setup_from_cache_s": round(statistics.median(load_seconds), 2),
           "setup_from_cache_runs_s": [round(s, 2) for s in load_seconds]}
    print(row)
    return row


def npz_vs_litdata(datamodule: EmojiDataModule, folder: Path, loads: int) -> dict:
    """Seconds to have every image in memory: from the ``.npz`` cache vs streamed from litdata chunks."""
    from litdata import StreamingDataset, optimize

    images = datamodule.images()
    shards = folder / "shards"
    optimize(fn=_image_of, inputs=[(str(datamodule.cache_path()), i) for i in range(len(images))],
             output_dir=str(shards), chunk_bytes="64MB", num_workers=1, mode="overwrite", verbose=False,
             start_method="fork")
    npz, streamed = [], []
    for _ in range(loads):
        start = time.perf_counter()
        with np.load(datamodule.cache_path()) as stored:
            loaded = stored["image"]
        npz.append(time.perf_counter() - start)
        start = time.perf_counter()
        dataset = StreamingDataset(str(shards))
        count = sum(1 for _ in dataset)
        streamed.append(time.perf_counter() - start)
        assert count == len(loaded) == len(images)
    shard_bytes = sum(p.stat().st_size for p in shards.rglob("*") if p.is_file())
    row = {"images": len(images), "npz_load_s": round(statistics.median(npz), 3),
           "litdata_stream_all_s": round(statistics.median(streamed), 3), "litdata_mb": round(shard_bytes / 1e6, 1),
           "npz_over_litdata": round(statistics.median(npz) / statistics.median(streamed), 2)}
    print(row)
    return row


_PIXELS: dict[str, np.ndarray] = {}


def _image_of(job: tuple[str, int]) -> dict:
    path, index = job
    if path not in _PIXELS:
        with np.load(path) as stored:
            _PIXELS[path] = stored["image"]
    return {"image": _PIXELS[path][index]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loads", type=int, default=3, help="setups from the cache to take the median of")
    parser.add_argument("--out", default="benchmarks/results/real_data.json")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        for size in (64, 128):
            cache = str(folder / f"emoji{size}")
            results.append(measure(f"emoji {size} px", lambda: EmojiDataModule(
                modalities=["image", "text", "label"], image_size=size, cache_dir=cache), args.loads))
        cache = str(folder / "notes")
        results.append(measure("notes 16 kHz", lambda: NotesDataModule(
            modalities=["audio", "text", "label"], cache_dir=cache), args.loads))
        formats = npz_vs_litdata(EmojiDataModule(image_size=64, cache_dir=str(folder / "emoji64")), folder, args.loads)
    report = {"benchmark": "real_data", "command": COMMAND + f" --loads {args.loads}",
              "machine": f"{platform.machine()}, shared 2-core CPU box, OMP_NUM_THREADS="
                         f"{os.environ.get('OMP_NUM_THREADS', 'unset')}, other jobs running",
              "what": "render_and_setup_s: a new datamodule's setup() with an empty cache (catalogue, render, cache "
                      "write, tokenizer, every split); setup_from_cache_s: the same with the cache written (median)",
              "results": results, "cache_format_emoji_64px": formats,
              "cache_format_note": "every image in memory from the one .npz vs streamed item by item from litdata "
                                   "chunks of the same uint8 pixels; the cache stays one .npz, which is written "
                                   "whole and renamed (atomic) and indexed in memory, where litdata writes a folder "
                                   "of chunks and decodes per item while training"}
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
