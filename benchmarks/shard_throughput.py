"""Reading a manifest's files directly vs streaming the shards `mmgen shard` made of them.

Writes a corpus of real files (PNG 128x128 -> 64x64, WAV 1 s at 22.05 kHz -> 16 kHz, GIF 8 frames
128x128 -> 64x64, captions), converts it once with ``shard_manifest``, then times full passes of the
train split through each datamodule's own DataLoader (batch 32, ``num_workers`` 0 and 1 thread, so the
numbers are per core). Prints a table and writes ``benchmarks/results/shard_throughput.json``.

    /work/tools/cpu_slot .venv/bin/python benchmarks/shard_throughput.py [--rows 256] [--epochs 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile
import torch
from PIL import Image

from mmgen_lightning.datamodules.manifest import ManifestDataModule
from mmgen_lightning.datamodules.streaming import StreamingDataModule, shard_manifest

OPTIONS = {"image_size": 64, "sample_rate": 16000, "audio_seconds": 1.0, "num_frames": 8, "max_text_length": 16}
MODALITY_SETS = {"image+text": ["image", "text"], "image+text+audio+video": ["image", "text", "audio", "video"]}


def write_files(folder: Path, rows: int, seed: int = 0) -> Path:
    """``rows`` samples of noisy textured images, tones with noise, moving-square GIFs and captions."""
    rng = np.random.default_rng(seed)
    files = folder / "files"
    files.mkdir(parents=True)
    lines = []
    for index in range(rows):
        image = (rng.random((128, 128, 3)) * 255).astype(np.uint8)
        Image.fromarray(image).save(files / f"{index}.png")
        frames = []
        for step in range(8):
            frame = np.zeros((128, 128, 3), dtype=np.uint8)
            frame[40:80, 10 + 10 * step:50 + 10 * step] = rng.integers(0, 255, 3)
            frames.append(Image.fromarray(frame))
        frames[0].save(files / f"{index}.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
        t = np.arange(22050) / 22050
        tone = 0.4 * np.sin(2 * np.pi * (200 + 20 * (index % 30)) * t) + 0.02 * rng.standard_normal(22050)
        soundfile.write(files / f"{index}.wav", tone.astype(np.float32), 22050, subtype="PCM_16")
        lines.append({"image": f"files/{index}.png", "audio": f"files/{index}.wav", "video": f"files/{index}.gif",
                      "caption": f"sample number {index} with a tone of {200 + 20 * (index % 30)} hertz",
                      "split": "train"})
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return manifest


def samples_per_second(loader, epochs: int) -> list[float]:
    rates = []
    for _ in range(epochs):
        start, count = time.perf_counter(), 0
        for batch in loader:
            count += batch["image"].shape[0]
        rates.append(count / (time.perf_counter() - start))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--out", default="benchmarks/results/shard_throughput.json")
    args = parser.parse_args()
    torch.set_num_threads(1)

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        manifest = write_files(folder, args.rows)
        print(f"wrote {args.rows} rows of files in {time.perf_counter() - start:.1f} s")
        for name, modalities in MODALITY_SETS.items():
            direct = ManifestDataModule(str(manifest), modalities=modalities, batch_size=args.batch_size, **OPTIONS)
            start = time.perf_counter()
            meta = shard_manifest(direct, folder / f"shards_{len(modalities)}", num_workers=1)
            shard_seconds = time.perf_counter() - start
            size = sum(p.stat().st_size for p in (folder / f"shards_{len(modalities)}" / "train").glob("*.bin"))
            streamed = StreamingDataModule(str(folder / f"shards_{len(modalities)}"), batch_size=args.batch_size)
            direct.setup("fit")
            streamed.setup("fit")
            manifest_rates = samples_per_second(direct.train_dataloader(), args.epochs)
            shard_rates = samples_per_second(streamed.train_dataloader(), args.epochs)
            results.append({"modalities": name, "rows": meta["splits"]["train"]["written"],
                            "shard_seconds": round(shard_seconds, 2), "shard_mb": round(size / 2**20, 1),
                            "manifest_samples_per_s": [round(r, 1) for r in manifest_rates],
                            "shards_samples_per_s": [round(r, 1) for r in shard_rates],
                            "speedup_last_epoch": round(shard_rates[-1] / manifest_rates[-1], 1)})

    print(f"\n| modalities | rows | shard time (s) | shard size (MB) | manifest samples/s | shards samples/s | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['modalities']} | {r['rows']} | {r['shard_seconds']} | {r['shard_mb']} | "
              f"{' / '.join(map(str, r['manifest_samples_per_s']))} | {' / '.join(map(str, r['shards_samples_per_s']))} | "
              f"{r['speedup_last_epoch']}x |")
    print("(samples/s per epoch, epoch 1 / epoch 2; num_workers 0, one thread)")
    record = {
        "benchmark": "shard_throughput",
        "command": "/work/tools/cpu_slot .venv/bin/python benchmarks/shard_throughput.py "
                   f"--rows {args.rows} --epochs {args.epochs} --batch_size {args.batch_size}",
        "machine": f"{platform.machine()}, shared 2-core CPU box, 1 thread (OMP_NUM_THREADS=1), num_workers=0; "
                   "other jobs were running, so absolute rates are conservative, the ratio is the point",
        "options": OPTIONS, "batch_size": args.batch_size, "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
