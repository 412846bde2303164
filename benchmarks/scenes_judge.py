"""The scenes data and judge: render speed, the judge's training time and accuracy on real renders
(clean and softened as generated samples are), and the GenEval-style table of real renders, the
ceiling of every scenes score.

    python benchmarks/scenes_judge.py [--items 500] [--captions 64] [--samples 8]

Trains the judge into a fresh temporary cache (so its time is the training time on this machine),
reads ``--items`` items of the test (seen) and heldout splits as rendered and under each
``DEGRADATIONS`` entry, and scores ``RealScenes`` with ``metrics.scenes.real_ceiling``. Writes
benchmarks/results/scenes_judge.json (+ .md). Rates are wall-clock and single-threaded: on a shared
machine, rerun (the JSON records the load average).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from mmgen_lightning.datamodules import ScenesDataModule
from mmgen_lightning.datamodules.scenes import match_scene
from mmgen_lightning.metrics.scene_judge import SCENE_JUDGE_VERSION, SceneJudgeRecipe, degrade, get_scene_judge
from mmgen_lightning.metrics.scenes import real_ceiling, scenes_markdown

ROOT = Path(__file__).resolve().parents[1]
#: name -> ``degrade`` arguments: the mild softening the judge must stay right under, and a harsher one
DEGRADATIONS = {"rendered": {}, "mild": {"blur": 0.8, "noise": 0.05, "color_shift": 0.1},
                "harsh": {"blur": 1.2, "noise": 0.1, "color_shift": 0.15}}


def items_per_second(datamodule, count: int) -> dict[str, float]:
    """Scenes drawn (no rendering) and items (image + text) per second, by the wall clock and by this
    process's CPU time (which a busy machine inflates less)."""
    dataset = datamodule.dataset("train")
    dataset[0]  # the tokenizer trains on first use
    rates = {}
    for name, read in (("scenes_drawn", dataset.scene), ("items", dataset.__getitem__)):
        wall, cpu = time.perf_counter(), time.process_time()
        for index in range(count):
            read(index)
        rates[f"{name}_per_s"] = round(count / (time.perf_counter() - wall), 1)
        rates[f"{name}_per_cpu_s"] = round(count / (time.process_time() - cpu), 1)
    return rates


def judge_accuracy(judge, datamodule, split: str, count: int) -> dict[str, dict[str, float]]:
    """Per degradation: the share of images read exactly (same objects, centroids within a pixel) and
    the share whose caption the reading makes true."""
    dataset = datamodule.dataset(split)
    scenes = [dataset.scene(i) for i in range(count)]
    images = torch.stack([dataset[i]["image"] for i in range(count)])
    rows = {}
    for name, options in DEGRADATIONS.items():
        seen = judge.read(degrade(images, generator=torch.Generator().manual_seed(0), **options))
        exact = [len(s) == len(scene.objects) and all(
            any((o.shape, o.color, o.size) == (t.shape, t.color, t.size) and np.hypot(o.x - t.x, o.y - t.y) * 64 < 1
                for o in s) for t in scene.objects) for s, scene in zip(seen, scenes)]
        holds = [match_scene(scene.caption, s) is not None for s, scene in zip(seen, scenes)]
        rows[name] = {"objects_read_exactly": float(np.mean(exact)), "caption_holds": float(np.mean(holds))}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=500, help="items per split the judge reads")
    parser.add_argument("--captions", type=int, default=64, help="captions per split of the real-render table")
    parser.add_argument("--samples", type=int, default=8, help="renders per caption of the real-render table")
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_before = os.getloadavg()[0]
    datamodule = ScenesDataModule()
    speed = items_per_second(datamodule, 2000)
    print(json.dumps(speed), flush=True)
    cache = Path(tempfile.mkdtemp(prefix="mmgen_scenes_judge_"))
    started, cpu = time.perf_counter(), time.process_time()
    judge = get_scene_judge(datamodule, cache=cache)
    train_seconds = {"wall": round(time.perf_counter() - started, 1), "cpu": round(time.process_time() - cpu, 1)}
    print(f"judge trained in {train_seconds} s", flush=True)
    accuracy = {split: judge_accuracy(judge, datamodule, split, args.items) for split in ("test", "heldout")}
    for split, rows in accuracy.items():
        print(split, json.dumps(rows), flush=True)
    ceiling = real_ceiling(datamodule, judge, num_captions=args.captions, samples_per_caption=args.samples)
    table = scenes_markdown(ceiling)
    print(table)
    result = {"command": " ".join(["python benchmarks/scenes_judge.py", *sys.argv[1:]]),
              "judge_version": SCENE_JUDGE_VERSION, "recipe": asdict(SceneJudgeRecipe()),
              "judge_train_seconds": train_seconds, "data": speed, "degradations": DEGRADATIONS,
              "judge_accuracy": {"items_per_split": args.items, **accuracy}, "real_renders": ceiling,
              "torch": torch.__version__, "machine": f"{platform.processor() or platform.machine()}, 1 thread",
              "load_average": [round(load_before, 1), round(os.getloadavg()[0], 1)]}
    out = ROOT / "benchmarks" / "results" / "scenes_judge.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(table)


if __name__ == "__main__":
    main()
