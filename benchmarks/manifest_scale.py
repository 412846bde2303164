"""A manifest of a million rows (issue #29): the time and peak memory of indexing it, and `mmgen shard` streaming it.

Writes, in a temporary folder, a handful of real PNG files and a JSONL manifest of `--rows` rows pointing to
them, each with its own caption (sizes, colours, objects, relations and places drawn at random, about 90
words in all). Each measurement runs in a fresh process, so its peak memory is its own:

- **index**: `ManifestDataModule(manifest, image_size=16)` (read, check and split every row), its tokenizer
  (trained on the train split's captions, and the check of caption lengths), `data_spec`, and the first item
  decoded: what `mmgen fit` does before its first batch. Wall time of each part, the CPU time of the whole
  (the machine is shared: CPU time does not count the waits for a core; imports not included) and peak RSS
  (`resource.getrusage`, the process's own maximum), next to the RSS after `import torch, lightning` alone.
- **shard**: `mmgen shard` on the whole manifest with `--limit` rows written per split (decoding is per row,
  so a run of all the rows only takes longer): its time, the command's peak RSS (getrusage of the children:
  the largest single process) and the peak of its whole process tree (the proportional set size of the
  command and its writer processes summed, sampled every 0.1 s), for two limits: the same memory for ten
  times the rows written is what streaming means.

Writes benchmarks/results/manifest_scale.json with the command and prints a summary.

    .venv/bin/python benchmarks/manifest_scale.py [--rows 1000000] [--shard_limit 5000 50000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SIZES = ["tiny", "small", "medium", "large", "huge", "little", "big", "giant", "short", "tall"]
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white", "grey", "pink", "brown", "cyan"]
OBJECTS = ["cat", "dog", "bird", "car", "house", "tree", "boat", "chair", "lamp", "cup", "horse", "bicycle",
           "flower", "clock", "book", "shoe", "hat", "kite", "train", "bottle"]
RELATIONS = ["next to", "behind", "in front of", "above", "below", "near", "far from", "beside"]
PLACES = ["in a park", "on a street", "at the beach", "in a kitchen", "in a forest", "on a table",
          "under the sky", "in a garden", "at night", "in the snow"]
#: what `ManifestDataModule` is given (and `mmgen shard` as --data.*): the files' sizes
DATA_OPTIONS = {"image_size": 16, "max_text_length": 16}

INDEX = """
import json, resource, sys, time
import torch, lightning
from mmgen_lightning.datamodules.manifest import ManifestDataModule
imported = resource.getrusage(resource.RUSAGE_SELF)
start = time.perf_counter()
data = ManifestDataModule(sys.argv[1], **json.loads(sys.argv[2]))
built = time.perf_counter()
spec = data.data_spec  # trains the tokenizer on the train captions and checks their lengths
tokenized = time.perf_counter()
item = data.dataset("train")[0]
end = time.perf_counter()
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"rows": {s: len(r) for s, r in data.rows.items()}, "vocab_size": spec["vocab_size"],
                  "image": list(item["image"].shape), "seconds": {"read_check_split": built - start,
                  "tokenizer": tokenized - built, "first_item": end - tokenized, "total": end - start},
                  "cpu_seconds": usage.ru_utime + usage.ru_stime - imported.ru_utime - imported.ru_stime,
                  "rss_after_imports_mb": imported.ru_maxrss / 1024,
                  "peak_rss_mb": usage.ru_maxrss / 1024}))
"""


def write_manifest(folder: Path, rows: int, files: int, seed: int = 0) -> Path:
    """``files`` 20x20 PNGs and a manifest of ``rows`` rows over them, each with its own caption."""
    rng = np.random.default_rng(seed)
    (folder / "files").mkdir(parents=True)
    for index in range(files):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(folder / "files" / f"{index}.png")
    draw = random.Random(seed)
    manifest = folder / "manifest.jsonl"
    with open(manifest, "w", encoding="utf-8") as handle:
        for index in range(rows):
            caption = (f"a {draw.choice(SIZES)} {draw.choice(COLOURS)} {draw.choice(OBJECTS)} {draw.choice(RELATIONS)} "
                       f"a {draw.choice(COLOURS)} {draw.choice(OBJECTS)} {draw.choice(PLACES)}")
            handle.write(json.dumps({"image": f"files/{index % files}.png", "caption": caption}) + "\n")
    return manifest


def tree_pss_mb(pid: int) -> float:
    """The proportional set size of ``pid`` and all its descendants, summed: forked writers share the parent's
    pages, which summed RSS would count once per process (0 for processes that are gone)."""
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        try:
            for line in Path(f"/proc/{current}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
            for task in Path(f"/proc/{current}/task").iterdir():
                stack += [int(child) for child in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total / 1024


def run_measured(command: list[str]) -> tuple[subprocess.CompletedProcess, float, float]:
    """``(result, seconds, peak MB of the process tree's PSS)``: ``command`` in a fresh process, its tree sampled."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    peak, finished = [0.0], threading.Event()

    def sample() -> None:
        while not finished.wait(0.1):
            peak[0] = max(peak[0], tree_pss_mb(process.pid))

    sampler = threading.Thread(target=sample)
    sampler.start()
    out, err = process.communicate()
    seconds = time.perf_counter() - start
    finished.set()
    sampler.join()
    result = subprocess.CompletedProcess(command, process.returncode, out, err)
    if result.returncode != 0:
        raise RuntimeError(f"{shlex.join(command)} failed: {err[-3000:]}")
    return result, seconds, peak[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--files", type=int, default=8, help="distinct image files the rows point to")
    parser.add_argument("--shard_limit", type=int, nargs="+", default=[5000, 50000],
                        help="rows `mmgen shard --limit` writes per split, one run each")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "manifest_scale.json"))
    args = parser.parse_args()
    load_at_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        manifest = write_manifest(folder, args.rows, args.files)
        written = time.perf_counter() - start
        print(f"wrote {args.rows} rows ({manifest.stat().st_size / 2**20:.0f} MB) in {written:.1f} s", flush=True)

        result, wall, tree_peak = run_measured([sys.executable, "-c", INDEX, str(manifest), json.dumps(DATA_OPTIONS)])
        index = json.loads(result.stdout.strip().splitlines()[-1])
        index.update(wall_seconds=round(wall, 1), peak_pss_mb=round(tree_peak))
        print(f"index: {index['seconds']['total']:.1f} s ({index['cpu_seconds']:.1f} s of CPU), peak RSS "
              f"{index['peak_rss_mb']:.0f} MB ({index['rss_after_imports_mb']:.0f} MB after imports)", flush=True)

        shards = []
        for limit in args.shard_limit:
            out = folder / f"shards_{limit}"
            before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            command = [str(Path(sys.executable).parent / "mmgen"), "shard", "--data.manifest", str(manifest),
                       *[f"--data.{key}={value}" for key, value in DATA_OPTIONS.items()], "--out", str(out),
                       "--limit", str(limit)]
            result, wall, tree_peak = run_measured(command)
            children_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            meta = json.loads((out / "mmgen.json").read_text())
            shards.append({"limit": limit, "splits": meta["splits"], "seconds": round(wall, 1),
                           "peak_rss_mb_one_process": round(children_peak / 1024) if children_peak > before else
                           "not above an earlier run's (getrusage keeps the maximum)",
                           "peak_pss_mb_process_tree": round(tree_peak),
                           "shard_mb": round(sum(p.stat().st_size for p in out.rglob("*.bin")) / 2**20, 1)})
            print(f"shard --limit {limit}: {wall:.1f} s, peak PSS of the tree {tree_peak:.0f} MB", flush=True)

    round_all = {key: round(value, 2) for key, value in index.pop("seconds").items()}
    report = {
        "command": ".venv/bin/python benchmarks/manifest_scale.py " + shlex.join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores shared with other jobs, OMP_NUM_THREADS=1, load "
                   f"average {load_at_start:.1f} at the start and {os.getloadavg()[0]:.1f} at the end",
        "manifest": {"rows": args.rows, "distinct_files": args.files, "write_seconds": round(written, 1),
                     "data_options": DATA_OPTIONS},
        "targets": {"index_seconds": 60, "index_peak_rss_mb": 2048},
        "index": {**index, "seconds": round_all, "cpu_seconds": round(index["cpu_seconds"], 1),
                  "peak_rss_mb": round(index["peak_rss_mb"]),
                  "rss_after_imports_mb": round(index["rss_after_imports_mb"])},
        "shard": shards,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
